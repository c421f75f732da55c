//! A converted int8 graph as an ONNX model (opset 17) in QDQ form: every quint8 tensor is a
//! `uint8` tensor of codes, read by the ops after it through a `DequantizeLinear`; Conv and Gemm
//! sit between `DequantizeLinear`s (input, per-channel int8 weights, int32 bias with scale
//! `in_scale · w_scale`) and a `QuantizeLinear`, which onnxruntime fuses into `QLinearConv` and
//! `QGemm`. Layers kept float stay float.
//!
//! Where ONNX has no int8 op with qatc's rounding, the op is written with exact integer steps on
//! the codes, so that onnxruntime's output codes are qatc's:
//! - max pooling, flatten and clamps run on the codes themselves (`MaxPool`, `Flatten` and `Clip`
//!   take `uint8`);
//! - a lookup table is a `Gather` from the 256-entry table;
//! - average pooling sums `code - zero_point` as floats (exact integers), divides by the
//!   window's size, rounds half to even (`Round`) and adds the zero point back, as
//!   [`crate::quant::numerics::average_codes`] does.

use std::collections::HashSet;

use prost::Message;

use super::proto::attribute_proto::AttributeType;
use super::proto::tensor_proto::DataType;
use super::proto::tensor_shape_proto::{dimension, Dimension};
use super::proto::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::int8::{FWeights, QGraph, QOp, QWeights, TensorType};
use crate::ir::{Act, Activation, Combine, ConvGeom, Pool, Pool2d};
use crate::quant::numerics::QParams;

/// The ONNX operator set the models use.
pub const OPSET: i64 = 17;
/// The IR version of opset 17's release.
const IR_VERSION: i64 = 8;

/// What to export besides the model's output.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions {
    /// Also output the codes of every quantized tensor (uint8, named as its node), to compare
    /// a runtime with qatc tensor by tensor.
    pub codes: bool,
}

/// The model's bytes (a serialized `ModelProto`).
pub fn export(graph: &QGraph, options: ExportOptions) -> Result<Vec<u8>, String> {
    Ok(model(graph, options)?.encode_to_vec())
}

/// The graph as an ONNX model: input `input` (float32 `[N, ...]`), output `output` (float32,
/// dequantized when the graph ends quantized).
pub fn model(graph: &QGraph, options: ExportOptions) -> Result<ModelProto, String> {
    crate::int8::verify(graph).map_err(|e| format!("not a valid int8 graph: {}", e.join("; ")))?;
    let mut b = Builder::default();
    // Per node: its codes (uint8) when quantized, and its float tensor once something needs it.
    let mut codes: Vec<Option<String>> = Vec::with_capacity(graph.nodes.len());
    let mut floats: Vec<Option<String>> = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let name = node.name.clone();
        let out_q = node.ty.qparams();
        let float_of = |b: &mut Builder, k: usize, floats: &mut Vec<Option<String>>| {
            let j = node.inputs[k];
            if let Some(f) = &floats[j] {
                return f.clone();
            }
            let q = graph.nodes[j]
                .ty
                .qparams()
                .expect("a node without floats has codes");
            let code = codes[j].clone().expect("quantized");
            let f = b.dequantize(&code, q, &graph.nodes[j].name.clone());
            floats[j] = Some(f.clone());
            f
        };
        let code_of = |k: usize| codes[node.inputs[k]].clone().expect("a u8 input has codes");
        let in_quantized = |k: usize| graph.nodes[node.inputs[k]].ty.qparams().is_some();
        let (code, float) = match &node.op {
            QOp::Input => (None, Some("input".to_string())),
            QOp::Quantize => {
                let x = float_of(&mut b, 0, &mut floats);
                (Some(b.quantize(&x, out_q.expect("u8"), &name)), None)
            }
            QOp::Dequantize => (None, Some(float_of(&mut b, 0, &mut floats))),
            QOp::Linear {
                in_features,
                out_features,
                w,
            } => {
                let x = float_of(&mut b, 0, &mut floats);
                let xq = graph.nodes[node.inputs[0]].ty.qparams().expect("u8");
                let shape = [*out_features as i64, *in_features as i64];
                let (weight, bias) = b.qweights(w, &shape, xq, &name);
                let y = b.node("Gemm", &[&x, &weight, &bias], vec![int("transB", 1)], &name);
                (
                    Some(b.quantize_clamped(&y, w.clamp, out_q.expect("u8"), &name)),
                    None,
                )
            }
            QOp::Conv2d { geom, w } => {
                let x = float_of(&mut b, 0, &mut floats);
                let xq = graph.nodes[node.inputs[0]].ty.qparams().expect("u8");
                let (weight, bias) = b.qweights(w, &conv_weight_shape(geom), xq, &name);
                let y = b.node("Conv", &[&x, &weight, &bias], conv_attrs(geom), &name);
                (
                    Some(b.quantize_clamped(&y, w.clamp, out_q.expect("u8"), &name)),
                    None,
                )
            }
            QOp::Clamp { lo, hi } => {
                let lo = b.init_u8(&format!("{name}_lo"), &[], &[*lo as u8]);
                let hi = b.init_u8(&format!("{name}_hi"), &[], &[*hi as u8]);
                (
                    Some(b.node("Clip", &[&code_of(0), &lo, &hi], vec![], &name)),
                    None,
                )
            }
            QOp::Pool(pool) if in_quantized(0) => {
                let q = out_q.expect("pools keep their input's type");
                let in_shape = &graph.nodes[node.inputs[0]].shape;
                (
                    Some(b.pool_codes(pool, &code_of(0), q, in_shape, &name)),
                    None,
                )
            }
            QOp::Pool(pool) => {
                let x = float_of(&mut b, 0, &mut floats);
                let y = match pool {
                    Pool::MaxPool2d(p) => b.node("MaxPool", &[&x], pool_attrs(p), &name),
                    Pool::AvgPool2d(p) => {
                        let mut attrs = pool_attrs(p);
                        attrs.push(int("count_include_pad", 1));
                        b.node("AveragePool", &[&x], attrs, &name)
                    }
                    Pool::GlobalAvgPool => b.node("GlobalAveragePool", &[&x], vec![], &name),
                };
                (None, Some(y))
            }
            QOp::Flatten if in_quantized(0) => (
                Some(b.node("Flatten", &[&code_of(0)], vec![int("axis", 1)], &name)),
                None,
            ),
            QOp::Flatten => {
                let x = float_of(&mut b, 0, &mut floats);
                (
                    None,
                    Some(b.node("Flatten", &[&x], vec![int("axis", 1)], &name)),
                )
            }
            QOp::BatchNorm { scale, shift } => {
                let x = float_of(&mut b, 0, &mut floats);
                let y = b.channel_affine(&x, scale, shift, node.shape.len(), &name);
                (Some(b.quantize(&y, out_q.expect("u8"), &name)), None)
            }
            QOp::FloatBatchNorm { scale, shift } => {
                let x = float_of(&mut b, 0, &mut floats);
                (
                    None,
                    Some(b.channel_affine(&x, scale, shift, node.shape.len(), &name)),
                )
            }
            QOp::FloatLinear {
                in_features,
                out_features,
                w,
            } => {
                let x = float_of(&mut b, 0, &mut floats);
                let shape = [*out_features as i64, *in_features as i64];
                let (weight, bias) = b.fweights(w, &shape, &name);
                let y = b.node("Gemm", &[&x, &weight, &bias], vec![int("transB", 1)], &name);
                (None, Some(b.act(&y, w.act, &name)))
            }
            QOp::FloatConv2d { geom, w } => {
                let x = float_of(&mut b, 0, &mut floats);
                let (weight, bias) = b.fweights(w, &conv_weight_shape(geom), &name);
                let y = b.node("Conv", &[&x, &weight, &bias], conv_attrs(geom), &name);
                (None, Some(b.act(&y, w.act, &name)))
            }
            QOp::FloatAct(a) => {
                let x = float_of(&mut b, 0, &mut floats);
                (None, Some(b.activation(&x, *a, &name)))
            }
            QOp::Lut { table } => {
                let table = b.init_u8(&format!("{name}_table"), &[256], table);
                let index = b.node(
                    "Cast",
                    &[&code_of(0)],
                    vec![int("to", DataType::Int32 as i64)],
                    &format!("{name}_index"),
                );
                (
                    Some(b.node("Gather", &[&table, &index], vec![int("axis", 0)], &name)),
                    None,
                )
            }
            QOp::Combine(c) => {
                let xs: Vec<String> = (0..node.inputs.len())
                    .map(|k| float_of(&mut b, k, &mut floats))
                    .collect();
                let y = match c {
                    Combine::Add => {
                        let mut sum = xs[0].clone();
                        for x in &xs[1..] {
                            sum = b.node("Add", &[&sum, x], vec![], &name);
                        }
                        sum
                    }
                    Combine::Mul => {
                        let scale_shape = &graph.nodes[node.inputs[1]].shape;
                        let scale = if scale_shape.len() == 1 && node.shape.len() == 3 {
                            // A [C] vector scales the channels of [C, H, W].
                            let axes = b.init_i64(&format!("{name}_axes"), &[2], &[2, 3]);
                            b.node(
                                "Unsqueeze",
                                &[&xs[1], &axes],
                                vec![],
                                &format!("{name}_scale"),
                            )
                        } else {
                            xs[1].clone()
                        };
                        b.node("Mul", &[&xs[0], &scale], vec![], &name)
                    }
                    Combine::Concat => {
                        let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
                        b.node("Concat", &refs, vec![int("axis", 1)], &name)
                    }
                };
                match out_q {
                    Some(q) => (Some(b.quantize(&y, q, &name)), None),
                    None => (None, Some(y)),
                }
            }
        };
        codes.push(code);
        floats.push(float);
    }
    // The output, as float.
    let out = graph.output;
    let output = match (&floats[out], &codes[out], graph.nodes[out].ty) {
        (Some(f), _, _) => f.clone(),
        (None, Some(c), TensorType::U8(q)) => b.dequantize(c, q.into(), "output"),
        _ => return Err("the output node has no value".into()),
    };
    b.nodes.push(NodeProto {
        input: vec![output],
        output: vec!["output".into()],
        name: Some("output".into()),
        op_type: Some("Identity".into()),
        ..Default::default()
    });
    let value = |name: &str, elem: DataType, shape: &[usize]| ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto {
                    dim: std::iter::once(Dimension {
                        value: Some(dimension::Value::DimParam("N".into())),
                        ..Default::default()
                    })
                    .chain(shape.iter().map(|&d| Dimension {
                        value: Some(dimension::Value::DimValue(d as i64)),
                        ..Default::default()
                    }))
                    .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut output = vec![value("output", DataType::Float, &graph.nodes[out].shape)];
    if options.codes {
        for (node, code) in graph.nodes.iter().zip(&codes) {
            if let Some(code) = code {
                // Graph outputs need their own names: an Identity gives the node's.
                let name = format!("codes:{}", node.name);
                b.nodes.push(NodeProto {
                    input: vec![code.clone()],
                    output: vec![name.clone()],
                    name: Some(name.clone()),
                    op_type: Some("Identity".into()),
                    ..Default::default()
                });
                output.push(value(&name, DataType::Uint8, &node.shape));
            }
        }
    }
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("qatc".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(GraphProto {
            node: b.nodes,
            name: Some(graph.name.clone()),
            initializer: b.inits,
            input: vec![value("input", DataType::Float, &graph.nodes[0].shape)],
            output,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    }
}

fn pair(v: (usize, usize)) -> [i64; 2] {
    [v.0 as i64, v.1 as i64]
}

fn conv_weight_shape(geom: &ConvGeom) -> [i64; 4] {
    [
        geom.out_channels as i64,
        (geom.in_channels / geom.groups) as i64,
        geom.kernel.0 as i64,
        geom.kernel.1 as i64,
    ]
}

/// Window attributes: pads are `[top, left, bottom, right]`.
fn window_attrs(
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Vec<AttributeProto> {
    let (ph, pw) = (padding.0 as i64, padding.1 as i64);
    vec![
        ints("kernel_shape", &pair(kernel)),
        ints("strides", &pair(stride)),
        ints("pads", &[ph, pw, ph, pw]),
    ]
}

fn conv_attrs(geom: &ConvGeom) -> Vec<AttributeProto> {
    let mut attrs = window_attrs(geom.kernel, geom.stride, geom.padding);
    attrs.push(ints("dilations", &[1, 1]));
    attrs.push(int("group", geom.groups as i64));
    attrs
}

fn pool_attrs(p: &Pool2d) -> Vec<AttributeProto> {
    window_attrs(p.kernel, p.stride, p.padding)
}

/// Nodes and initializers under construction, with unique names.
#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    names: HashSet<String>,
}

impl Builder {
    /// `base`, or `base_2`, `base_3`, ... when taken.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while !self.names.insert(name.clone()) {
            k += 1;
            name = format!("{base}_{k}");
        }
        name
    }

    fn init(&mut self, base: &str, ty: DataType, dims: &[i64], raw: Vec<u8>) -> String {
        let name = self.fresh(base);
        self.inits.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(ty as i32),
            name: Some(name.clone()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    fn init_f32(&mut self, base: &str, dims: &[i64], v: &[f32]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(base, DataType::Float, dims, raw)
    }

    fn init_u8(&mut self, base: &str, dims: &[i64], v: &[u8]) -> String {
        self.init(base, DataType::Uint8, dims, v.to_vec())
    }

    fn init_i64(&mut self, base: &str, dims: &[i64], v: &[i64]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(base, DataType::Int64, dims, raw)
    }

    /// Adds a node and returns its (one) output's name.
    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        base: &str,
    ) -> String {
        let out = self.fresh(base);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(out.clone()),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// The scale and zero point initializers of a quint8 tensor.
    fn qparams(&mut self, q: QParams, base: &str) -> (String, String) {
        let scale = self.init_f32(&format!("{base}_scale"), &[], &[q.scale]);
        let zp = self.init_u8(&format!("{base}_zero_point"), &[], &[q.zero_point as u8]);
        (scale, zp)
    }

    fn quantize(&mut self, x: &str, q: QParams, base: &str) -> String {
        let (scale, zp) = self.qparams(q, base);
        self.node(
            "QuantizeLinear",
            &[x, &scale, &zp],
            vec![],
            &format!("{base}_q"),
        )
    }

    fn dequantize(&mut self, codes: &str, q: QParams, base: &str) -> String {
        let (scale, zp) = self.qparams(q, &format!("{base}_dq"));
        self.node(
            "DequantizeLinear",
            &[codes, &scale, &zp],
            vec![],
            &format!("{base}_dq"),
        )
    }

    /// The dequantized int8 weights and int32 bias of a quantized layer: per-channel (axis 0)
    /// weight scales, bias scale `in_scale · w_scale` per channel.
    fn qweights(
        &mut self,
        w: &QWeights,
        shape: &[i64],
        xq: QParams,
        base: &str,
    ) -> (String, String) {
        let out = shape[0] as usize;
        let per_channel = w.weight_scales.len() > 1;
        let scale_dims: &[i64] = if per_channel { &[out as i64] } else { &[] };
        let raw: Vec<u8> = w.weight.iter().map(|&v| v as u8).collect();
        let weight = self.init(&format!("{base}_weight_q"), DataType::Int8, shape, raw);
        let w_scale = self.init_f32(
            &format!("{base}_weight_scale"),
            scale_dims,
            &w.weight_scales,
        );
        let w_zp = self.init(
            &format!("{base}_weight_zero_point"),
            DataType::Int8,
            scale_dims,
            vec![0; w.weight_scales.len()],
        );
        let axis = if per_channel {
            vec![int("axis", 0)]
        } else {
            vec![]
        };
        let weight = self.node(
            "DequantizeLinear",
            &[&weight, &w_scale, &w_zp],
            axis.clone(),
            &format!("{base}_weight"),
        );
        let bias_raw: Vec<u8> = w.bias.iter().flat_map(|b| b.to_le_bytes()).collect();
        let bias = self.init(
            &format!("{base}_bias_q"),
            DataType::Int32,
            &[out as i64],
            bias_raw,
        );
        let b_scales: Vec<f32> = w.weight_scales.iter().map(|s| xq.scale * s).collect();
        let b_scale = self.init_f32(&format!("{base}_bias_scale"), scale_dims, &b_scales);
        let b_zp = self.init(
            &format!("{base}_bias_zero_point"),
            DataType::Int32,
            scale_dims,
            vec![0; 4 * w.weight_scales.len()],
        );
        let bias = self.node(
            "DequantizeLinear",
            &[&bias, &b_scale, &b_zp],
            axis,
            &format!("{base}_bias"),
        );
        (weight, bias)
    }

    fn fweights(&mut self, w: &FWeights, shape: &[i64], base: &str) -> (String, String) {
        let weight = self.init_f32(&format!("{base}_weight"), shape, &w.weight);
        let bias = self.init_f32(&format!("{base}_bias"), &[shape[0]], &w.bias);
        (weight, bias)
    }

    /// A quantized layer's float result `y` quantized with `q` and clamped to the codes
    /// `[lo, hi]`: a lower bound at a positive zero point is a `Relu` before quantizing
    /// (onnxruntime fuses `Conv`/`Gemm`, `Relu` and `QuantizeLinear` into one int8 kernel); any
    /// other bound (ReLU6's code of 6, a 4-bit range) is a `Clip` on the codes after it, which
    /// is what the int8 kernels' saturation does. Quantizing is monotonic, so clamping codes
    /// equals clamping values at the codes' values first.
    fn quantize_clamped(
        &mut self,
        y: &str,
        (lo, hi): (i32, i32),
        q: QParams,
        base: &str,
    ) -> String {
        let relu = lo > 0 && lo == q.zero_point;
        let y = if relu {
            self.node("Relu", &[y], vec![], &format!("{base}_relu"))
        } else {
            y.to_string()
        };
        let codes = self.quantize(&y, q, base);
        if hi == 255 && (lo == 0 || relu) {
            return codes;
        }
        let min = self.init_u8(&format!("{base}_lo"), &[], &[lo as u8]);
        let max = self.init_u8(&format!("{base}_hi"), &[], &[hi as u8]);
        self.node(
            "Clip",
            &[&codes, &min, &max],
            vec![],
            &format!("{base}_clip"),
        )
    }

    fn act(&mut self, y: &str, act: Act, base: &str) -> String {
        match act {
            Act::None => y.to_string(),
            Act::ReLU => self.activation(y, Activation::ReLU, base),
            Act::ReLU6 => self.activation(y, Activation::ReLU6, base),
        }
    }

    fn activation(&mut self, x: &str, a: Activation, base: &str) -> String {
        let out = format!("{base}_{}", a.mnemonic());
        match a {
            Activation::ReLU => self.node("Relu", &[x], vec![], &out),
            Activation::ReLU6 => {
                let min = self.init_f32(&format!("{base}_min"), &[], &[0.0]);
                let max = self.init_f32(&format!("{base}_max"), &[], &[6.0]);
                self.node("Clip", &[x, &min, &max], vec![], &out)
            }
            Activation::Hardswish => self.node("HardSwish", &[x], vec![], &out),
            Activation::Hardsigmoid => self.node(
                "HardSigmoid",
                &[x],
                vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)],
                &out,
            ),
            Activation::LeakyReLU { negative_slope } => self.node(
                "LeakyRelu",
                &[x],
                vec![float("alpha", negative_slope as f32)],
                &out,
            ),
            Activation::Sigmoid => self.node("Sigmoid", &[x], vec![], &out),
            Activation::Tanh => self.node("Tanh", &[x], vec![], &out),
            Activation::SiLU => {
                let s = self.node("Sigmoid", &[x], vec![], &format!("{base}_sigmoid"));
                self.node("Mul", &[x, &s], vec![], &out)
            }
        }
    }

    /// `x · scale[c] + shift[c]` over the channels of `[C, H, W]` or `[C]` samples.
    fn channel_affine(
        &mut self,
        x: &str,
        scale: &[f32],
        shift: &[f32],
        rank: usize,
        base: &str,
    ) -> String {
        let c = scale.len() as i64;
        let dims: Vec<i64> = if rank == 3 { vec![c, 1, 1] } else { vec![c] };
        let scale = self.init_f32(&format!("{base}_scale_c"), &dims, scale);
        let shift = self.init_f32(&format!("{base}_shift_c"), &dims, shift);
        let y = self.node("Mul", &[x, &scale], vec![], &format!("{base}_mul"));
        self.node("Add", &[&y, &shift], vec![], &format!("{base}_add"))
    }

    /// Pooling on codes with qatc's integer semantics ([`Pool::eval_u8`]). Global average
    /// pooling is average pooling with the plane as its window.
    fn pool_codes(
        &mut self,
        pool: &Pool,
        codes: &str,
        q: QParams,
        in_shape: &[usize],
        base: &str,
    ) -> String {
        let (c, h, w) = (in_shape[0], in_shape[1], in_shape[2]);
        let p = match pool {
            Pool::MaxPool2d(p) => return self.node("MaxPool", &[codes], pool_attrs(p), base),
            Pool::AvgPool2d(p) => *p,
            Pool::GlobalAvgPool => Pool2d {
                kernel: (h, w),
                stride: (h, w),
                padding: (0, 0),
            },
        };
        // Sum `code - zp` over each window with a depthwise convolution of ones (a padding tap
        // adds 0, the zero point's value; the sums are exact integers), add the window's zero
        // points back, divide by its size, round half to even, and clamp to codes.
        let zp = q.zero_point as f32;
        let taps = p.kernel.0 * p.kernel.1;
        let to_float = vec![int("to", DataType::Float as i64)];
        let x = self.node("Cast", &[codes], to_float, &format!("{base}_codes"));
        let zero = self.init_f32(&format!("{base}_zp"), &[], &[zp]);
        let centred = self.node("Sub", &[&x, &zero], vec![], &format!("{base}_centred"));
        let ones = self.init_f32(
            &format!("{base}_ones"),
            &[c as i64, 1, p.kernel.0 as i64, p.kernel.1 as i64],
            &vec![1.0; c * taps],
        );
        let mut attrs = window_attrs(p.kernel, p.stride, p.padding);
        attrs.push(int("group", c as i64));
        let sum = self.node("Conv", &[&centred, &ones], attrs, &format!("{base}_sum"));
        let back = self.init_f32(&format!("{base}_zp_sum"), &[], &[zp * taps as f32]);
        let sum = self.node("Add", &[&sum, &back], vec![], &format!("{base}_sum_codes"));
        let n = self.init_f32(&format!("{base}_n"), &[], &[taps as f32]);
        let mean = self.node("Div", &[&sum, &n], vec![], &format!("{base}_mean"));
        let rounded = self.node("Round", &[&mean], vec![], &format!("{base}_round"));
        let lo = self.init_f32(&format!("{base}_lo"), &[], &[0.0]);
        let hi = self.init_f32(&format!("{base}_hi"), &[], &[255.0]);
        let clipped = self.node(
            "Clip",
            &[&rounded, &lo, &hi],
            vec![],
            &format!("{base}_clip"),
        );
        let to_u8 = vec![int("to", DataType::Uint8 as i64)];
        self.node("Cast", &[&clipped], to_u8, base)
    }
}
