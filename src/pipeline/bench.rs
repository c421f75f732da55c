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
}

/// One batch size's figures: µs per call at batch 1, images/s above.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub batch: usize,
    pub jit: f64,
    pub reference: f64,
    /// `us` or `img_s`.
    pub unit: &'static str,
}

/// What `qatc bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    /// Median of five compilations.
    pub compile_ms: f64,
    pub dot: String,
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    /// The flat JSON object `qatc bench --json` prints: `jit_b1_us`, `ref_b256_img_s`, ...
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        out.insert("model".into(), self.model.clone().into());
        out.insert("threads".into(), self.threads.into());
        out.insert("compile_ms".into(), self.compile_ms.into());
        out.insert("dot".into(), self.dot.clone().into());
        for r in &self.rows {
            out.insert(format!("jit_b{}_{}", r.batch, r.unit), r.jit.into());
            out.insert(format!("ref_b{}_{}", r.batch, r.unit), r.reference.into());
        }
        serde_json::Value::Object(out)
    }
}

/// Compiles a `.qmodel` five times (the median compile time) and measures the JIT and the
/// reference interpreter at each batch size.
pub fn bench(model_path: &Path, options: &BenchOptions) -> Result<BenchReport, Error> {
    if options.batches.contains(&0) {
        return Err(Error::new(Stage::Run, "--batch sizes must be at least 1"));
    }
    let model = crate::jit::Model::load(model_path).map_err(Error::at(Stage::Read))?;
    let jit_options = crate::jit::Options {
        dot_product: options.dot,
        listing: false,
        u8_entry: false,
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
    let graph = model.graph();
    let size = model.input_size();
    let mut rows = Vec::new();
    for &b in &options.batches {
        let row = if b == 1 {
            let jit = crate::bench::latency_us(&compiled, 2000);
            let x = crate::bench::inputs(size);
            crate::interp::run(graph, &x, 1).map_err(Error::at(Stage::Run))?;
            let r = crate::bench::median_time(3, 100, || {
                let _ = crate::interp::run(graph, &x, 1);
            });
            BenchRow {
                batch: b,
                jit,
                reference: r.as_secs_f64() * 1e6,
                unit: "us",
            }
        } else {
            let mut y = vec![0.0; b * compiled.output_size()];
            let x = crate::bench::inputs(size * b);
            compiled
                .run_into(&x, &mut y)
                .map_err(Error::at(Stage::Run))?;
            let jit = crate::bench::throughput(size, b, 50, |x| {
                let _ = compiled.run_into(x, &mut y);
            });
            let reference = crate::bench::throughput(size, b, 5, |x| {
                let _ = crate::interp::run(graph, x, b);
            });
            BenchRow {
                batch: b,
                jit,
                reference,
                unit: "img_s",
            }
        };
        rows.push(BenchRow {
            jit: round2(row.jit),
            reference: round2(row.reference),
            ..row
        });
    }
    Ok(BenchReport {
        model: graph.name.clone(),
        threads: options.threads,
        compile_ms: round2(compile_times[compile_times.len() / 2].as_secs_f64() * 1e3),
        dot: format!("{:?}", compiled.dot_product()),
        rows,
    })
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
}

/// Trains `spec` for `epochs` epochs (nothing written) and reports images/s per epoch.
pub fn bench_train(spec_path: &Path, epochs: usize, threads: usize) -> Result<TrainBench, Error> {
    if epochs == 0 {
        return Err(Error::new(Stage::Train, "--epochs must be at least 1"));
    }
    let spec = SpecFile::load(spec_path)?;
    let cfg = spec.train_config("nothing to train")?;
    let data = spec.data(&cfg)?;
    let mut net =
        crate::train::build_net(&spec.model, cfg.seed).map_err(Error::at(Stage::Train))?;
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
    })
}
