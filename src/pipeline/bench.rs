//! `qatc bench` (inference) and `qatc bench-train` (training throughput).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{round2, Error, SpecFile, Stage};
use crate::jit::DotProduct;

/// How to measure inference.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Batch sizes: 1 measures latency on one thread, larger ones throughput on all threads.
    pub batches: Vec<usize>,
    /// Threads of the current pool (reported, not set here).
    pub threads: usize,
    /// A forced dot-product form (`None`: this CPU's best).
    pub dot: Option<DotProduct>,
    /// Keep every GEMM in 128-bit code ([`crate::jit::Options::narrow`]).
    pub narrow: bool,
    /// Also time the reference interpreter (slow: it dominates the bench's run time).
    pub reference: bool,
    /// Also time every layer at batch 1.
    pub layers: bool,
}

/// One batch size's figures: µs per call at batch 1, images/s above.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub batch: usize,
    pub jit: f64,
    /// The reference interpreter, when measured.
    pub reference: Option<f64>,
    /// `us` or `img_s`.
    pub unit: &'static str,
    /// Achieved GMAC/s: of the one thread at batch 1, per core (total / threads) above.
    pub gmacs: f64,
    /// `gmacs` as a percentage of the form's peak on one core.
    pub peak_pct: f64,
}

/// One layer's share of a batch-1 call.
#[derive(Clone, Debug, Serialize)]
pub struct LayerBench {
    pub name: String,
    pub op: String,
    pub macs: usize,
    pub us: f64,
    pub gmacs: f64,
}

/// What `qatc bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    /// Median of five compilations.
    pub compile_ms: f64,
    pub dot: String,
    /// Multiply-accumulates per sample.
    pub macs: usize,
    /// The dot-product form's peak on one core of this CPU, measured in the same run
    /// ([`crate::jit::peak`]).
    pub peak_gmacs: f64,
    pub rows: Vec<BenchRow>,
    /// Per layer at batch 1, when asked for.
    pub layers: Vec<LayerBench>,
}

impl BenchReport {
    /// The flat JSON object `qatc bench --json` prints: `jit_b1_us`, `jit_b1_gmacs`,
    /// `jit_b256_img_s`, `jit_b256_gmacs_per_core`, `ref_b256_img_s` (when measured),
    /// `peak_gmacs`, `layers`, ...
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        out.insert("model".into(), self.model.clone().into());
        out.insert("threads".into(), self.threads.into());
        out.insert("compile_ms".into(), self.compile_ms.into());
        out.insert("dot".into(), self.dot.clone().into());
        out.insert("macs".into(), self.macs.into());
        out.insert("peak_gmacs".into(), self.peak_gmacs.into());
        for r in &self.rows {
            out.insert(format!("jit_b{}_{}", r.batch, r.unit), r.jit.into());
            let gmacs = if r.batch == 1 {
                "jit_b1_gmacs".to_string()
            } else {
                format!("jit_b{}_gmacs_per_core", r.batch)
            };
            out.insert(gmacs, r.gmacs.into());
            out.insert(format!("jit_b{}_peak_pct", r.batch), r.peak_pct.into());
            if let Some(reference) = r.reference {
                out.insert(format!("ref_b{}_{}", r.batch, r.unit), reference.into());
            }
        }
        if !self.layers.is_empty() {
            out.insert(
                "layers".into(),
                serde_json::to_value(&self.layers).unwrap_or_default(),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// The peak GMAC/s of `dot` on one core: the median of five timed runs of its peak loop, each
/// long enough (about 20 ms) to time well.
pub fn peak_gmacs(dot: Option<DotProduct>) -> Result<(DotProduct, f64), Error> {
    let peak = crate::jit::peak::PeakLoop::compile(dot).map_err(Error::at(Stage::Compile))?;
    let mut iterations = 1u64 << 12;
    loop {
        let start = std::time::Instant::now();
        std::hint::black_box(peak.run(iterations));
        if start.elapsed().as_secs_f64() > 0.02 || iterations >= 1 << 36 {
            break;
        }
        iterations *= 2;
    }
    let t = crate::bench::median_time(1, 5, || {
        std::hint::black_box(peak.run(iterations));
    });
    Ok((
        peak.dot_product(),
        peak.macs(iterations) / t.as_secs_f64().max(1e-12) / 1e9,
    ))
}

/// Compiles a `.qmodel` five times (the median compile time), measures this CPU's peak for its
/// dot-product form, and times the JIT (and the reference interpreter, when asked) at each
/// batch size, and every layer at batch 1 when asked.
pub fn bench(model_path: &Path, options: &BenchOptions) -> Result<BenchReport, Error> {
    if options.batches.contains(&0) {
        return Err(Error::new(Stage::Run, "--batch sizes must be at least 1"));
    }
    let model = crate::jit::Model::load(model_path).map_err(Error::at(Stage::Read))?;
    let jit_options = crate::jit::Options {
        dot_product: options.dot,
        listing: false,
        u8_entry: false,
        narrow: options.narrow,
    };
    let mut compile_times = Vec::new();
    let mut compiled = None;
    for _ in 0..5 {
        let (c, _) = model
            .compile_with(&jit_options)
            .map_err(Error::at(Stage::Compile))?;
        compile_times.push(c.compile_time());
        compiled = Some(c);
    }
    let Some(compiled) = compiled else {
        return Err(Error::new(Stage::Compile, "nothing compiled"));
    };
    compile_times.sort();
    let (_, peak) = peak_gmacs(Some(compiled.dot_product()))?;
    let graph = model.graph();
    let macs = graph.macs();
    let size = model.input_size();
    let threads = options.threads.max(1);
    let mut rows = Vec::new();
    for &b in &options.batches {
        let row = if b == 1 {
            let jit = crate::bench::latency_us(&compiled, 2000);
            let reference = if options.reference {
                let x = crate::bench::inputs(size);
                crate::interp::run(graph, &x, 1).map_err(Error::at(Stage::Run))?;
                let r = crate::bench::median_time(3, 100, || {
                    let _ = crate::interp::run(graph, &x, 1);
                });
                Some(round2(r.as_secs_f64() * 1e6))
            } else {
                None
            };
            let gmacs = macs as f64 / (jit * 1e-6) / 1e9;
            (jit, reference, "us", gmacs)
        } else {
            let mut y = vec![0.0; b * compiled.output_size()];
            let x = crate::bench::inputs(size * b);
            compiled
                .run_into(&x, &mut y)
                .map_err(Error::at(Stage::Run))?;
            let jit = crate::bench::throughput(size, b, 50, |x| {
                let _ = compiled.run_into(x, &mut y);
            });
            let reference = options.reference.then(|| {
                round2(crate::bench::throughput(size, b, 5, |x| {
                    let _ = crate::interp::run(graph, x, b);
                }))
            });
            let gmacs = jit * macs as f64 / threads as f64 / 1e9;
            (jit, reference, "img_s", gmacs)
        };
        let (jit, reference, unit, gmacs) = row;
        rows.push(BenchRow {
            batch: b,
            jit: round2(jit),
            reference,
            unit,
            gmacs: round2(gmacs),
            peak_pct: round2(100.0 * gmacs / peak),
        });
    }
    let layers = if options.layers {
        layer_times(&model, &jit_options)?
    } else {
        Vec::new()
    };
    Ok(BenchReport {
        model: graph.name.clone(),
        threads: options.threads,
        compile_ms: round2(compile_times[compile_times.len() / 2].as_secs_f64() * 1e3),
        dot: compiled.dot_product().to_string(),
        macs,
        peak_gmacs: round2(peak),
        rows,
        layers,
    })
}

/// Every layer's batch-1 time, from the model compiled to time its nodes
/// ([`crate::jit::profile`]): the mean over many calls of the time between a node's start and
/// the next node's, on the calling thread.
fn layer_times(
    model: &crate::jit::Model,
    options: &crate::jit::Options,
) -> Result<Vec<LayerBench>, Error> {
    let compiled = model
        .compile_profiled(options)
        .map_err(Error::at(Stage::Compile))?;
    let graph = model.graph();
    let x = crate::bench::inputs(compiled.input_size());
    let mut y = vec![0.0; compiled.output_size()];
    for _ in 0..200 {
        compiled
            .run_into(&x, &mut y)
            .map_err(Error::at(Stage::Run))?;
    }
    let runs = 2000;
    crate::jit::profile::start(graph.nodes.len());
    for _ in 0..runs {
        compiled
            .run_into(&x, &mut y)
            .map_err(Error::at(Stage::Run))?;
    }
    let totals = crate::jit::profile::totals();
    Ok(graph
        .nodes
        .iter()
        .zip(totals)
        .skip(1)
        .map(|(node, total)| {
            let us = total.as_secs_f64() * 1e6 / runs as f64;
            let macs = node.macs();
            LayerBench {
                name: node.name.clone(),
                op: node.op.mnemonic().to_string(),
                macs,
                us: round2(us),
                gmacs: if us > 0.0 {
                    round2(macs as f64 / (us * 1e-6) / 1e9)
                } else {
                    0.0
                },
            }
        })
        .collect())
}

/// Training throughput of one spec: images/s per epoch.
#[derive(Clone, Debug, Serialize)]
pub struct TrainBench {
    pub spec: PathBuf,
    pub threads: usize,
    pub epochs: usize,
    pub median_images_per_s: f64,
    pub min_images_per_s: f64,
    pub max_images_per_s: f64,
    pub fake_quant_acc: f32,
    /// With `profile`: where the time went, over all epochs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::train::profile::Profile>,
}

/// Trains `spec` for `epochs` epochs (nothing written) and reports images/s per epoch.
pub fn bench_train(
    spec_path: &Path,
    epochs: usize,
    threads: usize,
    profile: bool,
) -> Result<TrainBench, Error> {
    if epochs == 0 {
        return Err(Error::new(Stage::Train, "--epochs must be at least 1"));
    }
    let spec = SpecFile::load(spec_path)?;
    let cfg = spec.train_config("nothing to train")?;
    let data = spec.data(&cfg)?;
    let mut net =
        crate::train::build_net(&spec.model, cfg.seed).map_err(Error::at(Stage::Train))?;
    if profile {
        net.profile = Some(crate::train::profile::Profile {
            peak: Some(crate::train::peak::fp32_peak()),
            ..crate::train::profile::Profile::new(&net.graph)
        });
    }
    let outcome = crate::train::train(&mut net, &data, &cfg, epochs, &mut crate::train::Quiet);
    let mut rates: Vec<f32> = outcome.epochs.iter().map(|e| e.images_per_s).collect();
    rates.sort_by(f32::total_cmp);
    let (Some(min), Some(max)) = (rates.first(), rates.last()) else {
        return Err(Error::new(Stage::Train, "no epoch ran"));
    };
    Ok(TrainBench {
        spec: spec_path.to_path_buf(),
        threads,
        epochs,
        median_images_per_s: rates[rates.len() / 2].round() as f64,
        min_images_per_s: min.round() as f64,
        max_images_per_s: max.round() as f64,
        fake_quant_acc: outcome.final_acc,
        profile: net.profile.take(),
    })
}
