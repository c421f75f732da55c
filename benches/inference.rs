//! Inference speed of the JIT and the reference interpreter on every spec in specs/: batch-1
//! latency and batch-256 throughput (`cargo bench`; `qatc bench MODEL.qmodel` does the same for
//! one trained model). Weights are the specs' initial ones with observers calibrated on random
//! inputs: speed does not depend on their values.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qatc::train::{self, engine::Mode, rng::Rng};

fn converted(path: &Path) -> qatc::int8::QGraph {
    let text = std::fs::read_to_string(path).unwrap();
    let (result, _) = qatc::front_end(&path.display().to_string(), &text);
    let model = result.expect("the spec checks").model;
    let mut net = train::build_net(&model, 0).unwrap();
    let size: usize = model.input.iter().product();
    let mut rng = Rng::new(0);
    let observe = Mode {
        training: false,
        fake_quant: false,
        observe: true,
        bn_frozen: true,
    };
    let x: Vec<f32> = (0..16 * size).map(|_| rng.uniform(-1.0, 1.0)).collect();
    net.forward(&x, 16, observe, &mut rng);
    qatc::convert::convert(&net).unwrap()
}

fn inference(c: &mut Criterion) {
    let mut specs: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("specs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "qspec"))
        .collect();
    specs.sort();
    for spec in specs {
        let graph = converted(&spec);
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
