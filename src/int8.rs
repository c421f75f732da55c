//! The int8 IR: what `convert` produces from a trained fake-quant graph. Every tensor is either
//! f32 or quint8 with its scale and zero point; weights are qint8 (symmetric, per channel or per
//! tensor) and biases int32 in units of `in_scale · w_scale`. Layers kept float (`none`) stay as
//! f32 ops between a dequantize and a quantize.
//!
//! Its text form matches the float IR's, with every tensor's dtype and quantization parameters.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::check::Pool2d;
use crate::ir::{Act, ConvGeom};
use crate::quant::numerics::QParams;

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
    MaxPool2d(Pool2d),
    AvgPool2d(Pool2d),
    GlobalAvgPool,
    /// Per-sample layout is unchanged (C, H, W row-major), so flattening moves no data.
    Flatten,
    /// Dequantizes every input, adds, and quantizes with the node's parameters.
    Add,
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
    FloatAct(Act),
    FloatBatchNorm {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
}

impl QOp {
    pub fn mnemonic(&self) -> &'static str {
        match self {
            QOp::Input => "input",
            QOp::Quantize => "quantize",
            QOp::Dequantize => "dequantize",
            QOp::Linear { .. } => "qlinear",
            QOp::Conv2d { .. } => "qconv2d",
            QOp::Clamp { .. } => "clamp",
            QOp::MaxPool2d(_) => "max_pool2d",
            QOp::AvgPool2d(_) => "avg_pool2d",
            QOp::GlobalAvgPool => "global_avg_pool",
            QOp::Flatten => "flatten",
            QOp::Add => "add",
            QOp::BatchNorm { .. } => "batch_norm2d",
            QOp::FloatLinear { .. } => "linear",
            QOp::FloatConv2d { .. } => "conv2d",
            QOp::FloatAct(Act::ReLU) => "relu",
            QOp::FloatAct(Act::ReLU6) => "relu6",
            QOp::FloatAct(Act::None) => "identity",
            QOp::FloatBatchNorm { .. } => "batch_norm2d",
        }
    }
}

fn weights_text(w: &QWeights) -> String {
    let per = if w.weight_scales.len() == 1 {
        format!("scale={:e}", w.weight_scales[0])
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

impl QGraph {
    /// The stable text form: the float IR's, with dtypes and quantization parameters.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "graph {} (int8) {{", self.name);
        for node in &self.nodes {
            let args = node
                .inputs
                .iter()
                .map(|&i| format!("%{}", self.nodes[i].name))
                .collect::<Vec<_>>()
                .join(", ");
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
                QOp::MaxPool2d(p) | QOp::AvgPool2d(p) => format!(
                    "k={}x{} s={}x{} p={}x{}",
                    p.kernel.0, p.kernel.1, p.stride.0, p.stride.1, p.padding.0, p.padding.1
                ),
                QOp::FloatLinear {
                    in_features,
                    out_features,
                    w,
                } => format!("in={in_features} out={out_features} act={:?}", w.act),
                QOp::FloatConv2d { geom, w } => format!(
                    "in={} out={} act={:?}",
                    geom.in_channels, geom.out_channels, w.act
                ),
                _ => String::new(),
            };
            let attrs = if attrs.is_empty() {
                attrs
            } else {
                format!(" {{{attrs}}}")
            };
            let dims = node
                .shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let ty = match node.ty {
                TensorType::F32 => format!("f32[N, {dims}]"),
                TensorType::U8(q) => {
                    format!("u8[N, {dims}] (scale={:e}, zp={})", q.scale, q.zero_point)
                }
            };
            let _ = writeln!(
                out,
                "  %{} = {}({args}){attrs} : {ty}",
                node.name,
                node.op.mnemonic()
            );
        }
        let _ = writeln!(out, "  return %{}", self.nodes[self.output].name);
        out.push_str("}\n");
        out
    }
}
