//! `qatc calibrate`, `eval`, `compare` and `compile`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{create_dir, int8_accuracy, read_qmodel, round2, write_file, Error, SpecFile, Stage};
use crate::check::TrainConfig;
use crate::compare::LayerError;
use crate::jit::{target, DotProduct};
use crate::train::engine::Mode;

/// What post-training quantization measured and wrote.
#[derive(Clone, Debug, Serialize)]
pub struct CalibrateReport {
    /// Training images the observers saw.
    pub calibration_images: usize,
    pub test_images: usize,
    pub float_acc: f64,
    pub fake_quant_acc: f64,
    pub int8_acc: f64,
    pub qmodel: PathBuf,
}

/// Post-training quantization: loads a float checkpoint trained from `spec`'s model (or, without
/// one, the state dict the spec's `init:` names), runs its observers over `batches` batches of
/// training data (no training, BatchNorm on its running statistics), converts, and writes
/// `out/model.qmodel` (default `runs/<model>-ptq`).
pub fn calibrate(
    spec: &SpecFile,
    checkpoint: Option<&Path>,
    batches: usize,
    out: Option<PathBuf>,
) -> Result<CalibrateReport, Error> {
    let model = &spec.model;
    if model.backend.is_none() {
        return Err(Error::new(
            Stage::Spec,
            format!(
                "error: `{}` has no `quantize` block: nothing to calibrate\n",
                spec.path.display()
            ),
        ));
    }
    let cfg = spec.train_config("it names the calibration data")?;
    let data = spec.data(&cfg)?;
    let dir = out.unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-ptq", model.name)));
    create_dir(&dir)?;
    let mut net = match checkpoint {
        Some(path) => {
            let mut net =
                crate::train::build_net(model, cfg.seed).map_err(Error::at(Stage::Train))?;
            load_checkpoint(&mut net, path)?;
            net
        }
        None if cfg.init.is_some() => spec.net(&cfg)?,
        None => {
            return Err(Error::new(
                Stage::Spec,
                format!(
                    "error: nothing to calibrate: give a float checkpoint with `--from`, or name \
                     a state dict with `init:` in the `train` block of `{}`\n",
                    spec.path.display()
                ),
            ))
        }
    };
    let float_acc = crate::train::evaluate(&mut net, &data.test, &cfg, false);
    let observe = Mode::calibrate();
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    let order: Vec<usize> = (0..data.train.len()).collect();
    let mut rng = crate::train::rng::Rng::new(cfg.seed);
    let mut seen = 0;
    for chunk in order.chunks(cfg.batch).take(batches.max(1)) {
        data.train
            .batch(chunk, &cfg.normalization, &mut x, &mut labels);
        let tape = net.forward(&x, chunk.len(), observe, &mut rng);
        net.recycle(tape);
        seen += chunk.len();
    }
    let fq_acc = crate::train::evaluate(&mut net, &data.test, &cfg, true);
    let graph =
        crate::convert::convert(&net.graph, &net.state).map_err(Error::at(Stage::Convert))?;
    let int8_acc = int8_accuracy(&graph, &data.test, &cfg.normalization)?;
    // The calibrated state (weights and observer ranges), for `qatc compare`.
    let checkpoint = spec.checkpoint_bytes(&net, ("calibration_images", seen.to_string()))?;
    write_file(&dir, "checkpoint.safetensors", &checkpoint)?;
    let bytes = crate::qmodel::to_bytes(&graph, &spec.qmodel_info(&cfg))
        .map_err(Error::at(Stage::Write))?;
    let qmodel = write_file(&dir, "model.qmodel", &bytes)?;
    Ok(CalibrateReport {
        calibration_images: seen,
        test_images: data.test.len(),
        float_acc: round2(float_acc as f64),
        fake_quant_acc: round2(fq_acc as f64),
        int8_acc: round2(int8_acc as f64),
        qmodel,
    })
}

fn load_checkpoint(net: &mut crate::train::engine::Net, path: &Path) -> Result<(), Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::new(
            Stage::Read,
            format!("cannot read checkpoint `{}`: {e}", path.display()),
        )
    })?;
    crate::state::checkpoint::load(&net.graph, &mut net.state, &bytes)
        .map(|_metadata| ())
        .map_err(|e| Error::new(Stage::Read, format!("{}: {e}", path.display())))
}

/// The spec a converted model's data comes from: `data_spec` when given, else the spec stored
/// in the model (its data paths relative to the working directory).
fn data_spec(
    model_path: &Path,
    info: &crate::qmodel::Info,
    data: Option<&Path>,
) -> Result<(SpecFile, TrainConfig), Error> {
    if let Some(path) = data.filter(|p| !p.is_dir()) {
        let spec = SpecFile::load(path)?;
        let cfg = spec.train_config("it names the test data")?;
        return Ok((spec, cfg));
    }
    // The stored spec, its relative data paths looked up where it was trained from.
    let dir = info
        .spec_dir
        .as_deref()
        .map(Path::new)
        .filter(|d| d.is_dir())
        .unwrap_or(Path::new("."));
    let spec = SpecFile::from_text(
        &dir.join("model.qspec"),
        format!("{} (its spec)", model_path.display()),
        info.spec.clone(),
    )?;
    let mut cfg = spec.train_config("it names the test data")?;
    if let Some(dir) = data {
        cfg.data = Some(super::data_folder(cfg.data.take(), dir)?);
    }
    Ok((spec, cfg))
}

/// The reference interpreter's accuracy and confusion matrix on the test data.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub backend: String,
    pub test_images: usize,
    pub accuracy: f64,
    /// `confusion[label][prediction]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Evaluates a `.qmodel` on the reference interpreter, on the test data of `data` (a spec) or of
/// the spec stored in the model.
pub fn evaluate(model_path: &Path, data: Option<&Path>) -> Result<EvalReport, Error> {
    let (graph, info) = read_qmodel(model_path)?;
    let (spec, cfg) = data_spec(model_path, &info, data)?;
    let test = spec.test_data(&cfg)?;
    let classes: usize = graph.nodes[graph.output].shape.iter().product();
    let mut confusion = vec![vec![0usize; classes]; classes];
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    let indices: Vec<usize> = (0..test.len()).collect();
    for chunk in indices.chunks(crate::data::EVAL_BATCH) {
        test.batch(chunk, &cfg.normalization, &mut x, &mut labels);
        let logits = crate::interp::run(&graph, &x, chunk.len())
            .map_err(|e| Error::new(Stage::Run, format!("{}: {e}", model_path.display())))?;
        for (row, &label) in logits.chunks_exact(classes).zip(&labels) {
            confusion[label as usize][crate::data::argmax(row)] += 1;
        }
    }
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    Ok(EvalReport {
        model: graph.name.clone(),
        backend: info.backend,
        test_images: test.len(),
        accuracy: 100.0 * correct as f64 / test.len().max(1) as f64,
        confusion,
    })
}

/// Per-layer error between the fake-quant network and the int8 graph.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub images: usize,
    pub layers: Vec<LayerError>,
}

/// SQNR per int8 node between a `.qmodel` and the fake-quant checkpoint it came from (default:
/// `checkpoint.safetensors` beside the model), on `images` test images.
pub fn compare(
    model_path: &Path,
    checkpoint: Option<PathBuf>,
    images: usize,
) -> Result<CompareReport, Error> {
    let (graph, info) = read_qmodel(model_path)?;
    let checkpoint =
        checkpoint.unwrap_or_else(|| model_path.with_file_name("checkpoint.safetensors"));
    let (spec, cfg) = data_spec(model_path, &info, None)?;
    let test = spec.test_data(&cfg)?;
    let mut net =
        crate::train::build_net(&spec.model, cfg.seed).map_err(Error::at(Stage::Train))?;
    load_checkpoint(&mut net, &checkpoint)?;
    // The pair must belong together: the checkpoint converts to exactly the model's graph.
    let mismatch = |why: String| {
        Error::new(
            Stage::Read,
            format!(
                "`{}` is not the checkpoint `{}` was converted from: {why}. Give the fake-quant \
                 checkpoint `qatc train` or `qatc calibrate` wrote beside the model",
                checkpoint.display(),
                model_path.display()
            ),
        )
    };
    match crate::convert::convert(&net.graph, &net.state) {
        Ok(g) if g == graph => {}
        Ok(_) => {
            return Err(mismatch(
                "it converts to different int8 weights or scales".into(),
            ))
        }
        Err(e) => return Err(mismatch(format!("it does not convert ({e})"))),
    }
    let n = images.min(test.len());
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    let indices: Vec<usize> = (0..n).collect();
    test.batch(&indices, &cfg.normalization, &mut x, &mut labels);
    Ok(CompareReport {
        images: n,
        layers: crate::compare::layer_errors(&mut net, &graph, &x, n),
    })
}

/// What `qatc compile` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Emit {
    /// The int8 IR, as `convert` made it.
    Ir,
    /// Cranelift IR of the entry function.
    Clif,
    /// The generated machine code.
    Asm,
    /// A relocatable object (ELF) with the entry point and the weights.
    Obj,
    /// A C header declaring the object's entry point and sizes.
    Header,
}

/// How to compile.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub emit: Emit,
    /// An architecture (`x86_64`, `aarch64`) other than this machine's.
    pub target: Option<String>,
    pub features: Vec<String>,
}

/// What `compile` made.
#[derive(Clone, Debug)]
pub struct CompileOutput {
    pub model: String,
    /// The IR, CLIF, assembly or header text, or the object's bytes.
    pub bytes: Vec<u8>,
    /// The object's entry points.
    pub entry_points: Vec<String>,
    /// The dot-product form of the code (none for the IR).
    pub dot: Option<DotProduct>,
    pub scratch_bytes: usize,
    pub compile_ms: f64,
}

/// Compiles a `.qmodel` for this machine (listings) or for a target (objects and headers).
pub fn compile(model_path: &Path, options: &CompileOptions) -> Result<CompileOutput, Error> {
    let model = crate::jit::Model::load(model_path).map_err(Error::at(Stage::Read))?;
    let err = Error::at(Stage::Compile);
    let graph = model.graph();
    let start = Instant::now();
    let name = format!("qatc_{}_run", target::c_identifier(&graph.name));
    let output = |bytes: Vec<u8>, entry_points, dot, scratch_bytes| CompileOutput {
        model: graph.name.clone(),
        bytes,
        entry_points,
        dot,
        scratch_bytes,
        compile_ms: start.elapsed().as_secs_f64() * 1e3,
    };
    let listing_here = options.target.is_none() && matches!(options.emit, Emit::Clif | Emit::Asm);
    if options.emit == Emit::Ir {
        return Ok(output(graph.to_text().into_bytes(), Vec::new(), None, 0));
    }
    if listing_here {
        let jit_options = crate::jit::Options {
            dot_product: None,
            listing: true,
            u8_entry: false,
            narrow: false,
        };
        let (compiled, listing) = model.compile_with(&jit_options).map_err(&err)?;
        let listing = listing.unwrap_or_default();
        let text = if options.emit == Emit::Clif {
            listing.clif
        } else {
            listing.asm
        };
        let (dot, scratch) = (compiled.dot_product(), compiled.scratch_bytes());
        return Ok(output(text.into_bytes(), Vec::new(), Some(dot), scratch));
    }
    let arch = match &options.target {
        Some(t) => t.parse().map_err(&err)?,
        None => target::host_arch().map_err(&err)?,
    };
    let isa = target::isa(arch, &options.features).map_err(&err)?;
    let object = target::object(graph, isa, &name).map_err(&err)?;
    let mut entry_points = vec![name.clone()];
    if crate::jit::lower::u8_entry(graph).is_some() {
        entry_points.push(format!("{name}_u8"));
    }
    let bytes = match options.emit {
        Emit::Header => {
            let norm = model.normalization().ok();
            target::c_header(graph, &name, object.scratch_bytes, norm).into_bytes()
        }
        Emit::Clif => object.listing.clif.into_bytes(),
        Emit::Asm => object.listing.asm.into_bytes(),
        Emit::Obj | Emit::Ir => object.bytes,
    };
    Ok(output(
        bytes,
        entry_points,
        Some(object.dot),
        object.scratch_bytes,
    ))
}
