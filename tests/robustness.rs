//! No input makes the front end panic, and the CLI exits with status 2 on bad input.

mod common;

use std::process::Command;

/// Byte-level mutations of the example specs and adversarial texts never panic the parser or
/// the checker. (A hang here would show up as a stuck test: the grammar has no backtracking that
/// grows faster than the input.)
#[test]
fn mutated_specs_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"{}()[]:,#\"\n -.0123456789eafterpochsLinearConv2dAdd";
    for path in common::spec_files() {
        let original = std::fs::read(&path).unwrap();
        for _ in 0..400 {
            let mut bytes = original.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let (result, source) = qatc::front_end("mutant.qspec", &text);
            if let Err(diags) = result {
                assert!(!diags.is_empty());
                let rendered = qatc::diag::render(&diags, &source.name, &source.text);
                assert!(rendered.contains("error"), "{rendered}");
            }
        }
    }
}

#[test]
fn adversarial_inputs_are_rejected_quickly() {
    let cases = [
        "model m { input: [1] a: Linear(".repeat(200),
        format!(
            "model m {{ input: [1] a: Linear(out: {}) }}",
            "[".repeat(5000)
        ),
        format!(
            "model m {{ input: [1] a: {} }}",
            "f(".repeat(15).repeat(100)
        ),
        "a: ".repeat(2000),
        "model m { input: [99999999999999999999999] }".to_string(),
        "model m { input: [1] a: Linear(out: 1e999999) }".to_string(),
        "\u{0}\u{feff}model".to_string(),
    ];
    for text in cases {
        let (result, _) = qatc::front_end("adversarial.qspec", &text);
        assert!(result.is_err(), "accepted: {}", &text[..text.len().min(80)]);
    }
}

/// A spec of one megabyte with lone-CR line endings and an error on every line: the rendering
/// is bounded (at most `MAX_RENDERED` diagnostics, long lines not echoed) and the lines are
/// counted as the parser counts them. Before, every diagnostic echoed the whole file.
#[test]
fn many_errors_in_a_large_cr_only_spec_render_in_bounded_output() {
    let line = "model m { input: [1] a: Linaer(out: 1) }\r";
    let text = line.repeat((1 << 20) / line.len());
    let (result, source) = qatc::front_end("cr.qspec", &text);
    let Err(diags) = result else {
        panic!("the spec is refused")
    };
    let rendered = qatc::diag::render(&diags, &source.name, &source.text);
    assert!(
        rendered.len() < 64 * 1024,
        "{} bytes of diagnostics",
        rendered.len()
    );
    assert!(rendered.contains("cr.qspec:1:"), "{rendered}");
    // Every line break is a CR: the second diagnostic, if on line 2, says so.
    if diags.len() > 1 {
        assert!(rendered.contains("cr.qspec:2:"), "{rendered}");
    }
    // One line of a megabyte: named by line and column, not echoed.
    let long = format!("model m {{ input: [1] {} }}", "a: Linaer ".repeat(100_000));
    let (result, source) = qatc::front_end("long.qspec", &long);
    let Err(diags) = result else {
        panic!("the spec is refused")
    };
    let rendered = qatc::diag::render(&diags, &source.name, &source.text);
    assert!(rendered.len() < 64 * 1024, "{} bytes", rendered.len());
    assert!(rendered.contains("long.qspec:1:"), "{rendered}");
}

/// Thousands of unknown inputs: "did you mean" stops after the diagnostics anyone reads. It
/// compared every unknown name with every layer name: 82 s for a 1 MB spec of such layers.
#[test]
fn suggestions_stop_after_the_rendered_diagnostics() {
    let layers: String = (0..3000)
        .map(|i| format!("    layer{i}: Linear(layr{i}, out: 2)\n"))
        .collect();
    let text = format!("model m {{\n    input: [4]\n{layers}}}\n");
    let (result, _) = qatc::front_end("many.qspec", &text);
    let Err(diags) = result else {
        panic!("the spec is refused")
    };
    let shown = qatc::diag::MAX_RENDERED;
    assert!(diags.len() > shown);
    assert!(diags[..shown].iter().all(|d| !d.notes.is_empty()));
    assert!(diags[shown..].iter().all(|d| d.notes.is_empty()));
}

/// Layer names of 65,535 and 65,536 characters (past the largest format width) are legal: the
/// table, the canonical printer and the YAML form handle them.
#[test]
fn very_long_layer_names_do_not_panic() {
    for len in [65_535, 65_536, 70_000] {
        let name = "n".repeat(len);
        let text = format!("model m {{\n    input: [4]\n    {name}: Linear(out: 2)\n}}\n");
        let (result, _) = qatc::front_end("long.qspec", &text);
        let checked = result.expect("a long name is legal");
        let table = qatc::check::model_table(&checked.model);
        assert!(table.contains(&name));
        let yaml = qatc::syntax::to_yaml(&checked.spec);
        let (again, _) = qatc::front_end("long.yaml", &yaml);
        let again = again.expect("the YAML form checks");
        assert_eq!(again.model.layers[0].name, name);
    }
}

/// A YAML error at a multi-byte character gets a span on character boundaries.
#[test]
fn yaml_error_spans_land_on_character_boundaries() {
    for text in ["model: [é\n", "é: {\n  ü: [", "model:\n  name: \"😀\n"] {
        let diags = qatc::syntax::parse_yaml(text).unwrap_err();
        for d in &diags {
            if let Some(span) = d.span {
                assert!(
                    text.is_char_boundary(span.start) && text.is_char_boundary(span.end),
                    "{span:?} in {text:?}"
                );
            }
        }
        let _ = qatc::diag::render(&diags, "x.yaml", text);
    }
}

fn qatc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(args)
        .current_dir(common::root())
        .output()
        .expect("qatc runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_check_prints_the_table_and_exits_2_on_bad_input() {
    let (code, stdout, _) = qatc(&["check", "specs/lenet_mnist.qspec"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("[16, 24, 24]") && stdout.contains("1.12M"),
        "{stdout}"
    );

    let (code, _, stderr) = qatc(&["check", "tests/ui/unknown_layer_type.qspec"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("did you mean `Linear`?"), "{stderr}");

    let (code, _, stderr) = qatc(&["check", "no/such/file.qspec"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read spec `no/such/file.qspec`"),
        "{stderr}"
    );

    let (code, _, stderr) = qatc(&["check", "data/mnist10k/t10k-labels-idx1-ubyte.gz"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not UTF-8"), "{stderr}");
}

#[test]
fn cli_fmt_round_trips_through_yaml_files() {
    let dir = std::env::temp_dir().join(format!("qatc-fmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (code, yaml, _) = qatc(&["fmt", "specs/lenet_custom.qspec", "--yaml"]);
    assert_eq!(code, 0);
    let yaml_path = dir.join("lenet_custom.yaml");
    std::fs::write(&yaml_path, &yaml).unwrap();
    let (code, from_yaml, stderr) = qatc(&["fmt", yaml_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (_, from_qspec, _) = qatc(&["fmt", "specs/lenet_custom.qspec"]);
    // The same text, but for the .qspec's comments (the YAML form has none).
    let uncommented: String = from_qspec
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(from_yaml, uncommented);
    let (code, table, _) = qatc(&["check", yaml_path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(table.contains("wide"), "{table}");
    std::fs::remove_dir_all(&dir).ok();
}
