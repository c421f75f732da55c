//! Training: forward/backward over the prepared IR ([`engine`]), optimizers ([`optim`]) and the
//! epoch loop ([`train`]), with PyTorch's QAT schedule (float pretraining, then fake quant;
//! frozen BatchNorm statistics and observers after given epochs).
//!
//! The loop never prints: it reports through [`Progress`], and the CLI draws the bars.

mod buffers;
mod direct;
pub mod engine;
mod gemm;
pub mod kernels;
pub mod optim;
pub mod peak;
pub mod profile;
pub mod report;
pub mod rng;
pub mod torch_rng;

use std::time::Instant;

use std::sync::atomic::{AtomicBool, Ordering};

use engine::{Mode, Net};
use rng::Rng;
use torch_rng::TorchGenerator;

use crate::check::TrainConfig;
use crate::data::Normalization;
use crate::data::{Dataset, Splits};

/// Whether an epoch trains plain float or with fake quantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Float,
    Qat,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Float => "float",
            Phase::Qat => "qat",
        }
    }
}

/// One epoch's figures. Accuracies in percent.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    pub phase: Phase,
    pub lr: f64,
    pub train_loss: f32,
    pub train_acc: f32,
    /// On the validation set when the spec holds one out (`validation`), else on the test set.
    pub test_acc: f32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_validation: bool,
    /// Measured, so it differs between runs: printed, not written to the run's files.
    #[serde(skip)]
    pub images_per_s: f32,
}

/// What a whole run produced.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub epochs: Vec<EpochStats>,
    /// Test accuracy of the float model at the end of float pretraining, when it ran.
    pub float_acc: Option<f32>,
    /// Test accuracy at the end (with fake quantization for a quantized model).
    pub final_acc: f32,
    /// Training images per second over the whole run (evaluation excluded).
    pub train_images_per_s: f32,
}

/// Receives progress while training.
pub trait Progress {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _phase: Phase, _batches: usize) {}
    fn batch_done(&mut self, _loss: f32, _images: usize) {}
    fn epoch_end(&mut self, _stats: &EpochStats) {}
    /// Work after the last epoch (converting, evaluating, compiling), as a phrase: `converting
    /// to int8`.
    fn stage(&mut self, _what: &str) {}
}

/// Ignores all progress.
pub struct Quiet;

impl Progress for Quiet {}

/// Trains `net` on `data` as `cfg` says, for `epochs` epochs.
pub fn train(
    net: &mut Net,
    data: &Splits,
    cfg: &TrainConfig,
    epochs: usize,
    progress: &mut dyn Progress,
) -> TrainOutcome {
    let never = AtomicBool::new(false);
    let run = Run {
        epochs,
        resume: None,
        stop: &never,
    };
    match train_run(net, data, cfg, run, progress, &mut |_, _| Ok(())) {
        Ok(outcome) => outcome,
        Err(stop) => unreachable!("a run without a stop flag or an epoch hook stopped: {stop:?}"),
    }
}

/// How a run goes: its length, where it starts, and the flag that interrupts it (Ctrl-C).
pub struct Run<'a> {
    pub epochs: usize,
    /// Continue a run from the end of one of its epochs.
    pub resume: Option<Resume>,
    /// Set from outside (a signal handler): the run stops before its next batch, abandoning the
    /// epoch it is in.
    pub stop: &'a AtomicBool,
}

/// Why a run stopped before its last epoch.
#[derive(Debug)]
pub enum Stopped {
    /// The stop flag was set during epoch `epochs_done + 1`, which was abandoned.
    Interrupted { epochs_done: usize },
    /// The epoch hook failed (writing the epoch's files).
    Hook(String),
}

/// What resuming a run needs besides the network's state (its checkpoint): where it is, the
/// figures so far, the random streams and the optimizer's buffers. With them, a resumed run
/// gives the same bytes as one that was never stopped.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Resume {
    /// Epochs completed.
    pub epochs_done: usize,
    pub stats: Vec<EpochStats>,
    pub float_acc: Option<f32>,
    /// The torch generator (batch order): its 624 words and position.
    pub generator: (Vec<u32>, usize),
    /// Dropout's generator.
    pub dropout: [u64; 4],
    pub optimizer_step: u32,
    /// Optimizer buffers, one per parameter (kept out of the JSON: the caller stores them as
    /// tensors).
    #[serde(skip)]
    pub optimizer_m: Vec<Vec<f32>>,
    #[serde(skip)]
    pub optimizer_v: Vec<Vec<f32>>,
}

/// Trains as `run` says, calling `each_epoch` after every completed epoch with the network and
/// the state to resume from there.
pub fn train_run(
    net: &mut Net,
    data: &Splits,
    cfg: &TrainConfig,
    run: Run,
    progress: &mut dyn Progress,
    each_epoch: &mut dyn FnMut(&Net, &Resume) -> Result<(), String>,
) -> Result<TrainOutcome, Stopped> {
    let epochs = run.epochs;
    let quantized = net.graph.nodes.iter().any(|n| n.qconfig.is_some());
    // Dropout's masks; the batch order comes from the network's torch-compatible generator.
    let mut rng = Rng::new(cfg.seed.wrapping_add(1));
    let mut optimizer = optim::Optimizer::new(cfg.optimizer.clone());
    let mut stats = Vec::new();
    let mut float_acc = None;
    let mut first = 0;
    if let Some(r) = run.resume {
        net.generator = TorchGenerator::restore(&r.generator.0, r.generator.1)
            .ok_or_else(|| Stopped::Hook("the saved batch-order generator is malformed".into()))?;
        rng = Rng::restore(r.dropout);
        optimizer
            .restore(
                r.optimizer_m,
                r.optimizer_v,
                r.optimizer_step,
                &net.params_mut(),
            )
            .map_err(Stopped::Hook)?;
        (stats, float_acc, first) = (r.stats, r.float_acc, r.epochs_done);
    }
    let n = data.train.len();
    let batches = n.div_ceil(cfg.batch);
    let mut total_images = 0usize;
    let mut total_seconds = 0f64;
    let mut reused = StepBuffers::default();

    for epoch in first..epochs {
        let phase = if quantized && epoch >= cfg.pretrain_epochs {
            Phase::Qat
        } else {
            Phase::Float
        };
        let mode = Mode {
            training: true,
            fake_quant: phase == Phase::Qat,
            observe: phase == Phase::Qat
                && cfg.freeze_observers_after.is_none_or(|after| epoch < after),
            bn_frozen: cfg.freeze_bn_after.is_some_and(|after| epoch >= after),
            // Learnable fake quants follow their observers until observers freeze, or, with no
            // `freeze_observers`, through the first epoch of fake quantization.
            static_qparams: phase == Phase::Qat
                && cfg
                    .freeze_observers_after
                    .map_or(epoch == cfg.pretrain_epochs, |after| epoch < after),
        };
        let lr = optim::learning_rate(optimizer.base_lr(), cfg.schedule.as_ref(), epoch, epochs);
        progress.epoch_start(epoch + 1, epochs, phase, batches);
        let order = net.generator.randperm(n);
        let started = Instant::now();
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        for chunk in order.chunks(cfg.batch) {
            if run.stop.load(Ordering::Relaxed) {
                return Err(Stopped::Interrupted { epochs_done: epoch });
            }
            let batch = (&data.train, chunk, &cfg.normalization);
            let (loss, right) = train_step(
                net,
                (&mut optimizer, &mut rng),
                batch,
                (mode, lr as f32),
                &mut reused,
            );
            loss_sum += loss as f64 * chunk.len() as f64;
            correct += right;
            progress.batch_done(loss, chunk.len());
        }
        let seconds = started.elapsed().as_secs_f64();
        total_images += n;
        total_seconds += seconds;
        // Each epoch is measured on the validation set when there is one; the test set is for
        // the headline figures (after pretraining, and at the end).
        let measured = data.validation.as_ref().unwrap_or(&data.test);
        let t = net.profile.is_some().then(Instant::now);
        let test_acc = evaluate(net, measured, cfg, phase == Phase::Qat);
        profile::add(net.profile.as_mut().map(|p| &mut p.evaluation_s), t);
        if let Some(p) = net.profile.as_mut() {
            p.images += n;
            p.epochs += 1;
        }
        if quantized && cfg.pretrain_epochs > 0 && epoch + 1 == cfg.pretrain_epochs {
            float_acc = Some(match &data.validation {
                Some(_) => evaluate(net, &data.test, cfg, false),
                None => test_acc,
            });
        }
        let s = EpochStats {
            epoch: epoch + 1,
            phase,
            lr,
            train_loss: (loss_sum / n as f64) as f32,
            train_acc: 100.0 * correct as f32 / n as f32,
            test_acc,
            on_validation: data.validation.is_some(),
            images_per_s: (n as f64 / seconds) as f32,
        };
        progress.epoch_end(&s);
        stats.push(s);
        let (m, v, step) = optimizer.save();
        let resume = Resume {
            epochs_done: epoch + 1,
            stats: stats.clone(),
            float_acc,
            generator: net.generator.save(),
            dropout: rng.save(),
            optimizer_step: step,
            optimizer_m: m.to_vec(),
            optimizer_v: v.to_vec(),
        };
        each_epoch(net, &resume).map_err(Stopped::Hook)?;
    }
    let final_acc = match (stats.last(), &data.validation) {
        (Some(s), None) => s.test_acc,
        _ => evaluate(net, &data.test, cfg, quantized),
    };
    Ok(TrainOutcome {
        epochs: stats,
        float_acc,
        final_acc,
        train_images_per_s: (total_images as f64 / total_seconds.max(1e-9)) as f32,
    })
}

/// The buffers [`train_step`] reuses from batch to batch: the batch's images and labels, and
/// the loss gradient.
#[derive(Default)]
pub struct StepBuffers {
    x: Vec<f32>,
    labels: Vec<u8>,
    d_logits: Vec<f32>,
}

/// One step of training on images `chunk` of a dataset (normalized as given): forward, loss,
/// backward, one optimizer update at learning rate `lr` (dropout draws from `rng`). Returns the
/// batch's mean loss and how many images it got right. After the first batch (of each size) it
/// allocates nothing: every buffer is reused (tests/allocations.rs).
pub fn train_step(
    net: &mut Net,
    (optimizer, rng): (&mut optim::Optimizer, &mut Rng),
    (data, chunk, normalization): (&Dataset, &[usize], &Normalization),
    (mode, lr): (Mode, f32),
    reused: &mut StepBuffers,
) -> (f32, usize) {
    let StepBuffers {
        x,
        labels,
        d_logits,
    } = reused;
    let timer = |net: &Net| net.profile.is_some().then(Instant::now);
    let t = timer(net);
    data.batch(chunk, normalization, x, labels);
    profile::add(net.profile.as_mut().map(|p| &mut p.data_s), t);
    let tape = net.forward(x, chunk.len(), mode, rng);
    let t = timer(net);
    let classes = net.graph.nodes[net.graph.output].shape[0];
    let logits = tape.output(&net.graph);
    d_logits.resize(logits.len(), 0.0);
    let (loss, right) = kernels::softmax_cross_entropy(logits, labels, classes, d_logits);
    profile::add(net.profile.as_mut().map(|p| &mut p.loss_s), t);
    net.backward(&tape, d_logits);
    net.recycle(tape);
    let t = timer(net);
    optimizer.step(net.state.each_param_mut(), lr);
    profile::add(net.profile.as_mut().map(|p| &mut p.optimizer_s), t);
    (loss, right)
}

/// Test accuracy in percent, with fake quantization on or off. Nothing is updated.
pub fn evaluate(net: &mut Net, data: &Dataset, cfg: &TrainConfig, fake_quant: bool) -> f32 {
    // Its forward passes are not training's: a profile stops counting meanwhile.
    let profiling = net.profile.take();
    let acc = evaluate_quietly(net, data, cfg, fake_quant);
    net.profile = profiling;
    acc
}

fn evaluate_quietly(net: &mut Net, data: &Dataset, cfg: &TrainConfig, fake_quant: bool) -> f32 {
    let mut rng = Rng::new(0);
    let classes = net.graph.nodes[net.graph.output].shape[0];
    let run = |x: &[f32], n: usize| {
        let tape = net.forward(x, n, Mode::eval(fake_quant), &mut rng);
        let logits = tape.output(&net.graph).to_vec();
        net.recycle(tape);
        Ok::<_, std::convert::Infallible>(logits)
    };
    match crate::data::accuracy(data, &cfg.normalization, classes, run) {
        Ok(acc) => acc,
        Err(never) => match never {},
    }
}

/// The graph QAT trains: the checked model lowered to IR, through the QAT pass pipeline, with
/// fresh parameters from `seed`.
pub fn build_net(model: &crate::check::CheckedModel, seed: u64) -> Result<Net, String> {
    let graph = crate::check::lower(model);
    let stages = crate::passes::run(&graph, crate::passes::QAT_PIPELINE)?;
    let prepared = stages.into_iter().last().map_or(graph, |(_, g)| g);
    Ok(Net::new(prepared, seed))
}

/// Loads a spec's data (paths relative to `spec_dir`, then the working directory) and checks
/// that it fits the model: same values per sample, no label beyond the model's outputs.
pub fn load_data(
    model: &crate::check::CheckedModel,
    cfg: &TrainConfig,
    spec_dir: &std::path::Path,
) -> Result<Splits, String> {
    let splits = crate::data::load(data_source(cfg)?, spec_dir)?;
    check_fits(model, "training", &splits.train)?;
    check_fits(model, "test", &splits.test)?;
    Ok(splits)
}

/// The test data alone (evaluation reads no training files), checked as [`load_data`] does.
pub fn load_test_data(
    model: &crate::check::CheckedModel,
    cfg: &TrainConfig,
    spec_dir: &std::path::Path,
) -> Result<Dataset, String> {
    let test = crate::data::load_test(data_source(cfg)?, spec_dir)?;
    check_fits(model, "test", &test)?;
    Ok(test)
}

fn data_source(cfg: &TrainConfig) -> Result<&crate::syntax::ast::DataSource, String> {
    cfg.data.as_ref().ok_or_else(|| {
        "the `train` block names no data: add e.g. `data: mnist(\"data/mnist10k\")` to it".into()
    })
}

/// Whether a data set fits the model: same values per sample, no label beyond its outputs.
fn check_fits(
    model: &crate::check::CheckedModel,
    which: &str,
    set: &Dataset,
) -> Result<(), String> {
    let per_sample: usize = model.input.iter().product();
    let outputs: usize = model.layers[model.output].out_shape.iter().product();
    if set.is_empty() {
        return Err(format!("the {which} data is empty"));
    }
    if set.image_size() != per_sample {
        return Err(format!(
            "the {which} images are {:?} ({} values) but model `{}` takes input {:?} ({per_sample} values)",
            set.shape,
            set.image_size(),
            model.name,
            model.input
        ));
    }
    if set.classes() > outputs {
        return Err(format!(
            "the {which} labels go up to {} but model `{}` has {outputs} outputs",
            set.classes() - 1,
            model.name
        ));
    }
    if model.input.len() == 3 && model.input[0] != set.shape[0] {
        return Err(format!(
            "the {which} images have {}, the model expects {}",
            crate::diag::count(set.shape[0], "channel"),
            model.input[0]
        ));
    }
    Ok(())
}
