//! The int8 path: the reference interpreter on hand-computed cases, and convert on trained
//! networks (int8 accuracy and output SQNR against the fake-quant graph).

mod common;

use common::node;
use qatc::int8::{QGraph, QOp, QParamsDef, QWeights, TensorType};
use qatc::interp;
use qatc::ir::{Pool, Pool2d};
use qatc::train::{self, engine::Mode, rng::Rng, Quiet};

fn u8(scale: f32, zero_point: i32) -> TensorType {
    TensorType::U8(QParamsDef { scale, zero_point })
}

/// input -> quantize -> `op` -> dequantize.
fn graph(
    in_shape: Vec<usize>,
    in_q: TensorType,
    op: QOp,
    out_shape: Vec<usize>,
    out_q: TensorType,
) -> QGraph {
    QGraph {
        name: "t".into(),
        nodes: vec![
            node(
                "input",
                QOp::Input,
                vec![],
                in_shape.clone(),
                TensorType::F32,
            ),
            node("q", QOp::Quantize, vec![0], in_shape, in_q),
            node("op", op, vec![1], out_shape.clone(), out_q),
            node("dq", QOp::Dequantize, vec![2], out_shape, TensorType::F32),
        ],
        output: 3,
    }
}

fn codes(g: &QGraph, x: &[f32], node: usize) -> Vec<u8> {
    match &interp::run_all(g, x)[node] {
        interp::Value::U8(v) => v.clone(),
        other => panic!("expected codes, got {other:?}"),
    }
}

#[test]
fn quantized_linear_by_hand() {
    // x = [0.5, -1, 2] with scale 0.1, zero point 10 -> codes [15, 0, 30], offsets [5, -10, 20].
    // Row 0: 5·1 + (-10)(-2) + 20·3 + bias 10 = 95; multiplier 0.1·0.5/0.2 = 0.25 -> 23.75 -> 24 + 5.
    // Row 1: 5·4 + 0 + 20·(-1) + bias -7 = -7; multiplier 0.125 -> -0.875 -> -1 + 5.
    let w = QWeights {
        weight: vec![1, -2, 3, 4, 0, -1],
        weight_scales: vec![0.5, 0.25],
        bias: vec![10, -7],
        clamp: (0, 255),
    };
    let g = graph(
        vec![3],
        u8(0.1, 10),
        QOp::Linear {
            in_features: 3,
            out_features: 2,
            w,
        },
        vec![2],
        u8(0.2, 5),
    );
    let x = [0.5, -1.0, 2.0];
    assert_eq!(codes(&g, &x, 1), [15, 0, 30]);
    assert_eq!(codes(&g, &x, 2), [29, 4]);
    let y = interp::run(&g, &x, 1).unwrap();
    assert!(
        (y[0] - 4.8).abs() < 1e-5 && (y[1] + 0.2).abs() < 1e-6,
        "{y:?}"
    );
}

#[test]
fn quantized_conv_by_hand() {
    // One 3x3 channel (codes 1..9 after zero point 1), one 2x2 kernel [[1, 0], [0, -1]] with
    // scale 1, bias 4, output scale 2: acc(i, j) = x(i, j) - x(i+1, j+1) + 4 = -4 + 4 = 0 for
    // every window of x(i, j) = 3i + j + 1, so every output is the zero point 7; with a bias of
    // 10 instead it is round(6 / 2) + 7 = 10.
    let geom = qatc::ir::ConvGeom {
        in_channels: 1,
        out_channels: 1,
        kernel: (2, 2),
        stride: (1, 1),
        padding: (0, 0),
        groups: 1,
    };
    let x: Vec<f32> = (0..9).map(|v| v as f32 + 1.0).collect();
    for (bias, expected) in [(4, 7u8), (10, 10)] {
        let w = QWeights {
            weight: vec![1, 0, 0, -1],
            weight_scales: vec![1.0],
            bias: vec![bias],
            clamp: (0, 255),
        };
        let g = graph(
            vec![1, 3, 3],
            u8(1.0, 1),
            QOp::Conv2d { geom, w },
            vec![1, 2, 2],
            u8(2.0, 7),
        );
        qatc::int8::verify(&g).unwrap();
        assert_eq!(codes(&g, &x, 2), [expected; 4]);
    }
}

#[test]
fn saturation_clamps_and_zero_points_at_the_ends() {
    // Both ends saturate; a ReLU clamp lifts the floor to the zero point.
    let w = |clamp| QWeights {
        weight: vec![127, -128],
        weight_scales: vec![1.0],
        bias: vec![0, 0],
        clamp,
    };
    let lin = |clamp| QOp::Linear {
        in_features: 1,
        out_features: 2,
        w: w(clamp),
    };
    let g = graph(vec![1], u8(1.0, 0), lin((0, 255)), vec![2], u8(1.0, 100));
    assert_eq!(codes(&g, &[255.0], 2), [255, 0]);
    let g = graph(vec![1], u8(1.0, 0), lin((100, 255)), vec![2], u8(1.0, 100));
    assert_eq!(codes(&g, &[255.0], 2), [255, 100]);
    // Input zero points at 255 and 0.
    let g = graph(vec![2], u8(0.01, 255), QOp::Flatten, vec![2], u8(0.01, 255));
    assert_eq!(codes(&g, &[-1.0, 0.5], 1), [155, 255]);
    let g = graph(vec![2], u8(0.01, 0), QOp::Flatten, vec![2], u8(0.01, 0));
    assert_eq!(codes(&g, &[-1.0, 3.0], 1), [0, 255]);
}

#[test]
fn accumulators_at_the_i32_limit() {
    // The longest reduction convert allows, every input at 255 and every weight at an extreme:
    // |Σ| = 65,793 · 255 · 128 = 2,147,483,520, inside i32; requantization saturates.
    let k = qatc::int8::MAX_REDUCTION;
    for (wv, expected) in [(-128i8, 0u8), (127, 255)] {
        let w = QWeights {
            weight: vec![wv; k],
            weight_scales: vec![1e-3],
            bias: vec![0],
            clamp: (0, 255),
        };
        let op = QOp::Linear {
            in_features: k,
            out_features: 1,
            w,
        };
        let g = graph(vec![k], u8(1.0, 0), op, vec![1], u8(1.0, 128));
        qatc::int8::verify(&g).unwrap();
        assert_eq!(codes(&g, &vec![255.0; k], 2), [expected]);
    }
}

#[test]
fn global_average_pooling_sums_inside_i32() {
    // The largest plane whose codes' sum fits an i32, every code at 255; one more value is
    // refused (the sum wrapped: a panic with overflow checks, a wrong code without).
    let side = |h: usize| {
        graph(
            vec![1, h, 1],
            u8(1.0, 0),
            QOp::Pool(Pool::GlobalAvgPool),
            vec![1, 1, 1],
            u8(1.0, 0),
        )
    };
    let most = qatc::limits::MAX_POOLED;
    let g = side(most);
    qatc::int8::verify(&g).unwrap();
    assert_eq!(codes(&g, &vec![255.0; most], 2), [255]);
    let errors = qatc::int8::verify(&side(most + 1)).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("global average pooling")),
        "{errors:?}"
    );
}

#[test]
fn pools_clamp_and_add_on_codes() {
    let pool = Pool2d {
        kernel: (2, 2),
        stride: (2, 2),
        padding: (0, 0),
    };
    let x: Vec<f32> = [1.0, 9.0, 3.0, 4.0, 2.0, 6.0, 0.0, 7.0].to_vec();
    let g = graph(
        vec![1, 2, 4],
        u8(1.0, 0),
        QOp::Pool(Pool::MaxPool2d(pool)),
        vec![1, 1, 2],
        u8(1.0, 0),
    );
    assert_eq!(codes(&g, &x, 2), [9, 7]);
    // Means 18/4 = 4.5 -> 4 and 14/4 = 3.5 -> 4: halves to even.
    let g = graph(
        vec![1, 2, 4],
        u8(1.0, 0),
        QOp::Pool(Pool::AvgPool2d(pool)),
        vec![1, 1, 2],
        u8(1.0, 0),
    );
    assert_eq!(codes(&g, &x, 2), [4, 4]);
    let g = graph(
        vec![4],
        u8(1.0, 3),
        QOp::Clamp { lo: 3, hi: 9 },
        vec![4],
        u8(1.0, 3),
    );
    assert_eq!(codes(&g, &[-3.0, 1.0, 5.0, 9.0], 2), [3, 4, 8, 9]);
    // Add requantizes: (a + b) with a, b in scale 0.5 into scale 1.0.
    let mut g = graph(
        vec![2],
        u8(0.5, 0),
        QOp::Combine(qatc::ir::Combine::Add),
        vec![2],
        u8(1.0, 0),
    );
    g.nodes[2].inputs = vec![1, 1];
    assert_eq!(codes(&g, &[1.5, 100.0], 2), [3, 200]);
}

fn checked_model(spec: &str) -> qatc::check::CheckedModel {
    let path = common::root().join(spec);
    let (result, _) = qatc::front_end(
        &path.display().to_string(),
        &std::fs::read_to_string(&path).unwrap(),
    );
    result.expect("spec checks").model
}

fn trained(
    spec: &str,
    epochs: usize,
    images: usize,
) -> (
    train::engine::Net,
    qatc::data::Splits,
    qatc::check::TrainConfig,
) {
    let model = checked_model(spec);
    let cfg = model.train.clone().unwrap();
    let mut data = train::load_data(&model, &cfg, &common::root().join("specs")).unwrap();
    let size = data.train.image_size();
    data.train.images.truncate(images * size);
    data.train.labels.truncate(images);
    let mut net = train::build_net(&model, cfg.seed).unwrap();
    train::train(&mut net, &data, &cfg, epochs, &mut Quiet);
    (net, data, cfg)
}

/// Signal-to-quantization-noise ratio of `int8` against `reference`, in dB.
fn sqnr(reference: &[f32], int8: &[f32]) -> f64 {
    let signal: f64 = reference.iter().map(|&v| (v as f64).powi(2)).sum();
    let noise: f64 = reference
        .iter()
        .zip(int8)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum();
    10.0 * (signal / noise.max(1e-30)).log10()
}

fn check_converted(spec: &str, epochs: usize, images: usize, min_db: f64) {
    let (mut net, data, cfg) = trained(spec, epochs, images);
    check_trained(spec, &mut net, &data, &cfg, min_db);
}

/// A trained network converts, its int8 accuracy is within a point of fake quant's, and its
/// logits are within `min_db` of fake quant's.
fn check_trained(
    spec: &str,
    net: &mut train::engine::Net,
    data: &qatc::data::Splits,
    cfg: &qatc::check::TrainConfig,
    min_db: f64,
) {
    let graph = qatc::convert::convert(&net.graph, &net.state).expect("converts");
    let fq_acc = train::evaluate(net, &data.test, cfg, true);
    let int8_acc = common::int8_accuracy(&graph, &data.test, cfg);
    assert!(
        (fq_acc - int8_acc).abs() <= 1.0,
        "{spec}: fake quant {fq_acc} % vs int8 {int8_acc} %"
    );

    let indices: Vec<usize> = (0..200).collect();
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    data.test
        .batch(&indices, &cfg.normalization, &mut x, &mut labels);
    let tape = net.forward(&x, indices.len(), Mode::eval(true), &mut Rng::new(0));
    let reference = tape.output(&net.graph).to_vec();
    let int8 = interp::run(&graph, &x, indices.len()).unwrap();
    let db = sqnr(&reference, &int8);
    eprintln!("{spec}: fake quant {fq_acc} %, int8 {int8_acc} %, output SQNR {db:.1} dB");
    assert!(
        db >= min_db,
        "{spec}: output SQNR {db:.1} dB, want {min_db}"
    );
}

#[test]
fn lenet_int8_matches_fake_quant_to_30_db() {
    // The bar PyTorch's own numerics tests use, on the spec as trained by `qatc train`.
    check_converted("specs/lenet_mnist.qspec", 5, 8000, 30.0);
}

#[test]
fn mlp_converts_with_int8_accuracy_close_to_fake_quant() {
    // fbgemm's 7-bit activations: fake quant clamps at code 127 where int8 saturates at 255, as
    // fbgemm does, so a briefly trained MLP's logits differ more where they outgrow the range.
    check_converted("specs/mnist_mlp.qspec", 1, 8000, 20.0);
}

#[test]
fn qint8_activations_convert_to_shifted_quint8() {
    // The tutorial's custom QConfig on fc1: qint8 activations (min/max, affine, 0..127) become
    // quint8 codes with the zero point moved by 128, and the int8 model follows fake quant.
    let spec = "specs/mnist_mlp_qint8.qspec";
    check_converted(spec, 1, 8000, 20.0);
    let (net, _, _) = trained(spec, 1, 500);
    let graph = qatc::convert::convert(&net.graph, &net.state).expect("converts");
    let fc1 = graph.nodes.iter().find(|n| n.name == "fc1").unwrap();
    let TensorType::U8(q) = fc1.ty else {
        panic!("fc1 is quantized")
    };
    let fq = net
        .graph
        .nodes
        .iter()
        .position(|n| n.name == "relu.fq" || n.name == "fc1.fq");
    let obs = fq.and_then(|i| match &net.state.nodes[i] {
        train::engine::NodeState::FakeQuant { obs } => Some(obs.qparams()[0]),
        _ => None,
    });
    let obs = obs.expect("an observer after fc1");
    assert_eq!(q.zero_point, obs.zero_point + 128);
    assert_eq!(q.scale, obs.scale);
}

#[test]
fn conv_bn_with_a_float_layer_converts() {
    // lenet_custom: BatchNorm folded into the convolutions, per-channel fc1, fc3 kept float.
    check_converted("specs/lenet_custom.qspec", 2, 2000, 30.0);
}

#[test]
fn convert_refuses_an_overflowing_reduction_and_untrained_observers() {
    let text = "model m { input: [70000] fc: Linear(out: 2) }\nquantize { backend: fbgemm }";
    let (result, _) = qatc::front_end("big.qspec", text);
    let model = result.unwrap().model;
    let mut net = train::build_net(&model, 0).unwrap();
    let err = qatc::convert::convert(&net.graph, &net.state).unwrap_err();
    assert!(err.contains("has seen no data"), "{err}");
    let x = vec![0.5f32; 70000];
    let mode = Mode {
        training: true,
        fake_quant: true,
        observe: true,
        bn_frozen: false,
        static_qparams: true,
    };
    net.forward(&x, 1, mode, &mut Rng::new(0));
    let err = qatc::convert::convert(&net.graph, &net.state).unwrap_err();
    assert!(
        err.contains("`fc` sums 70000 products") && err.contains("overflow"),
        "{err}"
    );
}

#[test]
fn lsq_4bit_learns_its_scales_and_int8_keeps_the_4_bit_ranges() {
    // specs/lenet_4bit.qspec: learnable scales (LSQ) at 4 bits. The observers set the scales in
    // the first epoch; in the second the optimizer moves them away from the observers' values.
    let spec = "specs/lenet_4bit.qspec";
    let (mut net, data, cfg) = trained(spec, 2, 4000);
    let mut learned = 0;
    let mut moved = 0;
    for (node, state) in net.graph.nodes.iter().zip(&net.state.nodes) {
        let obs = match state {
            train::engine::NodeState::FakeQuant { obs } => obs,
            train::engine::NodeState::Linear {
                weight_obs: Some(obs),
                ..
            }
            | train::engine::NodeState::Conv {
                weight_obs: Some(obs),
                ..
            } => obs,
            _ => continue,
        };
        let l = obs
            .learned
            .as_ref()
            .unwrap_or_else(|| panic!("{}: every fake quant is learnable", node.name));
        learned += 1;
        let observed = {
            let mut o = obs.clone();
            o.set_learned_from_range();
            o.learned.unwrap().scale.value
        };
        moved += usize::from(l.scale.value != observed);
        assert!(l.scale.value.iter().all(|&s| s > 0.0), "{}", node.name);
    }
    assert!(learned >= 10, "{learned} learnable fake quants");
    assert!(
        moved == learned,
        "{moved} of {learned} scales moved from their observers'"
    );

    // The checkpoint keeps the learned parameters: a network loaded from it converts to the
    // same int8 graph.
    let bytes = qatc::state::checkpoint::to_bytes(&net.graph, &net.state, Default::default())
        .expect("serializes");
    let mut loaded = train::build_net(&checked_model(spec), 7).unwrap();
    qatc::state::checkpoint::load(&loaded.graph, &mut loaded.state, &bytes).expect("loads");
    let names: Vec<String> = qatc::state::checkpoint::state_tensors(&net.graph, &net.state)
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert!(
        names.contains(&"conv1.weight_fake_quant.scale".to_string()),
        "{names:?}"
    );
    let a = qatc::convert::convert(&net.graph, &net.state).unwrap();
    let b = qatc::convert::convert(&loaded.graph, &loaded.state).unwrap();
    assert_eq!(a.to_text(), b.to_text());

    // Convert keeps the ranges: weights in -8..7, activations clamped to 0..15.
    let graph = qatc::convert::convert(&net.graph, &net.state).expect("converts");
    let mut layers = 0;
    for (i, node) in graph.nodes.iter().enumerate() {
        match &node.op {
            QOp::Linear { w, .. } | QOp::Conv2d { w, .. } => {
                layers += 1;
                assert!(
                    w.weight.iter().all(|&c| (-8..=7).contains(&c)),
                    "{}",
                    node.name
                );
                assert!(w.clamp.1 <= 15, "{}: clamp {:?}", node.name, w.clamp);
            }
            QOp::Quantize => {
                let next = graph.nodes.iter().find(|n| n.inputs == [i]);
                assert!(
                    matches!(next.map(|n| &n.op), Some(QOp::Clamp { lo: 0, hi: 15 })),
                    "the input's codes are clamped to 0..15"
                );
            }
            _ => {}
        }
    }
    assert_eq!(layers, 5);
    // One code of a 4-bit activation is a fifteenth of its range: int8 and fake quant round a
    // few values apart, so the bar is lower than 8-bit lenet's 30 dB.
    check_trained(spec, &mut net, &data, &cfg, 20.0);
}
