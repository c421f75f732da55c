//! `qatc import`: float ONNX models become a spec and a state dict.
//!
//! - The fixture (a BatchNorm CNN trained in PyTorch on the shipped MNIST, made by
//!   `tools/torch_import_fixture.py`) imports, gives PyTorch's float accuracy, calibrates to int8
//!   within a point of it and fine-tunes with QAT; its PyTorch `state_dict` loads through
//!   `init:` into the imported spec with the same accuracy.
//! - A synthetic model with every op qatc imports gives onnxruntime's float outputs.
//! - Malformed models are errors that name the node and what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use qatc::onnx::proto::attribute_proto::AttributeType;
use qatc::onnx::proto::tensor_proto::DataType;
use qatc::onnx::proto::tensor_shape_proto::{dimension, Dimension};
use qatc::onnx::proto::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use qatc::pipeline::{self, SpecFile, TrainOptions, TrainRun};

fn fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures").join(name)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qatc-import-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The imported spec with its data named, as a user would after `qatc import`.
fn with_data(spec: &Path) -> String {
    let text = std::fs::read_to_string(spec).unwrap();
    let data = common::root().join("data/mnist10k");
    text.replace(
        "    # data: mnist(\"data/mnist10k\")",
        &format!("    data: mnist({:?})", data.display().to_string()),
    )
    .replace(
        "    # normalize: { mean: 0.5, std: 0.5 }",
        "    normalize: { mean: 0.5, std: 0.5 }",
    )
}

#[test]
fn a_pytorch_model_imports_calibrates_and_fine_tunes() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("mnist_bn_cnn.json")).unwrap())
            .unwrap();
    let torch_acc = meta["float_acc"].as_f64().unwrap();
    let dir = temp_dir("fixture");
    let report = pipeline::import_onnx(&fixture("mnist_bn_cnn.onnx"), &dir).unwrap();
    assert_eq!(report.layers.len(), 12, "{:#?}", report.layers);
    let text = with_data(&report.spec);
    assert!(text.contains("data: mnist("), "{text}");
    let spec_path = dir.join("mnist_bn_cnn_data.qspec");
    std::fs::write(&spec_path, &text).unwrap();
    let spec = SpecFile::load(&spec_path).unwrap();
    let cfg = spec.train_config("test").unwrap();
    let data = spec.data(&cfg).unwrap();

    // Float: PyTorch's accuracy and logits, from the ONNX weights and from the state dict.
    let want: Vec<f32> = meta["logits_first8"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let state_dict = fixture("mnist_bn_cnn.safetensors");
    let from_torch = text.replace(
        "init: \"mnist_bn_cnn.safetensors\"",
        &format!("init: {:?}", state_dict.display().to_string()),
    );
    let torch_spec = dir.join("from_state_dict.qspec");
    std::fs::write(&torch_spec, from_torch).unwrap();
    for path in [&spec_path, &torch_spec] {
        let spec = SpecFile::load(path).unwrap();
        let mut net = spec.net(&cfg).unwrap();
        let acc = qatc::train::evaluate(&mut net, &data.test, &cfg, false) as f64;
        assert!(
            (acc - torch_acc).abs() <= 0.05,
            "{path:?}: {acc} vs torch {torch_acc}"
        );
        let (mut x, mut labels) = (Vec::new(), Vec::new());
        let first: Vec<usize> = (0..8).collect();
        data.test
            .batch(&first, &cfg.normalization, &mut x, &mut labels);
        let mode = qatc::train::engine::Mode::eval(false);
        let tape = net.forward(&x, 8, mode, &mut qatc::train::rng::Rng::new(0));
        for (a, b) in tape.output(&net.graph).iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{path:?}: logit {a} vs torch {b}");
        }
    }

    // Post-training quantization: int8 within a point of float.
    let ptq = pipeline::calibrate(&spec, None, 32, Some(dir.join("ptq"))).unwrap();
    assert!(
        ptq.int8_acc >= torch_acc - 1.0,
        "PTQ int8 {} vs float {torch_acc}",
        ptq.int8_acc
    );

    // One epoch of QAT fine-tuning: within half a point of float.
    let options = TrainOptions {
        out: Some(dir.join("qat")),
        epochs: Some(1),
        ..TrainOptions::default()
    };
    let run = TrainRun::prepare(spec, &options).unwrap();
    let r = run.run(&mut qatc::train::Quiet).unwrap();
    let int8 = r.int8.as_ref().unwrap();
    assert!(
        int8.int8_acc >= torch_acc - 0.5 && int8.jit_int8_acc == int8.int8_acc,
        "QAT {int8:?} vs float {torch_acc}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ------------------------------------------------------------------------- building models

fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

fn attr_is(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![format!("{name}_out")],
        name: Some(name.into()),
        op_type: Some(op.into()),
        attribute: attrs,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(if d < 0 {
                                dimension::Value::DimParam("N".into())
                            } else {
                                dimension::Value::DimValue(d)
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Initializers with deterministic values in about -0.5..0.5 (or `fill`).
struct Weights {
    state: u64,
    tensors: Vec<TensorProto>,
}

impl Weights {
    fn add(&mut self, name: &str, dims: &[i64], fill: Option<f32>) {
        let n: i64 = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                fill.unwrap_or_else(|| {
                    self.state ^= self.state << 13;
                    self.state ^= self.state >> 7;
                    self.state ^= self.state << 17;
                    (self.state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
            })
            .collect();
        self.tensors.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(DataType::Float as i32),
            name: Some(name.into()),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
    }

    fn add_i64(&mut self, name: &str, values: &[i64]) {
        self.tensors.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            name: Some(name.into()),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
    }
}

/// A model with every op qatc imports: input `input` [N, 3, 8, 8], output `output` [N, 5].
fn every_op_model() -> ModelProto {
    let mut w = Weights {
        state: 0x9e37_79b9_7f4a_7c15,
        tensors: Vec::new(),
    };
    w.add("c1.weight", &[4, 3, 3, 3], None);
    w.add("c1.bias", &[4], None);
    w.add("dw.weight", &[4, 1, 3, 3], None);
    for (stat, fill) in [
        ("weight", None),
        ("bias", None),
        ("running_mean", None),
        ("running_var", Some(0.7)),
    ] {
        w.add(&format!("bn.{stat}"), &[4], fill);
    }
    w.add("se1.weight", &[2, 4, 1, 1], None);
    w.add("se1.bias", &[2], None);
    w.add("se2.weight", &[4, 2, 1, 1], None);
    w.add("se2.bias", &[4], None);
    w.add("clip_min", &[], Some(0.0));
    w.add("clip_max", &[], Some(6.0));
    w.add_i64("flat_shape", &[0, -1]);
    w.add("mm.weight_t", &[128, 16], None);
    w.add("mm.bias", &[16], None);
    w.add("fc.weight_t", &[16, 5], None);
    w.add("fc.bias", &[5], None);
    let pads1 = attr_is("pads", &[1, 1, 1, 1]);
    let nodes = vec![
        node(
            "Conv",
            "/c1/Conv",
            &["input", "c1.weight", "c1.bias"],
            vec![attr_is("kernel_shape", &[3, 3]), pads1.clone()],
        ),
        node("HardSwish", "/hs/HardSwish", &["/c1/Conv_out"], vec![]),
        node(
            "Conv",
            "/dw/Conv",
            &["/hs/HardSwish_out", "dw.weight"],
            vec![pads1.clone(), attr_i("group", 4)],
        ),
        node(
            "BatchNormalization",
            "/bn/BatchNormalization",
            &[
                "/dw/Conv_out",
                "bn.weight",
                "bn.bias",
                "bn.running_mean",
                "bn.running_var",
            ],
            vec![attr_f("epsilon", 1e-3), attr_f("momentum", 0.8)],
        ),
        node(
            "LeakyRelu",
            "/act/LeakyRelu",
            &["/bn/BatchNormalization_out"],
            vec![attr_f("alpha", 0.1)],
        ),
        node(
            "GlobalAveragePool",
            "/gap/GlobalAveragePool",
            &["/act/LeakyRelu_out"],
            vec![],
        ),
        node(
            "Conv",
            "/se1/Conv",
            &["/gap/GlobalAveragePool_out", "se1.weight", "se1.bias"],
            vec![],
        ),
        node("Relu", "/se_relu/Relu", &["/se1/Conv_out"], vec![]),
        node(
            "Conv",
            "/se2/Conv",
            &["/se_relu/Relu_out", "se2.weight", "se2.bias"],
            vec![],
        ),
        node(
            "HardSigmoid",
            "/gate/HardSigmoid",
            &["/se2/Conv_out"],
            vec![attr_f("alpha", 1.0 / 6.0), attr_f("beta", 0.5)],
        ),
        node(
            "Mul",
            "/se/Mul",
            &["/act/LeakyRelu_out", "/gate/HardSigmoid_out"],
            vec![],
        ),
        node(
            "Add",
            "/res/Add",
            &["/se/Mul_out", "/hs/HardSwish_out"],
            vec![],
        ),
        node(
            "AveragePool",
            "/avg/AveragePool",
            &["/res/Add_out"],
            vec![
                attr_is("kernel_shape", &[2, 2]),
                attr_is("strides", &[2, 2]),
            ],
        ),
        node(
            "MaxPool",
            "/max/MaxPool",
            &["/res/Add_out"],
            vec![
                attr_is("kernel_shape", &[3, 3]),
                attr_is("strides", &[2, 2]),
                pads1,
            ],
        ),
        node(
            "Concat",
            "/cat/Concat",
            &["/avg/AveragePool_out", "/max/MaxPool_out"],
            vec![attr_i("axis", 1)],
        ),
        node(
            "Clip",
            "/clip/Clip",
            &["/cat/Concat_out", "clip_min", "clip_max"],
            vec![],
        ),
        node(
            "Reshape",
            "/flat/Reshape",
            &["/clip/Clip_out", "flat_shape"],
            vec![],
        ),
        node(
            "MatMul",
            "/mm/MatMul",
            &["/flat/Reshape_out", "mm.weight_t"],
            vec![],
        ),
        node("Add", "/mm/Add", &["/mm/MatMul_out", "mm.bias"], vec![]),
        node("Tanh", "/tanh/Tanh", &["/mm/Add_out"], vec![]),
        node("Dropout", "/drop/Dropout", &["/tanh/Tanh_out"], vec![]),
        node(
            "Gemm",
            "/fc/Gemm",
            &["/drop/Dropout_out", "fc.weight_t", "fc.bias"],
            vec![],
        ),
        node("Sigmoid", "/out/Sigmoid", &["/fc/Gemm_out"], vec![]),
        NodeProto {
            output: vec!["output".into()],
            ..node("Identity", "/id/Identity", &["/out/Sigmoid_out"], vec![])
        },
    ];
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: Some("every_op".into()),
            initializer: w.tensors,
            input: vec![value_info("input", &[-1, 3, 8, 8])],
            output: vec![value_info("output", &[-1, 5])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn every_supported_op_imports_with_onnxruntimes_float_outputs() {
    let dir = temp_dir("every-op");
    let onnx = dir.join("every_op.onnx");
    std::fs::write(&onnx, every_op_model().encode_to_vec()).unwrap();
    let report = pipeline::import_onnx(&onnx, &dir).unwrap();
    let text = std::fs::read_to_string(&report.spec).unwrap();
    for call in [
        "c1:",
        "Hardswish",
        "Conv2d(out: 4, kernel: 3, padding: 1, groups: 4, bias: false)",
        "BatchNorm2d(eps: 1e-3, momentum: 0.2)",
        "LeakyReLU(negative_slope: 0.1)",
        "GlobalAvgPool",
        "Hardsigmoid",
        "Mul(",
        "Add(se, hs)",
        "AvgPool2d(kernel: 2, stride: 2)",
        "MaxPool2d(res, kernel: 3, stride: 2, padding: 1)",
        "Concat(avg, max)",
        "ReLU6",
        "Flatten",
        "mm:",
        "Linear(out: 16)",
        "Tanh",
        "fc:",
        "Linear(out: 5)",
        "Sigmoid",
    ] {
        assert!(text.contains(call), "{call} in\n{text}");
    }
    assert!(!text.contains("drop"), "Dropout is dropped:\n{text}");

    // qatc's float forward pass against onnxruntime's, on the same inputs.
    let spec = SpecFile::load(&report.spec).unwrap();
    let cfg = spec.train_config("test").unwrap();
    let mut net = spec.net(&cfg).unwrap();
    let n = 16;
    let mut state = 7u64;
    let x: Vec<f32> = (0..n * 192)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    let mode = qatc::train::engine::Mode::eval(false);
    let tape = net.forward(&x, n, mode, &mut qatc::train::rng::Rng::new(0));
    let ours = tape.output(&net.graph).to_vec();
    if !common::onnxruntime() {
        return;
    }
    let x_path = dir.join("x.npy");
    std::fs::write(&x_path, qatc::data::npy_f32(&x, &[n, 3, 8, 8]).unwrap()).unwrap();
    let out = dir.join("ort");
    let ok = Command::new("python3")
        .arg(common::root().join("tools/ort_run.py"))
        .args([&onnx, &x_path, &out])
        .status()
        .unwrap()
        .success();
    assert!(ok, "onnxruntime failed");
    let (theirs, rows) = qatc::data::read_inputs(&out.join("output.npy"), &[5], None).unwrap();
    assert_eq!((rows, ours.len()), (n, theirs.len()));
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-4, "qatc {a} vs onnxruntime {b}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ------------------------------------------------------------------------ malformed models

fn graph_mut(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().unwrap()
}

fn node_mut<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut NodeProto {
    graph_mut(m)
        .node
        .iter_mut()
        .find(|n| n.name.as_deref() == Some(name))
        .unwrap()
}

fn init_mut<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut TensorProto {
    graph_mut(m)
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap()
}

#[test]
fn malformed_models_are_errors_naming_the_node() {
    type Edit = fn(&mut ModelProto);
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "wrong opset",
            |m| m.opset_import[0].version = Some(7),
            &["opset 7", "opset_version=17"],
        ),
        (
            "no opset",
            |m| m.opset_import.clear(),
            &["no version of the standard operator set"],
        ),
        (
            "unsupported op",
            |m| node_mut(m, "/tanh/Tanh").op_type = Some("Softmax".into()),
            &[
                "node `/tanh/Tanh` (Softmax)",
                "`Softmax` has no qatc layer",
                "Conv, Gemm",
            ],
        ),
        (
            "custom domain",
            |m| node_mut(m, "/hs/HardSwish").domain = Some("com.microsoft".into()),
            &["node `/hs/HardSwish`", "operator domain `com.microsoft`"],
        ),
        (
            "inconsistent shapes",
            |m| {
                let t = init_mut(m, "mm.weight_t");
                t.dims = vec![100, 16];
                t.raw_data = Some(vec![0; 100 * 16 * 4]);
            },
            &[
                "node `/mm/MatMul` (MatMul)",
                "expects 100 features, got 128",
            ],
        ),
        (
            "truncated weight",
            |m| {
                init_mut(m, "c1.weight")
                    .raw_data
                    .as_mut()
                    .unwrap()
                    .truncate(10);
            },
            &[
                "node `/c1/Conv` (Conv)",
                "`c1.weight` holds 10 bytes; its dims [4, 3, 3, 3] need 432",
            ],
        ),
        (
            "asymmetric pads",
            |m| {
                node_mut(m, "/c1/Conv").attribute[1] = attr_is("pads", &[1, 1, 0, 0]);
            },
            &["node `/c1/Conv`", "not symmetric"],
        ),
        (
            "dilations",
            |m| {
                node_mut(m, "/c1/Conv")
                    .attribute
                    .push(attr_is("dilations", &[2, 2]))
            },
            &["node `/c1/Conv`", "dilation 1 only"],
        ),
        (
            "clip range",
            |m| {
                let t = init_mut(m, "clip_max");
                t.raw_data = Some(1.0f32.to_le_bytes().to_vec());
            },
            &["node `/clip/Clip` (Clip)", "clips to Some(0.0)..Some(1.0)"],
        ),
        (
            "unknown input",
            |m| node_mut(m, "/se/Mul").input[1] = "nope".into(),
            &[
                "node `/se/Mul` (Mul)",
                "reads `nope`, which no earlier node computes",
            ],
        ),
        (
            "two inputs",
            |m| graph_mut(m).input.push(value_info("extra", &[-1, 3])),
            &["has 2 inputs"],
        ),
        (
            "input rank",
            |m| graph_mut(m).input[0] = value_info("input", &[-1, 8, 8]),
            &["the input `input`", "[N, C, H, W] or [N, F]"],
        ),
        (
            "ceil mode",
            |m| {
                node_mut(m, "/avg/AveragePool")
                    .attribute
                    .push(attr_i("ceil_mode", 1))
            },
            &["node `/avg/AveragePool`", "ceil_mode"],
        ),
        (
            "training mode",
            |m| {
                node_mut(m, "/bn/BatchNormalization")
                    .attribute
                    .push(attr_i("training_mode", 1))
            },
            &["node `/bn/BatchNormalization`", "training mode"],
        ),
        (
            "computed reshape",
            |m| node_mut(m, "/flat/Reshape").input[1] = "/clip/Clip_out".into(),
            &["node `/flat/Reshape`", "its shape is computed"],
        ),
        (
            "external data",
            |m| init_mut(m, "fc.bias").data_location = Some(1),
            &["node `/fc/Gemm`", "external file"],
        ),
        (
            "transA",
            |m| node_mut(m, "/fc/Gemm").attribute.push(attr_i("transA", 1)),
            &["node `/fc/Gemm`", "transA"],
        ),
        (
            "output not computed",
            |m| graph_mut(m).output[0].name = Some("elsewhere".into()),
            &["output `elsewhere` is not computed"],
        ),
        (
            "hardsigmoid",
            |m| node_mut(m, "/gate/HardSigmoid").attribute[0] = attr_f("alpha", 0.2),
            &["node `/gate/HardSigmoid`", "PyTorch's, alpha 1/6"],
        ),
        (
            "computed weight",
            |m| node_mut(m, "/se1/Conv").input[1] = "/gap/GlobalAveragePool_out".into(),
            &["node `/se1/Conv`", "must be a constant"],
        ),
        (
            "bias of a product",
            |m| node_mut(m, "/res/Add").input[1] = "fc.bias".into(),
            &["node `/res/Add`", "a constant Add only as the bias"],
        ),
        (
            "groups",
            |m| node_mut(m, "/dw/Conv").attribute[1] = attr_i("group", 3),
            &["node `/dw/Conv`", "expects 3 channels, got 4"],
        ),
        (
            "concat axis",
            |m| node_mut(m, "/cat/Concat").attribute[0] = attr_i("axis", 2),
            &["node `/cat/Concat`", "axis 2"],
        ),
    ];
    assert!(cases.len() >= 15);
    for (what, edit, wants) in cases {
        let mut m = every_op_model();
        edit(&mut m);
        let e = qatc::onnx::import::import(&m.encode_to_vec(), "m.onnx", "m").unwrap_err();
        for want in wants {
            assert!(e.contains(want), "{what}: {want:?} not in {e:?}");
        }
    }
    // Bytes that are not a model at all.
    let bytes = every_op_model().encode_to_vec();
    for (what, bad) in [
        ("truncated", &bytes[..bytes.len() / 2]),
        ("garbage", &b"\xff\xff\xff\xff not protobuf"[..]),
    ] {
        let e = qatc::onnx::import::import(bad, "m.onnx", "m").unwrap_err();
        assert!(
            e.contains("not an ONNX model") || e.contains("no graph") || e.contains("opset"),
            "{what}: {e}"
        );
    }
}
