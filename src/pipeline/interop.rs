//! Models in and out: `qatc run` (a converted model on the inputs of a file, for scripting and
//! for comparing with other runtimes), `qatc export` (ONNX) and `qatc import` (ONNX to a spec
//! and its state dict).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{read_qmodel, Error, Stage};

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Native code compiled by the JIT.
    Jit,
    /// The reference interpreter (bit-exact with the JIT, much slower).
    Interpreter,
}

/// The outputs of a run.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutput {
    pub model: String,
    pub engine: Engine,
    pub samples: usize,
    /// Values per sample.
    pub output_size: usize,
    /// `samples x output_size` values, one sample after another (dequantized when the model
    /// ends quantized).
    #[serde(skip)]
    pub outputs: Vec<f32>,
}

/// One sample's best output.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Index of the largest output (the first of equal ones).
    pub class: usize,
    pub score: f32,
}

impl RunOutput {
    /// The largest output of each sample.
    pub fn predictions(&self) -> Vec<Prediction> {
        self.outputs
            .chunks_exact(self.output_size.max(1))
            .map(|row| {
                let class = crate::data::argmax(row);
                Prediction {
                    class,
                    score: row[class],
                }
            })
            .collect()
    }

    /// The outputs as a `.npy` file of f32, shape `[samples, output_size]`.
    pub fn to_npy(&self) -> Result<Vec<u8>, Error> {
        crate::data::npy_f32(&self.outputs, &[self.samples, self.output_size])
            .map_err(Error::at(Stage::Write))
    }
}

/// Runs the `.qmodel` at `model_path` on the inputs in `input` ([`crate::data::read_inputs`]:
/// `.npy` f32 samples, already normalized, or IDX images, normalized as the model's spec says)
/// with the JIT, or with the reference interpreter when `engine` says so.
pub fn run(model_path: &Path, input: &Path, engine: Engine) -> Result<RunOutput, Error> {
    let (graph, info) = read_qmodel(model_path)?;
    let shape = graph.nodes[0].shape.clone();
    let (x, samples) = crate::data::read_inputs(input, &shape, info.normalization.as_ref())
        .map_err(Error::at(Stage::Data))?;
    let output_size = graph.nodes[graph.output].shape.iter().product();
    let run_error = |e: String| Error::new(Stage::Run, format!("{}: {e}", model_path.display()));
    let outputs = match engine {
        Engine::Interpreter => crate::interp::run(&graph, &x, samples).map_err(run_error)?,
        Engine::Jit => {
            let model = crate::jit::Model::from_graph(graph.clone())
                .map_err(|e| Error::new(Stage::Compile, e.to_string()))?;
            let compiled = model
                .compile()
                .map_err(|e| Error::new(Stage::Compile, e.to_string()))?;
            compiled.run(&x).map_err(|e| run_error(e.to_string()))?
        }
    };
    Ok(RunOutput {
        model: graph.name.clone(),
        engine,
        samples,
        output_size,
        outputs,
    })
}

/// The `.qmodel` at `model_path` as an ONNX model in QDQ form ([`crate::onnx::export`]).
pub fn export_onnx(
    model_path: &Path,
    options: crate::onnx::export::ExportOptions,
) -> Result<Vec<u8>, Error> {
    let (graph, _) = read_qmodel(model_path)?;
    crate::onnx::export::export(&graph, options)
        .map_err(|e| Error::new(Stage::Convert, format!("{}: {e}", model_path.display())))
}

/// What `qatc import` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    pub spec: PathBuf,
    pub weights: PathBuf,
    /// One line per layer: its name, its call and the ONNX node it came from.
    pub layers: Vec<String>,
}

/// Imports a float ONNX model ([`crate::onnx::import`]): writes `DIR/NAME.qspec` and
/// `DIR/NAME.safetensors` (NAME: the file's stem), then checks the spec and loads the weights
/// through its `init:` as `qatc train` would.
pub fn import_onnx(onnx: &Path, dir: &Path) -> Result<ImportReport, Error> {
    let bytes = crate::data::read_file(onnx).map_err(Error::at(Stage::Read))?;
    let read = |e: String| Error::new(Stage::Read, format!("{}: {e}", onnx.display()));
    let stem = onnx
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let name = crate::onnx::import::identifier(&stem);
    let file = onnx
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let imported = crate::onnx::import::import(&bytes, &file, &name).map_err(read)?;
    super::create_dir(dir)?;
    let weights = crate::state::checkpoint::tensors_to_bytes(imported.tensors, Default::default())
        .map_err(Error::at(Stage::Write))?;
    let weights = super::write_file(dir, &format!("{name}.safetensors"), &weights)?;
    let spec_path = super::write_file(dir, &format!("{name}.qspec"), imported.spec.as_bytes())?;
    // What was written must check and load, or the importer is wrong.
    let spec =
        super::SpecFile::from_text(&spec_path, spec_path.display().to_string(), imported.spec)
            .map_err(|e| {
                Error::new(
                    Stage::Convert,
                    format!(
                        "the imported spec does not check (a qatc bug):\n{}",
                        e.message
                    ),
                )
            })?;
    let cfg = spec.train_config("it names the weights")?;
    spec.net(&cfg)?;
    Ok(ImportReport {
        spec: spec_path,
        weights,
        layers: imported.layers,
    })
}
