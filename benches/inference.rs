//! Inference speed of the JIT and the reference interpreter on every spec in specs/: batch-1
//! latency and batch-256 throughput (`cargo bench`; `qatc bench MODEL.qmodel` does the same for
//! one trained model). Weights are the specs' initial ones with observers calibrated on random
//! inputs: speed does not depend on their values.

use std::path::Path;

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn inference(c: &mut Criterion) {
    let mut specs: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("specs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "qspec"))
        .collect();
    specs.sort();
    for spec in specs {
        let text = std::fs::read_to_string(&spec).unwrap();
        let graph = common::calibrated(&spec.display().to_string(), &text, 0, 1, 1.0);
        let model = qatc::Model::from_graph(graph.clone()).unwrap();
        let compiled = model.compile().unwrap();
        let name = graph.name.clone();
        let mut group = c.benchmark_group(name.as_str());
        group.sample_size(20);
        group.bench_function("compile", |b| b.iter(|| model.compile().unwrap()));
        for batch in [1, 256] {
            let x = qatc::bench::inputs(batch * model.input_size());
            let mut y = vec![0.0; batch * model.output_size()];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new("jit", batch), &batch, |b, _| {
                b.iter(|| compiled.run_into(&x, &mut y).unwrap())
            });
            group.bench_with_input(BenchmarkId::new("reference", batch), &batch, |b, &n| {
                b.iter(|| qatc::interp::run(&graph, &x, n).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, inference);
criterion_main!(benches);
