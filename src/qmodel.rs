//! The `.qmodel` file: a converted model in one safetensors file. Weights are qint8 tensors,
//! biases int32, scales and float layers f32; the graph (every op, shape and quantization
//! parameter), the backend, the spec text and the qatc version are JSON strings in the
//! metadata.
//!
//! Loading trusts nothing. The safetensors header is validated by the safetensors crate. The
//! graph is parsed with serde and then checked by [`crate::int8::verify`]. Every tensor must
//! exist with the dtype and shape its op implies, and no tensor may be left over. Nothing is
//! allocated from a size the file states before that size is checked against the bytes that
//! are there.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::data::Normalization;
use crate::int8::{self, QGraph, QOp};

/// What a .qmodel holds besides the graph.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Info {
    pub backend: String,
    pub spec: String,
    pub qatc_version: String,
    /// How images become the model's input (from the spec's `train` block), so a model can be
    /// run on pixels without the spec's front end.
    pub normalization: Option<Normalization>,
    /// The folder of the spec it was trained from (absolute), where the stored spec's relative
    /// data paths point.
    pub spec_dir: Option<String>,
}

const GRAPH_KEY: &str = "qatc.graph";
const FORMAT_KEY: &str = "qatc.format";
const FORMAT: &str = "qmodel/1";
const NORMALIZATION_KEY: &str = "qatc.normalization";
const SPEC_DIR_KEY: &str = "qatc.spec_dir";

/// Serializes a converted model.
pub fn to_bytes(graph: &QGraph, info: &Info) -> Result<Vec<u8>, String> {
    let mut skeleton = graph.clone();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for node in &mut skeleton.nodes {
        let name = node.name.clone();
        let mut f32s = |suffix: &str, values: &mut Vec<f32>, shape: Vec<usize>| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((format!("{name}.{suffix}"), Dtype::F32, shape, bytes));
            values.clear();
        };
        match &mut node.op {
            QOp::Linear {
                w, out_features, ..
            }
            | QOp::Conv2d {
                w,
                geom:
                    crate::ir::ConvGeom {
                        out_channels: out_features,
                        ..
                    },
            } => {
                let out = *out_features;
                let k = w.weight.len() / out.max(1);
                let n_scales = w.weight_scales.len();
                f32s("weight_scales", &mut w.weight_scales, vec![n_scales]);
                tensors.push((
                    format!("{name}.weight"),
                    Dtype::I8,
                    vec![out, k],
                    w.weight.iter().map(|&v| v as u8).collect(),
                ));
                tensors.push((
                    format!("{name}.bias"),
                    Dtype::I32,
                    vec![out],
                    w.bias.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
                w.weight.clear();
                w.bias.clear();
            }
            QOp::FloatLinear {
                w, out_features, ..
            }
            | QOp::FloatConv2d {
                w,
                geom:
                    crate::ir::ConvGeom {
                        out_channels: out_features,
                        ..
                    },
            } => {
                let out = *out_features;
                let k = w.weight.len() / out.max(1);
                f32s("weight", &mut w.weight, vec![out, k]);
                f32s("bias", &mut w.bias, vec![out]);
            }
            QOp::BatchNorm { scale, shift } | QOp::FloatBatchNorm { scale, shift } => {
                let c = scale.len();
                f32s("scale", scale, vec![c]);
                f32s("shift", shift, vec![c]);
            }
            // No tensors: their few parameters (a lookup table's 256 codes included) are part of
            // the graph's JSON.
            QOp::Input
            | QOp::Quantize
            | QOp::Dequantize
            | QOp::Clamp { .. }
            | QOp::Pool(_)
            | QOp::Flatten
            | QOp::Combine(_)
            | QOp::FloatAct(_)
            | QOp::Lut { .. } => {}
        }
    }
    let graph_json =
        serde_json::to_string(&skeleton).map_err(|e| format!("cannot serialize the graph: {e}"))?;
    let mut metadata = HashMap::from([
        (FORMAT_KEY.to_string(), FORMAT.to_string()),
        (GRAPH_KEY.to_string(), graph_json),
        ("qatc.backend".to_string(), info.backend.clone()),
        ("qatc.spec".to_string(), info.spec.clone()),
        ("qatc.version".to_string(), info.qatc_version.clone()),
    ]);
    if let Some(norm) = &info.normalization {
        let json = serde_json::to_string(norm)
            .map_err(|e| format!("cannot serialize the normalization: {e}"))?;
        metadata.insert(NORMALIZATION_KEY.to_string(), json);
    }
    if let Some(dir) = &info.spec_dir {
        metadata.insert(SPEC_DIR_KEY.to_string(), dir.clone());
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("tensor {name}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    crate::state::checkpoint::serialize(views, metadata)
        .map_err(|e| format!("cannot write the model: {e}"))
}

/// Parses and validates a .qmodel file's bytes.
/// Whether `bytes` start as a safetensors file does (an 8-byte little-endian header length,
/// then the JSON header's `{`) and name qatc's format: a `.qmodel` given where a spec was
/// expected.
pub fn looks_like_qmodel(bytes: &[u8]) -> bool {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return false;
    };
    let len = u64::from_le_bytes(*len);
    let head = &rest[..rest.len().min(len.min(1 << 20) as usize)];
    rest.first() == Some(&b'{')
        && head
            .windows(FORMAT_KEY.len())
            .any(|w| w == FORMAT_KEY.as_bytes())
}

/// Whether `bytes` are text that reads like a spec (a `model` block, or the YAML form's
/// `model:`): a spec given where a `.qmodel` was expected.
pub fn looks_like_spec(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(4096)];
    let Ok(text) = std::str::from_utf8(head) else {
        return false;
    };
    text.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("model ") || l.starts_with("model:")
    })
}

pub fn from_bytes(bytes: &[u8]) -> Result<(QGraph, Info), String> {
    if looks_like_spec(bytes) {
        return Err(
            "this is a .qspec spec (text), not a .qmodel: `qatc train SPEC` (or \
                    `qatc calibrate SPEC`) converts it and writes model.qmodel"
                .into(),
        );
    }
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid .qmodel (safetensors) file: {e}"))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| format!("bad header: {e}"))?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get(FORMAT_KEY) {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(format!(
                "unsupported model format `{f}` (this qatc reads {FORMAT})"
            ))
        }
        None => {
            return Err(format!(
                "not a .qmodel file: its metadata has no `{FORMAT_KEY}`"
            ))
        }
    }
    let graph_json = meta
        .get(GRAPH_KEY)
        .ok_or_else(|| format!("the metadata has no `{GRAPH_KEY}`"))?;
    let mut graph: QGraph = serde_json::from_str(graph_json)
        .map_err(|e| format!("the graph in the metadata is invalid: {e}"))?;
    let mut used = 0usize;
    for node in &mut graph.nodes {
        let name = node.name.clone();
        let mut take = |suffix: &str, dtype: Dtype, shape: &[usize]| -> Result<Vec<u8>, String> {
            let key = format!("{name}.{suffix}");
            let t = file
                .tensor(&key)
                .map_err(|_| format!("tensor `{key}` is missing"))?;
            if t.dtype() != dtype {
                return Err(format!(
                    "tensor `{key}` is {:?}, expected {dtype:?}",
                    t.dtype()
                ));
            }
            if t.shape() != shape {
                return Err(format!(
                    "tensor `{key}` has shape {:?}, expected {shape:?}",
                    t.shape()
                ));
            }
            used += 1;
            Ok(t.data().to_vec())
        };
        let f32s = |bytes: Vec<u8>| -> Vec<f32> {
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        match &mut node.op {
            QOp::Linear {
                w,
                in_features,
                out_features,
            } => {
                let (out, k) = (*out_features, *in_features);
                fill_quantized(w, &mut take, out, k, node_scales(&file, &name))?;
            }
            QOp::Conv2d { w, geom } => {
                let k = fan_in(geom, &name)?;
                let out = geom.out_channels;
                fill_quantized(w, &mut take, out, k, node_scales(&file, &name))?;
            }
            QOp::FloatLinear {
                w,
                in_features,
                out_features,
            } => {
                w.weight = f32s(take("weight", Dtype::F32, &[*out_features, *in_features])?);
                w.bias = f32s(take("bias", Dtype::F32, &[*out_features])?);
            }
            QOp::FloatConv2d { w, geom } => {
                let k = fan_in(geom, &name)?;
                w.weight = f32s(take("weight", Dtype::F32, &[geom.out_channels, k])?);
                w.bias = f32s(take("bias", Dtype::F32, &[geom.out_channels])?);
            }
            QOp::BatchNorm { scale, shift } | QOp::FloatBatchNorm { scale, shift } => {
                let c = node.shape.first().copied().unwrap_or(0);
                *scale = f32s(take("scale", Dtype::F32, &[c])?);
                *shift = f32s(take("shift", Dtype::F32, &[c])?);
            }
            // No tensors: their few parameters (a lookup table's 256 codes included) are part of
            // the graph's JSON.
            QOp::Input
            | QOp::Quantize
            | QOp::Dequantize
            | QOp::Clamp { .. }
            | QOp::Pool(_)
            | QOp::Flatten
            | QOp::Combine(_)
            | QOp::FloatAct(_)
            | QOp::Lut { .. } => {}
        }
    }
    if used != file.len() {
        let expected: std::collections::HashSet<&str> =
            graph.nodes.iter().map(|n| n.name.as_str()).collect();
        let extra = file
            .names()
            .into_iter()
            .find(|t| !expected.contains(t.rsplit_once('.').map_or(*t, |(n, _)| n)))
            .unwrap_or("?");
        return Err(format!(
            "the file holds tensors the graph does not use (such as `{extra}`)"
        ));
    }
    int8::verify(&graph).map_err(|e| format!("invalid graph: {}", e.join("; ")))?;
    let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
    let normalization = match meta.get(NORMALIZATION_KEY) {
        Some(json) => Some(parse_normalization(json)?),
        None => None,
    };
    let info = Info {
        backend: get("qatc.backend"),
        spec: get("qatc.spec"),
        qatc_version: get("qatc.version"),
        normalization,
        spec_dir: meta.get(SPEC_DIR_KEY).cloned(),
    };
    Ok((graph, info))
}

/// The stored normalization: one or more channels, every mean finite, every std finite and
/// positive.
fn parse_normalization(json: &str) -> Result<Normalization, String> {
    let norm: Normalization = serde_json::from_str(json)
        .map_err(|e| format!("metadata `{NORMALIZATION_KEY}` is not a normalization: {e}"))?;
    let valid = !norm.mean.is_empty()
        && norm.mean.len() == norm.std.len()
        && norm.mean.iter().all(|m| m.is_finite())
        && norm.std.iter().all(|s| s.is_finite() && *s > 0.0);
    if !valid {
        return Err(format!(
            "metadata `{NORMALIZATION_KEY}` needs as many finite means as finite positive stds \
             (at least one), got mean {:?} and std {:?}",
            norm.mean, norm.std
        ));
    }
    Ok(norm)
}

/// A convolution's products per output, or an error when its geometry cannot give one.
fn fan_in(geom: &crate::ir::ConvGeom, name: &str) -> Result<usize, String> {
    int8::conv_reduction(geom).ok_or_else(|| {
        format!(
            "node `{name}`: a conv of {} input channels in {} groups with kernel {:?} is not \
             possible (zero groups, or more than {} products per output)",
            geom.in_channels,
            geom.groups,
            geom.kernel,
            crate::limits::MAX_PARAMS
        )
    })
}

/// The number of weight scales the file holds for a node (1 or one per channel), if any.
fn node_scales(file: &SafeTensors, name: &str) -> usize {
    file.tensor(&format!("{name}.weight_scales"))
        .map_or(0, |t| t.shape().first().copied().unwrap_or(0))
}

fn fill_quantized(
    w: &mut int8::QWeights,
    take: &mut impl FnMut(&str, Dtype, &[usize]) -> Result<Vec<u8>, String>,
    out: usize,
    k: usize,
    n_scales: usize,
) -> Result<(), String> {
    let n_scales = if n_scales == 1 { 1 } else { out };
    w.weight = take("weight", Dtype::I8, &[out, k])?
        .into_iter()
        .map(|b| b as i8)
        .collect();
    w.bias = take("bias", Dtype::I32, &[out])?
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    w.weight_scales = take("weight_scales", Dtype::F32, &[n_scales])?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok(())
}
