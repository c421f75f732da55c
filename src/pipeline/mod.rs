//! The commands as library functions: `qatc train`, `calibrate`, `eval`, `compare`, `compile`,
//! `run`, `bench` and `bench-train` each call one function here, which returns a typed report
//! (`Serialize`) or an [`Error`] that names its stage. Nothing here prints or exits; the CLI
//! (`src/bin/qatc/`) parses arguments, calls, and prints.

mod bench;
mod commands;
mod interop;
mod train;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use bench::{bench, bench_train, BenchOptions, BenchReport, BenchRow, TrainBench};
pub use commands::{
    calibrate, compare, compile, evaluate, CalibrateReport, CompareReport, CompileOptions,
    CompileOutput, Emit, EvalReport,
};
pub use interop::{export_onnx, import_onnx, run, Engine, ImportReport, Prediction, RunOutput};
pub use train::{TrainOptions, TrainReport, TrainRun};

use crate::check::{CheckedModel, TrainConfig};
use crate::data::{Dataset, Splits};
use crate::diag::Diag;
use crate::int8::QGraph;

/// Spec files larger than this are refused before parsing.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

/// The stage a command failed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading an input file (a spec, a checkpoint, a model).
    Read,
    /// Parsing and checking a spec: the message is the rendered diagnostics.
    Spec,
    /// Loading or matching the data.
    Data,
    /// Building or training the network (including loading a checkpoint into it).
    Train,
    /// Converting to int8.
    Convert,
    /// Compiling to native code.
    Compile,
    /// Running a model.
    Run,
    /// Writing results.
    Write,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Read => "read",
            Stage::Spec => "spec",
            Stage::Data => "data",
            Stage::Train => "train",
            Stage::Convert => "convert",
            Stage::Compile => "compile",
            Stage::Run => "run",
            Stage::Write => "write",
        }
    }
}

/// Why a command failed, and in which stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    pub stage: Stage,
    pub message: String,
}

impl Error {
    pub fn new(stage: Stage, message: impl Into<String>) -> Error {
        Error {
            stage,
            message: message.into(),
        }
    }

    /// A closure turning any displayable error into one of `stage`.
    pub fn at<E: fmt::Display>(stage: Stage) -> impl Fn(E) -> Error {
        move |e| Error::new(stage, e.to_string())
    }

    /// The text the CLI prints: the diagnostics for a spec, else `error: <stage>: <message>`.
    pub fn render(&self) -> String {
        match self.stage {
            Stage::Spec => self.message.clone(),
            _ => format!("error: {self}\n"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.stage {
            // These messages name their file and say what went wrong with it.
            Stage::Spec | Stage::Read | Stage::Write | Stage::Data => f.write_str(&self.message),
            stage => write!(f, "{}: {}", stage.name(), self.message),
        }
    }
}

impl std::error::Error for Error {}

/// A spec file that parsed and checked, with its text and folder.
pub struct SpecFile {
    pub path: PathBuf,
    pub text: String,
    pub model: CheckedModel,
    /// Rendered warnings (empty when there are none).
    pub warnings: String,
}

impl SpecFile {
    /// Reads, parses and checks a spec file.
    pub fn load(path: &Path) -> Result<SpecFile, Error> {
        let text = read_spec(path)?;
        SpecFile::from_text(path, path.display().to_string(), text)
    }

    /// Parses and checks spec text that came from `path` (data paths are relative to its
    /// folder), calling it `name` in messages.
    pub fn from_text(path: &Path, name: String, text: String) -> Result<SpecFile, Error> {
        let (result, source) = crate::check::front_end(&name, &text);
        let render = |d: &[Diag]| crate::diag::render(d, &source.name, &source.text);
        match result {
            Ok(checked) => Ok(SpecFile {
                path: path.to_path_buf(),
                warnings: if checked.warnings.is_empty() {
                    String::new()
                } else {
                    render(&checked.warnings)
                },
                text,
                model: checked.model,
            }),
            Err(diags) => Err(Error::new(Stage::Spec, render(&diags))),
        }
    }

    /// The folder data paths are relative to.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The `train` block, or an error saying the spec needs one to `purpose`.
    pub fn train_config(&self, purpose: &str) -> Result<TrainConfig, Error> {
        self.model.train.clone().ok_or_else(|| {
            Error::new(
                Stage::Spec,
                format!(
                    "error: `{}` has no `train` block: {purpose}\n",
                    self.path.display()
                ),
            )
        })
    }

    /// The spec's data, checked against the model.
    pub fn data(&self, cfg: &TrainConfig) -> Result<Splits, Error> {
        crate::train::load_data(&self.model, cfg, self.dir()).map_err(Error::at(Stage::Data))
    }

    /// Its test data alone.
    pub fn test_data(&self, cfg: &TrainConfig) -> Result<crate::data::Dataset, Error> {
        crate::train::load_test_data(&self.model, cfg, self.dir()).map_err(Error::at(Stage::Data))
    }

    /// The network to train or calibrate: fresh weights from the seed, or the state dict the
    /// `train` block's `init:` names.
    pub fn net(&self, cfg: &TrainConfig) -> Result<crate::train::engine::Net, Error> {
        let mut net =
            crate::train::build_net(&self.model, cfg.seed).map_err(Error::at(Stage::Train))?;
        if let Some(init) = &cfg.init {
            let path = crate::data::locate(init, self.dir(), Path::exists).map_err(|places| {
                Error::new(
                    Stage::Read,
                    format!("the `init` state dict `{init}` is missing: tried {places}"),
                )
            })?;
            let bytes = crate::data::read_file(&path).map_err(|e| {
                Error::new(Stage::Read, format!("cannot read `init` state dict: {e}"))
            })?;
            crate::state::checkpoint::load_state_dict(&mut net.state, &bytes).map_err(|e| {
                Error::new(
                    Stage::Read,
                    format!("`init` state dict {}: {e}", path.display()),
                )
            })?;
        }
        Ok(net)
    }

    /// A checkpoint of `net` (trained or calibrated from this spec): its state, with the model's
    /// name, the spec, qatc's version and one more `(key, value)` in the metadata.
    pub fn checkpoint_bytes(
        &self,
        net: &crate::train::engine::Net,
        (key, value): (&str, String),
    ) -> Result<Vec<u8>, Error> {
        let metadata = std::collections::HashMap::from([
            ("model".to_string(), self.model.name.clone()),
            ("spec".to_string(), self.text.clone()),
            (
                "qatc_version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (key.to_string(), value),
        ]);
        crate::state::checkpoint::to_bytes(&net.graph, &net.state, metadata)
            .map_err(Error::at(Stage::Write))
    }

    /// What a `.qmodel` converted from this spec stores besides its graph.
    pub fn qmodel_info(&self, cfg: &TrainConfig) -> crate::qmodel::Info {
        crate::qmodel::Info {
            backend: self
                .model
                .backend
                .map_or(String::new(), |b| b.name().to_string()),
            spec: self.text.clone(),
            qatc_version: env!("CARGO_PKG_VERSION").to_string(),
            normalization: Some(cfg.normalization.clone()),
            spec_dir: std::fs::canonicalize(self.dir())
                .ok()
                .map(|d| d.display().to_string()),
        }
    }
}

/// A spec's text: at most [`MAX_SPEC_BYTES`] of UTF-8.
pub fn read_spec(path: &Path) -> Result<String, Error> {
    let read_error = |e: std::io::Error| {
        Error::new(
            Stage::Read,
            format!("cannot read spec `{}`: {e}", path.display()),
        )
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    if meta.len() > MAX_SPEC_BYTES {
        return Err(Error::new(
            Stage::Read,
            format!(
                "spec `{}` is {} bytes; specs larger than {MAX_SPEC_BYTES} bytes are refused",
                path.display(),
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    if crate::qmodel::looks_like_qmodel(&bytes) {
        return Err(Error::new(
            Stage::Read,
            format!(
                "`{}` is a .qmodel file (a converted model), not a spec: `qatc eval`, `qatc run`, \
                 `qatc bench` and `qatc compile` take it",
                path.display()
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::new(
            Stage::Read,
            format!(
                "spec `{}` is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// A `.qmodel` file's graph and metadata.
pub fn read_qmodel(path: &Path) -> Result<(QGraph, crate::qmodel::Info), Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::new(
            Stage::Read,
            format!("cannot read `{}`: {e}", path.display()),
        )
    })?;
    crate::qmodel::from_bytes(&bytes)
        .map_err(|e| Error::new(Stage::Read, format!("{}: {e}", path.display())))
}

/// Test accuracy (percent) of the int8 graph on the reference interpreter.
pub fn int8_accuracy(
    graph: &QGraph,
    data: &Dataset,
    norm: &crate::data::Normalization,
) -> Result<f32, Error> {
    let classes = graph.nodes[graph.output].shape.iter().product();
    crate::data::accuracy(data, norm, classes, |x, n| crate::interp::run(graph, x, n))
        .map_err(Error::at(Stage::Run))
}

/// Writes `bytes` to `dir/name`.
/// Writes `dir/name` atomically: the bytes go to a temporary file in the same folder, which is
/// then renamed over the old one, so an interrupted run never leaves half a file.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    let partial = dir.join(format!(".{name}.partial"));
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            Error::new(
                Stage::Write,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    Ok(path)
}

/// Creates `dir` and its parents.
pub fn create_dir(dir: &Path) -> Result<(), Error> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::new(
            Stage::Write,
            format!(
                "the output folder {} is a file: give a folder with --out",
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::new(
            Stage::Write,
            format!("cannot create the folder {}: {e}", dir.display()),
        )
    })?;
    // A folder we cannot write to fails here, not after training.
    let probe = dir.join(".qatc-write-check");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            Error::new(
                Stage::Write,
                format!("cannot write in the folder {}: {e}", dir.display()),
            )
        })
}

/// The data source `spec` names, read from `dir` instead: a folder of the same kind (MNIST or
/// CIFAR-10 files), for `--data DIR`.
pub(crate) fn data_folder(
    spec: Option<crate::syntax::ast::DataSource>,
    dir: &Path,
) -> Result<crate::syntax::ast::DataSource, Error> {
    use crate::syntax::ast::DataSource;
    let name = dir.display().to_string();
    match spec {
        Some(DataSource::Mnist { .. }) => Ok(DataSource::Mnist { dir: name }),
        Some(DataSource::Cifar10 { .. }) => Ok(DataSource::Cifar10 { dir: name }),
        _ => Err(Error::new(
            Stage::Data,
            format!(
                "--data {name}: the spec does not read its data from a folder (mnist(...) or \
                 cifar10(...)); give a spec whose `train` block names the data"
            ),
        )),
    }
}

/// Rounds to two decimals for reports.
pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_stage() {
        let e = Error::new(Stage::Convert, "no observer");
        assert_eq!(e.to_string(), "convert: no observer");
        assert_eq!(e.render(), "error: convert: no observer\n");
        let e = Error::new(Stage::Read, "cannot read `x`");
        assert_eq!(e.render(), "error: cannot read `x`\n");
    }

    #[test]
    fn a_missing_spec_is_a_read_error_naming_the_file() {
        let e = SpecFile::load(Path::new("no/such.qspec")).err().unwrap();
        assert_eq!(e.stage, Stage::Read);
        assert!(e.message.contains("no/such.qspec"), "{e}");
    }
}
