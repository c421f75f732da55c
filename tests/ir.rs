//! The IR of every spec after lowering and after each pass, snapshotted in its text form.

mod common;

use qatc::ir::{self, Op};
use qatc::passes;

fn graph_of(path: &std::path::Path) -> ir::Graph {
    let text = std::fs::read_to_string(path).unwrap();
    let (result, _) = qatc::front_end(&path.display().to_string(), &text);
    qatc::check::lower(&result.expect("spec checks").model)
}

#[test]
fn every_spec_is_snapshotted_after_each_pass() {
    for path in common::spec_files() {
        let name = common::stem(&path);
        let graph = graph_of(&path);
        insta::assert_snapshot!(format!("{name}__0_lower"), graph.to_text());
        let stages =
            passes::run(&graph, passes::QAT_PIPELINE).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (k, (pass, g)) in stages.iter().enumerate() {
            insta::assert_snapshot!(format!("{name}__{}_{pass}", k + 1), g.to_text());
        }
    }
}

#[test]
fn fuse_folds_conv_bn_relu_and_keeps_shapes() {
    let graph = graph_of(&common::root().join("specs/lenet_custom.qspec"));
    let fused = passes::fuse::fuse(&graph);
    // conv1+bn1+relu1, conv2+bn2+relu2, fc1+relu3, fc2+relu4: 6 nodes fewer.
    assert_eq!(fused.nodes.len(), graph.nodes.len() - 6);
    let conv1 = &fused.nodes[fused.find("conv1").unwrap()];
    assert!(
        matches!(&conv1.op, Op::Conv2d { bn: Some(b), act: ir::Act::ReLU, .. } if b.name == "bn1")
    );
    assert_eq!(conv1.shape, vec![16, 24, 24]);
    assert!(fused.find("relu1").is_none() && fused.find("bn1").is_none());
}

#[test]
fn prepare_qat_places_fake_quant_as_torch_does() {
    let graph = graph_of(&common::root().join("specs/lenet_custom.qspec"));
    let stages = passes::run(&graph, passes::QAT_PIPELINE).unwrap();
    let g = &stages[1].1;
    let op = |name: &str| {
        g.nodes[g.find(name).unwrap_or_else(|| panic!("no node {name}"))]
            .op
            .clone()
    };
    assert!(matches!(op("input.quant"), Op::FakeQuant(_)));
    assert!(matches!(op("conv1.fq"), Op::FakeQuant(_)));
    // Max-pool and flatten share their input's qparams: no observer after them.
    assert!(g.find("pool1.fq").is_none() && g.find("flat.fq").is_none());
    // fc3 is `none`: a dequant before it, a float linear, and no fake quant after.
    assert!(matches!(op("fc2.fq"), Op::FakeQuant(_)));
    assert!(matches!(op("fc2.dequant"), Op::DeQuantStub));
    assert!(matches!(
        op("fc3"),
        Op::Linear {
            weight_fq: None,
            ..
        }
    ));
    assert!(g.find("fc3.fq").is_none() && g.find("fc3.dequant").is_none());
    // fc1 uses the custom qconfig: per-channel weights.
    assert!(
        matches!(op("fc1"), Op::Linear { weight_fq: Some(fq), .. } if fq.observer.is_per_channel())
    );
}

/// Observer placement around ReLU6 and Dropout against torch 2.9.1's eager mode. Golden: the
/// modules `prepare_qat` gave an `activation_post_process`, for
/// `quant, conv, relu6, drop, flat, fc+relu (fused), drop2, fc2, dequant` under
/// `get_default_qat_qconfig(backend)`: `quant conv relu6 fc fc2` for fbgemm and for qnnpack
/// (torch cannot fuse Conv2d+ReLU6; Dropout and Flatten are not observed). The `native`
/// backend fuses the ReLU6 into the convolution instead (a clamp, exact).
#[test]
fn relu6_and_dropout_are_observed_where_torch_observes_them() {
    let torch_observed = ["input", "conv", "relu6", "fc", "fc2"];
    for backend in ["fbgemm", "qnnpack", "native"] {
        let text = format!(
            "model m {{ input: [1, 8, 8] conv: Conv2d(out: 4, kernel: 3) relu6: ReLU6 \
             drop: Dropout(p: 0.5) flat: Flatten fc: Linear(out: 10) relu: ReLU \
             drop2: Dropout(p: 0.5) fc2: Linear(out: 3) }} quantize {{ backend: {backend} }}"
        );
        let (result, _) = qatc::front_end("m.qspec", &text);
        let graph = qatc::check::lower(&result.expect("checks").model);
        let stages = passes::run(&graph, passes::QAT_PIPELINE).unwrap();
        let g = &stages[1].1;
        // The nodes whose output a fake quant reads (the input's is the quant stub's).
        let mut observed: Vec<&str> = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::FakeQuant(_)))
            .map(|n| g.nodes[n.inputs[0]].name.as_str())
            .collect();
        observed.sort_by_key(|n| torch_observed.iter().position(|t| t == n));
        if backend == "native" {
            assert_eq!(observed, ["input", "conv", "fc", "fc2"], "{backend}");
            assert!(g.find("relu6").is_none(), "native fuses the ReLU6");
        } else {
            assert_eq!(observed, torch_observed, "{backend}");
        }
    }
}

#[test]
fn float_specs_are_left_unquantized() {
    let text = "model m { input: [4] a: Linear(out: 3) r: ReLU b: Linear(out: 2) }";
    let (result, _) = qatc::front_end("m.qspec", text);
    let graph = qatc::check::lower(&result.expect("checks").model);
    let stages = passes::run(&graph, passes::QAT_PIPELINE).unwrap();
    let prepared = &stages[1].1;
    assert!(prepared
        .nodes
        .iter()
        .all(|n| !matches!(n.op, Op::FakeQuant(_) | Op::DeQuantStub)));
    assert_eq!(prepared.nodes.len(), 3, "input, a+relu, b");
}

#[test]
fn the_verifier_names_what_is_wrong() {
    let mut graph = graph_of(&common::root().join("specs/mnist_mlp.qspec"));
    graph.nodes[2].shape = vec![7];
    let errors = ir::verify(&graph).unwrap_err();
    assert!(
        errors[0].contains("%fc1") && errors[0].contains("[7]"),
        "{errors:?}"
    );
    graph.nodes[3].inputs = vec![5];
    assert!(ir::verify(&graph)
        .unwrap_err()
        .iter()
        .any(|e| e.contains("%relu: reads node 5")));
}

/// The int8 IR of every spec, converted after calibrating a freshly initialised network on
/// fixed synthetic inputs (no training, so the snapshot depends on little arithmetic).
#[test]
fn int8_graph_of_every_spec_is_snapshotted() {
    use qatc::train::{engine::Mode, engine::Net, rng::Rng};
    for path in common::spec_files() {
        let name = common::stem(&path);
        let graph = graph_of(&path);
        let prepared = passes::run(&graph, passes::QAT_PIPELINE)
            .unwrap()
            .pop()
            .unwrap()
            .1;
        let mut net = Net::new(prepared, 0);
        let size: usize = net.graph.nodes[0].shape.iter().product();
        let mut rng = Rng::new(1);
        let x: Vec<f32> = (0..8 * size).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let observe = Mode::calibrate();
        net.forward(&x, 8, observe, &mut Rng::new(2));
        let int8 = qatc::convert::convert(&net.graph, &net.state)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        qatc::int8::verify(&int8).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        insta::assert_snapshot!(format!("{name}__4_int8"), int8.to_text());
    }
}
