//! Every input the fuzzer (`examples/fuzz`) found a problem with, kept under
//! `tests/fuzz/<target>/`, run again through its target: each must now pass. The `.txt` beside a
//! case says what it once did.

mod common;
#[allow(dead_code)] // the generators are the fuzzer's; this test only runs saved cases
#[path = "../examples/fuzz/mutate.rs"]
mod mutate;
#[allow(dead_code)]
#[path = "../examples/fuzz/targets.rs"]
mod targets;

use std::path::Path;

use targets::{Target, ALL};

/// Every saved case under `dir/<target>/`, with its target.
pub fn saved_cases(dir: &Path) -> Vec<(Target, std::path::PathBuf)> {
    let mut cases = Vec::new();
    for target in ALL {
        let Ok(entries) = std::fs::read_dir(dir.join(target.name())) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        cases.extend(
            files
                .into_iter()
                .filter(|f| f.extension().is_some_and(|e| e == target.extension()))
                .map(|f| (target, f)),
        );
    }
    cases
}

#[test]
fn every_saved_fuzz_case_passes() {
    let cases = saved_cases(&common::root().join("tests/fuzz"));
    assert!(!cases.is_empty(), "tests/fuzz/ holds the fuzzer's findings");
    let mut failed = Vec::new();
    for (target, file) in &cases {
        let input = std::fs::read(file).unwrap();
        match std::panic::catch_unwind(|| target.run(&input)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{}: {e}", file.display())),
            Err(_) => failed.push(format!("{}: panicked", file.display())),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
