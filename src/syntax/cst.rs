//! The concrete syntax: pest's parse tree as generic blocks of `key: value` entries.
//!
//! This module knows the grammar but not what any key means.

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser;

use crate::diag::{Diag, Span};

/// Deepest bracket nesting accepted; real specs use two or three levels.
pub const MAX_NESTING: usize = 16;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/qspec.pest"]
struct QspecParser;

#[derive(Clone, Debug)]
pub struct File {
    pub blocks: Vec<Block>,
}

#[derive(Clone, Debug)]
pub struct Block {
    pub kind: BlockKind,
    /// The keyword (`model`, `quantize`, `train`).
    pub keyword_span: Span,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug)]
pub enum BlockKind {
    Model { name: Ident },
    Quantize,
    Train,
}

#[derive(Clone, Debug)]
pub enum Item {
    Entry(Entry),
    /// `qconfig NAME { entries }` (only inside `quantize`).
    Qconfig {
        name: Ident,
        entries: Vec<Entry>,
    },
}

#[derive(Clone, Debug)]
pub struct Ident {
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub key: Ident,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub struct Value {
    pub kind: ValueKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ValueKind {
    /// A number as written; `int` is set when it has no fraction or exponent.
    Number {
        value: f64,
        int: Option<i64>,
    },
    Str(String),
    Ident(String),
    List(Vec<Value>),
    Map(Vec<Entry>),
    Call {
        callee: Ident,
        args: Vec<Arg>,
    },
    /// `4 epochs` or `after 4 epochs`.
    Epochs {
        after: bool,
        n: u64,
    },
}

#[derive(Clone, Debug)]
pub enum Arg {
    Positional(Value),
    Named(Entry),
}

impl Value {
    /// A short description for messages: "a number", "`Linear`", "a list".
    pub fn describe(&self) -> String {
        match &self.kind {
            ValueKind::Number { value, .. } => format!("`{value}`"),
            ValueKind::Str(_) => "a string".into(),
            ValueKind::Ident(name) => format!("`{name}`"),
            ValueKind::List(_) => "a list".into(),
            ValueKind::Map(_) => "a map".into(),
            ValueKind::Call { callee, .. } => format!("`{}(...)`", callee.text),
            ValueKind::Epochs { .. } => "an epoch count".into(),
        }
    }
}

/// Parses the text into blocks, or returns the first syntax error.
pub fn parse(source: &str) -> Result<File, Diag> {
    check_nesting(source)?;
    let mut pairs = QspecParser::parse(Rule::spec, source).map_err(|e| syntax_error(source, e))?;
    let spec = pairs.next().expect("the spec rule always yields one pair");
    let blocks = spec
        .into_inner()
        .filter(|p| p.as_rule() != Rule::EOI)
        .map(block)
        .collect();
    Ok(File { blocks })
}

/// Matches brackets before pest sees the text: nesting deeper than [`MAX_NESTING`] is refused
/// (no input can recurse the parser deeply), and an unclosed or mismatched bracket is reported
/// at the bracket left open (pest would report the token after it: ``expected `epochs`, found
/// `}` ``).
fn check_nesting(source: &str) -> Result<(), Diag> {
    let mut open: Vec<(char, usize)> = Vec::new();
    let mut in_comment = false;
    let mut in_string = false;
    let closer = |c: char| match c {
        '(' => ')',
        '[' => ']',
        _ => '}',
    };
    for (i, c) in source.char_indices() {
        match c {
            // A string left open at the end of its line: the parser says so better.
            '\n' if in_string => return Ok(()),
            '\n' => in_comment = false,
            _ if in_comment => {}
            '"' => in_string = !in_string,
            _ if in_string => {}
            '#' => in_comment = true,
            '(' | '[' | '{' => {
                open.push((c, i));
                if open.len() > MAX_NESTING {
                    return Err(
                        Diag::error(Span::new(i, i + 1), "brackets nested too deeply")
                            .with_label(format!("more than {MAX_NESTING} levels deep")),
                    );
                }
            }
            ')' | ']' | '}' => match open.pop() {
                Some((o, _)) if closer(o) == c => {}
                Some((o, at)) => {
                    return Err(
                        Diag::error(Span::new(at, at + 1), format!("unclosed `{o}`"))
                            .with_label(format!("this `{o}` is never closed"))
                            .with_secondary(
                                Span::new(i, i + 1),
                                format!("`{c}` found here, where `{}` was expected", closer(o)),
                            ),
                    );
                }
                None => {
                    return Err(Diag::error(Span::new(i, i + 1), format!("unmatched `{c}`"))
                        .with_label("nothing here to close"));
                }
            },
            _ => {}
        }
    }
    match open.pop() {
        Some(_) if in_string => Ok(()),
        Some((o, at)) => Err(
            Diag::error(Span::new(at, at + 1), format!("unclosed `{o}`"))
                .with_label(format!("this `{o}` is never closed"))
                .with_help(format!("close it with `{}`", closer(o))),
        ),
        None => Ok(()),
    }
}

fn span_of(pair: &Pair<Rule>) -> Span {
    Span::new(pair.as_span().start(), pair.as_span().end())
}

fn ident(pair: Pair<Rule>) -> Ident {
    Ident {
        span: span_of(&pair),
        text: pair.as_str().to_string(),
    }
}

fn block(pair: Pair<Rule>) -> Block {
    let rule = pair.as_rule();
    let mut inner = pair.into_inner();
    let keyword_span = span_of(&inner.next().expect("a block starts with its keyword"));
    let kind = match rule {
        Rule::model_block => BlockKind::Model {
            name: ident(inner.next().expect("a model block has a name")),
        },
        Rule::quantize_block => BlockKind::Quantize,
        _ => BlockKind::Train,
    };
    let items = inner
        .map(|p| match p.as_rule() {
            Rule::qconfig_def => {
                let mut parts = p.into_inner();
                parts.next(); // the keyword
                let name = ident(parts.next().expect("a qconfig has a name"));
                Item::Qconfig {
                    name,
                    entries: parts.map(entry).collect(),
                }
            }
            _ => Item::Entry(entry(p)),
        })
        .collect();
    Block {
        kind,
        keyword_span,
        items,
    }
}

fn entry(pair: Pair<Rule>) -> Entry {
    let mut inner = pair.into_inner();
    let key = ident(inner.next().expect("an entry has a key"));
    let value = value(inner.next().expect("an entry has a value"));
    Entry { key, value }
}

fn value(pair: Pair<Rule>) -> Value {
    let span = span_of(&pair);
    let kind = match pair.as_rule() {
        Rule::number => {
            let text = pair.as_str();
            ValueKind::Number {
                // The grammar only admits valid numbers; huge ones become infinity, caught later.
                value: text.parse().unwrap_or(f64::INFINITY),
                int: text.parse().ok(),
            }
        }
        Rule::string => ValueKind::Str(
            pair.into_inner()
                .next()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
        ),
        Rule::ident => ValueKind::Ident(pair.as_str().to_string()),
        Rule::list => ValueKind::List(pair.into_inner().map(value).collect()),
        Rule::map => ValueKind::Map(pair.into_inner().map(entry).collect()),
        Rule::call => {
            let mut inner = pair.into_inner();
            let callee = ident(inner.next().expect("a call has a callee"));
            let args = inner
                .map(|p| match p.as_rule() {
                    Rule::named_arg => Arg::Named(entry(p)),
                    _ => Arg::Positional(value(p)),
                })
                .collect();
            ValueKind::Call { callee, args }
        }
        Rule::epochs => {
            let mut after = false;
            let mut n = u64::MAX;
            for p in pair.into_inner() {
                match p.as_rule() {
                    Rule::kw_after => after = true,
                    Rule::integer => n = p.as_str().parse().unwrap_or(u64::MAX),
                    _ => {}
                }
            }
            ValueKind::Epochs { after, n }
        }
        other => unreachable!("the grammar has no value rule {other:?}"),
    };
    Value { kind, span }
}

/// A readable name for every rule a user can meet in "expected ..." messages.
fn rule_name(rule: &Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::spec | Rule::block => "a block (`model`, `quantize` or `train`)",
        Rule::model_block | Rule::kw_model => "`model`",
        Rule::quantize_block | Rule::kw_quantize => "`quantize`",
        Rule::train_block | Rule::kw_train => "`train`",
        Rule::qconfig_def | Rule::kw_qconfig => "`qconfig NAME { ... }`",
        Rule::entry => "an entry `name: value`",
        Rule::value | Rule::call | Rule::map | Rule::list | Rule::epochs => "a value",
        Rule::named_arg | Rule::arg => "an argument `name: value`",
        Rule::number | Rule::integer => "a number",
        Rule::string | Rule::string_inner => "a string",
        Rule::ident => "a name",
        Rule::kw_after => "`after`",
        Rule::kw_epochs => "`epochs`",
        Rule::word_end | Rule::WHITESPACE | Rule::COMMENT => "a separator",
    }
}

fn syntax_error(source: &str, e: pest::error::Error<Rule>) -> Diag {
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let found = found_at(source, pos);
    let expected = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().map(rule_name).collect();
            names.sort();
            names.dedup();
            // "a value" covers names, numbers and strings: say only that.
            if names.contains(&"a value") {
                names.retain(|n| !matches!(*n, "a name" | "a number" | "a string"));
            }
            names
        }
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let expected = match expected.as_slice() {
        [] => String::from("something else"),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    };
    let end = (pos + found.len().max(1)).min(source.len()).max(pos);
    if found.is_empty() {
        return Diag::error(Span::new(pos, end), "syntax error: unexpected end of file")
            .with_label(format!("expected {expected}"))
            .with_help("a `{`, `(` or `[` is not closed");
    }
    if found == "\"" && !source[pos + 1..].lines().next().unwrap_or("").contains('"') {
        return Diag::error(Span::new(pos, end), "syntax error: unterminated string")
            .with_label("this string has no closing `\"` on its line");
    }
    Diag::error(
        Span::new(pos, end),
        format!(
            "syntax error: expected {expected}, found {}",
            describe_found(&found)
        ),
    )
    .with_label(format!("expected {expected}"))
}

/// The token at `pos`: a word, or one character, or nothing at the end.
fn found_at(source: &str, pos: usize) -> String {
    let rest = source.get(pos..).unwrap_or("");
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !word.is_empty() {
        return word;
    }
    rest.chars().next().map(String::from).unwrap_or_default()
}

fn describe_found(found: &str) -> String {
    match found {
        "" => "end of file".into(),
        "\n" => "end of line".into(),
        _ => format!("`{}`", found.escape_debug()),
    }
}
