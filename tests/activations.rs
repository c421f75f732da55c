//! Every activation (`qatc::ops::activation`), checked the same way: its float values and
//! gradients against PyTorch's, where prepare_qat puts its fake quantization (and with which
//! parameters), and its int8 form (a clamp or a table) compiled bit-exact with the interpreter.
#![allow(clippy::excessive_precision)]

mod common;

use qatc::int8::QOp;
use qatc::ir::{Activation, Op, OutputQuant, Quantized};

// XS and GOLDEN: PyTorch's forward values and input gradients (tools/torch_activation_golden.py).
include!("data/activation_golden.rs");

/// A quantized model where the activation follows an Add (so nothing fuses it away).
fn spec(a: Activation) -> String {
    format!(
        "model m {{ input: [8] fc: Linear(out: 8) s: Add(fc, fc) a: {} o: Linear(out: 3) }}\n\
         quantize {{ backend: fbgemm }}\n",
        common::activation_call(a)
    )
}

#[test]
fn values_and_gradients_match_pytorch() {
    for a in Activation::all() {
        let Some((_, want_y, want_dy)) = GOLDEN.iter().find(|g| g.0 == a.name()) else {
            panic!(
                "no PyTorch values for {}: add it to tools/torch_activation_golden.py",
                a.name()
            );
        };
        let (mut y, mut dy) = ([0f32; 12], [0f32; 12]);
        a.program().eval(&XS, &mut y);
        a.derivative().eval(&XS, &mut dy);
        for i in 0..XS.len() {
            let close = |got: f32, want: f32| (got - want).abs() <= 2e-6 * want.abs().max(1.0);
            assert!(
                close(y[i], want_y[i]),
                "{}({}) = {}, torch {}",
                a.name(),
                XS[i],
                y[i],
                want_y[i]
            );
            assert!(
                close(dy[i], want_dy[i]),
                "{}'({}) = {}, torch {}",
                a.name(),
                XS[i],
                dy[i],
                want_dy[i]
            );
        }
    }
}

#[test]
fn fake_quantization_goes_where_pytorch_puts_it() {
    for a in Activation::all() {
        let text = spec(a);
        let (result, _) = qatc::front_end("a.qspec", &text);
        let model = result.expect("the spec checks").model;
        let graph = qatc::check::lower(&model);
        let stages = qatc::passes::run(&graph, qatc::passes::QAT_PIPELINE).unwrap();
        let prepared = &stages.last().unwrap().1;
        let node = prepared.find("a").expect("the activation node");
        let after = &prepared.nodes[node + 1];
        // Under fbgemm, ReLU6 is observed as torch observes `nn.ReLU6` (`Graph::torch_relu6`).
        match (prepared.output_quant(&Op::Activation(a)), &after.op) {
            // Shares its input's parameters: the next node is the Linear reading it.
            (OutputQuant::Shared, Op::Linear { .. }) => {}
            (OutputQuant::Observed, Op::FakeQuant(cfg)) => {
                assert_eq!(cfg.fixed, None, "{}", a.name());
                assert_eq!(after.name, "a.fq");
            }
            // torch.ao.quantization's fixed parameters: sigmoid-like 1/256 and 0, tanh 2/256
            // and 128 (printed by tools/torch_activation_golden.py).
            (OutputQuant::Fixed(q), Op::FakeQuant(cfg)) => {
                assert_eq!(cfg.fixed, Some(q), "{}", a.name());
                // quint8 0..255 even under fbgemm's reduce_range, as torch's fixed observers.
                assert_eq!((cfg.quant_min, cfg.quant_max), (0, 255), "{}", a.name());
                let torch = match a.name() {
                    "Tanh" => (2.0 / 256.0, 128),
                    _ => (1.0 / 256.0, 0),
                };
                assert_eq!((q.scale, q.zero_point), torch, "{}", a.name());
            }
            (kind, op) => panic!("{}: {kind:?} but followed by {op:?}", a.name()),
        }
    }
}

#[test]
fn int8_form_is_exact_in_the_interpreter_and_the_jit() {
    for a in Activation::all() {
        let text = spec(a);
        let graph = common::calibrated(a.name(), &text, 5, 4, 3.0);
        let node = graph.nodes.iter().find(|n| n.name == "a").unwrap();
        let input = &graph.nodes[node.inputs[0]];
        let (x, y) = (input.ty.qparams().unwrap(), node.ty.qparams().unwrap());
        match (&node.op, a.quantized()) {
            (QOp::Clamp { .. }, Quantized::Clamp(_)) => {}
            // Observed and fixed-parameter activations, and ReLU6 under torch's placement.
            (QOp::Lut { table }, _) => {
                // The table is the fake quantization of the float function of each code.
                for (code, &out) in table.iter().enumerate() {
                    let v = qatc::quant::numerics::dequantize(code as i32, x);
                    let f = a.program().eval_one(v);
                    let want =
                        qatc::quant::numerics::quantize(f, 1.0 / y.scale, y.zero_point, 0, 255);
                    assert_eq!(out as i32, want, "{} at code {code}", a.name());
                }
            }
            (op, kind) => panic!("{}: {kind:?} became {op:?}", a.name()),
        }
        let inputs: Vec<f32> = (0..16 * 8)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 12.0)
            .collect();
        let want = qatc::interp::run(&graph, &inputs, 16).unwrap();
        let model = qatc::Model::from_graph(graph).unwrap();
        for dot in common::runnable_forms() {
            let options = qatc::jit::Options {
                dot_product: Some(dot),
                ..Default::default()
            };
            let (compiled, _) = model.compile_with(&options).unwrap();
            let got = compiled.run(&inputs).unwrap();
            let same = want
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{} with {dot:?}: JIT {got:?} vs interpreter {want:?}",
                a.name()
            );
        }
    }
}

#[test]
fn float_activations_compile_bit_exact() {
    // A float (`none`) layer runs the activation's program in f32: the JIT emits the same
    // instructions the interpreter evaluates.
    for a in Activation::all() {
        let text = format!(
            "model m {{ input: [8] fc: Linear(out: 8) a: {} o: Linear(out: 3) }}\n\
             quantize {{ backend: fbgemm a: none o: none }}\n",
            common::activation_call(a)
        );
        let graph = common::calibrated(a.name(), &text, 2, 2, 3.0);
        let inputs: Vec<f32> = (0..4 * 8).map(|i| (i as f32 - 16.0) / 2.5).collect();
        let want = qatc::interp::run(&graph, &inputs, 4).unwrap();
        let compiled = qatc::Model::from_graph(graph).unwrap().compile().unwrap();
        let got = compiled.run(&inputs).unwrap();
        assert!(
            want.iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: {got:?} vs {want:?}",
            a.name()
        );
    }
}
