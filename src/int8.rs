//! The int8 IR: what `convert` produces from a trained fake-quant graph. Every tensor is either
//! f32 or quint8 with its scale and zero point; weights are qint8 (symmetric, per channel or per
//! tensor) and biases int32 in units of `in_scale · w_scale`. Layers kept float (`none`) stay as
//! f32 ops between a dequantize and a quantize.
//!
//! Its text form matches the float IR's, with every tensor's dtype and quantization parameters.

use serde::{Deserialize, Serialize};

use crate::ir::shape;
use crate::ir::Pool;
use crate::ir::{Act, Activation, Combine, ConvGeom};
use crate::limits;
use crate::quant::numerics::{requant_multiplier, QParams};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QGraph {
    pub name: String,
    pub nodes: Vec<QNode>,
    pub output: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QNode {
    pub name: String,
    pub op: QOp,
    pub inputs: Vec<usize>,
    /// One sample's shape.
    pub shape: Vec<usize>,
    pub ty: TensorType,
}

/// The type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum TensorType {
    F32,
    /// quint8 codes 0..255 with their quantization parameters.
    U8(QParamsDef),
}

/// Serializable quantization parameters (see [`QParams`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QParamsDef {
    pub scale: f32,
    pub zero_point: i32,
}

impl From<QParams> for QParamsDef {
    fn from(q: QParams) -> QParamsDef {
        QParamsDef {
            scale: q.scale,
            zero_point: q.zero_point,
        }
    }
}

impl From<QParamsDef> for QParams {
    fn from(q: QParamsDef) -> QParams {
        QParams {
            scale: q.scale,
            zero_point: q.zero_point,
        }
    }
}

impl TensorType {
    pub fn qparams(&self) -> Option<QParams> {
        match self {
            TensorType::F32 => None,
            TensorType::U8(q) => Some((*q).into()),
        }
    }
}

/// A quantized weight layer (Linear or Conv2d): qint8 weights `[out, k]`, one scale per output
/// channel (or one for all), int32 biases, and the output clamp of its fused activation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QWeights {
    pub weight: Vec<i8>,
    pub weight_scales: Vec<f32>,
    pub bias: Vec<i32>,
    /// Output codes are clamped to `[lo, hi]`.
    pub clamp: (i32, i32),
}

impl QWeights {
    pub fn scale(&self, channel: usize) -> f32 {
        if self.weight_scales.len() == 1 {
            self.weight_scales[0]
        } else {
            self.weight_scales[channel]
        }
    }
}

/// A float weight layer kept float by `none`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FWeights {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub act: Act,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum QOp {
    Input,
    /// f32 -> quint8 with the node's parameters.
    Quantize,
    /// quint8 -> f32.
    Dequantize,
    Linear {
        in_features: usize,
        out_features: usize,
        w: QWeights,
    },
    Conv2d {
        geom: ConvGeom,
        w: QWeights,
    },
    /// `out = clamp(x, lo, hi)` on codes (a standalone ReLU/ReLU6; input and output share
    /// parameters).
    Clamp {
        lo: i32,
        hi: i32,
    },
    /// Per-sample layout is unchanged (C, H, W row-major), so flattening moves no data.
    Flatten,
    /// A standalone BatchNorm: `quantize(dequantize(x) · scale[c] + shift[c])`.
    BatchNorm {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    FloatLinear {
        in_features: usize,
        out_features: usize,
        w: FWeights,
    },
    FloatConv2d {
        geom: ConvGeom,
        w: FWeights,
    },
    FloatAct(Activation),
    /// `out = table[x]`: an activation on codes, its 256 entries computed at convert time from
    /// the float function and both tensors' parameters ([`Activation::table`]).
    Lut {
        table: Vec<u8>,
    },
    FloatBatchNorm {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    /// Pooling, on codes or floats; the output keeps the input's type. (Serialized as the
    /// pool itself: `"GlobalAvgPool"`.)
    #[serde(untagged)]
    Pool(Pool),
    /// Dequantizes every input, combines them in f32 ([`Combine::regions`]), and quantizes
    /// with the node's parameters. (Serialized as the op's name: `"Add"`.)
    #[serde(untagged)]
    Combine(Combine),
}

impl TensorType {
    /// Whether values of this type are quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self, TensorType::U8(_))
    }
}

impl QOp {
    /// How many inputs the op takes.
    pub fn inputs(&self) -> std::ops::RangeInclusive<usize> {
        match self {
            QOp::Input => 0..=0,
            QOp::Combine(c) => c.inputs(),
            QOp::Quantize
            | QOp::Dequantize
            | QOp::Linear { .. }
            | QOp::Conv2d { .. }
            | QOp::Clamp { .. }
            | QOp::Pool(_)
            | QOp::Flatten
            | QOp::BatchNorm { .. }
            | QOp::FloatLinear { .. }
            | QOp::FloatConv2d { .. }
            | QOp::FloatAct(_)
            | QOp::FloatBatchNorm { .. }
            | QOp::Lut { .. } => 1..=1,
        }
    }

    pub fn mnemonic(&self) -> &'static str {
        match self {
            QOp::Input => "input",
            QOp::Quantize => "quantize",
            QOp::Dequantize => "dequantize",
            QOp::Linear { .. } => "qlinear",
            QOp::Conv2d { .. } => "qconv2d",
            QOp::Clamp { .. } => "clamp",
            QOp::Pool(p) => p.mnemonic(),
            QOp::Flatten => "flatten",
            QOp::Combine(c) => c.mnemonic(),
            QOp::BatchNorm { .. } => "batch_norm",
            QOp::FloatLinear { .. } => "linear",
            QOp::FloatConv2d { .. } => "conv2d",
            QOp::FloatAct(a) => a.mnemonic(),
            QOp::Lut { .. } => "lut",
            QOp::FloatBatchNorm { .. } => "batch_norm",
        }
    }
}

fn weights_text(w: &QWeights) -> String {
    let per = if w.weight_scales.len() == 1 {
        format!("scale={:.6e}", w.weight_scales[0])
    } else {
        format!("per_channel({})", w.weight_scales.len())
    };
    format!(
        "w=qint8[{}] {per} bias=i32[{}] clamp={}..{}",
        w.weight.len(),
        w.bias.len(),
        w.clamp.0,
        w.clamp.1
    )
}

impl QNode {
    /// Multiply-accumulates per sample: the weight layers' products (output values times fan-in);
    /// 0 for every other op.
    pub fn macs(&self) -> usize {
        let outputs: usize = self.shape.iter().product();
        match &self.op {
            QOp::Linear { in_features, .. } | QOp::FloatLinear { in_features, .. } => {
                outputs * in_features
            }
            QOp::Conv2d { geom, .. } | QOp::FloatConv2d { geom, .. } => outputs * geom.fan_in(),
            QOp::Input
            | QOp::Quantize
            | QOp::Dequantize
            | QOp::Clamp { .. }
            | QOp::Pool(_)
            | QOp::Flatten
            | QOp::BatchNorm { .. }
            | QOp::FloatAct(_)
            | QOp::Lut { .. }
            | QOp::FloatBatchNorm { .. }
            | QOp::Combine(_) => 0,
        }
    }
}

impl QGraph {
    /// Multiply-accumulates per sample of every weight layer.
    pub fn macs(&self) -> usize {
        self.nodes.iter().map(QNode::macs).sum()
    }

    /// Bytes of the model's weights: int8 weights with their i32 biases and f32 scales, float
    /// layers and batch norms at 4 bytes a value, lookup tables at 1.
    pub fn weight_bytes(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| match &n.op {
                QOp::Linear { w, .. } | QOp::Conv2d { w, .. } => {
                    w.weight.len() + 4 * (w.bias.len() + w.weight_scales.len())
                }
                QOp::FloatLinear { w, .. } | QOp::FloatConv2d { w, .. } => {
                    4 * (w.weight.len() + w.bias.len())
                }
                QOp::BatchNorm { scale, shift } | QOp::FloatBatchNorm { scale, shift } => {
                    4 * (scale.len() + shift.len())
                }
                QOp::Lut { table } => table.len(),
                QOp::Input
                | QOp::Quantize
                | QOp::Dequantize
                | QOp::Clamp { .. }
                | QOp::Pool(_)
                | QOp::Flatten
                | QOp::Combine(_)
                | QOp::FloatAct(_) => 0,
            })
            .sum()
    }

    /// The stable text form: the float IR's, with dtypes and quantization parameters.
    pub fn to_text(&self) -> String {
        let lines = self.nodes.iter().map(|node| {
            let attrs = match &node.op {
                QOp::Linear {
                    in_features,
                    out_features,
                    w,
                } => format!("in={in_features} out={out_features} {}", weights_text(w)),
                QOp::Conv2d { geom, w } => format!(
                    "in={} out={} k={}x{} s={}x{} p={}x{} g={} {}",
                    geom.in_channels,
                    geom.out_channels,
                    geom.kernel.0,
                    geom.kernel.1,
                    geom.stride.0,
                    geom.stride.1,
                    geom.padding.0,
                    geom.padding.1,
                    geom.groups,
                    weights_text(w)
                ),
                QOp::Clamp { lo, hi } => format!("{lo}..{hi}"),
                QOp::Pool(pool) => pool.window().map_or(String::new(), |p| {
                    format!(
                        "k={}x{} s={}x{} p={}x{}",
                        p.kernel.0, p.kernel.1, p.stride.0, p.stride.1, p.padding.0, p.padding.1
                    )
                }),
                QOp::FloatLinear {
                    in_features,
                    out_features,
                    w,
                } => format!("in={in_features} out={out_features}{}", fused(w.act)),
                QOp::FloatConv2d { geom, w } => format!(
                    "in={} out={}{}",
                    geom.in_channels,
                    geom.out_channels,
                    fused(w.act)
                ),
                QOp::FloatAct(a) => a
                    .args()
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                QOp::Lut { table } => format!("table=u8[{}]", table.len()),
                QOp::Input
                | QOp::Quantize
                | QOp::Dequantize
                | QOp::Flatten
                | QOp::Combine(_)
                | QOp::BatchNorm { .. }
                | QOp::FloatBatchNorm { .. } => String::new(),
            };
            let dims = crate::ir::dims_text(&node.shape);
            let ty = match node.ty {
                TensorType::F32 => format!("f32[N, {dims}]"),
                TensorType::U8(q) => {
                    format!("u8[N, {dims}] (scale={:.6e}, zp={})", q.scale, q.zero_point)
                }
            };
            crate::ir::TextLine {
                name: &node.name,
                mnemonic: node.op.mnemonic(),
                inputs: node
                    .inputs
                    .iter()
                    .map(|&i| self.nodes[i].name.as_str())
                    .collect(),
                attrs,
                ty,
            }
        });
        crate::ir::graph_text(
            &format!("{} (int8)", self.name),
            lines,
            &self.nodes[self.output].name,
        )
    }
}

/// Reduction lengths above this could overflow the i32 accumulator of u8 x i8 products.
pub const MAX_REDUCTION: usize = (i32::MAX as usize) / (255 * 128);

/// Checks every invariant the interpreter relies on: the input node first and only first, inputs
/// from earlier nodes, dtypes each op accepts, shapes by each op's rule, array lengths, weight
/// scales finite and positive, zero points inside 0..255, clamps inside the code range, reduction
/// lengths that cannot overflow. Returns every violation, each naming its node.
pub fn verify(g: &QGraph) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    if g.nodes.is_empty() {
        return Err(vec!["the graph has no nodes".into()]);
    }
    if g.output >= g.nodes.len() {
        errors.push(format!("the output {} is not a node", g.output));
    }
    let mut names = std::collections::HashSet::new();
    // Shapes that the rules below may compute with (each node's own error is reported below).
    let shape_ok: Vec<bool> = g
        .nodes
        .iter()
        .map(|n| {
            (1..=3).contains(&n.shape.len())
                && !n.shape.contains(&0)
                && limits::elements(&n.shape).is_some()
        })
        .collect();
    for (i, node) in g.nodes.iter().enumerate() {
        let mut err = |msg: String| errors.push(format!("node `{}`: {msg}", node.name));
        if !names.insert(node.name.as_str()) {
            err("duplicate name".into());
        }
        if node.shape.is_empty() || node.shape.len() > 3 || node.shape.contains(&0) {
            err(format!("bad shape {:?}", node.shape));
            continue;
        }
        if limits::elements(&node.shape).is_none() {
            err(format!(
                "shape {:?} is too large: {} values per sample; at most {}",
                node.shape,
                limits::count_text(limits::approx_elements(&node.shape)),
                limits::count_text(limits::MAX_ELEMENTS as f64)
            ));
            continue;
        }
        if let TensorType::U8(q) = node.ty {
            // Quantizing multiplies by `1 / scale`: both must be finite and normal.
            if !(q.scale.is_normal() && q.scale > 0.0 && (1.0 / q.scale).is_normal()) {
                err(format!(
                    "scale {} is not a positive normal number with a normal inverse",
                    q.scale
                ));
            }
            if !(0..=255).contains(&q.zero_point) {
                err(format!(
                    "zero point {} is outside quint8 (0..255)",
                    q.zero_point
                ));
            }
        }
        if (i == 0) != matches!(node.op, QOp::Input) {
            err("the input node must be first and only first".into());
            continue;
        }
        if i == 0 {
            if node.ty != TensorType::F32 || !node.inputs.is_empty() {
                err("the input is f32 and has no inputs".into());
            }
            continue;
        }
        let want_inputs = node.op.inputs();
        if !want_inputs.contains(&node.inputs.len()) {
            err(format!("has {} inputs", node.inputs.len()));
            continue;
        }
        if let Some(&j) = node.inputs.iter().find(|&&j| j >= i) {
            err(format!("reads node {j}, which is not before it"));
            continue;
        }
        if node.inputs.iter().any(|&j| !shape_ok[j]) {
            // Its input's shape was reported; nothing can be computed from it.
            continue;
        }
        let x = &g.nodes[node.inputs[0]];
        let (in_u8, out_u8) = (x.ty.is_quantized(), node.ty.is_quantized());
        let mut types = |ok: bool, what: &str| {
            if !ok {
                errors.push(format!("node `{}`: {what}", node.name));
            }
        };
        match &node.op {
            QOp::Input => {}
            QOp::Quantize => types(!in_u8 && out_u8, "quantize takes f32 and gives u8"),
            QOp::Dequantize => types(in_u8 && !out_u8, "dequantize takes u8 and gives f32"),
            QOp::Linear { .. }
            | QOp::Conv2d { .. }
            | QOp::Clamp { .. }
            | QOp::BatchNorm { .. }
            | QOp::Lut { .. } => types(in_u8 && out_u8, "a quantized op takes and gives u8"),
            QOp::FloatLinear { .. }
            | QOp::FloatConv2d { .. }
            | QOp::FloatAct(_)
            | QOp::FloatBatchNorm { .. } => {
                types(!in_u8 && !out_u8, "a float op takes and gives f32")
            }
            QOp::Pool(_) | QOp::Flatten => types(
                x.ty == node.ty,
                "pooling and flatten keep their input's type",
            ),
            QOp::Combine(c) => {
                let same = node
                    .inputs
                    .iter()
                    .all(|&j| g.nodes[j].ty.is_quantized() == out_u8);
                types(
                    same,
                    &format!("{} takes inputs of its own kind", c.mnemonic()),
                )
            }
        }
        if let QOp::Lut { table } = &node.op {
            types(
                table.len() == 256,
                &format!("a lookup table has 256 entries, not {}", table.len()),
            );
        }
        if let QOp::Clamp { lo, hi } = node.op {
            types(x.ty == node.ty, "clamp keeps its input's parameters");
            types(
                0 <= lo && lo <= hi && hi <= 255,
                &format!("clamp {lo}..{hi} is not a range of codes inside 0..255"),
            );
        }
        if let QOp::FloatLinear { w, .. } | QOp::FloatConv2d { w, .. } = &node.op {
            types(
                w.weight.iter().chain(&w.bias).all(|v| v.is_finite()),
                "float weights and biases must be finite",
            );
        }
        // Requantization multipliers must be finite and normal, so that no product with an
        // accumulator is NaN and every engine rounds the same values.
        if let (QOp::Linear { w, .. } | QOp::Conv2d { w, .. }, Some(xq), Some(yq)) =
            (&node.op, x.ty.qparams(), node.ty.qparams())
        {
            let bad = (0..w.weight_scales.len())
                .map(|o| requant_multiplier(xq.scale, w.scale(o), yq.scale))
                .find(|m| !m.is_normal());
            if let Some(m) = bad {
                types(
                    false,
                    &format!(
                        "requantization multiplier {m} (input scale x weight scale / output \
                         scale) is not a normal number"
                    ),
                );
            }
        }
        let errs_before = errors.len();
        let mut shape_err = |msg: String| errors.push(format!("node `{}`: {msg}", node.name));
        let expected: Option<Vec<usize>> = match &node.op {
            QOp::Input => None,
            QOp::Quantize
            | QOp::Dequantize
            | QOp::Clamp { .. }
            | QOp::FloatAct(_)
            | QOp::Lut { .. } => Some(x.shape.clone()),
            QOp::Combine(c) => {
                let shapes: Vec<&[usize]> = node
                    .inputs
                    .iter()
                    .map(|&j| g.nodes[j].shape.as_slice())
                    .collect();
                match c.output_shape(&shapes, |k| format!("input #{k}")) {
                    Ok(shape) => Some(shape),
                    Err(e) => {
                        shape_err(e);
                        None
                    }
                }
            }
            QOp::Flatten => Some(shape::flatten(&x.shape)),
            QOp::Pool(p) => rule(p.output_shape(&x.shape), &mut shape_err),
            QOp::BatchNorm { scale, shift } | QOp::FloatBatchNorm { scale, shift } => {
                if !matches!(x.shape.len(), 1 | 3)
                    || scale.len() != x.shape[0]
                    || shift.len() != x.shape[0]
                    || scale.iter().chain(shift).any(|v| !v.is_finite())
                {
                    shape_err(format!(
                        "batch norm needs a [C, H, W] or [C] input and C finite scales and \
                         shifts, has {} and {}",
                        scale.len(),
                        shift.len()
                    ));
                }
                Some(x.shape.clone())
            }
            QOp::Linear {
                in_features,
                out_features,
                w,
            } => {
                check_weights(
                    &mut shape_err,
                    w.weight.len(),
                    w.bias.len(),
                    *in_features,
                    *out_features,
                );
                check_qweights(&mut shape_err, w, *out_features, *in_features);
                rule(
                    shape::linear(&x.shape, *in_features, *out_features),
                    &mut shape_err,
                )
            }
            QOp::FloatLinear {
                in_features,
                out_features,
                w,
            } => {
                check_weights(
                    &mut shape_err,
                    w.weight.len(),
                    w.bias.len(),
                    *in_features,
                    *out_features,
                );
                rule(
                    shape::linear(&x.shape, *in_features, *out_features),
                    &mut shape_err,
                )
            }
            QOp::Conv2d { geom, .. } | QOp::FloatConv2d { geom, .. } if geom.groups == 0 => {
                shape_err("conv with zero groups".into());
                None
            }
            QOp::Conv2d { geom, .. } | QOp::FloatConv2d { geom, .. }
                if conv_reduction(geom).is_none() =>
            {
                shape_err(format!(
                    "conv of {} input channels in {} groups with kernel {:?} has too many \
                     products per output (at most {})",
                    geom.in_channels,
                    geom.groups,
                    geom.kernel,
                    limits::MAX_PARAMS
                ));
                None
            }
            QOp::Conv2d { geom, w } => {
                let k = conv_reduction(geom).expect("checked above");
                check_weights(
                    &mut shape_err,
                    w.weight.len(),
                    w.bias.len(),
                    k,
                    geom.out_channels,
                );
                check_qweights(&mut shape_err, w, geom.out_channels, k);
                rule(shape::conv2d(&x.shape, geom), &mut shape_err)
            }
            QOp::FloatConv2d { geom, w } => {
                let k = conv_reduction(geom).expect("checked above");
                check_weights(
                    &mut shape_err,
                    w.weight.len(),
                    w.bias.len(),
                    k,
                    geom.out_channels,
                );
                rule(shape::conv2d(&x.shape, geom), &mut shape_err)
            }
        };
        if errors.len() == errs_before {
            match expected {
                Some(shape) if shape == node.shape => {}
                Some(shape) => errors.push(format!(
                    "node `{}`: shape {:?}, but its op gives {shape:?}",
                    node.name, node.shape
                )),
                None if !matches!(node.op, QOp::Input) => errors.push(format!(
                    "node `{}`: its op does not accept an input of shape {:?}",
                    node.name, x.shape
                )),
                None => {}
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A convolution's products per output, checked ([`limits::fan_in`]).
pub fn conv_reduction(geom: &ConvGeom) -> Option<usize> {
    limits::fan_in(geom.in_channels, geom.groups, geom.kernel)
}

/// A shape rule's result, its error reported.
fn rule(
    result: Result<Vec<usize>, shape::ShapeError>,
    err: &mut impl FnMut(String),
) -> Option<Vec<usize>> {
    result.map_err(|e| err(e.to_string())).ok()
}

fn check_weights(
    err: &mut impl FnMut(String),
    weights: usize,
    biases: usize,
    k: usize,
    out: usize,
) {
    if Some(weights) != k.checked_mul(out) || biases != out {
        err(format!(
            "{weights} weights and {biases} biases for {out} outputs of {k} inputs each"
        ));
    }
}

fn check_qweights(err: &mut impl FnMut(String), w: &QWeights, out: usize, k: usize) {
    if w.weight_scales.len() != 1 && w.weight_scales.len() != out {
        err(format!(
            "{} weight scales for {out} outputs",
            w.weight_scales.len()
        ));
    }
    if let Some(s) = w
        .weight_scales
        .iter()
        .find(|s| !(s.is_finite() && **s > 0.0))
    {
        err(format!("weight scale {s} is not finite and positive"));
    }
    if !(0 <= w.clamp.0 && w.clamp.0 <= w.clamp.1 && w.clamp.1 <= 255) {
        err(format!(
            "clamp {}..{} is not inside 0..255",
            w.clamp.0, w.clamp.1
        ));
    }
    if k > MAX_REDUCTION {
        err(format!(
            "reduction of {k} products could overflow the i32 accumulator (limit {MAX_REDUCTION})"
        ));
    }
}

/// A fused activation in the graph's text: ` act=relu`, or nothing.
fn fused(act: Act) -> String {
    crate::ir::act_text(act).map_or(String::new(), |t| format!(" {t}"))
}
