//! Every op's backward pass against central finite differences. Each case is a tiny spec whose
//! parameters sit before the op under test, so the op's input gradient is checked through them.

mod common;

use qatc::ir;
use qatc::passes;
use qatc::train::engine::{Mode, Net};
use qatc::train::rng::Rng;

/// Builds the (optionally fused) float graph of a spec.
fn net(spec: &str, fuse: bool, seed: u64) -> Net {
    let (result, source) = qatc::front_end("grad.qspec", spec);
    let model = result
        .unwrap_or_else(|d| panic!("{}", qatc::diag::render(&d, &source.name, &source.text)))
        .model;
    let mut graph = qatc::check::lower(&model);
    if fuse {
        graph = passes::fuse::fuse(&graph);
    }
    ir::verify(&graph).unwrap();
    Net::new(graph, seed)
}

const TRAIN: Mode = Mode {
    training: true,
    fake_quant: false,
    observe: false,
    bn_frozen: false,
    static_qparams: false,
};

/// loss = Σ output · r for a fixed random r.
fn loss(net: &mut Net, x: &[f32], batch: usize, r: &[f32], mode: Mode) -> f64 {
    let tape = net.forward(x, batch, mode, &mut Rng::new(7));
    tape.output(&net.graph)
        .iter()
        .zip(r)
        .map(|(a, b)| (*a as f64) * (*b as f64))
        .sum()
}

fn check(spec: &str, fuse: bool, mode: Mode) {
    let mut net = net(spec, fuse, 3);
    let in_size: usize = net.graph.nodes[0].shape.iter().product();
    let out_size: usize = net.graph.nodes[net.graph.output].shape.iter().product();
    let batch = 3;
    let mut rng = Rng::new(11);
    let x: Vec<f32> = (0..batch * in_size)
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect();
    let r: Vec<f32> = (0..batch * out_size)
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect();

    let tape = net.forward(&x, batch, mode, &mut Rng::new(7));
    net.backward(&tape, &r);
    let analytic: Vec<(String, Vec<f32>)> = net
        .params_mut()
        .iter()
        .map(|p| (p.name.clone(), p.grad.clone()))
        .collect();
    assert!(!analytic.is_empty());

    for (k, (name, grad)) in analytic.iter().enumerate() {
        for idx in (0..grad.len()).step_by((grad.len() / 7).max(1)) {
            let a = grad[idx] as f64;
            // A step that crosses a kink (ReLU, max-pool) gives a meaningless difference; a
            // wrong gradient is wrong at every step size, so agreeing at one of two suffices.
            let numerics: Vec<f64> = [1e-3f32, 2e-4]
                .iter()
                .map(|&eps| {
                    let original = net.params_mut()[k].value[idx];
                    net.params_mut()[k].value[idx] = original + eps;
                    let up = loss(&mut net, &x, batch, &r, mode);
                    net.params_mut()[k].value[idx] = original - eps;
                    let down = loss(&mut net, &x, batch, &r, mode);
                    net.params_mut()[k].value[idx] = original;
                    (up - down) / (2.0 * eps as f64)
                })
                .collect();
            let close = |n: f64| (a - n).abs() <= 2e-2 * (1.0 + a.abs().max(n.abs()));
            assert!(
                numerics.iter().any(|&n| close(n)),
                "{spec} {mode:?}\n{name}[{idx}]: analytic {a}, numeric {numerics:?}"
            );
        }
    }
}

#[test]
fn linear_and_relu() {
    check(
        "model m { input: [5] a: Linear(out: 4) r: ReLU b: Linear(out: 3) }",
        false,
        TRAIN,
    );
    check(
        "model m { input: [5] a: Linear(out: 4) r: ReLU6 b: Linear(out: 3, bias: false) }",
        false,
        TRAIN,
    );
}

#[test]
fn fused_linear_relu() {
    check(
        "model m { input: [5] a: Linear(out: 4) r: ReLU b: Linear(out: 3) }",
        true,
        TRAIN,
    );
}

#[test]
fn conv2d_stride_padding_groups() {
    check("model m { input: [2, 6, 5] c: Conv2d(out: 4, kernel: 3, stride: 2, padding: 1) f: Flatten }", false, TRAIN);
    check(
        "model m { input: [4, 5, 5] c: Conv2d(out: 4, kernel: [3, 2], groups: 2) f: Flatten }",
        false,
        TRAIN,
    );
    // depthwise
    check("model m { input: [3, 5, 5] c: Conv2d(out: 3, kernel: 3, groups: 3, padding: 1) f: Flatten }", false, TRAIN);
}

#[test]
fn pools_flatten_and_global_avg() {
    check("model m { input: [2, 6, 6] c: Conv2d(out: 3, kernel: 1) p: MaxPool2d(2) f: Flatten l: Linear(out: 2) }", false, TRAIN);
    check("model m { input: [2, 7, 7] c: Conv2d(out: 3, kernel: 1) p: MaxPool2d(kernel: 3, stride: 2, padding: 1) f: Flatten }", false, TRAIN);
    check("model m { input: [2, 6, 6] c: Conv2d(out: 3, kernel: 1) p: AvgPool2d(kernel: 3, stride: 2, padding: 1) f: Flatten }", false, TRAIN);
    check(
        "model m { input: [2, 4, 4] c: Conv2d(out: 3, kernel: 1) g: GlobalAvgPool f: Flatten }",
        false,
        TRAIN,
    );
}

#[test]
fn batch_norm_train_and_eval() {
    let spec = "model m { input: [2, 4, 4] c: Conv2d(out: 3, kernel: 3) bn: BatchNorm2d(momentum: 0.0) f: Flatten }";
    check(spec, false, TRAIN);
    check(spec, false, Mode::eval(false));
}

#[test]
fn fused_conv_bn_relu_matches_unfused_gradients() {
    let spec = "model m { input: [2, 5, 5] c: Conv2d(out: 3, kernel: 3) bn: BatchNorm2d(momentum: 0.0) r: ReLU f: Flatten }";
    check(spec, true, TRAIN);
    check(spec, true, Mode::eval(false));
    check(
        spec,
        true,
        Mode {
            bn_frozen: true,
            ..TRAIN
        },
    );
}

#[test]
fn add_and_dropout() {
    check(
        "model m { input: [4] a: Linear(out: 4) b: Linear(input, out: 4) s: Add(a, b, a) }",
        false,
        TRAIN,
    );
    // Dropout's mask is fixed by the rng seed of each forward pass, so differences see the same mask.
    check(
        "model m { input: [6] a: Linear(out: 6) d: Dropout(p: 0.3) b: Linear(out: 2) }",
        false,
        TRAIN,
    );
}

#[test]
fn softmax_cross_entropy_gradient() {
    let logits = [0.5f32, -1.0, 2.0, 0.1, 0.0, 0.3];
    let labels = [2u8, 0];
    let loss_of = |logits: &[f32]| {
        let mut grad = [f32::NAN; 6];
        let (loss, correct) =
            qatc::train::kernels::softmax_cross_entropy(logits, &labels, 3, &mut grad);
        (loss, correct, grad)
    };
    let (loss, correct, grad) = loss_of(&logits);
    assert_eq!(correct, 1);
    let eps = 1e-3;
    for i in 0..logits.len() {
        let mut up = logits;
        up[i] += eps;
        let mut down = logits;
        down[i] -= eps;
        let numeric = (loss_of(&up).0 - loss_of(&down).0) / (2.0 * eps);
        assert!(
            (numeric - grad[i]).abs() < 1e-3,
            "{i}: {numeric} vs {}",
            grad[i]
        );
    }
    assert!(loss > 0.0);
}

/// Fake quantization has no derivative to difference; its backward is the straight-through
/// estimator. Check it exactly on a quantized Linear: the weight gradient must be
/// Σ_b mask_out · r · x_q, zeroed where the weight's own fake quant clipped.
#[test]
fn fake_quant_gradient_is_the_straight_through_estimator() {
    check_straight_through("a: Linear(out: 4)", false);
}

/// With a ReLU fused into the layer, the fake quant after it applies the ReLU's mask too (one
/// pass for both): the gradient must still vanish where the ReLU clipped.
#[test]
fn fake_quant_after_a_fused_relu_masks_both() {
    check_straight_through("a: Linear(out: 4) r: ReLU", true);
}

fn check_straight_through(layers: &str, relu: bool) {
    use qatc::quant::numerics::fake_quant_passes;
    use qatc::state::NodeState;

    let spec = format!("model m {{ input: [5] {layers} }}\nquantize {{ backend: qnnpack }}");
    let (result, _) = qatc::front_end("fq.qspec", &spec);
    let graph = qatc::check::lower(&result.expect("checks").model);
    let graph = passes::run(&graph, passes::QAT_PIPELINE)
        .unwrap()
        .pop()
        .unwrap()
        .1;
    let mut net = Net::new(graph, 5);
    // Weights large enough that some clip once the observer has seen smaller ones.
    let batch = 6;
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..batch * 5).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let r: Vec<f32> = (0..batch * 4).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mode = Mode {
        training: true,
        fake_quant: true,
        observe: true,
        bn_frozen: false,
        static_qparams: true,
    };
    // A first pass sets the observers; then widen the data so the output fake quant clips.
    net.forward(&x, batch, mode, &mut Rng::new(1));
    let wide: Vec<f32> = x.iter().map(|v| v * 3.0).collect();
    let frozen = Mode {
        observe: false,
        static_qparams: false,
        ..mode
    };
    let tape = net.forward(&wide, batch, frozen, &mut Rng::new(1));
    net.backward(&tape, &r);

    let g = &net.graph;
    let (a, a_fq, x_q) = (
        g.find("a").unwrap(),
        g.find("a.fq").unwrap(),
        g.find("input.quant").unwrap(),
    );
    let NodeState::FakeQuant { obs } = &net.state.nodes[a_fq] else {
        panic!("a.fq has an observer")
    };
    let q = obs.qparams()[0];
    let (lo, hi) = (obs.config.quant_min, obs.config.quant_max);
    let pre = &tape.outputs[a];
    let (mut clipped, mut relu_clipped) = (0, 0);
    let mut expected = vec![0.0f32; 4 * 5];
    for b in 0..batch {
        for o in 0..4 {
            let v = pre[b * 4 + o];
            let passes = fake_quant_passes(v, q, 1.0 / q.scale, lo, hi);
            let relu_passes = !relu || v > 0.0;
            clipped += usize::from(!passes);
            relu_clipped += usize::from(passes && !relu_passes);
            if passes && relu_passes {
                for i in 0..5 {
                    expected[o * 5 + i] += r[b * 4 + o] * tape.outputs[x_q][b * 5 + i];
                }
            }
        }
    }
    assert!(clipped > 0, "the test must exercise the mask");
    assert!(
        !relu || relu_clipped > 0,
        "the test must exercise the ReLU's mask"
    );
    let NodeState::Linear {
        weight,
        weight_obs: Some(wobs),
        ..
    } = &net.state.nodes[a]
    else {
        panic!("a is a quantized linear")
    };
    let wq = wobs.qparams()[0];
    for (k, (&got, &want)) in weight.grad.iter().zip(&expected).enumerate() {
        let inside = fake_quant_passes(
            weight.value[k],
            wq,
            1.0 / wq.scale,
            wobs.config.quant_min,
            wobs.config.quant_max,
        );
        let want = if inside { want } else { 0.0 };
        assert!(
            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "weight[{k}]: {got} vs {want}"
        );
    }
}

#[test]
fn every_activation() {
    for a in qatc::ir::Activation::all() {
        let call = common::activation_call(a);
        let spec =
            format!("model m {{ input: [6] l: Linear(out: 5) a: {call} o: Linear(out: 3) }}");
        check(&spec, false, TRAIN);
    }
}

#[test]
fn mul_by_equal_and_broadcast_shapes() {
    let convs = "a: Conv2d(out: 3, kernel: 1) b: Conv2d(input, out: 3, kernel: 1)";
    for body in [
        format!("{convs} y: Mul(a, b)"),
        "a: Conv2d(out: 3, kernel: 1) g: GlobalAvgPool f: Flatten s: Linear(out: 3) y: Mul(a, s)"
            .to_string(),
        "a: Conv2d(out: 3, kernel: 1) g: GlobalAvgPool s: Conv2d(out: 3, kernel: 1) y: Mul(a, s)"
            .to_string(),
    ] {
        check(
            &format!("model m {{ input: [2, 3, 3] {body} f2: Flatten o: Linear(out: 2) }}"),
            false,
            TRAIN,
        );
    }
}

#[test]
fn concat_of_channels_and_of_features() {
    check(
        "model m { input: [2, 3, 3] a: Conv2d(out: 2, kernel: 1) b: Conv2d(input, out: 3, kernel: 1) \
         y: Concat(a, b, a) f: Flatten o: Linear(out: 2) }",
        false,
        TRAIN,
    );
    check(
        "model m { input: [6] a: Linear(out: 2) b: Linear(input, out: 3) y: Concat(b, a) o: Linear(out: 2) }",
        false,
        TRAIN,
    );
}

#[test]
fn fused_depthwise_conv_bn_frozen_and_not() {
    let spec = "model m { input: [3, 5, 5] c: Conv2d(out: 3, kernel: 3, groups: 3, padding: 1) \
                bn: BatchNorm2d(momentum: 0.0) h: Hardswish f: Flatten o: Linear(out: 2) }";
    check(spec, true, TRAIN);
    check(
        spec,
        true,
        Mode {
            bn_frozen: true,
            ..TRAIN
        },
    );
}

#[test]
fn batch_norm1d_fused_into_linear_and_alone() {
    let fused = "model m { input: [5] l: Linear(out: 4) bn: BatchNorm1d(momentum: 0.0) r: ReLU o: Linear(out: 2) }";
    check(fused, true, TRAIN);
    check(
        fused,
        true,
        Mode {
            bn_frozen: true,
            ..TRAIN
        },
    );
    let alone = "model m { input: [5] l: Linear(out: 4) r: ReLU bn: BatchNorm1d(momentum: 0.0) o: Linear(out: 2) }";
    check(alone, false, TRAIN);
    check(alone, false, Mode::eval(false));
}

/// torch.nn.BatchNorm1d(3) in training mode on these four samples (torch 2.9.1).
#[test]
fn batch_norm1d_matches_pytorch() {
    let mut net = net("model m { input: [3] bn: BatchNorm1d }", false, 0);
    let x = [
        1.0, -2.0, 0.5, 3.0, 0.0, -1.5, -0.5, 4.0, 2.0, 2.5, 1.0, 0.0,
    ];
    let tape = net.forward(&x, 4, TRAIN, &mut Rng::new(0));
    let want = [
        -0.365147, -1.270169, 0.199999, 1.095442, -0.34641, -1.399996, -1.46059, 1.501109,
        1.399996, 0.730295, 0.11547, -0.199999,
    ];
    for (got, want) in tape.output(&net.graph).iter().zip(want) {
        assert!((got - want).abs() < 2e-5, "{got} vs torch {want}");
    }
    let qatc::state::NodeState::Bn(bn) = &net.state.nodes[1] else {
        panic!("the BatchNorm's state");
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    assert!(
        close(&bn.running_mean, &[0.15, 0.075, 0.025]),
        "{:?}",
        bn.running_mean
    );
    assert!(
        close(&bn.running_var, &[1.15, 1.525, 1.1083333]),
        "{:?}",
        bn.running_var
    );
}
