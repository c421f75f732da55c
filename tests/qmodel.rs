//! The .qmodel file: a converted model round-trips exactly, every crafted bad file is refused
//! with an error, and thousands of random byte mutations never panic the loader or, when a
//! mutant still loads, the interpreter.

mod common;

use qatc::int8::QGraph;
use qatc::qmodel::{self, Info};
use qatc::train::{self, Quiet};
use serde_json::{json, Value};

/// A converted lenet_custom (convs with folded BatchNorm, per-channel fc1, float fc3), briefly
/// trained, and a few test inputs.
fn model() -> (QGraph, Vec<f32>) {
    let path = common::root().join("specs/lenet_custom.qspec");
    let (result, _) = qatc::front_end(
        &path.display().to_string(),
        &std::fs::read_to_string(&path).unwrap(),
    );
    let model = result.expect("checks").model;
    let mut cfg = model.train.clone().unwrap();
    cfg.pretrain_epochs = 0;
    let mut data = train::load_data(&model, &cfg, &common::root().join("specs")).unwrap();
    let size = data.train.image_size();
    data.train.images.truncate(256 * size);
    data.train.labels.truncate(256);
    let mut net = train::build_net(&model, 3).unwrap();
    train::train(&mut net, &data, &cfg, 1, &mut Quiet);
    let graph = qatc::convert::convert(&net.graph, &net.state).unwrap();
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    data.test
        .batch(&[0, 1, 2, 3], &cfg.normalization, &mut x, &mut labels);
    (graph, x)
}

fn info() -> Info {
    Info {
        backend: "qnnpack".into(),
        spec: "model m { ... }".into(),
        qatc_version: "0.1.0".into(),
        normalization: Some(qatc::data::Normalization {
            mean: vec![0.1307],
            std: vec![0.3081],
        }),
        spec_dir: None,
    }
}

/// Splits a safetensors file into its header (JSON) and data.
fn split(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        bytes[8 + n..].to_vec(),
    )
}

fn join(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut text = serde_json::to_string(header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The file with its graph JSON edited by `f`.
fn with_graph(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let (mut header, data) = split(bytes);
    let mut graph: Value =
        serde_json::from_str(header["__metadata__"]["qatc.graph"].as_str().unwrap()).unwrap();
    f(&mut graph);
    header["__metadata__"]["qatc.graph"] = Value::String(graph.to_string());
    join(&header, &data)
}

fn with_header(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let (mut header, data) = split(bytes);
    f(&mut header);
    join(&header, &data)
}

fn node_index(graph: &Value, name: &str) -> usize {
    graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .position(|n| n["name"] == name)
        .unwrap()
}

#[test]
fn round_trip_keeps_graph_and_outputs() {
    let (graph, x) = model();
    let bytes = qmodel::to_bytes(&graph, &info()).unwrap();
    let (loaded, loaded_info) = qmodel::from_bytes(&bytes).unwrap();
    assert_eq!(loaded, graph);
    assert_eq!(loaded_info, info());
    assert_eq!(
        qatc::interp::run(&loaded, &x, 4).unwrap(),
        qatc::interp::run(&graph, &x, 4).unwrap()
    );
}

#[test]
fn crafted_bad_files_are_refused() {
    let (graph, _) = model();
    let good = qmodel::to_bytes(&graph, &info()).unwrap();
    let edit_op = |name: &'static str, f: fn(&mut Value)| {
        with_graph(&good, move |g| {
            let i = node_index(g, name);
            f(&mut g["nodes"][i]);
        })
    };
    let mut huge_header = good.clone();
    huge_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut long_header = good.clone();
    long_header[..8].copy_from_slice(&((good.len() as u64) + 10).to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "not a valid"),
        ("seven bytes", good[..7].to_vec(), "not a valid"),
        ("huge header length", huge_header, "not a valid"),
        ("header longer than the file", long_header, "not a valid"),
        (
            "truncated data",
            good[..good.len() - 100].to_vec(),
            "not a valid",
        ),
        (
            "header not JSON",
            join_raw(b"{not json}   ", &[]),
            "not a valid",
        ),
        (
            "no format",
            with_header(&good, |h| {
                h["__metadata__"]
                    .as_object_mut()
                    .unwrap()
                    .remove("qatc.format");
            }),
            "no `qatc.format`",
        ),
        (
            "other format",
            with_header(&good, |h| {
                h["__metadata__"]["qatc.format"] = json!("qmodel/9")
            }),
            "unsupported model format",
        ),
        (
            "no graph",
            with_header(&good, |h| {
                h["__metadata__"]
                    .as_object_mut()
                    .unwrap()
                    .remove("qatc.graph");
            }),
            "no `qatc.graph`",
        ),
        (
            "normalization not JSON",
            with_header(&good, |h| {
                h["__metadata__"]["qatc.normalization"] = json!("{mean")
            }),
            "metadata `qatc.normalization` is not a normalization",
        ),
        (
            "zero std",
            with_header(&good, |h| {
                h["__metadata__"]["qatc.normalization"] = json!(r#"{"mean":[0.5],"std":[0.0]}"#)
            }),
            "finite positive stds",
        ),
        (
            "means without stds",
            with_header(&good, |h| {
                h["__metadata__"]["qatc.normalization"] = json!(r#"{"mean":[0.5,0.5],"std":[1]}"#)
            }),
            "as many finite means",
        ),
        (
            "graph not JSON",
            with_header(&good, |h| h["__metadata__"]["qatc.graph"] = json!("{nodes")),
            "graph in the metadata is invalid",
        ),
        (
            "unknown op",
            edit_op("conv1", |n| n["op"] = json!({"Softmax": {}})),
            "graph in the metadata is invalid",
        ),
        (
            "forward input",
            edit_op("conv1", |n| n["inputs"] = json!([40])),
            "not before it",
        ),
        (
            "output past the end",
            with_graph(&good, |g| g["output"] = json!(999)),
            "output 999",
        ),
        (
            "no nodes",
            with_graph(&good, |g| g["nodes"] = json!([])),
            "does not use",
        ),
        (
            "zero scale",
            edit_op("conv1", |n| n["ty"]["U8"]["scale"] = json!(0.0)),
            "not a positive normal number",
        ),
        (
            "negative scale",
            edit_op("pool1", |n| n["ty"]["U8"]["scale"] = json!(-1.0)),
            "not a positive normal number",
        ),
        (
            "zero point 300",
            edit_op("conv1", |n| n["ty"]["U8"]["zero_point"] = json!(300)),
            "outside quint8",
        ),
        (
            "zero point -1",
            edit_op("input.quant", |n| n["ty"]["U8"]["zero_point"] = json!(-1)),
            "outside quint8",
        ),
        (
            "clamp past 255",
            edit_op("conv1", |n| {
                n["op"]["Conv2d"]["w"]["clamp"] = json!([0, 300])
            }),
            "clamp",
        ),
        (
            "float quantize",
            edit_op("input.quant", |n| n["ty"] = json!("F32")),
            "quantize takes f32 and gives u8",
        ),
        (
            "wrong shape",
            edit_op("conv1", |n| n["shape"] = json!([16, 23, 24])),
            "its op gives",
        ),
        (
            "zero dimension",
            edit_op("pool1", |n| n["shape"] = json!([16, 0, 12])),
            "bad shape",
        ),
        (
            "wrong in_features",
            edit_op("fc2", |n| n["op"]["Linear"]["in_features"] = json!(121)),
            "has shape [84, 120], expected [84, 121]",
        ),
        (
            "zero groups",
            edit_op("conv2", |n| n["op"]["Conv2d"]["geom"]["groups"] = json!(0)),
            "",
        ),
        (
            "duplicate name",
            edit_op("pool2", |n| n["name"] = json!("pool1")),
            "",
        ),
        (
            "input not first",
            with_graph(&good, |g| g["nodes"][0]["op"] = json!("Flatten")),
            "input node must be first",
        ),
        (
            "giant shape",
            edit_op("flat", |n| n["shape"] = json!([1u64 << 40])),
            "too large",
        ),
        (
            "offset gap",
            with_header(&good, |h| {
                h.as_object_mut().unwrap().remove("fc1.weight");
            }),
            "not a valid",
        ),
        (
            "missing tensor",
            with_header(&good, |h| {
                let t = h.as_object_mut().unwrap().remove("fc1.weight").unwrap();
                h["fc1.weigth"] = t;
            }),
            "`fc1.weight` is missing",
        ),
        (
            "extra tensor",
            {
                let (mut header, mut data) = split(&good);
                let end = data.len() as u64;
                header["stray.weight"] =
                    json!({"dtype": "F32", "shape": [1], "data_offsets": [end, end + 4]});
                data.extend_from_slice(&[0; 4]);
                join(&header, &data)
            },
            "tensors the graph does not use (such as `stray.weight`)",
        ),
        (
            "weight dtype",
            with_header(&good, |h| h["fc2.weight"]["dtype"] = json!("U8")),
            "expected I8",
        ),
        (
            "bias dtype",
            with_header(&good, |h| {
                let offsets = h["fc2.bias"]["data_offsets"].clone();
                h["fc2.bias"] = json!({"dtype": "F32", "shape": [84], "data_offsets": offsets});
            }),
            "expected I32",
        ),
        (
            "weight shape",
            with_header(&good, |h| h["fc2.weight"]["shape"] = json!([120, 84])),
            "has shape",
        ),
        (
            "offsets past the end",
            with_header(&good, |h| {
                h["fc2.bias"]["data_offsets"] = json!([0, 1u64 << 40])
            }),
            "not a valid",
        ),
        (
            "overlapping offsets",
            with_header(&good, |h| {
                let o = h["fc1.bias"]["data_offsets"].clone();
                h["fc2.bias"]["data_offsets"] = o;
            }),
            "",
        ),
        (
            "scale count",
            with_header(&good, |h| {
                let o = h["conv1.weight_scales"]["data_offsets"][0]
                    .as_u64()
                    .unwrap();
                h["conv1.weight_scales"]["shape"] = json!([2]);
                h["conv1.weight_scales"]["data_offsets"] = json!([o, o + 8]);
            }),
            "",
        ),
        (
            "batch norm on the raw input",
            with_graph(&good, |g| {
                g["nodes"][1]["op"] = json!({"FloatBatchNorm": {"scale": [], "shift": []}});
            }),
            "",
        ),
    ];
    // What a fuzzing run found (issue: hardening): sizes that wrapped, ranges the engines read
    // differently, multipliers that overflow.
    let found: Vec<(&str, Vec<u8>, &str)> =
        vec![
        (
            "pool padding near 2^63 (wrapped the window arithmetic, then a wild write)",
            edit_op("pool1", |n| {
                n["op"]["MaxPool2d"]["padding"] = json!([(1u64 << 63) - 1, 0])
            }),
            "padding",
        ),
        (
            "conv kernel 2^32 x 2^32 (wrapped the reduction length to 0, then a hang)",
            edit_op("conv1", |n| {
                n["op"]["Conv2d"]["geom"]["kernel"] = json!([1u64 << 32, 1u64 << 32])
            }),
            "is not possible",
        ),
        (
            "clamp lo > hi (panicked the interpreter)",
            edit_op("pool1", |n| {
                n["op"] = json!({"Clamp": {"lo": 200, "hi": 100}});
                n["shape"] = json!([16, 24, 24]);
            }),
            "clamp 200..100 is not a range of codes",
        ),
        (
            "clamp outside 0..255 (wrapped by the interpreter, saturated by the JIT)",
            edit_op("pool1", |n| {
                n["op"] = json!({"Clamp": {"lo": -5, "hi": 300}});
                n["shape"] = json!([16, 24, 24]);
            }),
            "clamp -5..300 is not a range of codes",
        ),
        (
            "infinite requantization multiplier (NaN codes that the engines clamped differently)",
            with_graph(&good, |g| {
                let q = node_index(g, "input.quant");
                g["nodes"][q]["ty"]["U8"]["scale"] = json!(1e38);
                let c = node_index(g, "conv1");
                g["nodes"][c]["ty"]["U8"]["scale"] = json!(1e-30);
            }),
            "requantization multiplier inf",
        ),
        (
            "subnormal scale (an infinite inverse)",
            edit_op("conv1", |n| n["ty"]["U8"]["scale"] = json!(1e-40)),
            "not a positive normal number",
        ),
        (
            "shape product past 2^64 (wrapped to a small size)",
            edit_op("conv1", |n| n["shape"] = json!([1u64 << 32, 1u64 << 32, 16])),
            "too large",
        ),
    ];
    let cases: Vec<_> = cases.into_iter().chain(found).collect();
    assert!(cases.len() >= 30);
    let mut wrong = Vec::new();
    for (what, bytes, expected) in cases {
        match qmodel::from_bytes(&bytes) {
            Ok(_) => wrong.push(format!("{what}: accepted")),
            Err(e) if !e.contains(expected) => wrong.push(format!("{what}: {e}")),
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn join_raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

#[test]
fn random_mutations_never_panic() {
    let (graph, x) = model();
    let good = qmodel::to_bytes(&graph, &info()).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut loaded, mut ran) = (0, 0);
    let size = 28 * 28;
    for round in 0..3000 {
        let mut bytes = good.clone();
        for _ in 0..(next() % 4 + 1) {
            let at = if round % 2 == 0 {
                // Half the mutations hit the header, where the structure is.
                (next() as usize) % (bytes.len().min(4096))
            } else {
                (next() as usize) % bytes.len()
            };
            bytes[at] = next() as u8;
        }
        if round % 7 == 0 {
            let cut = (next() as usize) % bytes.len();
            bytes.truncate(cut);
        }
        if let Ok((g, _)) = qmodel::from_bytes(&bytes) {
            loaded += 1;
            // A mutant may now expect another input size: an error then, never a panic.
            if let Ok(y) = qatc::interp::run(&g, &x[..size], 1) {
                assert_eq!(y.len(), g.nodes[g.output].shape.iter().product::<usize>());
                ran += 1;
            }
        }
    }
    // Most data-byte mutations still load (they change a weight): the loop must exercise both.
    assert!(ran > 0, "no mutant ran");
    assert!(
        loaded > 0 && loaded < 3000,
        "{loaded} of 3000 mutants loaded"
    );
}

/// A spec given where a `.qmodel` goes, and a `.qmodel` where a spec goes, are named for what
/// they are (they read as "header too large" and "not UTF-8 text" before).
#[test]
fn the_other_kind_of_file_is_recognised() {
    let spec = common::root().join("specs/mnist_mlp.qspec");
    let Err(err) = qatc::Model::load(&spec) else {
        panic!("a spec is not a model")
    };
    assert!(
        err.to_string()
            .contains("is a .qspec spec (text), not a .qmodel")
            && err.to_string().contains("qatc train"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("qatc-kinds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("mlp.qmodel");
    common::write_qmodel(&spec, 1, &model);
    let err = qatc::pipeline::read_spec(&model).unwrap_err();
    assert!(
        err.to_string()
            .contains("is a .qmodel file (a converted model), not a spec"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}
