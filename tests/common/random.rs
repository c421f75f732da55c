//! Random valid models: single int8 ops with random shapes and quantization parameters, and
//! random small specs. Shared by the JIT tests and the fuzzer (`examples/fuzz`), which includes
//! this file by path.

use qatc::int8::{FWeights, QGraph, QNode, QOp, QParamsDef, QWeights, TensorType};
use qatc::ir::{Act, ConvGeom};
use qatc::ir::{Pool, Pool2d};
use qatc::train::rng::Rng;

/// A node of an int8 graph.
pub fn node(name: &str, op: QOp, inputs: Vec<usize>, shape: Vec<usize>, ty: TensorType) -> QNode {
    QNode {
        name: name.into(),
        op,
        inputs,
        shape,
        ty,
    }
}

pub fn u8_type(rng: &mut Rng) -> TensorType {
    TensorType::U8(QParamsDef {
        scale: 10f32.powf(rng.uniform(-3.0, 0.0)),
        zero_point: rng.below(256) as i32,
    })
}

pub fn qweights(out: usize, k: usize, rng: &mut Rng) -> QWeights {
    let per_channel = rng.below(2) == 0;
    let lo = rng.below(3) as i32 * 40;
    QWeights {
        weight: (0..out * k).map(|_| rng.below(256) as i32 as i8).collect(),
        weight_scales: (0..if per_channel { out } else { 1 })
            .map(|_| 10f32.powf(rng.uniform(-4.0, -1.0)))
            .collect(),
        bias: (0..out)
            .map(|_| rng.below(20_001) as i32 - 10_000)
            .collect(),
        clamp: (lo, 255 - rng.below(3) as i32 * 50),
    }
}

pub fn fweights(out: usize, k: usize, rng: &mut Rng) -> FWeights {
    FWeights {
        weight: (0..out * k).map(|_| rng.uniform(-0.5, 0.5)).collect(),
        bias: (0..out).map(|_| rng.uniform(-0.5, 0.5)).collect(),
        act: [Act::None, Act::ReLU, Act::ReLU6][rng.below(3)],
    }
}

pub fn conv_out(size: usize, k: usize, s: usize, p: usize) -> usize {
    (size + 2 * p - k) / s + 1
}

/// input -> quantize -> one random op (with whatever it needs before it) -> output.
pub fn random_op_graph(seed: u64) -> QGraph {
    random_op_graph_sized(seed, &Sizes::SMALL)
}

/// The ranges a random op's shapes are drawn from.
pub struct Sizes {
    /// Input channels: 1 to this.
    pub channels: usize,
    /// Input height and width: 3 to 2 more than this.
    pub side: usize,
    /// Kernel sides: 1 to this.
    pub kernel: usize,
    /// Linear outputs: 1 to this.
    pub features: usize,
}

impl Sizes {
    /// What the JIT tests use: small enough for many cases a second.
    pub const SMALL: Sizes = Sizes {
        channels: 6,
        side: 9,
        kernel: 4,
        features: 40,
    };
}

/// [`random_op_graph`] with shapes drawn from `sizes`.
pub fn random_op_graph_sized(seed: u64, sizes: &Sizes) -> QGraph {
    let mut rng = Rng::new(seed);
    let c = 1 + rng.below(sizes.channels);
    let (h, w) = (3 + rng.below(sizes.side), 3 + rng.below(sizes.side));
    let mut nodes = vec![node(
        "input",
        QOp::Input,
        vec![],
        vec![c, h, w],
        TensorType::F32,
    )];
    let in_q = u8_type(&mut rng);
    nodes.push(node("q", QOp::Quantize, vec![0], vec![c, h, w], in_q));
    let float = rng.below(3) == 0;
    if float {
        nodes.push(node(
            "dq",
            QOp::Dequantize,
            vec![1],
            vec![c, h, w],
            TensorType::F32,
        ));
    }
    let x = nodes.len() - 1;
    let ty = |rng: &mut Rng| if float { TensorType::F32 } else { u8_type(rng) };
    let pool = |rng: &mut Rng| {
        let k = (1 + rng.below(sizes.kernel - 1)).min(h).min(w);
        Pool2d {
            kernel: (k, k),
            stride: (1 + rng.below(2), 1 + rng.below(2)),
            padding: (rng.below(k / 2 + 1), rng.below(k / 2 + 1)),
        }
    };
    let push = |nodes: &mut Vec<QNode>, name: &str, op, inputs, shape, ty| {
        nodes.push(node(name, op, inputs, shape, ty));
    };
    match rng.below(8) {
        0 => {
            // Conv2d, any geometry and groups (depthwise included).
            let groups = [1, c][rng.below(2)];
            let out = groups * (1 + rng.below(4));
            let k = (1 + rng.below(sizes.kernel)).min(h).min(w);
            let geom = ConvGeom {
                in_channels: c,
                out_channels: out,
                kernel: (k, (1 + rng.below(sizes.kernel)).min(w)),
                stride: (1 + rng.below(2), 1 + rng.below(2)),
                padding: (rng.below(2), rng.below(2)),
                groups,
            };
            let (ho, wo) = (
                conv_out(h, geom.kernel.0, geom.stride.0, geom.padding.0),
                conv_out(w, geom.kernel.1, geom.stride.1, geom.padding.1),
            );
            let kg = c / groups * geom.kernel.0 * geom.kernel.1;
            let op = if float {
                QOp::FloatConv2d {
                    geom,
                    w: fweights(out, kg, &mut rng),
                }
            } else {
                QOp::Conv2d {
                    geom,
                    w: qweights(out, kg, &mut rng),
                }
            };
            let t = ty(&mut rng);
            push(&mut nodes, "op", op, vec![x], vec![out, ho, wo], t);
        }
        1 => {
            // Flatten then Linear: after channels-last data the JIT permutes the weights.
            let k = c * h * w;
            let out = 1 + rng.below(sizes.features);
            let t = nodes[x].ty;
            push(&mut nodes, "flat", QOp::Flatten, vec![x], vec![k], t);
            let op = if float {
                QOp::FloatLinear {
                    in_features: k,
                    out_features: out,
                    w: fweights(out, k, &mut rng),
                }
            } else {
                QOp::Linear {
                    in_features: k,
                    out_features: out,
                    w: qweights(out, k, &mut rng),
                }
            };
            let t = ty(&mut rng);
            push(&mut nodes, "op", op, vec![x + 1], vec![out], t);
        }
        2 => {
            let activations = qatc::ir::Activation::all();
            let (op, t) = if float {
                let a = activations[rng.below(activations.len())];
                (QOp::FloatAct(a), nodes[x].ty)
            } else if rng.below(2) == 0 {
                let lo = rng.below(128) as i32;
                let op = QOp::Clamp {
                    lo,
                    hi: lo + rng.below(128) as i32,
                };
                (op, nodes[x].ty)
            } else {
                let table = (0..256).map(|_| rng.below(256) as u8).collect();
                (QOp::Lut { table }, ty(&mut rng))
            };
            push(&mut nodes, "op", op, vec![x], vec![c, h, w], t);
        }
        3 | 4 => {
            let p = pool(&mut rng);
            let (ho, wo) = (
                conv_out(h, p.kernel.0, p.stride.0, p.padding.0),
                conv_out(w, p.kernel.1, p.stride.1, p.padding.1),
            );
            let op = if rng.below(2) == 0 {
                QOp::Pool(Pool::MaxPool2d(p))
            } else {
                QOp::Pool(Pool::AvgPool2d(p))
            };
            let t = nodes[x].ty;
            push(&mut nodes, "op", op, vec![x], vec![c, ho, wo], t);
        }
        5 => {
            let t = nodes[x].ty;
            push(
                &mut nodes,
                "op",
                QOp::Pool(Pool::GlobalAvgPool),
                vec![x],
                vec![c, 1, 1],
                t,
            );
        }
        6 => {
            // Add of two differently quantized copies of the input.
            let q2 = u8_type(&mut rng);
            push(&mut nodes, "q2", QOp::Quantize, vec![0], vec![c, h, w], q2);
            if float {
                let n = nodes.len();
                push(
                    &mut nodes,
                    "dq2",
                    QOp::Dequantize,
                    vec![n - 1],
                    vec![c, h, w],
                    TensorType::F32,
                );
            }
            let t = ty(&mut rng);
            let n = nodes.len();
            push(
                &mut nodes,
                "op",
                QOp::Combine(qatc::ir::Combine::Add),
                vec![x, n - 1],
                vec![c, h, w],
                t,
            );
        }
        _ => {
            let scale = (0..c).map(|_| rng.uniform(-2.0, 2.0)).collect();
            let shift = (0..c).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let (op, t) = if float {
                (QOp::FloatBatchNorm { scale, shift }, TensorType::F32)
            } else {
                (QOp::BatchNorm { scale, shift }, u8_type(&mut rng))
            };
            push(&mut nodes, "op", op, vec![x], vec![c, h, w], t);
        }
    }
    let last = nodes.len() - 1;
    let shape = nodes[last].shape.clone();
    let output = if nodes[last].ty.is_quantized() && rng.below(2) == 0 {
        nodes.push(node(
            "out",
            QOp::Dequantize,
            vec![last],
            shape,
            TensorType::F32,
        ));
        last + 1
    } else {
        last
    };
    QGraph {
        name: format!("op{seed}"),
        nodes,
        output,
    }
}

/// A random valid spec: conv blocks (any geometry, BatchNorm, activations, pools, residual
/// adds), then a classifier head; random backend and per-layer qconfigs, some layers float.
/// Any activation, written as in a spec: `ReLU`, `LeakyReLU(negative_slope: 0.01)`.
fn activation(rng: &mut Rng) -> String {
    let all = qatc::ir::Activation::all();
    super::activation_call(all[rng.below(all.len())])
}

pub fn random_spec(seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let (mut c, mut h, mut w) = (1 + rng.below(3), 6 + rng.below(8), 6 + rng.below(8));
    let mut s = format!("model g{seed} {{\n    input: [{c}, {h}, {w}]\n");
    let mut names = Vec::new();
    let mut prev = "input".to_string();
    let blocks = 1 + rng.below(3);
    for b in 0..blocks {
        let out = 1 + rng.below(12);
        let k = (1 + rng.below(3)).min(h).min(w);
        let stride = 1 + rng.below(2);
        let pad = rng.below(k / 2 + 1);
        s.push_str(&format!(
            "    conv{b}: Conv2d(out: {out}, kernel: {k}, stride: {stride}, padding: {pad})\n"
        ));
        names.push(format!("conv{b}"));
        (c, h, w) = (
            out,
            conv_out(h, k, stride, pad),
            conv_out(w, k, stride, pad),
        );
        prev = format!("conv{b}");
        if rng.below(2) == 0 {
            s.push_str(&format!("    bn{b}: BatchNorm2d\n"));
            prev = format!("bn{b}");
        }
        match rng.below(4) {
            0 => {
                s.push_str(&format!("    relu{b}: ReLU\n"));
                prev = format!("relu{b}");
            }
            1 => {
                s.push_str(&format!("    relu{b}: ReLU6\n"));
                prev = format!("relu{b}");
            }
            2 => {
                s.push_str(&format!("    act{b}: {}\n", activation(&mut rng)));
                names.push(format!("act{b}"));
                prev = format!("act{b}");
            }
            _ => {}
        }
        if rng.below(4) == 0 {
            // Squeeze-and-excitation: scaled per channel by a gate of its global average.
            let gate = ["Hardsigmoid", "Sigmoid"][rng.below(2)];
            s.push_str(&format!(
                "    se_pool{b}: GlobalAvgPool({prev})\n    se_fc{b}: Conv2d(out: {c}, kernel: 1)\n    \
                 se_gate{b}: {gate}\n    se{b}: Mul({prev}, se_gate{b})\n"
            ));
            names.extend([format!("se_fc{b}"), format!("se{b}")]);
            prev = format!("se{b}");
        }
        if rng.below(4) == 0 {
            // A 1x1 side branch joined along the channels.
            let extra = 1 + rng.below(4);
            s.push_str(&format!(
                "    side{b}: Conv2d({prev}, out: {extra}, kernel: 1)\n    cat{b}: Concat({prev}, side{b})\n"
            ));
            names.push(format!("cat{b}"));
            c += extra;
            prev = format!("cat{b}");
        }
        if rng.below(3) == 0 && h >= 3 && w >= 3 {
            s.push_str(&format!(
                "    res{b}: Conv2d(out: {c}, kernel: 3, padding: 1)\n    sum{b}: Add({prev}, res{b})\n"
            ));
            names.push(format!("res{b}"));
            prev = format!("sum{b}");
        }
        if h >= 2 && w >= 2 && rng.below(2) == 0 {
            let kind = ["MaxPool2d", "AvgPool2d"][rng.below(2)];
            let pad = rng.below(2);
            s.push_str(&format!("    pool{b}: {kind}(kernel: 2, padding: {pad})\n"));
            (h, w) = (conv_out(h, 2, 2, pad), conv_out(w, 2, 2, pad));
            prev = format!("pool{b}");
        }
    }
    if rng.below(3) == 0 {
        s.push_str("    gap: GlobalAvgPool\n");
    }
    s.push_str("    flat: Flatten\n");
    if rng.below(2) == 0 {
        s.push_str(&format!("    fc0: Linear(out: {})\n", 4 + rng.below(30)));
        if rng.below(2) == 0 {
            s.push_str("    bn_fc: BatchNorm1d\n");
        }
        s.push_str(&format!("    act: {}\n", activation(&mut rng)));
        names.push("fc0".into());
    }
    s.push_str("    fc: Linear(out: 10)\n}\n\nquantize {\n");
    let backend = ["fbgemm", "qnnpack"][rng.below(2)];
    let default = ["qat(fbgemm)", "qat(qnnpack)", "qat(native)"][rng.below(3)];
    s.push_str(&format!("    backend: {backend}\n    default: {default}\n"));
    for name in &names {
        if rng.below(5) == 0 {
            s.push_str(&format!("    {name}: none\n"));
        }
    }
    if rng.below(4) == 0 {
        s.push_str("    fc: none\n");
    }
    s.push_str("}\n");
    let _ = prev;
    s
}
