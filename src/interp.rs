//! The reference interpreter of the int8 IR: plain scalar loops, one sample at a time, NCHW,
//! no SIMD and no tricks. It defines what every int8 op computes; the JIT must match it bit for
//! bit. All rounding, requantization and clamping come from [`crate::quant::numerics`].

use rayon::prelude::*;

use crate::int8::{FWeights, QGraph, QOp, QWeights};
use crate::ir::ConvGeom;
use crate::ops::combine;
use crate::quant::numerics::{dequantize, quantize, requant_multiplier, requantize, QParams};

/// One sample's value of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl Value {
    fn f32(&self) -> &[f32] {
        match self {
            Value::F32(v) => v,
            Value::U8(_) => panic!("the converter gives this op f32 input"),
        }
    }

    fn u8(&self) -> &[u8] {
        match self {
            Value::U8(v) => v,
            Value::F32(_) => panic!("the converter gives this op u8 input"),
        }
    }
}

/// Runs the graph on `batch` samples of f32 input (NCHW, one sample after another); returns the
/// output as f32 (dequantized if the graph ends quantized). Samples run in parallel. An input
/// whose length is not `batch` times the graph's input size is an error.
pub fn run(graph: &QGraph, input: &[f32], batch: usize) -> Result<Vec<f32>, String> {
    let size: usize = graph.nodes.first().map_or(0, |n| n.shape.iter().product());
    if batch == 0 || input.len() != batch * size {
        return Err(format!(
            "input has {} values; {batch} samples of shape {:?} need {}",
            input.len(),
            graph
                .nodes
                .first()
                .map(|n| n.shape.clone())
                .unwrap_or_default(),
            batch * size
        ));
    }
    Ok(input
        .par_chunks(size)
        .flat_map_iter(|x| match run_sample(graph, x) {
            Value::F32(v) => v,
            Value::U8(v) => {
                let q = graph.nodes[graph.output]
                    .ty
                    .qparams()
                    .expect("u8 output has parameters");
                v.iter().map(|&c| dequantize(c as i32, q)).collect()
            }
        })
        .collect())
}

/// Runs one sample and returns every node's value (for `compare` and tests).
pub fn run_all(graph: &QGraph, x: &[f32]) -> Vec<Value> {
    let mut values: Vec<Value> = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let arg = |k: usize| &values[node.inputs[k]];
        let in_shape = |k: usize| graph.nodes[node.inputs[k]].shape.as_slice();
        let in_q = |k: usize| graph.nodes[node.inputs[k]].ty.qparams();
        let out_q = node.ty.qparams();
        let v = match &node.op {
            QOp::Input => Value::F32(x.to_vec()),
            QOp::Quantize => {
                let q = out_q.expect("quantize gives u8");
                Value::U8(
                    arg(0)
                        .f32()
                        .iter()
                        .map(|&v| quantize(v, 1.0 / q.scale, q.zero_point, 0, 255) as u8)
                        .collect(),
                )
            }
            QOp::Dequantize => {
                let q = in_q(0).expect("dequantize takes u8");
                Value::F32(
                    arg(0)
                        .u8()
                        .iter()
                        .map(|&c| dequantize(c as i32, q))
                        .collect(),
                )
            }
            QOp::Linear {
                in_features,
                out_features,
                w,
            } => {
                let (x, xq, yq) = (
                    arg(0).u8(),
                    in_q(0).expect("u8 input"),
                    out_q.expect("u8 output"),
                );
                Value::U8(
                    (0..*out_features)
                        .map(|o| {
                            let row = &w.weight[o * in_features..(o + 1) * in_features];
                            let acc: i32 = row
                                .iter()
                                .zip(x)
                                .map(|(&wv, &xv)| (xv as i32 - xq.zero_point) * wv as i32)
                                .sum();
                            requant(acc.wrapping_add(w.bias[o]), w, o, xq, yq)
                        })
                        .collect(),
                )
            }
            QOp::Conv2d { geom, w } => {
                let (xq, yq) = (in_q(0).expect("u8 input"), out_q.expect("u8 output"));
                let x: Vec<i32> = arg(0)
                    .u8()
                    .iter()
                    .map(|&c| c as i32 - xq.zero_point)
                    .collect();
                let acc = conv_acc(&x, in_shape(0), &node.shape, geom, |o, k| {
                    w.weight[o * k.1 + k.0] as i32
                });
                let p = node.shape[1] * node.shape[2];
                Value::U8(
                    acc.iter()
                        .enumerate()
                        .map(|(i, &a)| requant(a.wrapping_add(w.bias[i / p]), w, i / p, xq, yq))
                        .collect(),
                )
            }
            QOp::Lut { table } => {
                Value::U8(arg(0).u8().iter().map(|&c| table[c as usize]).collect())
            }
            QOp::Clamp { lo, hi } => Value::U8(
                arg(0)
                    .u8()
                    .iter()
                    .map(|&c| (c as i32).clamp(*lo, *hi) as u8)
                    .collect(),
            ),
            QOp::Pool(pool) => match arg(0) {
                Value::U8(x) => {
                    let zp = in_q(0).expect("u8").zero_point;
                    Value::U8(pool.eval_u8(x, in_shape(0), &node.shape, zp))
                }
                Value::F32(x) => Value::F32(pool.forward(x, in_shape(0), &node.shape)),
            },
            QOp::Flatten => arg(0).clone(),
            QOp::Combine(c) => {
                // Every input dequantized, the op in f32, the result quantized.
                let shapes: Vec<&[usize]> = (0..node.inputs.len()).map(in_shape).collect();
                let xs: Vec<Vec<f32>> = (0..node.inputs.len())
                    .map(|k| match (arg(k), in_q(k)) {
                        (Value::U8(x), Some(q)) => {
                            x.iter().map(|&c| dequantize(c as i32, q)).collect()
                        }
                        (v, _) => v.f32().to_vec(),
                    })
                    .collect();
                let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
                let mut sum = vec![0.0f32; node.shape.iter().product()];
                combine::eval_batch(&c.regions(&shapes, &node.shape), &refs, 1, &mut sum);
                match out_q {
                    Some(q) => Value::U8(
                        sum.iter()
                            .map(|&v| quantize(v, 1.0 / q.scale, q.zero_point, 0, 255) as u8)
                            .collect(),
                    ),
                    None => Value::F32(sum),
                }
            }
            QOp::BatchNorm { scale, shift } => {
                let (xq, yq) = (in_q(0).expect("u8"), out_q.expect("u8"));
                let p: usize = node.shape[1..].iter().product();
                Value::U8(
                    arg(0)
                        .u8()
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| {
                            let v = dequantize(c as i32, xq) * scale[i / p] + shift[i / p];
                            quantize(v, 1.0 / yq.scale, yq.zero_point, 0, 255) as u8
                        })
                        .collect(),
                )
            }
            QOp::FloatLinear {
                in_features,
                out_features,
                w,
            } => {
                let x = arg(0).f32();
                Value::F32(float_act(
                    w,
                    (0..*out_features)
                        .map(|o| {
                            w.weight[o * in_features..(o + 1) * in_features]
                                .iter()
                                .zip(x)
                                .map(|(a, b)| a * b)
                                .fold(0.0f32, |s, v| s + v)
                                + w.bias[o]
                        })
                        .collect(),
                ))
            }
            QOp::FloatConv2d { geom, w } => {
                let x = arg(0).f32();
                let acc = conv_acc(x, in_shape(0), &node.shape, geom, |o, k| {
                    w.weight[o * k.1 + k.0]
                });
                let p = node.shape[1] * node.shape[2];
                Value::F32(float_act(
                    w,
                    acc.iter()
                        .enumerate()
                        .map(|(i, a)| a + w.bias[i / p])
                        .collect(),
                ))
            }
            QOp::FloatAct(a) => {
                let x = arg(0).f32();
                let mut y = vec![0.0; x.len()];
                a.program().eval(x, &mut y);
                Value::F32(y)
            }
            QOp::FloatBatchNorm { scale, shift } => {
                let p: usize = node.shape[1..].iter().product();
                Value::F32(
                    arg(0)
                        .f32()
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| v * scale[i / p] + shift[i / p])
                        .collect(),
                )
            }
        };
        values.push(v);
    }
    values
}

fn run_sample(graph: &QGraph, x: &[f32]) -> Value {
    run_all(graph, x).swap_remove(graph.output)
}

/// Requantizes output channel `o`'s accumulator.
fn requant(acc: i32, w: &QWeights, o: usize, x: QParams, y: QParams) -> u8 {
    let m = requant_multiplier(x.scale, w.scale(o), y.scale);
    requantize(acc, m, y.zero_point, w.clamp.0, w.clamp.1) as u8
}

/// A float layer's fused activation: the activation's program ([`crate::ops::activation`]).
fn float_act(w: &FWeights, v: Vec<f32>) -> Vec<f32> {
    match w.act.activation() {
        Some(a) => {
            let mut y = vec![0.0; v.len()];
            a.program().eval(&v, &mut y);
            y
        }
        None => v,
    }
}

/// Direct convolution accumulators, `[O, Ho, Wo]`, of an input already offset by its zero point.
/// `weight(o, (k, kg))` is the weight of output channel `o` at tap `k` of `kg` per channel.
fn conv_acc<T>(
    x: &[T],
    in_shape: &[usize],
    out_shape: &[usize],
    geom: &ConvGeom,
    weight: impl Fn(usize, (usize, usize)) -> T,
) -> Vec<T>
where
    T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
{
    let (h, w) = (in_shape[1], in_shape[2]);
    let (ho, wo) = (out_shape[1], out_shape[2]);
    let (kh, kw) = geom.kernel;
    let cg = geom.in_channels / geom.groups;
    let og = geom.out_channels / geom.groups;
    let kg = cg * kh * kw;
    let mut out = vec![T::default(); geom.out_channels * ho * wo];
    for o in 0..geom.out_channels {
        let g = o / og;
        for oh in 0..ho {
            for ow in 0..wo {
                let mut acc = T::default();
                for c in 0..cg {
                    for i in 0..kh {
                        for j in 0..kw {
                            let ih = (oh * geom.stride.0 + i) as isize - geom.padding.0 as isize;
                            let iw = (ow * geom.stride.1 + j) as isize - geom.padding.1 as isize;
                            if ih < 0 || iw < 0 || ih as usize >= h || iw as usize >= w {
                                continue; // padding: a zero value
                            }
                            let xv = x[((g * cg + c) * h + ih as usize) * w + iw as usize];
                            acc = acc + xv * weight(o, ((c * kh + i) * kw + j, kg));
                        }
                    }
                }
                out[(o * ho + oh) * wo + ow] = acc;
            }
        }
    }
    out
}
