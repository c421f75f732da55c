//! The import graph stays one-way: every top-level module of `src/` has a layer, and a module
//! uses only modules of lower layers; inside a folder, the files use each other without a cycle.
//! The README's "Layout" section lists the same layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module may use the modules of the layers before its own, not its own layer
/// nor later ones. `lib.rs` and the CLI (`bin/`) sit above all of them.
const LAYERS: &[&[&str]] = &[
    &["limits", "diag", "param"],
    &["quant"],
    &["ops"],
    &["syntax"],
    &["ir", "data"],
    &["int8", "check", "state"],
    &["interp", "passes", "qmodel", "onnx"],
    &["jit", "train"],
    &["convert"],
    &["compare", "bench"],
    &["pipeline"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments (so a doc link is not a use) and without string
/// literals.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut in_string = false;
        let mut prev = ' ';
        for ch in line.chars() {
            if ch == '"' && prev != '\\' {
                in_string = !in_string;
            } else if !in_string {
                out.push(ch);
            }
            prev = ch;
        }
        out.push('\n');
    }
    out
}

/// The first path segments after `prefix::` in `code`, including those in a `prefix::{a, b::c}`
/// group.
fn segments_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let pattern = format!("{prefix}::");
    let mut rest = code;
    while let Some(i) = rest.find(&pattern) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + pattern.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (k, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(&group[start..k]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(&group[start..k]));
                        start = k + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn modules_use_only_lower_layers() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut violations = Vec::new();
    let mut unplaced = BTreeSet::new();
    for path in &files {
        let rel = path.strip_prefix(src()).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            unplaced.insert(module);
            continue;
        };
        let code = code(&std::fs::read_to_string(path).unwrap());
        for used in segments_after(&code, "crate") {
            if used == module || used == "self" {
                continue;
            }
            match layer_of(&used) {
                Some(l) if l < own => {}
                Some(_) => violations.push(format!(
                    "{} (layer {own}) uses `{used}` (layer {})",
                    rel.display(),
                    layer_of(&used).unwrap()
                )),
                None => violations.push(format!(
                    "{} uses `crate::{used}`, which is not a layered module",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules without a layer in LAYERS: {unplaced:?}"
    );
    assert!(
        violations.is_empty(),
        "imports against the layering:\n{}",
        violations.join("\n")
    );
}

#[test]
fn files_of_a_folder_use_each_other_without_a_cycle() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut folders: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for path in files {
        let dir = path.parent().unwrap().to_path_buf();
        if dir != src() {
            folders.entry(dir).or_default().push(path);
        }
    }
    for (dir, files) in folders {
        let stem = |p: &Path| p.file_stem().unwrap().to_string_lossy().to_string();
        let modules: BTreeSet<String> = files.iter().map(|p| stem(p)).collect();
        // Edges between the files: `super::x` (x a sibling file, else an item of mod.rs) from a
        // child; `x::` from mod.rs (declarations and re-exports do not count).
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in &files {
            let from = stem(path);
            let code = code(&std::fs::read_to_string(path).unwrap());
            let targets: BTreeSet<String> = if from == "mod" {
                let body: String = code
                    .lines()
                    .filter(|l| {
                        let l = l.trim_start();
                        !(l.starts_with("mod ")
                            || l.starts_with("pub mod ")
                            || l.starts_with("pub use ")
                            || l.starts_with("pub(crate) mod "))
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                modules
                    .iter()
                    .filter(|m| *m != "mod" && !segments_after(&body, m).is_empty())
                    .cloned()
                    .collect()
            } else {
                segments_after(&code, "super")
                    .into_iter()
                    .map(|s| {
                        if modules.contains(&s) {
                            s
                        } else {
                            "mod".into()
                        }
                    })
                    .filter(|s| *s != from)
                    .collect()
            };
            edges.insert(from, targets);
        }
        // Depth-first search for a cycle.
        fn visit(
            node: &str,
            edges: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(i) = path.iter().position(|p| p == node) {
                let mut cycle = path[i..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            if done.contains(node) {
                return None;
            }
            path.push(node.to_string());
            for next in edges.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(next, edges, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(node.to_string());
            None
        }
        let mut done = BTreeSet::new();
        for start in edges.keys() {
            if let Some(cycle) = visit(start, &edges, &mut Vec::new(), &mut done) {
                panic!(
                    "{}: the files use each other in a cycle: {}",
                    dir.display(),
                    cycle.join(" -> ")
                );
            }
        }
    }
}

#[test]
fn the_checks_see_uses_in_every_form() {
    let code = code(
        "use crate::{a, b::{c, d}, e};\nlet x = crate::f::g(); // crate::h\nlet s = \"crate::i\";",
    );
    let found = segments_after(&code, "crate");
    let want: BTreeSet<String> = ["a", "b", "e", "f"].map(String::from).into();
    assert_eq!(found, want);
    assert_eq!(layer_of("quant"), Some(1));
    assert!(layer_of("ops") < layer_of("syntax"));
    assert!(layer_of("interp") > layer_of("int8"));
}

/// A test whose tools this machine lacks is reported as ignored with the reason (`build.rs`
/// marks them) or fails; it never passes after printing that it skipped, which made a machine
/// without qemu look fully tested. Only an explicit `QATC_SKIP_*` request may skip inside a test.
#[test]
fn tests_never_pass_by_skipping_quietly() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files = Vec::new();
    rust_files(&tests, &mut files);
    let needle = concat!("\"skip", "ped");
    let mut quiet = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.contains(needle) {
                continue;
            }
            let context = &lines[i.saturating_sub(4)..=i];
            if !context.iter().any(|l| l.contains("QATC_SKIP_")) {
                quiet.push(format!("{}:{}", path.display(), i + 1));
            }
        }
    }
    assert!(
        quiet.is_empty(),
        "tests that skip without being asked to:\n{}",
        quiet.join("\n")
    );
}
