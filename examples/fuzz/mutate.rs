//! Mutators: byte-level (flips, inserts, deletions, splices of interesting bytes), token-level
//! for text (swapped and repeated tokens, numbers replaced by extreme ones, long identifiers,
//! unicode, NUL, line endings, deep nesting) and JSON-level for the graph of a `.qmodel`.

use qatc::train::rng::Rng;

/// Numbers that sit on edges: zero, signs, powers of two around integer widths, float extremes.
pub const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "-0",
    "255",
    "256",
    "65535",
    "65536",
    "16777216",
    "16777217",
    "2147483647",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e308",
    "-1e308",
    "1e39",
    "1e-45",
    "1e-300",
    "0.5",
    "NaN",
    "inf",
    "-inf",
    "0x10",
    "1_000",
];

/// Fragments that stress a parser: nesting, unusual characters, line endings.
const FRAGMENTS: &[&str] = &[
    "\r", "\r\n", "\n", "\0", "\t", "{", "}", "(", ")", "[", "]", ":", ",", "\"", "'", "#", "//",
    "/*", "é", "😀", "\u{202e}", "\u{feff}", "&a", "*a", "!!str", "- ", "? ", "|", ">", "%YAML",
    "---", "...", "~", "null",
];

/// The largest text a mutation makes: the CLI refuses specs over 1 MiB, so larger ones test
/// nothing it can be given.
pub const MAX_TEXT: usize = 1 << 20;

/// Applies 1 to 4 random mutations to text: token- and byte-level. The result is at most about
/// [`MAX_TEXT`] bytes.
pub fn text(seed: &str, rng: &mut Rng) -> Vec<u8> {
    let mut tokens = tokenize(seed);
    for _ in 0..1 + rng.below(4) {
        if tokens.is_empty() {
            tokens.push(String::new());
        }
        let room = MAX_TEXT.saturating_sub(tokens.iter().map(String::len).sum());
        let i = rng.below(tokens.len());
        match rng.below(12) {
            0 => tokens[i] = NUMBERS[rng.below(NUMBERS.len())].to_string(),
            1 => {
                let j = rng.below(tokens.len());
                tokens.swap(i, j);
            }
            2 => {
                let t = tokens[rng.below(tokens.len())].clone();
                tokens.insert(i, t);
            }
            3 => {
                tokens.remove(i);
            }
            4 => tokens[i] = long_identifier(rng, room),
            5 => tokens.insert(i, FRAGMENTS[rng.below(FRAGMENTS.len())].to_string()),
            6 => {
                // Deep nesting.
                let (open, close) = [("[", "]"), ("(", ")"), ("{", "}")][rng.below(3)];
                let depth = 1 + rng.below(5000).min(room / 2);
                tokens.insert(i, format!("{}{}", open.repeat(depth), close.repeat(depth)));
            }
            7 => {
                // Line endings: all CR, all CRLF, or none.
                let joined = tokens.concat();
                let joined = match rng.below(3) {
                    0 => joined.replace('\n', "\r"),
                    1 => joined.replace('\n', "\r\n"),
                    _ => joined.replace('\n', " "),
                };
                tokens = tokenize(&joined);
            }
            8 => {
                // A run of tokens repeated many times (long files, many errors).
                let end = (i + 1 + rng.below(20)).min(tokens.len());
                let run = tokens[i..end].concat();
                let times = (1 + rng.below(200)).min(room / run.len().max(1));
                tokens.insert(end, run.repeat(times));
            }
            9 => {
                // A number made larger or negative.
                if tokens[i].bytes().all(|b| b.is_ascii_digit()) && !tokens[i].is_empty() {
                    tokens[i] = match rng.below(3) {
                        0 => format!("-{}", tokens[i]),
                        1 => format!("{}000000000", tokens[i]),
                        _ => format!("{}.5e300", tokens[i]),
                    };
                }
            }
            _ => {
                let mut bytes = tokens.concat().into_bytes();
                bytes_once(&mut bytes, rng);
                return bytes;
            }
        }
    }
    tokens.concat().into_bytes()
}

/// Applies 1 to 8 byte-level mutations.
pub fn bytes(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        bytes_once(&mut out, rng);
    }
    out
}

fn bytes_once(b: &mut Vec<u8>, rng: &mut Rng) {
    if b.is_empty() {
        b.push(rng.below(256) as u8);
        return;
    }
    let i = rng.below(b.len());
    match rng.below(7) {
        0 => b[i] ^= 1 << rng.below(8),
        1 => b[i] = [0, 0xff, 0x7f, 0x80, b'0', b'9', b'-'][rng.below(7)],
        2 => b.insert(i, rng.below(256) as u8),
        3 => {
            let end = (i + 1 + rng.below(16)).min(b.len());
            b.drain(i..end);
        }
        4 if b.len() < 2 * MAX_TEXT => {
            let end = (i + 1 + rng.below(64)).min(b.len());
            let run = b[i..end].to_vec();
            let at = rng.below(b.len());
            b.splice(at..at, run);
        }
        5 => {
            // A little-endian integer of an interesting size, written over the bytes.
            let v: u64 = [0, 1, u64::MAX, 1 << 31, 1 << 32, 1 << 63, 0x7fff_ffff][rng.below(7)];
            for (k, byte) in v.to_le_bytes().iter().enumerate() {
                if let Some(slot) = b.get_mut(i + k) {
                    *slot = *byte;
                }
            }
        }
        _ => b.truncate(i),
    }
}

/// Splits text into identifiers, numbers, whitespace runs and single other characters; the
/// concatenation of the tokens is the text.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    let class = |c: char| {
        if c.is_alphanumeric() || c == '_' || c == '.' {
            0
        } else if c == ' ' || c == '\t' {
            1
        } else {
            2
        }
    };
    for c in text.chars() {
        match tokens.last_mut() {
            Some(t) if class(c) != 2 && t.chars().last().map(class) == Some(class(c)) => t.push(c),
            _ => tokens.push(c.to_string()),
        }
    }
    tokens
}

fn long_identifier(rng: &mut Rng, room: usize) -> String {
    let len = [255, 256, 4096, 65_535, 65_536, 70_000][rng.below(6)].min(room / 2);
    let c = ['a', 'é', 'x'][rng.below(3)];
    std::iter::repeat_n(c, len).collect()
}

/// A JSON value that is likely to break an assumption: extreme and odd numbers, wrong types.
pub fn json_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(14) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(1u64 << 63),
        4 => json!(1u64 << 32),
        5 => json!((1u64 << 63) - 1),
        6 => json!(1e39),
        7 => json!(1e-45),
        8 => json!(1e-40),
        9 => json!(3.4e38),
        10 => json!(null),
        11 => json!([]),
        12 => json!(256),
        _ => json!(rng.below(1000)),
    }
}

/// Replaces a random leaf (number, string, bool or null) of `v` with [`json_value`], or a
/// random array with a shorter or longer one; returns whether anything changed.
pub fn json_leaf(v: &mut serde_json::Value, rng: &mut Rng) -> bool {
    let mut leaves = 0;
    count_leaves(v, &mut leaves);
    if leaves == 0 {
        return false;
    }
    let target = rng.below(leaves);
    let mut seen = 0;
    replace_leaf(v, target, &mut seen, rng)
}

fn count_leaves(v: &serde_json::Value, n: &mut usize) {
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| count_leaves(x, n)),
        serde_json::Value::Object(o) => o.values().for_each(|x| count_leaves(x, n)),
        _ => *n += 1,
    }
}

fn replace_leaf(v: &mut serde_json::Value, target: usize, seen: &mut usize, rng: &mut Rng) -> bool {
    match v {
        serde_json::Value::Array(a) => {
            for x in a.iter_mut() {
                if replace_leaf(x, target, seen, rng) {
                    return true;
                }
            }
            false
        }
        serde_json::Value::Object(o) => {
            for x in o.values_mut() {
                if replace_leaf(x, target, seen, rng) {
                    return true;
                }
            }
            false
        }
        leaf => {
            if *seen == target {
                *leaf = match (leaf.as_i64(), rng.below(3)) {
                    // Near the old value: off by one, doubled, negated.
                    (Some(n), 0) => serde_json::json!(
                        [
                            n.wrapping_add(1),
                            n.wrapping_sub(1),
                            n.wrapping_mul(2),
                            n.wrapping_neg(),
                            n.wrapping_mul(1 << 20)
                        ][rng.below(5)]
                    ),
                    _ => json_value(rng),
                };
                return true;
            }
            *seen += 1;
            false
        }
    }
}
