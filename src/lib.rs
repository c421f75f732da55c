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
//! ```
//!
//! Each stage returns its result or every error it found as [`diag::Diag`]s; only the CLI prints.

pub mod check;
pub mod diag;
pub mod quant;
pub mod syntax;

use diag::Diag;

/// Parses and checks a spec's text in one go: the front half of every command.
pub fn front_end(
    file_name: &str,
    text: &str,
) -> (
    Result<(check::CheckedModel, syntax::Spec, Vec<Diag>), Vec<Diag>>,
    syntax::SourceFile,
) {
    let (parsed, source) = syntax::parse_source(file_name, text);
    let result = parsed
        .and_then(|spec| check::check(&spec).map(|(model, warnings)| (model, spec, warnings)));
    (result, source)
}
