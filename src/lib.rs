//! qatc: a compiler for quantization-aware training.
//!
//! ```text
//!  .qspec / .yaml text
//!        | syntax::parse_source        (pest grammar -> generic entries -> typed AST)
//!        v
//!  syntax::Spec (AST, spans)            <- `qatc fmt`, the YAML form
//!        | check::check                 (names -> DAG, shapes, defaults, qconfigs)
//!        v
//!  check::CheckedModel                  <- `qatc check` prints its table
//!        | check::lower                 (one node per layer, behind an input node)
//!        v
//!  ir::Graph (float)
//!        | passes::QAT_PIPELINE         (fuse, prepare_qat; verified after each)
//!        v
//!  ir::Graph (fake-quant)               <- train::train: forward/backward, optimizers, loop
//!        | convert::convert             (observers -> qparams, int8 weights, int32 biases)
//!        v
//!  int8::QGraph                         <- interp::run: the reference interpreter
//! ```
//!
//! Each stage returns its result or every error it found as [`diag::Diag`]s; only the CLI prints.

pub mod bench;
pub mod check;
pub mod compare;
pub mod convert;
pub mod data;
pub mod diag;
pub mod int8;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod limits;
pub mod passes;
pub mod qmodel;
pub mod quant;
pub mod syntax;
pub mod train;

pub use jit::{Compiled, Model};

use diag::Diag;

/// A spec that parsed and checked.
pub struct Checked {
    pub model: check::CheckedModel,
    pub spec: syntax::Spec,
    pub warnings: Vec<Diag>,
}

/// Parses and checks a spec's text in one go: the front half of every command. The returned
/// source is what the spans of the spec and of the diagnostics refer to.
///
/// ```
/// let text = "model m { input: [1, 28, 28] flat: Flatten fc: Linear(out: 10) }";
/// let (result, _source) = qatc::front_end("m.qspec", text);
/// let checked = result.expect("a valid spec");
/// assert_eq!(checked.model.layers[1].out_shape, vec![10]);
///
/// let (result, source) = qatc::front_end("bad.qspec", "model m { input: [4] fc: Linaer(out: 2) }");
/// let text = qatc::diag::render(&result.err().unwrap(), &source.name, &source.text);
/// assert!(text.contains("did you mean `Linear`?"));
/// ```
pub fn front_end(file_name: &str, text: &str) -> (Result<Checked, Vec<Diag>>, syntax::SourceFile) {
    let (parsed, source) = syntax::parse_source(file_name, text);
    let result = parsed.and_then(|spec| {
        check::check(&spec).map(|(model, warnings)| Checked {
            model,
            spec,
            warnings,
        })
    });
    (result, source)
}
