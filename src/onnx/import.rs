//! A float ONNX model (as `torch.onnx.export` writes it) as a `.qspec` and a state dict.
//!
//! Each ONNX node becomes one layer of the spec, or is dropped (Dropout, Identity), or folds into
//! the layer before it (the Add of a MatMul's bias). A node qatc has no layer for is an error
//! that names it, its op type and the ops qatc takes; nothing is approximated.
//!
//! Layers are named after their weights when the exporter kept PyTorch's names (`conv1.weight`
//! gives `conv1`), else after the node (`/relu1/Relu` gives `relu1`), so the state dict's tensor
//! names are those of the PyTorch module's `state_dict()`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use prost::Message;

use super::proto::tensor_proto::DataType;
use super::proto::tensor_shape_proto::dimension;
use super::proto::{type_proto, AttributeProto, ModelProto, NodeProto, TensorProto};
use crate::ops::combine::Combine;
use crate::ops::pool::{Pool, Pool2d};
use crate::ops::shape::{self, ConvGeom};

/// The ONNX operator sets qatc reads (opset 11 made Clip's bounds inputs).
pub const OPSETS: std::ops::RangeInclusive<i64> = 11..=23;

/// The op types qatc imports (MatMul with the Add of its bias; Clip as ReLU6 or ReLU).
pub const SUPPORTED: &[&str] = &[
    "Conv",
    "Gemm",
    "MatMul",
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Tanh",
    "Mul",
    "Add",
    "Concat",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "BatchNormalization",
    "Dropout",
    "Identity",
];

/// An imported model: the spec's text and its weights, named as PyTorch names them.
#[derive(Clone, Debug)]
pub struct Imported {
    pub name: String,
    pub spec: String,
    /// `(name, shape, values)`, in layer order.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// One line per layer: its name and what it came from.
    pub layers: Vec<String>,
}

/// One layer of the spec being written.
struct Layer {
    name: String,
    /// The spec's call: `Conv2d(out: 8, kernel: 3)`, `ReLU`, ...
    call: String,
    /// The layers (or `input`) it reads.
    inputs: Vec<String>,
    /// The ONNX node it came from, for the summary.
    from: String,
}

/// A value of the graph: which layer produces it (`input` for the model's input) and one
/// sample's shape.
#[derive(Clone, Debug)]
struct Val {
    layer: String,
    shape: Vec<usize>,
}

/// Reads an ONNX model's bytes. `file_name` names the model in the spec's comment and gives its
/// name (the file stem).
pub fn import(bytes: &[u8], file_name: &str, spec_name: &str) -> Result<Imported, String> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| format!("not an ONNX model (the protobuf does not decode: {e})"))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .ok_or("the model imports no version of the standard operator set")?;
    if !OPSETS.contains(&opset) {
        return Err(format!(
            "the model uses opset {opset}; qatc reads opsets {} to {} (re-export with \
             `opset_version=17`)",
            OPSETS.start(),
            OPSETS.end()
        ));
    }
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    let mut im = Importer::default();
    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        im.constants.insert(name, t.clone());
    }
    // The input: the one graph input that is not an initializer.
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !im.constants.contains_key(i.name.as_deref().unwrap_or("")))
        .collect();
    let [input] = inputs[..] else {
        return Err(format!(
            "the graph has {} inputs; qatc imports models with one",
            inputs.len()
        ));
    };
    let input_name = input.name.clone().unwrap_or_default();
    let input_shape = input_shape(input)?;
    im.values.insert(
        input_name,
        Val {
            layer: "input".into(),
            shape: input_shape.clone(),
        },
    );
    for node in &graph.node {
        for i in &node.input {
            *im.uses.entry(i.clone()).or_default() += 1;
        }
    }
    for node in &graph.node {
        im.node(node)
            .map_err(|e| format!("node `{}` ({}): {e}", node_name(node), op_type(node)))?;
    }
    let [output] = &graph.output[..] else {
        return Err(format!(
            "the graph has {} outputs; qatc imports models with one",
            graph.output.len()
        ));
    };
    let out_name = output.name.clone().unwrap_or_default();
    let out = im
        .values
        .get(&out_name)
        .ok_or_else(|| format!("the graph's output `{out_name}` is not computed by any node"))?
        .layer
        .clone();
    if im.layers.is_empty() {
        return Err("the graph has no layer qatc imports".into());
    }
    let spec = im.spec_text(spec_name, file_name, opset, &input_shape, &out);
    Ok(Imported {
        name: spec_name.to_string(),
        spec,
        tensors: im.tensors,
        layers: im
            .layers
            .iter()
            .map(|l| format!("{:<12} {:<40} from {}", l.name, l.call, l.from))
            .collect(),
    })
}

fn node_name(node: &NodeProto) -> &str {
    node.name.as_deref().unwrap_or("")
}

fn op_type(node: &NodeProto) -> &str {
    node.op_type.as_deref().unwrap_or("")
}

/// One sample's shape from the graph input's type: `[N, C, H, W]` or `[N, F]` with static
/// sizes after the batch.
fn input_shape(input: &super::proto::ValueInfoProto) -> Result<Vec<usize>, String> {
    let name = input.name.as_deref().unwrap_or("");
    let Some(type_proto::Value::TensorType(t)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(format!("the input `{name}` is not a tensor"));
    };
    if t.elem_type != Some(DataType::Float as i32) {
        return Err(format!("the input `{name}` is not float32"));
    }
    let dims = t.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
    let sizes: Vec<Option<i64>> = dims
        .iter()
        .map(|d| match d.value {
            Some(dimension::Value::DimValue(v)) if v > 0 => Some(v),
            _ => None,
        })
        .collect();
    match &sizes[..] {
        [_, rest @ ..]
            if (rest.len() == 3 || rest.len() == 1) && rest.iter().all(Option::is_some) =>
        {
            Ok(rest.iter().map(|d| d.unwrap_or(0) as usize).collect())
        }
        _ => Err(format!(
            "the input `{name}` has shape {sizes:?}; qatc imports [N, C, H, W] or [N, F] inputs \
             with fixed sizes after the batch"
        )),
    }
}

#[derive(Default)]
struct Importer {
    constants: HashMap<String, TensorProto>,
    values: HashMap<String, Val>,
    /// How many nodes read each value.
    uses: HashMap<String, usize>,
    layers: Vec<Layer>,
    names: HashSet<String>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Layers made from a MatMul, still without a bias: the value they produce.
    matmuls: HashMap<String, usize>,
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}

fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).and_then(|a| a.i).unwrap_or(default)
}

fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).and_then(|a| a.f).unwrap_or(default)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

/// A float tensor's values and dims, or why it cannot be read.
fn tensor_values(t: &TensorProto) -> Result<(Vec<usize>, Vec<f32>), String> {
    let name = t.name.as_deref().unwrap_or("");
    if t.data_location == Some(1) {
        return Err(format!("tensor `{name}` keeps its data in an external file; export the model with its weights inside"));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| format!("tensor `{name}` has a negative dimension {d}"))
        })
        .collect::<Result<_, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= crate::limits::MAX_PARAMS)
        .ok_or_else(|| format!("tensor `{name}` has dims {dims:?}: too many values"))?;
    let (width, values): (usize, Vec<f32>) = match DataType::try_from(t.data_type.unwrap_or(0)) {
        Ok(DataType::Float) => match &t.raw_data {
            Some(raw) => (
                4,
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ),
            None => (4, t.float_data.clone()),
        },
        Ok(DataType::Double) => match &t.raw_data {
            Some(raw) => (
                8,
                raw.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
            None => (8, t.double_data.iter().map(|&v| v as f32).collect()),
        },
        Ok(DataType::Int64) => match &t.raw_data {
            Some(raw) => (
                8,
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
            None => (8, t.int64_data.iter().map(|&v| v as f32).collect()),
        },
        _ => {
            return Err(format!(
                "tensor `{name}` has data type {}; qatc reads float32, float64 and int64",
                t.data_type.unwrap_or(0)
            ))
        }
    };
    if let Some(raw) = &t.raw_data {
        if raw.len() != count * width {
            return Err(format!(
                "tensor `{name}` holds {} bytes; its dims {dims:?} need {}",
                raw.len(),
                count * width
            ));
        }
    }
    if values.len() != count {
        return Err(format!(
            "tensor `{name}` holds {} values; its dims {dims:?} need {count}",
            values.len()
        ));
    }
    Ok((dims, values))
}

/// The integer values of a small int64 constant (a shape, axes).
fn int_values(t: &TensorProto) -> Result<Vec<i64>, String> {
    let name = t.name.as_deref().unwrap_or("");
    if t.data_type != Some(DataType::Int64 as i32) {
        return Err(format!("tensor `{name}` is not int64"));
    }
    match &t.raw_data {
        Some(raw) if raw.len() % 8 == 0 => Ok(raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()),
        Some(_) => Err(format!("tensor `{name}` has a partial int64")),
        None => Ok(t.int64_data.clone()),
    }
}

/// A usable spec name from an ONNX or file name: letters, digits and `_`, not starting with a
/// digit.
pub fn identifier(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    out = out.trim_matches('_').to_string();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "l_");
    }
    out
}

/// Symmetric 2-D pads (`[top, left, bottom, right]`) as `(h, w)`.
fn pads2(node: &NodeProto) -> Result<(usize, usize), String> {
    if let Some(a) = attr(node, "auto_pad").and_then(|a| a.s.clone()) {
        if a != b"NOTSET" {
            return Err(format!(
                "auto_pad `{}` is not supported; export with explicit pads",
                String::from_utf8_lossy(&a)
            ));
        }
    }
    match attr_ints(node, "pads").as_deref() {
        None | Some([0, 0, 0, 0]) => Ok((0, 0)),
        Some(&[t, l, b, r]) if t == b && l == r && t >= 0 && l >= 0 => Ok((t as usize, l as usize)),
        Some(p) => Err(format!(
            "pads {p:?} are not symmetric; qatc pads both sides alike"
        )),
    }
}

fn pair(node: &NodeProto, name: &str, default: (usize, usize)) -> Result<(usize, usize), String> {
    match attr_ints(node, name).as_deref() {
        None => Ok(default),
        Some(&[h, w]) if h > 0 && w > 0 => Ok((h as usize, w as usize)),
        Some(v) => Err(format!("`{name}` {v:?} is not two positive sizes")),
    }
}

fn size_text((h, w): (usize, usize)) -> String {
    if h == w {
        h.to_string()
    } else {
        format!("[{h}, {w}]")
    }
}

impl Importer {
    /// A constant's values (an initializer or a `Constant` node's).
    fn constant(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
        let t = self
            .constants
            .get(name)
            .ok_or_else(|| format!("`{name}` must be a constant (a weight), but is computed"))?;
        tensor_values(t)
    }

    fn value(&self, name: &str) -> Result<Val, String> {
        self.values.get(name).cloned().ok_or_else(|| {
            if self.constants.contains_key(name) {
                format!("reads the constant `{name}` where qatc expects a computed tensor")
            } else {
                format!("reads `{name}`, which no earlier node computes")
            }
        })
    }

    /// A fresh layer name: `base`, or `base_2`, ...
    fn fresh(&mut self, base: &str) -> String {
        let base = identifier(base);
        let reserved = |n: &str| matches!(n, "input" | "output");
        let mut name = base.clone();
        let mut k = 1;
        while reserved(&name) || !self.names.insert(name.clone()) {
            k += 1;
            name = format!("{base}_{k}");
        }
        name
    }

    /// The name of a node's layer: from its weight's PyTorch name (`conv1.weight`), else from
    /// the node's name (`/relu1/Relu`), else its op type.
    fn layer_name(&mut self, node: &NodeProto) -> String {
        let from_weight = node
            .input
            .get(1)
            .and_then(|w| w.strip_suffix(".weight"))
            .filter(|p| !p.is_empty());
        let from_node = node_name(node)
            .trim_start_matches('/')
            .rsplit_once('/')
            .map(|(scope, _)| scope.replace('/', "_"))
            .filter(|s| !s.is_empty());
        let base = from_weight
            .map(str::to_string)
            .or(from_node)
            .unwrap_or_else(|| op_type(node).to_ascii_lowercase());
        self.fresh(&base.replace('.', "_"))
    }

    fn push(
        &mut self,
        node: &NodeProto,
        name: String,
        call: String,
        inputs: Vec<String>,
        shape: Vec<usize>,
    ) {
        for out in node.output.iter().take(1) {
            self.values.insert(
                out.clone(),
                Val {
                    layer: name.clone(),
                    shape: shape.clone(),
                },
            );
        }
        self.layers.push(Layer {
            name,
            call,
            inputs,
            from: format!("{} `{}`", op_type(node), node_name(node)),
        });
    }

    /// The output of `node` is its input (Dropout, Identity, a Flatten of a flat tensor).
    fn alias(&mut self, node: &NodeProto, x: &Val) {
        if let Some(out) = node.output.first() {
            self.values.insert(out.clone(), x.clone());
        }
    }

    fn one_input(&self, node: &NodeProto) -> Result<Val, String> {
        let name = node.input.first().ok_or("has no input")?;
        self.value(name)
    }

    fn node(&mut self, node: &NodeProto) -> Result<(), String> {
        if !matches!(node.domain.as_deref(), None | Some("") | Some("ai.onnx")) {
            return Err(format!(
                "is in the operator domain `{}`; qatc imports standard ONNX ops: {}",
                node.domain.as_deref().unwrap_or(""),
                SUPPORTED.join(", ")
            ));
        }
        let op = op_type(node).to_string();
        match op.as_str() {
            "Constant" => {
                let t = attr(node, "value")
                    .and_then(|a| a.t.clone())
                    .ok_or("a Constant without a tensor `value`")?;
                let out = node.output.first().ok_or("has no output")?;
                self.constants.insert(
                    out.clone(),
                    TensorProto {
                        name: Some(out.clone()),
                        ..t
                    },
                );
                Ok(())
            }
            "Dropout" | "Identity" => {
                let x = self.one_input(node)?;
                self.alias(node, &x);
                Ok(())
            }
            "Conv" => self.conv(node),
            "Gemm" => self.gemm(node),
            "MatMul" => self.matmul(node),
            "BatchNormalization" => self.batch_norm(node),
            "Relu" | "Sigmoid" | "Tanh" | "HardSwish" => {
                let call = match op.as_str() {
                    "Relu" => "ReLU",
                    "Sigmoid" => "Sigmoid",
                    "Tanh" => "Tanh",
                    _ => "Hardswish",
                };
                self.activation(node, call.to_string())
            }
            "HardSigmoid" => {
                let (alpha, beta) = (
                    attr_float(node, "alpha", 0.2),
                    attr_float(node, "beta", 0.5),
                );
                if (alpha - 1.0 / 6.0).abs() > 1e-6 || beta != 0.5 {
                    return Err(format!(
                        "alpha {alpha} and beta {beta}: qatc's Hardsigmoid is PyTorch's, alpha \
                         1/6 and beta 0.5"
                    ));
                }
                self.activation(node, "Hardsigmoid".into())
            }
            "LeakyRelu" => {
                let alpha = attr_float(node, "alpha", 0.01);
                let range = crate::ops::activation::Activation::params("LeakyReLU")
                    .and_then(|p| p.first())
                    .map_or(-1e6..=1e6, |p| p.min..=p.max);
                if !range.contains(&(alpha as f64)) {
                    return Err(format!("alpha {alpha} is outside {range:?}"));
                }
                self.activation(node, format!("LeakyReLU(negative_slope: {alpha})"))
            }
            "Clip" => {
                let bound = |k: usize| -> Result<Option<f32>, String> {
                    match node.input.get(k).filter(|s| !s.is_empty()) {
                        None => Ok(None),
                        Some(name) => {
                            let (_, v) = self.constant(name)?;
                            v.first()
                                .copied()
                                .map(Some)
                                .ok_or_else(|| format!("`{name}` is empty"))
                        }
                    }
                };
                match (bound(1)?, bound(2)?) {
                    (Some(lo), Some(hi)) if lo == 0.0 && hi == 6.0 => {
                        self.activation(node, "ReLU6".into())
                    }
                    (Some(0.0), None) => self.activation(node, "ReLU".into()),
                    (lo, hi) => Err(format!(
                        "clips to {lo:?}..{hi:?}; qatc has Clip as ReLU6 (0..6) and ReLU (0..)"
                    )),
                }
            }
            "Add" | "Mul" | "Concat" => self.combine(node),
            "MaxPool" | "AveragePool" => self.pool(node),
            "GlobalAveragePool" => {
                let x = self.one_input(node)?;
                let pool = Pool::GlobalAvgPool;
                let shape = pool.output_shape(&x.shape).map_err(|e| e.to_string())?;
                let name = self.layer_name(node);
                self.push(node, name, "GlobalAvgPool".into(), vec![x.layer], shape);
                Ok(())
            }
            "Flatten" => {
                let x = self.one_input(node)?;
                let axis = attr_int(node, "axis", 1);
                if axis != 1 {
                    return Err(format!(
                        "axis {axis}: qatc flattens everything after the batch (axis 1)"
                    ));
                }
                self.flatten(node, x)
            }
            "Reshape" => {
                let x = self.one_input(node)?;
                let target = node.input.get(1).ok_or("has no shape input")?;
                let t = self
                    .constants
                    .get(target)
                    .ok_or("its shape is computed; qatc reads a constant shape [N, -1]")?;
                let dims = int_values(t)?;
                let size: usize = x.shape.iter().product();
                match dims[..] {
                    [n, f]
                        if (n == -1 || n == 0 || n > 0)
                            && (f == -1 || f == size as i64)
                            && !(n == -1 && f == -1) =>
                    {
                        self.flatten(node, x)
                    }
                    _ => Err(format!(
                        "reshapes to {dims:?}; qatc reshapes only to [N, -1] (a flatten)"
                    )),
                }
            }
            other => Err(format!(
                "`{other}` has no qatc layer; qatc imports {}",
                SUPPORTED.join(", ")
            )),
        }
    }

    fn flatten(&mut self, node: &NodeProto, x: Val) -> Result<(), String> {
        if x.shape.len() == 1 {
            self.alias(node, &x);
            return Ok(());
        }
        let name = self.layer_name(node);
        let shape = shape::flatten(&x.shape);
        self.push(node, name, "Flatten".into(), vec![x.layer], shape);
        Ok(())
    }

    fn activation(&mut self, node: &NodeProto, call: String) -> Result<(), String> {
        let x = self.one_input(node)?;
        let name = self.layer_name(node);
        self.push(node, name, call, vec![x.layer.clone()], x.shape);
        Ok(())
    }

    fn conv(&mut self, node: &NodeProto) -> Result<(), String> {
        let x = self.one_input(node)?;
        let w_name = node.input.get(1).ok_or("has no weight")?;
        let (w_dims, weight) = self.constant(w_name)?;
        let [out, per_group, kh, kw] = w_dims[..] else {
            return Err(format!(
                "weight `{w_name}` has dims {w_dims:?}; qatc has 2-D convolutions"
            ));
        };
        let groups = attr_int(node, "group", 1);
        if groups < 1 {
            return Err(format!("group {groups} is not positive"));
        }
        if let Some(d) = attr_ints(node, "dilations") {
            if d.iter().any(|&v| v != 1) {
                return Err(format!("dilations {d:?}: qatc has dilation 1 only"));
            }
        }
        let kernel = pair(node, "kernel_shape", (kh, kw))?;
        if kernel != (kh, kw) {
            return Err(format!(
                "kernel_shape {kernel:?} differs from the weight's {kh}x{kw}"
            ));
        }
        let stride = pair(node, "strides", (1, 1))?;
        let padding = pads2(node)?;
        let geom = ConvGeom {
            in_channels: per_group * groups as usize,
            out_channels: out,
            kernel,
            stride,
            padding,
            groups: groups as usize,
        };
        let shape = shape::conv2d(&x.shape, &geom).map_err(|e| format!("Conv2d {e}"))?;
        let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
            Some(b) => {
                let (dims, values) = self.constant(b)?;
                if dims != [out] {
                    return Err(format!(
                        "bias `{b}` has dims {dims:?}, the layer has {out} outputs"
                    ));
                }
                Some(values)
            }
            None => None,
        };
        let name = self.layer_name(node);
        let mut call = format!("Conv2d(out: {out}, kernel: {}", size_text(kernel));
        if stride != (1, 1) {
            let _ = write!(call, ", stride: {}", size_text(stride));
        }
        if padding != (0, 0) {
            let _ = write!(call, ", padding: {}", size_text(padding));
        }
        if groups != 1 {
            let _ = write!(call, ", groups: {groups}");
        }
        if bias.is_none() {
            call.push_str(", bias: false");
        }
        call.push(')');
        self.tensors
            .push((format!("{name}.weight"), w_dims, weight));
        if let Some(b) = bias {
            self.tensors.push((format!("{name}.bias"), vec![out], b));
        }
        self.push(node, name, call, vec![x.layer], shape);
        Ok(())
    }

    /// A Linear layer from weights `[out, in]` and an optional bias.
    fn linear(
        &mut self,
        node: &NodeProto,
        x: Val,
        weight: Vec<f32>,
        (out, inp): (usize, usize),
        bias: Option<Vec<f32>>,
    ) -> Result<String, String> {
        let shape = shape::linear(&x.shape, inp, out).map_err(|e| format!("Linear {e}"))?;
        let name = self.layer_name(node);
        let call = if bias.is_some() {
            format!("Linear(out: {out})")
        } else {
            format!("Linear(out: {out}, bias: false)")
        };
        self.tensors
            .push((format!("{name}.weight"), vec![out, inp], weight));
        if let Some(b) = bias {
            self.tensors.push((format!("{name}.bias"), vec![out], b));
        }
        self.push(node, name.clone(), call, vec![x.layer], shape);
        Ok(name)
    }

    fn gemm(&mut self, node: &NodeProto) -> Result<(), String> {
        let x = self.one_input(node)?;
        if attr_int(node, "transA", 0) != 0 {
            return Err("transA: qatc multiplies samples by weights (transA 0)".into());
        }
        let (alpha, beta) = (
            attr_float(node, "alpha", 1.0),
            attr_float(node, "beta", 1.0),
        );
        if alpha != 1.0 || beta != 1.0 {
            return Err(format!(
                "alpha {alpha}, beta {beta}: qatc's Linear has both 1"
            ));
        }
        let w_name = node.input.get(1).ok_or("has no weight")?;
        let (dims, w) = self.constant(w_name)?;
        let [a, b] = dims[..] else {
            return Err(format!("weight `{w_name}` has dims {dims:?}, not a matrix"));
        };
        let (out, inp, weight) = if attr_int(node, "transB", 0) != 0 {
            (a, b, w)
        } else {
            (b, a, transpose(&w, a, b))
        };
        let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
            Some(c) => {
                let (dims, values) = self.constant(c)?;
                if dims != [out] && dims != [1, out] {
                    return Err(format!(
                        "bias `{c}` has dims {dims:?}, the layer has {out} outputs"
                    ));
                }
                Some(values)
            }
            None => None,
        };
        self.linear(node, x, weight, (out, inp), bias)?;
        Ok(())
    }

    fn matmul(&mut self, node: &NodeProto) -> Result<(), String> {
        let x = self.one_input(node)?;
        let w_name = node.input.get(1).ok_or("has no weight")?;
        let (dims, w) = self.constant(w_name)?;
        let [inp, out] = dims[..] else {
            return Err(format!("weight `{w_name}` has dims {dims:?}, not a matrix"));
        };
        let weight = transpose(&w, inp, out);
        self.linear(node, x, weight, (out, inp), None)?;
        let produced = node.output.first().cloned().unwrap_or_default();
        self.matmuls.insert(produced, self.layers.len() - 1);
        Ok(())
    }

    fn batch_norm(&mut self, node: &NodeProto) -> Result<(), String> {
        let x = self.one_input(node)?;
        if attr_int(node, "training_mode", 0) != 0 {
            return Err("is in training mode; export the model in eval mode".into());
        }
        let kind = match x.shape.len() {
            3 => "BatchNorm2d",
            1 => "BatchNorm1d",
            _ => {
                return Err(format!(
                    "normalizes a {:?} input; qatc has BatchNorm2d and BatchNorm1d",
                    x.shape
                ))
            }
        };
        let c = x.shape[0];
        let name = self.layer_name(node);
        for (k, what) in [
            (1, "weight"),
            (2, "bias"),
            (3, "running_mean"),
            (4, "running_var"),
        ] {
            let input = node.input.get(k).ok_or_else(|| format!("has no {what}"))?;
            let (dims, values) = self.constant(input)?;
            if dims != [c] {
                return Err(format!(
                    "{what} `{input}` has dims {dims:?}, the input has {c} channels"
                ));
            }
            self.tensors
                .push((format!("{name}.{what}"), vec![c], values));
        }
        let eps = attr_float(node, "epsilon", 1e-5);
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(format!("epsilon {eps} is not a positive number"));
        }
        // ONNX's momentum weighs the old statistics, PyTorch's the new ones.
        let momentum = 1.0 - attr_float(node, "momentum", 0.9) as f64;
        // Printed to six decimals: 1 - 0.9f32 is 0.100000024.
        let momentum = (momentum * 1e6).round() / 1e6;
        if !(0.0..=1.0).contains(&momentum) {
            return Err(format!(
                "momentum {} is outside 0..1",
                attr_float(node, "momentum", 0.9)
            ));
        }
        let call = format!("{kind}(eps: {eps:e}, momentum: {momentum})");
        self.push(node, name, call, vec![x.layer.clone()], x.shape);
        Ok(())
    }

    fn combine(&mut self, node: &NodeProto) -> Result<(), String> {
        let op = op_type(node);
        // The Add of a MatMul's bias.
        if op == "Add" && node.input.len() == 2 {
            let (a, b) = (&node.input[0], &node.input[1]);
            let (product, bias) = if self.constants.contains_key(b) {
                (a, b)
            } else {
                (b, a)
            };
            if self.constants.contains_key(bias) {
                let layer = self
                    .matmuls
                    .get(product)
                    .copied()
                    .filter(|_| self.uses.get(product) == Some(&1))
                    .ok_or("adds a constant; qatc takes a constant Add only as the bias of the MatMul before it")?;
                let (dims, values) = self.constant(bias)?;
                let name = self.layers[layer].name.clone();
                let out = self.values[product].shape[0];
                if dims != [out] {
                    return Err(format!(
                        "bias `{bias}` has dims {dims:?}, `{name}` has {out} outputs"
                    ));
                }
                let call = &mut self.layers[layer].call;
                *call = call.replace(", bias: false", "");
                self.tensors
                    .push((format!("{name}.bias"), vec![out], values));
                self.matmuls.remove(product);
                let x = self.values[product].clone();
                self.alias(node, &x);
                return Ok(());
            }
        }
        let combine = match op {
            "Add" => Combine::Add,
            "Mul" => Combine::Mul,
            _ => {
                let axis = attr_int(node, "axis", 1);
                let rank = self.one_input(node)?.shape.len() as i64 + 1;
                if axis != 1 && axis != 1 - rank {
                    return Err(format!("axis {axis}: qatc concatenates channels (axis 1)"));
                }
                Combine::Concat
            }
        };
        let xs: Vec<Val> = node
            .input
            .iter()
            .map(|i| self.value(i))
            .collect::<Result<_, _>>()?;
        let shapes: Vec<&[usize]> = xs.iter().map(|v| v.shape.as_slice()).collect();
        let shape = combine
            .output_shape(&shapes, |k| format!("`{}`", node.input[k]))
            .map_err(|e| e.to_string())?;
        let name = self.layer_name(node);
        let call = combine.name().to_string();
        self.push(
            node,
            name,
            call,
            xs.into_iter().map(|v| v.layer).collect(),
            shape,
        );
        Ok(())
    }

    fn pool(&mut self, node: &NodeProto) -> Result<(), String> {
        let x = self.one_input(node)?;
        if attr_int(node, "ceil_mode", 0) != 0 {
            return Err("ceil_mode: qatc's pools round their output size down".into());
        }
        if let Some(d) = attr_ints(node, "dilations") {
            if d.iter().any(|&v| v != 1) {
                return Err(format!("dilations {d:?}: qatc has dilation 1 only"));
            }
        }
        let kernel = pair(node, "kernel_shape", (0, 0))?;
        if kernel == (0, 0) {
            return Err("has no kernel_shape".into());
        }
        let window = Pool2d {
            kernel,
            stride: pair(node, "strides", (1, 1))?,
            padding: pads2(node)?,
        };
        let (pool, kind) = if op_type(node) == "MaxPool" {
            if node.output.len() > 1 && node.output[1..].iter().any(|o| !o.is_empty()) {
                return Err("outputs its indices; qatc's MaxPool2d gives values only".into());
            }
            (Pool::MaxPool2d(window), "MaxPool2d")
        } else {
            if window.padding != (0, 0) && attr_int(node, "count_include_pad", 0) == 0 {
                return Err("count_include_pad 0 with padding: qatc counts padding in the mean (PyTorch's default)".into());
            }
            (Pool::AvgPool2d(window), "AvgPool2d")
        };
        let shape = pool
            .output_shape(&x.shape)
            .map_err(|e| format!("{kind} {e}"))?;
        let mut call = format!(
            "{kind}(kernel: {}, stride: {}",
            size_text(window.kernel),
            size_text(window.stride)
        );
        if window.padding != (0, 0) {
            let _ = write!(call, ", padding: {}", size_text(window.padding));
        }
        call.push(')');
        let name = self.layer_name(node);
        self.push(node, name, call, vec![x.layer], shape);
        Ok(())
    }

    fn spec_text(
        &self,
        name: &str,
        file: &str,
        opset: i64,
        input: &[usize],
        output: &str,
    ) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Imported by qatc {} from {file} (opset {opset}).",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(s, "model {name} {{");
        let dims: Vec<String> = input.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "    input: [{}]", dims.join(", "));
        if self.layers.last().is_some_and(|l| l.name != output) {
            let _ = writeln!(s, "    output: {output}");
        }
        let width = self.layers.iter().map(|l| l.name.len()).max().unwrap_or(0) + 1;
        let mut previous = "input".to_string();
        for l in &self.layers {
            let label = format!("{}:", l.name);
            let call = if l.inputs.len() == 1 && l.inputs[0] == previous {
                l.call.clone()
            } else {
                // Name the inputs first: `Add(a, b)`, `Conv2d(x, out: 8, ...)`.
                let inputs = l.inputs.join(", ");
                match l.call.split_once('(') {
                    Some((op, args)) => format!("{op}({inputs}, {args}"),
                    None => format!("{}({inputs})", l.call),
                }
            };
            let _ = writeln!(s, "    {label:<width$} {call}", width = width + 1);
            previous = l.name.clone();
        }
        s.push_str("}\n\nquantize {\n    backend: fbgemm\n    default: qat(fbgemm)\n}\n\n");
        s.push_str("train {\n");
        s.push_str("    # The data to calibrate (`qatc calibrate`) or fine-tune (`qatc train`) on, and its\n");
        s.push_str("    # normalization as the model was trained, for example:\n");
        s.push_str("    # data: mnist(\"data/mnist10k\")\n");
        s.push_str("    # normalize: { mean: 0.5, std: 0.5 }\n");
        let _ = writeln!(s, "    init: \"{name}.safetensors\"");
        s.push_str("    epochs: 2\n");
        s.push_str("    optimizer: sgd(lr: 0.001, momentum: 0.9)\n");
        s.push_str("}\n");
        s
    }
}

/// `[rows, cols]` row-major to `[cols, rows]`.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}
