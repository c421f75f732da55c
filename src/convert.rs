//! convert: a trained fake-quant network -> the int8 IR, as torch's `convert` does.
//!
//! Observers become scale and zero point; a layer's output parameters are those of the fake
//! quant that follows it (prepare_qat put one there); fused BatchNorm is folded into the conv
//! weight and bias before the weight is quantized with its observer's parameters; biases become
//! int32 in units of `in_scale · w_scale`; fused ReLU/ReLU6 become the output clamp; pools,
//! flatten and standalone ReLU run on codes with their input's parameters; `none` layers stay f32
//! between a dequantize and a quantize. It does not change shapes and does not read data.

use crate::int8::{FWeights, QGraph, QNode, QOp, QWeights, TensorType};
use crate::ir::Graph;
use crate::ir::{Act, Node, Op, OutputQuant, Quantized};
use crate::quant::numerics::{activation_clamp, quantize, quantize_bias, QParams};
use crate::quant::qconfig::{DType, Scheme};
use crate::state::{NodeState, Param, State};

/// The largest reduction length an int8 layer may have: beyond it, the sum of u8 x i8 products
/// (each at most 255 · 128 in size) could overflow the i32 accumulator.
pub use crate::int8::MAX_REDUCTION;

/// Converts a trained network (a graph and its state), or says which layer cannot be converted
/// and why. Fused BatchNorms are folded first ([`crate::passes::fold_bn`]).
pub fn convert(graph: &Graph, state: &State) -> Result<QGraph, String> {
    let (folded, state) = crate::passes::fold_bn::fold_batch_norm(graph, state);
    let g = &folded;
    let users = g.users();
    let mut nodes: Vec<QNode> = Vec::new();
    // Old node -> new node holding its value.
    let mut value = vec![usize::MAX; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        let inputs: Vec<usize> = node.inputs.iter().map(|&j| value[j]).collect();
        let in_ty = inputs.first().map(|&j| nodes[j].ty);
        let quantized_in = matches!(in_ty, Some(TensorType::U8(_)));
        // The parameters of the fake quant that reads this node, if it is its only reader.
        let out_fq = || -> Result<Observed, String> {
            match users[i].as_slice() {
                [u] if matches!(g.nodes[*u].op, Op::FakeQuant(_)) => observed(g, &state, *u),
                _ => Err(format!(
                    "layer `{}` is quantized but no fake quant observes its output",
                    node.name
                )),
            }
        };
        let push = |nodes: &mut Vec<QNode>, op: QOp, ty: TensorType| {
            nodes.push(QNode {
                name: node.name.clone(),
                op,
                inputs: inputs.clone(),
                shape: node.shape.clone(),
                ty,
            });
            nodes.len() - 1
        };
        // Codes outside a narrow range (4-bit activations) are clamped as fake quant clamps
        // them: the value node `v` is followed by a clamp when `out` asks for one.
        let narrow = |nodes: &mut Vec<QNode>, v: usize, out: Observed| match out.narrow() {
            Some((lo, hi)) => {
                nodes.push(QNode {
                    name: format!("{}.clamp", node.name),
                    op: QOp::Clamp { lo, hi },
                    inputs: vec![v],
                    shape: node.shape.clone(),
                    ty: nodes[v].ty,
                });
                nodes.len() - 1
            }
            None => v,
        };
        value[i] = match (&node.op, &state.nodes[i]) {
            (Op::Input, _) => push(&mut nodes, QOp::Input, TensorType::F32),
            (Op::FakeQuant(_), _) if quantized_in => inputs[0], // its parameters are its producer's
            (Op::FakeQuant(_), _) => {
                let out = observed(g, &state, i)?;
                let v = push(&mut nodes, QOp::Quantize, TensorType::U8(out.q.into()));
                narrow(&mut nodes, v, out)
            }
            (Op::DeQuantStub, _) if quantized_in => {
                push(&mut nodes, QOp::Dequantize, TensorType::F32)
            }
            (Op::DeQuantStub | Op::Dropout { .. }, _) => inputs[0],
            (
                Op::Linear {
                    in_features,
                    out_features,
                    act,
                    weight_fq,
                    ..
                },
                NodeState::Linear {
                    weight,
                    bias,
                    bn,
                    weight_obs,
                },
            ) => {
                if bn.is_some() {
                    return Err(format!(
                        "layer `{}`: internal error: its BatchNorm was not folded",
                        node.name
                    ));
                }
                let layer = WeightLayer {
                    weight: weight.value.clone(),
                    bias: bias_values(bias.as_ref(), *out_features),
                    out_channels: *out_features,
                    act: *act,
                    quantized: weight_fq.is_some(),
                };
                let (in_features, out_features) = (*in_features, *out_features);
                match layer.convert(node, in_ty, weight_obs.as_ref(), out_fq)? {
                    Converted::Int8(w, out) => push(
                        &mut nodes,
                        QOp::Linear {
                            in_features,
                            out_features,
                            w,
                        },
                        TensorType::U8(out.into()),
                    ),
                    Converted::Float(w) => push(
                        &mut nodes,
                        QOp::FloatLinear {
                            in_features,
                            out_features,
                            w,
                        },
                        TensorType::F32,
                    ),
                }
            }
            (
                Op::Conv2d {
                    geom,
                    act,
                    weight_fq,
                    ..
                },
                NodeState::Conv {
                    weight,
                    bias,
                    bn,
                    weight_obs,
                },
            ) => {
                let layer = WeightLayer {
                    weight: weight.value.clone(),
                    bias: bias_values(bias.as_ref(), geom.out_channels),
                    out_channels: geom.out_channels,
                    act: *act,
                    quantized: weight_fq.is_some(),
                };
                if bn.is_some() {
                    return Err(format!(
                        "layer `{}`: internal error: its BatchNorm was not folded",
                        node.name
                    ));
                }
                let geom = *geom;
                match layer.convert(node, in_ty, weight_obs.as_ref(), out_fq)? {
                    Converted::Int8(w, out) => push(
                        &mut nodes,
                        QOp::Conv2d { geom, w },
                        TensorType::U8(out.into()),
                    ),
                    Converted::Float(w) => {
                        push(&mut nodes, QOp::FloatConv2d { geom, w }, TensorType::F32)
                    }
                }
            }
            (Op::BatchNorm(_), NodeState::Bn(bn)) => {
                let (scale, shift) = bn.affine();
                if quantized_in {
                    let out = out_fq()?;
                    let v = push(
                        &mut nodes,
                        QOp::BatchNorm { scale, shift },
                        TensorType::U8(out.q.into()),
                    );
                    narrow(&mut nodes, v, out)
                } else {
                    push(
                        &mut nodes,
                        QOp::FloatBatchNorm { scale, shift },
                        TensorType::F32,
                    )
                }
            }
            (Op::Activation(a), _) => match (in_ty, a.quantized()) {
                // A clamp of the input's codes, unless the output is observed (ReLU6 under
                // torch's placement, `Graph::torch_relu6`).
                (Some(TensorType::U8(q)), Quantized::Clamp(act))
                    if g.output_quant(&node.op) == OutputQuant::Shared =>
                {
                    let (lo, hi) = activation_clamp(true, act == Act::ReLU6, q.into(), 0, 255);
                    push(&mut nodes, QOp::Clamp { lo, hi }, TensorType::U8(q))
                }
                (Some(TensorType::U8(q)), _) => {
                    let out = out_fq()?;
                    let (lo, hi) = out.codes;
                    let table = a.table(q.into(), out.q);
                    let table = table.iter().map(|&c| c.clamp(lo as u8, hi as u8)).collect();
                    push(&mut nodes, QOp::Lut { table }, TensorType::U8(out.q.into()))
                }
                _ => push(&mut nodes, QOp::FloatAct(*a), TensorType::F32),
            },
            (Op::Pool(p), _) => push(&mut nodes, QOp::Pool(*p), in_ty.unwrap_or(TensorType::F32)),
            (Op::Flatten, _) => push(&mut nodes, QOp::Flatten, in_ty.unwrap_or(TensorType::F32)),
            (Op::Combine(c), _) => {
                let all_quantized = inputs
                    .iter()
                    .all(|&j| matches!(nodes[j].ty, TensorType::U8(_)));
                let out = if all_quantized { Some(out_fq()?) } else { None };
                let ty = out.map_or(TensorType::F32, |o| TensorType::U8(o.q.into()));
                if !all_quantized
                    && inputs
                        .iter()
                        .any(|&j| matches!(nodes[j].ty, TensorType::U8(_)))
                {
                    return Err(format!(
                        "`{}` ({}) combines a quantized and a float tensor",
                        node.name,
                        c.name()
                    ));
                }
                let v = push(&mut nodes, QOp::Combine(*c), ty);
                match out {
                    Some(out) => narrow(&mut nodes, v, out),
                    None => v,
                }
            }
            // The state of a layer with parameters does not match it.
            (op @ (Op::Linear { .. } | Op::Conv2d { .. } | Op::BatchNorm(_)), _) => {
                return Err(format!(
                    "convert: layer `{}` ({}) has no state",
                    node.name,
                    op.mnemonic()
                ))
            }
        };
    }
    Ok(QGraph {
        name: g.name.clone(),
        nodes,
        output: value[g.output],
    })
}

/// A Linear's or Conv2d's float weights `[out, k]` (BatchNorm already folded in) and biases.
struct WeightLayer {
    weight: Vec<f32>,
    bias: Vec<f32>,
    out_channels: usize,
    act: Act,
    /// Whether prepare_qat gave it a weight fake quant.
    quantized: bool,
}

enum Converted {
    /// qint8 weights and the output's parameters.
    Int8(QWeights, QParams),
    /// Kept float (`none`).
    Float(FWeights),
}

impl WeightLayer {
    /// Quantizes the layer when it is quantized and reads codes; otherwise keeps it float.
    fn convert(
        self,
        node: &Node,
        in_ty: Option<TensorType>,
        weight_obs: Option<&crate::quant::observer::Observer>,
        out_fq: impl FnOnce() -> Result<Observed, String>,
    ) -> Result<Converted, String> {
        match (self.quantized, in_ty) {
            (true, Some(TensorType::U8(x))) => {
                check_reduction(node, self.weight.len() / self.out_channels.max(1))?;
                let out = out_fq()?;
                let w = quantize_weights(
                    node,
                    &self.weight,
                    &self.bias,
                    self.out_channels,
                    x.into(),
                    out,
                    self.act,
                    weight_obs,
                )?;
                Ok(Converted::Int8(w, out.q))
            }
            _ => Ok(Converted::Float(FWeights {
                weight: self.weight,
                bias: self.bias,
                act: self.act,
            })),
        }
    }
}

/// A fake quant's parameters as quint8 codes, and the codes its values take.
#[derive(Clone, Copy)]
struct Observed {
    q: QParams,
    /// `quant_min..=quant_max` as codes; all 256 for the type's full range and for its
    /// reduce_range half, where torch's int8 kernels saturate to the type (reduce_range only
    /// narrows the scale's range; see [`crate::quant::numerics`]).
    codes: (i32, i32),
}

impl Observed {
    /// The clamp a narrower range needs after an op that does not clamp itself.
    fn narrow(self) -> Option<(i32, i32)> {
        (self.codes != (0, 255)).then_some(self.codes)
    }
}

/// The parameters of fake-quant node `i`'s observer, as quint8 codes. A qint8 activation `q`
/// with zero point `z` is the quint8 code `q + 128` with zero point `z + 128`: the same values
/// on the same grid, so the u8 kernels run it unchanged.
fn observed(g: &Graph, state: &State, i: usize) -> Result<Observed, String> {
    let name = &g.nodes[i].name;
    match &state.nodes[i] {
        NodeState::FakeQuant { obs } if obs.is_initialized() => {
            let q = obs.qparams()[0];
            let cfg = obs.config;
            let shift = match cfg.dtype {
                DType::Quint8 => 0,
                DType::Qint8 => 128,
            };
            let (lo, hi) = cfg.dtype.range();
            let full = [(lo, hi), (lo / 2, hi / 2)].contains(&(cfg.quant_min, cfg.quant_max));
            let codes = if full {
                (0, 255)
            } else {
                (cfg.quant_min + shift, cfg.quant_max + shift)
            };
            Ok(Observed {
                q: QParams {
                    zero_point: q.zero_point + shift,
                    ..q
                },
                codes,
            })
        }
        NodeState::FakeQuant { .. } => Err(format!(
            "the observer of `{name}` has seen no data: train (or calibrate) before converting"
        )),
        _ => Err(format!("`{name}` is not a fake quant")),
    }
}

fn check_reduction(node: &Node, k: usize) -> Result<(), String> {
    if k > MAX_REDUCTION {
        return Err(format!(
            "layer `{}` sums {k} products per output; above {MAX_REDUCTION} the i32 accumulator of u8 x i8 \
             products could overflow. Keep it float (`{}: none`) or make it smaller",
            node.name, node.name
        ));
    }
    Ok(())
}

fn bias_values(bias: Option<&Param>, n: usize) -> Vec<f32> {
    bias.map_or(vec![0.0; n], |b| b.value.clone())
}

/// Quantizes weights with their observer's parameters, biases to int32, and sets the clamp.
#[allow(clippy::too_many_arguments)]
fn quantize_weights(
    node: &Node,
    w: &[f32],
    b: &[f32],
    out_channels: usize,
    x: QParams,
    out: Observed,
    act: Act,
    obs: Option<&crate::quant::observer::Observer>,
) -> Result<QWeights, String> {
    let obs = obs.ok_or_else(|| format!("layer `{}` has no weight observer", node.name))?;
    if obs.config.dtype != DType::Qint8 || obs.config.scheme != Scheme::Symmetric {
        return Err(format!(
            "layer `{}`: the int8 kernels take symmetric qint8 weights, its qconfig asks for {} {}",
            node.name,
            obs.config.dtype.name(),
            obs.config.scheme.name()
        ));
    }
    if !obs.is_initialized() {
        return Err(format!(
            "the weight observer of `{}` has seen no data: train before converting",
            node.name
        ));
    }
    let qparams = obs.qparams();
    let scales: Vec<f32> = qparams.iter().map(|q| q.scale).collect();
    let k = w.len() / out_channels;
    let scale_of = |c: usize| {
        if scales.len() == 1 {
            scales[0]
        } else {
            scales[c]
        }
    };
    let (lo, hi) = (obs.config.quant_min, obs.config.quant_max);
    let weight = w
        .iter()
        .enumerate()
        .map(|(i, &v)| quantize(v, 1.0 / scale_of(i / k), 0, lo, hi) as i8)
        .collect();
    let bias = b
        .iter()
        .enumerate()
        .map(|(c, &v)| quantize_bias(v, x.scale, scale_of(c)))
        .collect();
    let (lo, hi) = out.codes;
    let clamp = activation_clamp(act != Act::None, act == Act::ReLU6, out.q, lo, hi);
    Ok(QWeights {
        weight,
        weight_scales: scales,
        bias,
        clamp,
    })
}
