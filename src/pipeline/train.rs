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
    /// Continues the run in this folder from its last completed epoch (its checkpoint and
    /// `train_state.safetensors`); the run's files stay there.
    pub resume: Option<PathBuf>,
}

/// The file beside the checkpoint with what resuming needs besides the network's state.
pub const TRAIN_STATE: &str = "train_state.safetensors";
const RESUME_KEY: &str = "qatc.resume";

/// A training run whose spec, data and network are ready.
pub struct TrainRun {
    pub spec: SpecFile,
    pub cfg: TrainConfig,
    pub data: Splits,
    pub net: Net,
    pub epochs: usize,
    pub dir: PathBuf,
    /// Where a resumed run starts.
    pub resume: Option<crate::train::Resume>,
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
        let mut data = spec.data(&cfg)?;
        if let Some(fraction) = cfg.validation {
            data.hold_out_validation(fraction);
        }
        let net = spec.net(&cfg)?;
        let dir = options
            .resume
            .clone()
            .or_else(|| options.out.clone())
            .unwrap_or_else(|| PathBuf::from("runs").join(&spec.model.name));
        create_dir(&dir)?;
        let mut net = net;
        let resume = match &options.resume {
            Some(from) => Some(load_resume(&spec, &mut net, from, epochs)?),
            None => None,
        };
        Ok(TrainRun {
            spec,
            cfg,
            data,
            net,
            epochs,
            dir,
            resume,
        })
    }

    /// Trains, converts and compiles, and writes the run folder.
    pub fn run(self, progress: &mut dyn Progress) -> Result<TrainReport, Error> {
        self.run_until(progress, &std::sync::atomic::AtomicBool::new(false))
    }

    /// [`TrainRun::run`], stopping before the next batch once `stop` is set (Ctrl-C): the epoch
    /// in progress is abandoned, and the folder keeps the last completed epoch's checkpoint,
    /// `train_state.safetensors` and `metrics.csv` (written, atomically, after every epoch), from
    /// which `TrainOptions::resume` continues with the same result as a run never stopped.
    pub fn run_until(
        mut self,
        progress: &mut dyn Progress,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<TrainReport, Error> {
        let model = &self.spec.model;
        let quantized = model.backend.is_some();
        let run = crate::train::Run {
            epochs: self.epochs,
            resume: self.resume.take(),
            stop,
        };
        let (spec, dir) = (&self.spec, &self.dir);
        // The last epoch's files are the run's: they are not written again at the end.
        let mut checkpoint_bytes = 0;
        let mut save = |net: &Net, resume: &crate::train::Resume| -> Result<(), String> {
            checkpoint_bytes = save_epoch(spec, dir, net, resume).map_err(|e| e.message)?;
            Ok(())
        };
        let outcome = crate::train::train_run(
            &mut self.net,
            &self.data,
            &self.cfg,
            run,
            progress,
            &mut save,
        )
        .map_err(|stopped| match stopped {
            crate::train::Stopped::Interrupted { epochs_done: 0 } => Error::new(
                Stage::Train,
                "interrupted during the first epoch: nothing was saved",
            ),
            crate::train::Stopped::Interrupted { epochs_done } => Error::new(
                Stage::Train,
                format!(
                    "interrupted during epoch {}; {} holds the state after epoch {epochs_done}. \
                     Continue with: qatc train {} --resume {}",
                    epochs_done + 1,
                    self.dir.display(),
                    self.spec.path.display(),
                    self.dir.display()
                ),
            ),
            crate::train::Stopped::Hook(e) => Error::new(Stage::Write, e),
        })?;
        // Written after every epoch (by `save_epoch`).
        let mut files: Vec<String> = [TRAIN_STATE, "checkpoint.safetensors", "metrics.csv"]
            .map(String::from)
            .to_vec();
        let mut write = |name: &str, bytes: &[u8]| {
            write_file(&self.dir, name, bytes)?;
            files.push(name.to_string());
            Ok::<_, Error>(())
        };
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
            checkpoint_bytes,
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
            let marks = crate::train::report::PlotMarks {
                qat_from: quantized.then_some(self.cfg.pretrain_epochs),
                freeze_bn_after: self.cfg.freeze_bn_after,
                freeze_observers_after: self.cfg.freeze_observers_after,
                int8_acc: report.int8.as_ref().map(|q| q.int8_acc),
            };
            let svg = crate::train::report::curves_svg(&model.name, &outcome.epochs, marks)
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

/// After an epoch: the checkpoint, the state to resume from, and the metrics so far, each
/// written atomically. Returns the checkpoint's size.
fn save_epoch(
    spec: &SpecFile,
    dir: &std::path::Path,
    net: &Net,
    resume: &crate::train::Resume,
) -> Result<usize, Error> {
    let epochs = spec.model.train.as_ref().map_or(0, |t| t.epochs);
    let checkpoint = spec.checkpoint_bytes(net, ("epochs", epochs.to_string()))?;
    write_file(dir, "checkpoint.safetensors", &checkpoint)?;
    let json = serde_json::to_string(resume).map_err(Error::at(Stage::Write))?;
    let buffers = resume
        .optimizer_m
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("optimizer.{i}.m"), vec![m.len()], m.clone()))
        .chain(
            resume
                .optimizer_v
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("optimizer.{i}.v"), vec![v.len()], v.clone())),
        )
        .collect();
    let metadata = std::collections::HashMap::from([
        (RESUME_KEY.to_string(), json),
        ("spec".to_string(), spec.text.clone()),
    ]);
    let state = crate::state::checkpoint::tensors_to_bytes(buffers, metadata)
        .map_err(Error::at(Stage::Write))?;
    write_file(dir, TRAIN_STATE, &state)?;
    write_file(
        dir,
        "metrics.csv",
        crate::train::report::metrics_csv(&resume.stats).as_bytes(),
    )?;
    Ok(checkpoint.len())
}

/// Loads the run in `dir` into `net` (its checkpoint) and returns where it resumes. The run must
/// come from the same spec, and have epochs left to train.
fn load_resume(
    spec: &SpecFile,
    net: &mut Net,
    dir: &std::path::Path,
    epochs: usize,
) -> Result<crate::train::Resume, Error> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| {
            Error::new(
                Stage::Read,
                format!(
                    "cannot resume from {}: {}: {e} (a run folder has it after its first epoch)",
                    dir.display(),
                    path.display()
                ),
            )
        })
    };
    let bad = |what: String| {
        Error::new(
            Stage::Read,
            format!("cannot resume from {}: {what}", dir.display()),
        )
    };
    let state = read(TRAIN_STATE)?;
    let file = safetensors::SafeTensors::deserialize(&state)
        .map_err(|e| bad(format!("{TRAIN_STATE} is not a valid file: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&state)
        .map_err(|e| bad(format!("{TRAIN_STATE}: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("spec") != Some(&spec.text) {
        return Err(bad(format!(
            "it was trained from a different spec than {} (resuming continues the same run; \
             start a new one with --out)",
            spec.path.display()
        )));
    }
    let mut resume: crate::train::Resume = meta
        .get(RESUME_KEY)
        .ok_or_else(|| bad(format!("{TRAIN_STATE} has no `{RESUME_KEY}`")))
        .and_then(|json| {
            serde_json::from_str(json).map_err(|e| bad(format!("{TRAIN_STATE}: {e}")))
        })?;
    if resume.epochs_done >= epochs {
        return Err(bad(format!(
            "it has trained {} of {epochs} already; give more with --epochs",
            crate::diag::count(resume.epochs_done, "epoch")
        )));
    }
    let buffer = |name: String| -> Result<Vec<f32>, Error> {
        let t = file
            .tensor(&name)
            .map_err(|_| bad(format!("{TRAIN_STATE} has no `{name}`")))?;
        crate::state::checkpoint::f32_values(&t).map_err(|e| bad(format!("`{name}` {e}")))
    };
    let params = net.params_mut().len();
    let step = resume.optimizer_step;
    let stored = file.names().iter().filter(|n| n.ends_with(".m")).count();
    if stored > 0 || step > 0 {
        resume.optimizer_m = (0..params)
            .map(|i| buffer(format!("optimizer.{i}.m")))
            .collect::<Result<_, _>>()?;
        resume.optimizer_v = (0..params)
            .map(|i| buffer(format!("optimizer.{i}.v")))
            .collect::<Result<_, _>>()?;
    }
    let checkpoint = read("checkpoint.safetensors")?;
    crate::state::checkpoint::load(&net.graph, &mut net.state, &checkpoint)
        .map_err(|e| bad(format!("checkpoint.safetensors: {e}")))?;
    Ok(resume)
}
