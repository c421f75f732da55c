//! `qatc train`: check everything, train with fake quantization, convert, compile, and write the
//! run folder. [`TrainRun::prepare`] does all that can fail before the first epoch;
//! [`TrainRun::run`] trains and writes.

use std::path::PathBuf;

use serde::Serialize;

use super::{create_dir, int8_accuracy, round2, write_file, Error, SpecFile, Stage};
use crate::check::TrainConfig;
use crate::data::Splits;
use crate::train::engine::Net;
use crate::train::{EpochStats, Progress};

/// How to run `qatc train`.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Where to write the run (default: `runs/<model>`).
    pub out: Option<PathBuf>,
    /// Overrides the spec's number of epochs.
    pub epochs: Option<usize>,
    /// Overrides the spec's seed.
    pub seed: Option<u64>,
    /// Overrides the optimizer's learning rate.
    pub lr: Option<f64>,
    /// Overrides the data folder (of the kind the spec names: MNIST or CIFAR-10 files).
    pub data: Option<PathBuf>,
}

/// A training run whose spec, data and network are ready.
pub struct TrainRun {
    pub spec: SpecFile,
    pub cfg: TrainConfig,
    pub data: Splits,
    pub net: Net,
    pub epochs: usize,
    pub dir: PathBuf,
}

/// What a run produced: written as the run folder's `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub model: String,
    pub epochs: usize,
    pub quantized: bool,
    /// Final test accuracy (fake quant for a quantized model).
    pub test_acc: f64,
    /// The same for a quantized model; `null` for a float one.
    pub fake_quant_acc: Option<f64>,
    /// After float pretraining, when it ran.
    pub float_acc: Option<f64>,
    /// Measured (like the epochs' speed and `jit_b1_us`): not in `summary.json`, whose bytes are
    /// the same for the same seed.
    #[serde(skip)]
    pub train_images_per_s: f64,
    pub per_epoch: Vec<EpochStats>,
    pub test_images: usize,
    pub checkpoint_bytes: usize,
    /// Bytes of float parameters (the checkpoint's weights).
    pub float_weight_bytes: usize,
    #[serde(flatten)]
    pub int8: Option<Int8Report>,
    /// The run folder and the files written in it.
    pub dir: PathBuf,
    pub files: Vec<String>,
}

/// The converted model's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Int8Report {
    /// On the reference interpreter.
    pub int8_acc: f64,
    pub jit_int8_acc: f64,
    #[serde(skip)]
    pub jit_b1_us: f64,
    pub qmodel_bytes: usize,
    /// Bytes of int8 weights plus their i32 biases and f32 scales (float layers at 4 bytes).
    pub int8_weight_bytes: usize,
}

impl TrainRun {
    /// Loads the data, builds the network and makes the output folder (checking that it can
    /// be written): everything that can fail before training.
    pub fn prepare(mut spec: SpecFile, options: &TrainOptions) -> Result<TrainRun, Error> {
        let mut cfg = spec.train_config("nothing to train")?;
        // The command line's overrides, shown in the model's table as what will run.
        if let Some(seed) = options.seed {
            cfg.seed = seed;
        }
        if let Some(lr) = options.lr {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(Error::new(
                    Stage::Train,
                    format!("--lr must be a positive number, not {lr}"),
                ));
            }
            cfg.optimizer.set_lr(lr);
        }
        if let Some(dir) = &options.data {
            cfg.data = Some(super::data_folder(cfg.data.take(), dir)?);
        }
        let epochs = options.epochs.unwrap_or(cfg.epochs);
        cfg.epochs = epochs;
        spec.model.train = Some(cfg.clone());
        if epochs == 0 {
            return Err(Error::new(Stage::Train, "--epochs must be at least 1"));
        }
        if spec.model.backend.is_some() && epochs <= cfg.pretrain_epochs {
            return Err(Error::new(
                Stage::Train,
                format!(
                    "{} would all be float pretraining (`pretrain: {}`): nothing would observe the \
                     activations, so the model could not be converted. Train for at least {} epochs",
                    crate::diag::count(epochs, "epoch"),
                    crate::diag::count(cfg.pretrain_epochs, "epoch"),
                    cfg.pretrain_epochs + 1
                ),
            ));
        }
        let data = spec.data(&cfg)?;
        let net = spec.net(&cfg)?;
        let dir = options
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&spec.model.name));
        create_dir(&dir)?;
        Ok(TrainRun {
            spec,
            cfg,
            data,
            net,
            epochs,
            dir,
        })
    }

    /// Trains, converts and compiles, and writes the run folder.
    pub fn run(mut self, progress: &mut dyn Progress) -> Result<TrainReport, Error> {
        let model = &self.spec.model;
        let quantized = model.backend.is_some();
        let outcome =
            crate::train::train(&mut self.net, &self.data, &self.cfg, self.epochs, progress);
        let mut files = Vec::new();
        let mut write = |name: &str, bytes: &[u8]| {
            write_file(&self.dir, name, bytes)?;
            files.push(name.to_string());
            Ok::<_, Error>(())
        };
        progress.stage("writing the checkpoint");
        let checkpoint = self
            .spec
            .checkpoint_bytes(&self.net, ("epochs", self.epochs.to_string()))?;
        write("checkpoint.safetensors", &checkpoint)?;
        write(
            "metrics.csv",
            crate::train::report::metrics_csv(&outcome.epochs).as_bytes(),
        )?;
        let int8 = if quantized {
            progress.stage("converting to int8");
            let graph = crate::convert::convert(&self.net.graph, &self.net.state)
                .map_err(Error::at(Stage::Convert))?;
            progress.stage("evaluating int8 on the reference interpreter");
            let int8_acc = int8_accuracy(&graph, &self.data.test, &self.cfg.normalization)?;
            let bytes = crate::qmodel::to_bytes(&graph, &self.spec.qmodel_info(&self.cfg))
                .map_err(Error::at(Stage::Write))?;
            write("model.qmodel", &bytes)?;
            // Compile it and measure the native code on the same test set.
            progress.stage("compiling to native code and evaluating it");
            let int8_weight_bytes = graph.weight_bytes();
            let jit = crate::jit::Model::from_graph(graph)
                .and_then(|m| m.compile())
                .map_err(Error::at(Stage::Compile))?;
            let classes = jit.output_size();
            let jit_acc =
                crate::data::accuracy(&self.data.test, &self.cfg.normalization, classes, |x, _| {
                    jit.run(x)
                })
                .map_err(Error::at(Stage::Run))?;
            Some(Int8Report {
                int8_acc: round2(int8_acc as f64),
                jit_int8_acc: round2(jit_acc as f64),
                jit_b1_us: round2(crate::bench::latency_us(&jit, 1000)),
                qmodel_bytes: bytes.len(),
                int8_weight_bytes,
            })
        } else {
            None
        };
        let acc = |v: f32| round2(v as f64);
        let mut report = TrainReport {
            model: model.name.clone(),
            epochs: outcome.epochs.len(),
            quantized,
            test_acc: acc(outcome.final_acc),
            fake_quant_acc: quantized.then(|| acc(outcome.final_acc)),
            float_acc: outcome.float_acc.map(acc),
            train_images_per_s: outcome.train_images_per_s.round() as f64,
            per_epoch: outcome.epochs.clone(),
            test_images: self.data.test.len(),
            checkpoint_bytes: checkpoint.len(),
            float_weight_bytes: self
                .net
                .params_mut()
                .iter()
                .map(|p| 4 * p.value.len())
                .sum(),
            int8,
            dir: self.dir.clone(),
            files: Vec::new(),
        };
        #[cfg(feature = "plot")]
        {
            let svg = crate::train::report::curves_svg(&model.name, &outcome.epochs)
                .map_err(|e| Error::new(Stage::Write, format!("plot: {e}")))?;
            write("curves.svg", svg.as_bytes())?;
        }
        files.push("summary.json".into());
        report.files = files;
        let json = serde_json::to_string_pretty(&report).map_err(Error::at(Stage::Write))?;
        write_file(&self.dir, "summary.json", format!("{json}\n").as_bytes())?;
        Ok(report)
    }
}
