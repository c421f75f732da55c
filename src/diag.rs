//! Spans and diagnostics: every user error carries the byte range it is about and renders with
//! the source line and a caret (`--> file:line:col`).
//!
//! Stages never print: they return `Vec<Diag>` and the CLI renders them with [`render`].

use codespan_reporting::diagnostic::{Diagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Chars, Config};
use std::sync::atomic::{AtomicBool, Ordering};

/// A byte range in the source text. Spans are not part of a spec's meaning: they are skipped by
/// the YAML form and by the AST's equality helpers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One message for the user: what is wrong, where, and what might fix it.
#[derive(Clone, Debug, PartialEq)]
pub struct Diag {
    pub severity: Severity,
    pub message: String,
    /// Where the problem is; `None` for problems with no place in the source (a missing block).
    pub span: Option<Span>,
    /// A short text printed under the caret.
    pub label: String,
    /// Extra lines: `= help: ...`, `= note: ...`.
    pub notes: Vec<String>,
    /// Other places that explain it (`first defined here`), shown with their lines. (Boxed:
    /// most diagnostics have none, and `Result<_, Diag>` stays small.)
    pub secondary: Option<Box<[(Span, String)]>>,
}

impl Diag {
    pub fn error(span: Span, message: impl Into<String>) -> Diag {
        Diag {
            severity: Severity::Error,
            message: message.into(),
            span: Some(span),
            label: String::new(),
            notes: Vec::new(),
            secondary: None,
        }
    }

    /// An error that belongs to the file as a whole rather than to one place in it.
    pub fn error_at_file(message: impl Into<String>) -> Diag {
        Diag {
            severity: Severity::Error,
            message: message.into(),
            span: None,
            label: String::new(),
            notes: Vec::new(),
            secondary: None,
        }
    }

    pub fn warning(span: Span, message: impl Into<String>) -> Diag {
        Diag {
            severity: Severity::Warning,
            ..Diag::error(span, message)
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diag {
        self.label = label.into();
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diag {
        self.notes.push(format!("help: {}", help.into()));
        self
    }

    /// Points at another place, with its own label and line.
    pub fn with_secondary(mut self, span: Span, label: impl Into<String>) -> Diag {
        let mut all = self.secondary.take().map_or_else(Vec::new, Vec::from);
        all.push((span, label.into()));
        self.secondary = Some(all.into_boxed_slice());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diag {
        self.notes.push(format!("note: {}", note.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Diagnostics rendered at most; the rest are counted. A file of garbage gives thousands of
/// errors, and only the first ones help.
pub const MAX_RENDERED: usize = 50;

/// Source lines longer than this are not echoed: the diagnostic names the line and column only.
const MAX_ECHOED_LINE: usize = 400;

/// Whether [`render`] colours its output (the command line turns it on for a terminal).
static COLOR: AtomicBool = AtomicBool::new(false);

/// Turns colour on or off for every later [`render`]: on a terminal, unless `NO_COLOR` is set
/// (or forced with `CLICOLOR_FORCE`). The library never turns it on by itself.
pub fn set_color(on: bool) {
    COLOR.store(on, Ordering::Relaxed);
}

/// One diagnostic as text, with ANSI colours when [`set_color`] asked for them.
fn emit(
    config: &Config,
    file: &SimpleFile<&str, &str>,
    d: &Diagnostic<()>,
) -> Result<String, codespan_reporting::files::Error> {
    if COLOR.load(Ordering::Relaxed) {
        let mut buffer = term::termcolor::Buffer::ansi();
        term::emit_to_write_style(&mut buffer, config, file, d)?;
        Ok(String::from_utf8_lossy(buffer.as_slice()).into_owned())
    } else {
        term::emit_into_string(config, file, d)
    }
}

/// Renders diagnostics as text (plain unless [`set_color`] turned colour on), in the order given: at most [`MAX_RENDERED`],
/// each in time proportional to its own lines (a long line is not echoed), after one pass over
/// the source. Lines break at `\n`, `\r\n` and a lone `\r`, as the parser counts them.
pub fn render(diags: &[Diag], file_name: &str, source: &str) -> String {
    // A lone CR becomes LF (one byte for one): codespan breaks lines at LF only.
    let display: std::borrow::Cow<str> = if source.contains('\r') {
        let mut bytes = source.as_bytes().to_vec();
        for i in 0..bytes.len() {
            if bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
                bytes[i] = b'\n';
            }
        }
        String::from_utf8(bytes)
            .expect("replacing an ASCII byte keeps UTF-8")
            .into()
    } else {
        source.into()
    };
    let file = SimpleFile::new(file_name, display.as_ref());
    let config = Config {
        chars: Chars::ascii(),
        ..Config::default()
    };
    let mut out = String::new();
    for diag in diags.iter().take(MAX_RENDERED) {
        let mut d = match diag.severity {
            Severity::Error => Diagnostic::error(),
            Severity::Warning => Diagnostic::warning(),
        }
        .with_message(&diag.message)
        .with_notes(diag.notes.clone());
        let mut location = None;
        if let Some(span) = diag.span {
            let end = floor_char_boundary(&display, span.end.min(display.len()));
            let start = floor_char_boundary(&display, span.start.min(end));
            let line_start = display[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = display[end..].find('\n').map_or(display.len(), |i| end + i);
            if line_end - line_start > MAX_ECHOED_LINE {
                let line = display[..start].matches('\n').count() + 1;
                let column = display[line_start..start].chars().count() + 1;
                location = Some(format!("{file_name}:{line}:{column}"));
            } else {
                let mut labels = vec![Label::primary((), start..end).with_message(&diag.label)];
                for (span, label) in diag.secondary.iter().flat_map(|s| s.iter()) {
                    let end = floor_char_boundary(&display, span.end.min(display.len()));
                    let start = floor_char_boundary(&display, span.start.min(end));
                    labels.push(Label::secondary((), start..end).with_message(label));
                }
                d = d.with_labels(labels);
            }
        }
        match (location, emit(&config, &file, &d)) {
            (Some(at), Ok(text)) => {
                // The message and notes without the (too long) source line.
                let (head, rest) = text.split_once('\n').unwrap_or((&text, ""));
                out.push_str(&format!("{head}\n  --> {at}\n"));
                if !diag.label.is_empty() {
                    out.push_str(&format!("  = {}\n", diag.label));
                }
                out.push_str(rest);
            }
            (None, Ok(text)) => out.push_str(&text),
            // A span outside the file is a bug of ours; still say what the user needs to know.
            (_, Err(_)) => out.push_str(&format!("error: {}\n", diag.message)),
        }
    }
    if diags.len() > MAX_RENDERED {
        out.push_str(&format!(
            "... {} more diagnostics not shown\n",
            diags.len() - MAX_RENDERED
        ));
    }
    let n_errors = diags.iter().filter(|d| d.is_error()).count();
    if n_errors > 0 {
        let plural = if n_errors == 1 { "" } else { "s" };
        out.push_str(&format!("{file_name}: {n_errors} error{plural}\n"));
    }
    out
}

/// The largest char boundary of `s` at or before `i` (`i <= s.len()`).
/// A count and its noun, singular for one: `1 test image`, `2000 test images`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The closest candidate to `word`, if one is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// [`suggest`] for a checker that has `so_far` diagnostics already: past [`MAX_RENDERED`] no one
/// reads the suggestion, and comparing each of thousands of unknown names with thousands of
/// names is quadratic, so the diagnostic is kept as it is.
pub fn suggest_among<'a>(
    so_far: usize,
    diag: Diag,
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Diag {
    if so_far < MAX_RENDERED {
        suggest(diag, word, candidates)
    } else {
        diag
    }
}

/// `help: did you mean `x`?` when a candidate is close to `word`.
pub fn suggest<'a>(diag: Diag, word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Diag {
    match did_you_mean(word, candidates) {
        Some(best) => diag.with_help(format!("did you mean `{best}`?")),
        None => diag,
    }
}
