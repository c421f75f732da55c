//! The fuzz targets: how each makes its case `i` from the seeds (deterministically, so any case
//! can be made again from its number) and what it runs on it. A target's `run` returns `Err` for
//! a wrong answer (the JIT and the interpreter disagree, a canonical form that does not parse
//! again); a panic is caught by the caller. Refusing bad input with an error is the right answer.
//!
//! Shared by the fuzzer (`examples/fuzz`) and the regression test (`tests/fuzz_regressions.rs`),
//! which both have the test helpers as `crate::common`.

use qatc::int8::{QGraph, QOp};
use qatc::jit::Options;
use qatc::train::rng::Rng;
use qatc::Model;

use crate::common;
use crate::common::guard::Guarded;
use crate::common::random::{random_op_graph_sized, random_spec, Sizes};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Mutated `.qspec` text through the front end, the model table and the printers.
    Spec,
    /// Mutated YAML specs, the same way.
    Yaml,
    /// Mutated `.qmodel` files: loaded, compiled, run by the JIT and the interpreter.
    Qmodel,
    /// Random valid int8 graphs: the JIT against the interpreter, bit for bit, with every
    /// buffer against a guard page.
    Jit,
    /// Mutated ONNX models through `qatc import`: an imported spec must check, and its weights
    /// load into it.
    Onnx,
}

pub const ALL: [Target; 5] = [
    Target::Spec,
    Target::Yaml,
    Target::Qmodel,
    Target::Jit,
    Target::Onnx,
];

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Spec => "spec",
            Target::Yaml => "yaml",
            Target::Qmodel => "qmodel",
            Target::Jit => "jit",
            Target::Onnx => "onnx",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        ALL.into_iter().find(|t| t.name() == name)
    }

    /// The extension of a saved case.
    pub fn extension(self) -> &'static str {
        match self {
            Target::Spec => "qspec",
            Target::Yaml => "yaml",
            Target::Qmodel => "qmodel",
            Target::Jit => "jit",
            Target::Onnx => "onnx",
        }
    }

    /// Case `case` of a run started with `seed`.
    pub fn generate(self, seeds: &Seeds, seed: u64, case: u64) -> Vec<u8> {
        let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ case);
        match self {
            Target::Spec => crate::mutate::text(pick::<String>(&seeds.specs, &mut rng), &mut rng),
            Target::Yaml => crate::mutate::text(pick::<String>(&seeds.yamls, &mut rng), &mut rng),
            Target::Qmodel => mutate_qmodel(pick::<Vec<u8>>(&seeds.qmodels, &mut rng), &mut rng),
            Target::Jit => {
                let mut input = rng.next_u64().to_le_bytes().to_vec();
                input.push(rng.below(256) as u8);
                input
            }
            Target::Onnx => mutate_onnx(pick::<Vec<u8>>(&seeds.onnx, &mut rng), &mut rng),
        }
    }

    /// Runs one case.
    pub fn run(self, input: &[u8]) -> Result<(), String> {
        match self {
            Target::Spec => run_spec("fuzz.qspec", input),
            Target::Yaml => run_spec("fuzz.yaml", input),
            Target::Qmodel => run_qmodel(input),
            Target::Jit => run_jit(input),
            Target::Onnx => run_onnx(input),
        }
    }
}

fn pick<'a, T>(items: &'a [T], rng: &mut Rng) -> &'a T {
    &items[rng.below(items.len())]
}

/// What the mutators start from.
pub struct Seeds {
    pub specs: Vec<String>,
    pub yamls: Vec<String>,
    pub qmodels: Vec<Vec<u8>>,
    pub onnx: Vec<Vec<u8>>,
}

/// The specs in `specs/`, `tests/ui/` and `tests/data/`, their YAML forms, and a `.qmodel` of
/// each model in `specs/` (initial weights, calibrated observers) and of a few random networks.
pub fn seeds(targets: &[Target]) -> Seeds {
    let root = common::root();
    let mut specs = Vec::new();
    for dir in ["specs", "tests/ui", "tests/data"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            if f.extension().is_some_and(|e| e == "qspec") {
                specs.push(std::fs::read_to_string(&f).unwrap_or_default());
            }
        }
    }
    let yamls = specs
        .iter()
        .filter_map(|s| qatc::syntax::parse(s).ok())
        .map(|spec| qatc::syntax::to_yaml(&spec))
        .collect();
    let mut qmodels = Vec::new();
    if targets.contains(&Target::Qmodel) {
        for path in common::spec_files() {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            qmodels.push(qmodel_bytes(&common::calibrated_file(&path, 4), &text));
        }
        for seed in 0..4 {
            let text = random_spec(seed);
            let graph = common::calibrated(&format!("g{seed}.qspec"), &text, seed, 3, 1.5);
            qmodels.push(qmodel_bytes(&graph, &text));
        }
    }
    let mut onnx = Vec::new();
    if targets.contains(&Target::Onnx) {
        onnx.push(std::fs::read(root.join("tests/fixtures/mnist_bn_cnn.onnx")).unwrap_or_default());
    }
    Seeds {
        specs,
        yamls,
        qmodels,
        onnx,
    }
}

fn qmodel_bytes(graph: &QGraph, spec: &str) -> Vec<u8> {
    let info = qatc::qmodel::Info {
        backend: "fbgemm".into(),
        spec: spec.into(),
        qatc_version: "fuzz".into(),
        normalization: Some(qatc::data::Normalization {
            mean: vec![0.1307],
            std: vec![0.3081],
        }),
        spec_dir: None,
    };
    qatc::qmodel::to_bytes(graph, &info).expect("a converted graph serializes")
}

// ---- specs -------------------------------------------------------------------------------------

/// Front end, then what `qatc check` and `qatc fmt` print; the canonical form of an accepted
/// spec must parse and check again to the same spec.
fn run_spec(name: &str, input: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(input);
    let (result, source) = qatc::front_end(name, &text);
    match result {
        Ok(checked) => {
            let _ = qatc::check::model_table(&checked.model);
            let _ = qatc::syntax::to_yaml(&checked.spec);
            let canonical = qatc::syntax::fmt::format_spec(&checked.spec);
            if !checked.warnings.is_empty() {
                let _ = qatc::diag::render(&checked.warnings, &source.name, &source.text);
            }
            match qatc::front_end("canonical.qspec", &canonical).0 {
                Ok(again) if qatc::syntax::fmt::format_spec(&again.spec) == canonical => Ok(()),
                Ok(_) => Err("the canonical form prints differently when parsed again".into()),
                Err(d) => Err(format!(
                    "the canonical form does not check:\n{}",
                    qatc::diag::render(&d, "canonical.qspec", &canonical)
                )),
            }
        }
        Err(diags) => {
            let text = qatc::diag::render(&diags, &source.name, &source.text);
            if text.is_empty() {
                return Err("errors that render as nothing".into());
            }
            Ok(())
        }
    }
}

// ---- .qmodel files -----------------------------------------------------------------------------

/// A `.qmodel` mutated in its bytes, its safetensors header, its graph or its tensor data.
fn mutate_qmodel(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let header_len = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")) as usize;
    let header = &seed[8..8 + header_len];
    let data = &seed[8 + header_len..];
    let mut header: serde_json::Value = serde_json::from_slice(header).expect("a JSON header");
    let mut data = data.to_vec();
    match rng.below(6) {
        0 => return crate::mutate::bytes(seed, rng),
        1 => {
            // The tensor table: dtypes, shapes, offsets.
            for _ in 0..1 + rng.below(3) {
                let name = {
                    let keys: Vec<String> = header
                        .as_object()
                        .expect("an object")
                        .keys()
                        .filter(|k| *k != "__metadata__")
                        .cloned()
                        .collect();
                    pick(&keys, rng).clone()
                };
                crate::mutate::json_leaf(&mut header[&name], rng);
            }
        }
        2 | 3 => {
            // The graph: shapes, geometry, scales, zero points, inputs, clamp ranges.
            let graph = header["__metadata__"]["qatc.graph"]
                .as_str()
                .expect("a graph")
                .to_string();
            let mut graph: serde_json::Value = serde_json::from_str(&graph).expect("JSON");
            for _ in 0..1 + rng.below(3) {
                crate::mutate::json_leaf(&mut graph, rng);
            }
            header["__metadata__"]["qatc.graph"] = graph.to_string().into();
        }
        4 => {
            // Tensor data: scales and weights to extreme floats and integers.
            for _ in 0..1 + rng.below(8) {
                if data.len() < 4 {
                    break;
                }
                let at = rng.below(data.len() / 4) * 4;
                let v: f32 = [
                    0.0,
                    -0.0,
                    f32::NAN,
                    f32::INFINITY,
                    1e-40,
                    f32::MAX,
                    -1.0,
                    1e30,
                ][rng.below(8)];
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    [i32::MAX, i32::MIN, -1, 0][rng.below(4)].to_le_bytes()
                };
                data[at..at + 4].copy_from_slice(&bytes);
            }
        }
        _ => {
            // The stored spec (the runtime reads its normalization).
            let spec = header["__metadata__"]["qatc.spec"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let spec = String::from_utf8_lossy(&crate::mutate::text(&spec, rng)).into_owned();
            header["__metadata__"]["qatc.spec"] = spec.into();
        }
    }
    let header = serde_json::to_vec(&header).expect("JSON serializes");
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out
}

/// Load (refusal is fine), read the normalization, compile (refusal is fine) and, when the
/// model is small enough to interpret quickly, run both entries against the interpreter.
fn run_qmodel(input: &[u8]) -> Result<(), String> {
    let Ok(model) = Model::from_bytes(input) else {
        return Ok(());
    };
    let _ = model.normalization();
    let mut rng = Rng::new(input.len() as u64);
    let work = work_per_sample(model.graph());
    let batches: &[usize] = match work {
        w if w <= 1e6 => &[1, 2, 33],
        w if w <= 2e7 => &[1, 2],
        _ => &[],
    };
    agree_with_interpreter(&model, &mut rng, batches, false)
}

/// Roughly the operations one sample takes: outputs times products per output.
fn work_per_sample(g: &QGraph) -> f64 {
    g.nodes
        .iter()
        .map(|n| {
            let out: f64 = n.shape.iter().map(|&d| d as f64).product();
            let per = match &n.op {
                QOp::Linear { in_features, .. } | QOp::FloatLinear { in_features, .. } => {
                    *in_features as f64
                }
                QOp::Conv2d { geom, .. } | QOp::FloatConv2d { geom, .. } => {
                    qatc::int8::conv_reduction(geom).unwrap_or(0) as f64
                }
                QOp::Pool(pool) => match pool.window() {
                    Some(p) => (p.kernel.0 * p.kernel.1) as f64,
                    None => g.nodes[n.inputs[0]].shape.iter().product::<usize>() as f64,
                },
                _ => 1.0,
            };
            out * per.max(1.0)
        })
        .sum()
}

// ---- random graphs -----------------------------------------------------------------------------

/// A random graph from the case's seed: a single op with shapes from tiny to a few thousand
/// values (three cases in four), or a random small network, calibrated.
fn run_jit(input: &[u8]) -> Result<(), String> {
    if input.len() != 9 {
        return Err(format!("a jit case is 9 bytes, not {}", input.len()));
    }
    let seed = u64::from_le_bytes(input[..8].try_into().expect("8 bytes"));
    let kind = input[8];
    let mut rng = Rng::new(seed ^ 0x5eed);
    let graph = if kind % 4 == 3 {
        let text = random_spec(seed);
        common::calibrated(&format!("g{seed}.qspec"), &text, seed, 3, 1.5)
    } else {
        let sizes = Sizes {
            channels: 1 + rng.below(48),
            side: 1 + rng.below(24),
            kernel: 2 + rng.below(6),
            features: 1 + rng.below(300),
        };
        random_op_graph_sized(seed, &sizes)
    };
    let model = Model::from_graph(graph.clone()).map_err(|e| {
        format!(
            "a generated graph does not verify: {e}\n{}",
            graph.to_text()
        )
    })?;
    let batch = 1 + rng.below(70);
    agree_with_interpreter(&model, &mut rng, &[1, batch], true)
        .map_err(|e| format!("{e}\n{}", graph.to_text()))
}

/// Inputs in [-2, 2] with zeros, large values, infinities, NaNs, extremes and subnormals.
fn wild_inputs(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len)
        .map(|_| match rng.below(50) {
            0 => 0.0,
            1 => rng.uniform(-1e4, 1e4),
            2 => f32::INFINITY,
            3 => f32::NEG_INFINITY,
            4 => f32::NAN,
            5 => f32::MAX,
            6 => 1e-40,
            _ => rng.uniform(-2.0, 2.0),
        })
        .collect()
}

/// Compiles the model in a random form and runs both entries on each batch size with the
/// input, output and scratch against guard pages; the outputs must be the interpreter's bits
/// (any NaN equals any NaN). With `must_compile`, a compile error is a finding too.
fn agree_with_interpreter(
    model: &Model,
    rng: &mut Rng,
    batches: &[usize],
    must_compile: bool,
) -> Result<(), String> {
    let forms = common::runnable_forms();
    let dot = forms[rng.below(forms.len())];
    // The 256-bit kernels (where this CPU runs them) half of the time.
    let narrow = rng.below(2) == 0;
    let options = Options {
        dot_product: Some(dot),
        listing: false,
        u8_entry: true,
        narrow,
    };
    let compiled = match model.compile_with(&options) {
        Ok((c, _)) => c,
        Err(e) if must_compile => return Err(format!("{dot:?}: does not compile: {e}")),
        Err(_) => return Ok(()),
    };
    let graph = model.graph();
    let (size, out) = (model.input_size(), model.output_size());
    let mut scratch = Guarded::new(compiled.scratch_bytes());
    for &b in batches {
        let x = wild_inputs(b * size, rng);
        let want = qatc::interp::run(graph, &x, b).map_err(|e| format!("interpreter: {e}"))?;
        let mut input = Guarded::new(4 * b * size);
        let mut output = Guarded::new(4 * b * out);
        input.f32s().copy_from_slice(&x);
        compiled
            .run_with_scratch(input.f32s(), output.f32s(), scratch.bytes())
            .map_err(|e| format!("{dot:?} batch {b}: {e}"))?;
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        if let Some(i) = (0..want.len()).find(|&i| !same(output.f32s()[i], want[i])) {
            return Err(format!(
                "{dot:?} batch {b}: sample {} output {}: JIT {} but the interpreter {}",
                i / out,
                i % out,
                output.f32s()[i],
                want[i]
            ));
        }
        if compiled.u8_qparams().is_some() {
            let (codes_in, codes_want) = common::u8_entry_codes(graph, &x);
            let mut input = Guarded::new(b * size);
            let mut output = Guarded::new(b * out);
            input.bytes().copy_from_slice(&codes_in);
            compiled
                .run_u8_with_scratch(input.bytes(), output.bytes(), scratch.bytes())
                .map_err(|e| format!("{dot:?} u8 batch {b}: {e}"))?;
            if output.bytes() != codes_want.as_slice() {
                return Err(format!("{dot:?} u8 batch {b}: codes differ"));
            }
        }
    }
    Ok(())
}

// ---- ONNX models -------------------------------------------------------------------------------

/// An ONNX model mutated in its bytes, a node's attributes, inputs or op type, or a weight's
/// dimensions.
fn mutate_onnx(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    use prost::Message;
    use qatc::onnx::proto::ModelProto;
    let Ok(mut model) = ModelProto::decode(seed) else {
        return crate::mutate::bytes(seed, rng);
    };
    let Some(graph) = model.graph.as_mut() else {
        return crate::mutate::bytes(seed, rng);
    };
    let small = |rng: &mut Rng| rng.below(12) as i64 - 3;
    match rng.below(5) {
        0 => return crate::mutate::bytes(seed, rng),
        1 if !graph.node.is_empty() => {
            let k = rng.below(graph.node.len());
            let node = &mut graph.node[k];
            if !node.attribute.is_empty() {
                let a = rng.below(node.attribute.len());
                let attr = &mut node.attribute[a];
                if attr.ints.is_empty() {
                    attr.i = Some(small(rng));
                    attr.f = Some(small(rng) as f32 / 4.0);
                } else {
                    let i = rng.below(attr.ints.len());
                    attr.ints[i] = small(rng);
                }
            }
        }
        2 if !graph.initializer.is_empty() => {
            let k = rng.below(graph.initializer.len());
            let t = &mut graph.initializer[k];
            if t.dims.is_empty() || rng.below(4) == 0 {
                t.dims.push(1 + small(rng));
            } else {
                let i = rng.below(t.dims.len());
                t.dims[i] = small(rng) + 1;
            }
        }
        3 if graph.node.len() > 1 => {
            let (a, b) = (rng.below(graph.node.len()), rng.below(graph.node.len()));
            let other = graph.node[b].output.first().cloned().unwrap_or_default();
            if let Some(input) = graph.node[a].input.first_mut() {
                *input = other;
            }
        }
        _ if !graph.node.is_empty() => {
            // Every op qatc imports, and one it does not.
            let ops: Vec<&str> = qatc::onnx::import::SUPPORTED
                .iter()
                .copied()
                .chain(["Softmax"])
                .collect();
            let k = rng.below(graph.node.len());
            graph.node[k].op_type = Some(pick(&ops, rng).to_string());
        }
        _ => return crate::mutate::bytes(seed, rng),
    }
    model.encode_to_vec()
}

/// `qatc import` on the bytes: an error is a fine answer; an imported model's spec must check,
/// and its weights load into the network built from it.
fn run_onnx(input: &[u8]) -> Result<(), String> {
    let Ok(imported) = qatc::onnx::import::import(input, "fuzz.onnx", "fuzz") else {
        return Ok(());
    };
    let checked = match qatc::front_end("imported.qspec", &imported.spec).0 {
        Ok(checked) => checked,
        Err(d) => {
            return Err(format!(
                "the imported spec does not check:\n{}",
                qatc::diag::render(&d, "imported.qspec", &imported.spec)
            ))
        }
    };
    let mut net = qatc::train::build_net(&checked.model, 0)?;
    let bytes = qatc::state::checkpoint::tensors_to_bytes(imported.tensors, Default::default())?;
    qatc::state::checkpoint::load_state_dict(&mut net.state, &bytes)
        .map_err(|e| format!("the imported weights do not load: {e}"))
}
