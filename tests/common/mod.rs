//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

pub mod guard;
pub mod random;

#[allow(unused_imports)] // not every test binary uses it
pub use random::node;

use std::path::{Path, PathBuf};

/// The project's root folder.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether onnxruntime can be used (Python 3 with `onnxruntime`, `onnx` and `numpy`, which
/// `.ci/run` installs). Without it, panics saying what to install, unless
/// `QATC_SKIP_ONNXRUNTIME=1` asks to skip the comparisons with it (then `false`).
pub fn onnxruntime() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, onnx, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("QATC_SKIP_ONNXRUNTIME").is_none() {
        panic!(
            "this test runs onnxruntime: `pip install onnxruntime onnx numpy`, or set \
             QATC_SKIP_ONNXRUNTIME=1 to skip the comparison"
        );
    }
    if !ok {
        eprintln!("skipped the onnxruntime comparison: QATC_SKIP_ONNXRUNTIME is set");
    }
    ok
}

/// Every file in `specs/` with the given extension, sorted.
pub fn spec_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("specs"))
        .expect("specs/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "qspec"))
        .collect();
    files.sort();
    files
}

/// The file name without folder or extension, for snapshot names.
pub fn stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// A spec's model converted to int8 without data files: its initial weights (from `seed`) and
/// its observers calibrated on `batches` batches of 8 inputs uniform in `[-range, range]`.
pub fn calibrated(
    name: &str,
    text: &str,
    seed: u64,
    batches: usize,
    range: f32,
) -> qatc::int8::QGraph {
    use qatc::train::{self, engine::Mode, rng::Rng};
    let (result, source) = qatc::front_end(name, text);
    let model = match result {
        Ok(c) => c.model,
        Err(d) => panic!("{}", qatc::diag::render(&d, &source.name, &source.text)),
    };
    let mut net = train::build_net(&model, seed).unwrap();
    let size: usize = model.input.iter().product();
    let mut rng = Rng::new(seed);
    let observe = Mode::calibrate();
    for _ in 0..batches {
        let x: Vec<f32> = (0..8 * size).map(|_| rng.uniform(-range, range)).collect();
        net.forward(&x, 8, observe, &mut rng);
    }
    qatc::convert::convert(&net.graph, &net.state)
        .unwrap_or_else(|e| panic!("{name}: convert: {e}\n{text}"))
}

/// [`calibrated`] for a spec file, three batches in [-1.5, 1.5].
pub fn calibrated_file(path: &Path, seed: u64) -> qatc::int8::QGraph {
    let text = std::fs::read_to_string(path).unwrap();
    calibrated(&path.display().to_string(), &text, seed, 3, 1.5)
}

/// Writes [`calibrated_file`]'s model of `spec` to `path` as a .qmodel carrying the spec.
pub fn write_qmodel(spec: &Path, seed: u64, path: &Path) -> qatc::int8::QGraph {
    let graph = calibrated_file(spec, seed);
    let info = qatc::qmodel::Info {
        backend: "fbgemm".into(),
        spec: std::fs::read_to_string(spec).unwrap(),
        qatc_version: "test".into(),
        normalization: calibrated_normalization(spec),
        spec_dir: None,
    };
    std::fs::write(path, qatc::qmodel::to_bytes(&graph, &info).unwrap()).unwrap();
    graph
}

/// What the u8 entry point must compute on the f32 samples `x`, from the interpreter: the codes
/// of the quantize reading the input (its input) and the output's codes before a final
/// dequantize (its output).
pub fn u8_entry_codes(graph: &qatc::int8::QGraph, x: &[f32]) -> (Vec<u8>, Vec<u8>) {
    let size: usize = graph.nodes[0].shape.iter().product();
    let quantize = graph.nodes.iter().position(|n| n.inputs == [0]).unwrap();
    let out = match &graph.nodes[graph.output] {
        n if n.ty.is_quantized() => graph.output,
        n => n.inputs[0],
    };
    let (mut codes_in, mut codes_out) = (Vec::new(), Vec::new());
    for sample in x.chunks(size) {
        let values = qatc::interp::run_all(graph, sample);
        for (i, dst) in [(quantize, &mut codes_in), (out, &mut codes_out)] {
            match &values[i] {
                qatc::interp::Value::U8(c) => dst.extend(c),
                other => panic!("expected codes, got {other:?}"),
            }
        }
    }
    (codes_in, codes_out)
}

/// Every GEMM form this CPU can run: all of them on x86 (where `Pairs`, the default without
/// VNNI, uses `pmaddubsw`), all but `Pairs` elsewhere.
pub fn runnable_forms() -> Vec<qatc::jit::DotProduct> {
    use qatc::jit::DotProduct;
    let mut forms = vec![
        DotProduct::Vnni,
        DotProduct::Usdot,
        DotProduct::Sdot,
        DotProduct::I16,
    ];
    if cfg!(target_arch = "x86_64") {
        forms.push(DotProduct::Pairs);
    }
    forms
}

/// The reference interpreter's test accuracy (percent) on `data`, normalized as `cfg` says.
pub fn int8_accuracy(
    graph: &qatc::int8::QGraph,
    data: &qatc::data::Dataset,
    cfg: &qatc::check::TrainConfig,
) -> f32 {
    let classes = graph.nodes[graph.output].shape.iter().product();
    qatc::data::accuracy(data, &cfg.normalization, classes, |x, n| {
        qatc::interp::run(graph, x, n)
    })
    .expect("the interpreter runs")
}

/// The input normalization of a spec file's `train` block.
pub fn calibrated_normalization(spec: &Path) -> Option<qatc::data::Normalization> {
    let text = std::fs::read_to_string(spec).unwrap();
    let (result, _) = qatc::front_end(&spec.display().to_string(), &text);
    Some(result.ok()?.model.train?.normalization)
}

/// How an activation is written in a spec: `ReLU`, `LeakyReLU(negative_slope: 0.01)`.
pub fn activation_call(a: qatc::ir::Activation) -> String {
    let args: Vec<String> = a.args().iter().map(|(k, v)| format!("{k}: {v}")).collect();
    if args.is_empty() {
        a.name().to_string()
    } else {
        format!("{}({})", a.name(), args.join(", "))
    }
}
