//! Text -> AST. Parsing never panics: it returns a [`Spec`] or every error it found.
//!
//! Two steps: pest turns the text into a tree of generic `key: value` entries ([`cst`]), then
//! [`lower`] gives those entries their meaning. Keeping the grammar generic lets the lowering say
//! "unknown layer type `Linaer`, did you mean `Linear`?" instead of a bare syntax error.

pub mod ast;
pub mod cst;
pub mod fmt;
pub mod lower;

use crate::diag::{Diag, Span};
pub use ast::Spec;
pub use cst::MAX_NESTING;

/// Parses `.qspec` text into an AST.
pub fn parse(source: &str) -> Result<Spec, Vec<Diag>> {
    let file = cst::parse(source).map_err(|d| vec![d])?;
    lower::lower(&file)
}

/// A spec's text with the name messages call it by. Spans in a parsed [`Spec`] index `text`.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// Parses a spec in either form, chosen by the file name (`.yaml`/`.yml` is YAML).
///
/// A YAML spec is deserialized, printed as canonical `.qspec` and parsed again, so it is checked by
/// exactly the same rules as a `.qspec`; the returned [`SourceFile`] is then that canonical text
/// (named `FILE (as .qspec)`), which is what the spans of the spec and of any error refer to.
pub fn parse_source(name: &str, text: &str) -> (Result<Spec, Vec<Diag>>, SourceFile) {
    let source = SourceFile {
        name: name.to_string(),
        text: text.to_string(),
    };
    if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
        return (parse(text), source);
    }
    match parse_yaml(text) {
        Err(diags) => (Err(diags), source),
        Ok(spec) => {
            let canonical = SourceFile {
                name: format!("{name} (as .qspec)"),
                text: fmt::format_spec(&spec),
            };
            (parse(&canonical.text), canonical)
        }
    }
}

/// Deserializes the YAML form of a spec, without the checks [`parse_source`] adds.
pub fn parse_yaml(source: &str) -> Result<Spec, Vec<Diag>> {
    serde_yaml::from_str(source).map_err(|e| {
        let span = e
            .location()
            .map(|loc| {
                // One whole character at the byte the error names.
                let start = crate::diag::floor_char_boundary(source, loc.index().min(source.len()));
                let width = source[start..].chars().next().map_or(0, char::len_utf8);
                Span::new(start, start + width)
            })
            .unwrap_or_default();
        let message = format!("invalid YAML spec: {e}");
        vec![if source.is_empty() {
            Diag::error_at_file(message)
        } else {
            Diag::error(span, message)
        }]
    })
}

/// The YAML form of a spec.
pub fn to_yaml(spec: &Spec) -> String {
    // Serializing plain data to a string cannot fail.
    serde_yaml::to_string(spec).unwrap_or_default()
}
