//! UI tests: every file in tests/ui/ is a malformed spec; its rendered errors are snapshotted.
//! Each must be rejected (an error, not just warnings) without a panic.

mod common;

#[test]
fn malformed_specs_are_rejected_with_clear_errors() {
    let mut count = 0;
    insta::glob!("ui/*.qspec", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let name = format!("tests/ui/{}", path.file_name().unwrap().to_string_lossy());
        let (result, source) = qatc::front_end(&name, &text);
        let diags = match result {
            Ok(_) => panic!("{name} was accepted but is malformed"),
            Err(diags) => diags,
        };
        assert!(
            diags.iter().any(|d| d.is_error()),
            "{name}: no error among {diags:?}"
        );
        insta::assert_snapshot!(qatc::diag::render(&diags, &source.name, &source.text));
        count += 1;
    });
    assert!(count >= 25, "at least 25 UI cases, found {count}");
}
