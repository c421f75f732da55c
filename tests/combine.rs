//! Every op that combines tensors (`qatc::ops::combine`), checked the same way: a small model
//! using it checks, trains with the right gradients (tests/gradients.rs), gets a fake quant on
//! its output, and converts to int8 that the JIT runs bit-exact with the interpreter.

mod common;

use qatc::int8::QOp;
use qatc::ir::{Combine, Op};

/// Models using each op, on `[2, 6, 6]` inputs.
fn specs(c: Combine) -> Vec<String> {
    let convs =
        "a: Conv2d(out: 4, kernel: 3, padding: 1) b: Conv2d(input, out: 4, kernel: 3, padding: 1)";
    let bodies: Vec<String> = match c {
        Combine::Add => vec![format!("{convs} y: Add(a, b)")],
        // Squeeze-and-excitation: scaled per channel by a [C] vector or a [C, 1, 1] tensor.
        Combine::Mul => vec![
            format!("{convs} y: Mul(a, b)"),
            "a: Conv2d(out: 4, kernel: 3, padding: 1) g: GlobalAvgPool f: Flatten s: Linear(out: 4) \
             h: Hardsigmoid y: Mul(a, h)"
                .into(),
            "a: Conv2d(out: 4, kernel: 3, padding: 1) g: GlobalAvgPool s: Conv2d(out: 4, kernel: 1) \
             h: Sigmoid y: Mul(a, h)"
                .into(),
        ],
        Combine::Concat => vec![
            format!("{convs} y: Concat(a, b)"),
            "a: Conv2d(out: 3, kernel: 3, padding: 1) p: MaxPool2d(2) c: Conv2d(input, out: 2, kernel: 2, \
             stride: 2) y: Concat(p, c, p)"
                .into(),
            "a: Flatten s: Linear(out: 5) t: Linear(a, out: 3) y: Concat(s, t) v: Hardswish".into(),
        ],
    };
    bodies
        .into_iter()
        .map(|body| {
            format!(
                "model m {{ input: [2, 6, 6] {body} z: Flatten o: Linear(out: 3) }}\n\
                 quantize {{ backend: fbgemm }}\n"
            )
        })
        .collect()
}

fn all() -> Vec<Combine> {
    qatc::ops::combine::NAMES
        .iter()
        .map(|n| Combine::from_name(n).expect("a name is an op"))
        .collect()
}

#[test]
fn its_output_is_observed_and_it_converts_to_int8_the_jit_runs_exactly() {
    for c in all() {
        for text in specs(c) {
            let (result, source) = qatc::front_end("c.qspec", &text);
            let model = result
                .unwrap_or_else(|d| {
                    panic!("{}", qatc::diag::render(&d, &source.name, &source.text))
                })
                .model;
            let graph = qatc::check::lower(&model);
            let stages = qatc::passes::run(&graph, qatc::passes::QAT_PIPELINE).unwrap();
            let prepared = &stages.last().unwrap().1;
            let y = prepared.find("y").expect("the op's node");
            assert!(matches!(prepared.nodes[y].op, Op::Combine(op) if op == c));
            assert!(
                matches!(prepared.nodes[y + 1].op, Op::FakeQuant(_)),
                "{}: its output is observed",
                c.name()
            );

            let int8 = common::calibrated(c.name(), &text, 4, 4, 2.0);
            let node = int8.nodes.iter().find(|n| n.name == "y").unwrap();
            assert!(matches!(node.op, QOp::Combine(op) if op == c));
            assert!(node.ty.is_quantized());
            let inputs: Vec<f32> = (0..5 * 72)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 20.0)
                .collect();
            let want = qatc::interp::run(&int8, &inputs, 5).unwrap();
            let model = qatc::Model::from_graph(int8).unwrap();
            for dot in common::runnable_forms() {
                let options = qatc::jit::Options {
                    dot_product: Some(dot),
                    ..Default::default()
                };
                let got = model
                    .compile_with(&options)
                    .unwrap()
                    .0
                    .run(&inputs)
                    .unwrap();
                assert!(
                    want.iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} with {dot:?}:\n{text}",
                    c.name()
                );
            }
        }
    }
}
