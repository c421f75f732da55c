//! Every normalization (`qatc::ops::norm`), checked the same way: it fuses into the layer it
//! folds into (and only that one), and a model using it, fused or alone, converts to int8 that
//! the JIT runs bit-exact with the interpreter.

mod common;

use qatc::int8::QOp;
use qatc::ir::{Host, Norm, Op};

/// A model with the normalization after its host layer, and one with it after a ReLU (alone).
fn specs(n: Norm) -> [String; 2] {
    let (input, host, tail) = match n.host() {
        Host::Conv2d => (
            "[2, 6, 6]",
            "Conv2d(out: 4, kernel: 3)",
            "f: Flatten o: Linear(out: 3)",
        ),
        Host::Linear => ("[6]", "Linear(out: 5)", "o: Linear(out: 3)"),
    };
    let quantize = "quantize { backend: fbgemm }";
    [
        format!(
            "model m {{ input: {input} h: {host} n: {} {tail} }}\n{quantize}\n",
            n.name()
        ),
        format!(
            "model m {{ input: {input} h: {host} r: ReLU n: {} {tail} }}\n{quantize}\n",
            n.name()
        ),
    ]
}

#[test]
fn it_fuses_into_its_host_and_runs_exactly_in_int8() {
    for name in qatc::ops::norm::NAMES {
        let n = Norm::from_name(name).unwrap();
        let [fused, alone] = specs(n);
        for (text, is_fused) in [(&fused, true), (&alone, false)] {
            let (result, source) = qatc::front_end("n.qspec", text);
            let model = result
                .unwrap_or_else(|d| {
                    panic!("{}", qatc::diag::render(&d, &source.name, &source.text))
                })
                .model;
            let graph = qatc::passes::fuse::fuse(&qatc::check::lower(&model));
            let host_bn = match &graph.nodes[1].op {
                Op::Conv2d { bn, .. } | Op::Linear { bn, .. } => bn.clone(),
                op => panic!("{name}: the host is {op:?}"),
            };
            assert_eq!(host_bn.is_some(), is_fused, "{name}:\n{text}");
            assert_eq!(graph.find("n").is_some(), !is_fused, "{name}:\n{text}");

            let int8 = common::calibrated(name, text, 3, 4, 2.0);
            // Folded into the host, or a per-channel batch norm on codes.
            let standalone = int8
                .nodes
                .iter()
                .any(|n| matches!(n.op, QOp::BatchNorm { .. }));
            assert_eq!(standalone, !is_fused, "{name}:\n{}", int8.to_text());
            let size: usize = model.input.iter().product();
            let inputs: Vec<f32> = (0..3 * size)
                .map(|i| ((i * 29 % 83) as f32 - 41.0) / 17.0)
                .collect();
            let want = qatc::interp::run(&int8, &inputs, 3).unwrap();
            let compiled = qatc::Model::from_graph(int8).unwrap().compile().unwrap();
            let got = compiled.run(&inputs).unwrap();
            assert!(
                want.iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}"
            );
        }
    }
}
