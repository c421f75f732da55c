//! A new user's first hour (issue #16): the command line run as a user runs it, from a fresh
//! clone and from other working directories.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `qatc` in `dir`: (exit code, stdout, stderr).
fn qatc_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("qatc runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh folder under the system's temporary directory.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qatc-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn shipped_specs_train_and_evaluate_from_any_working_directory() {
    // Items 4 and 5: a shipped spec trains from /tmp, and its model evaluates from elsewhere,
    // on its own data, on a folder holding only the test files, or on a spec.
    let work = scratch("anywhere");
    let spec = common::root().join("specs/mnist_mlp.qspec");
    let run = work.join("run");
    let (code, stdout, stderr) = qatc_in(
        &work,
        &["train", path(&spec), "--epochs", "1", "--out", path(&run)],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let model = run.join("model.qmodel");

    let elsewhere = scratch("elsewhere");
    let (code, stdout, stderr) = qatc_in(&elsewhere, &["eval", path(&model)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2000 test images"), "{stdout}");

    // Only the two test files: evaluation does not need the training ones.
    let tests_only = elsewhere.join("digits");
    std::fs::create_dir_all(&tests_only).unwrap();
    for f in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::copy(
            common::root().join("data/mnist10k").join(f),
            tests_only.join(f),
        )
        .unwrap();
    }
    let (code, stdout, stderr) = qatc_in(&elsewhere, &["eval", path(&model), "--data", "digits"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2000 test images"), "{stdout}");
    let (code, _, stderr) = qatc_in(&elsewhere, &["eval", path(&model), "--data", path(&spec)]);
    assert_eq!(code, 0, "{stderr}");
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[test]
fn missing_data_names_every_path_tried() {
    let work = scratch("missing");
    let text = std::fs::read_to_string(common::root().join("specs/mnist_mlp.qspec"))
        .unwrap()
        .replace("../data/mnist10k", "digits");
    std::fs::create_dir_all(work.join("specs")).unwrap();
    std::fs::write(work.join("specs/m.qspec"), text).unwrap();
    let (code, _, stderr) = qatc_in(&work, &["train", "specs/m.qspec", "--epochs", "1"]);
    assert_eq!(code, 2, "{stderr}");
    let beside = Path::new("specs")
        .join("digits")
        .join("train-images-idx3-ubyte");
    let cwd = work
        .canonicalize()
        .unwrap()
        .join("digits/train-images-idx3-ubyte.gz");
    assert!(
        stderr.contains(path(&beside)) && stderr.contains(path(&cwd)),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn negative_and_zero_counts_get_a_real_message() {
    // Item 13: clap would advise `-- -1`.
    let root = common::root();
    for args in [
        ["train", "specs/lenet_mnist.qspec", "--epochs", "-1"],
        ["train", "specs/lenet_mnist.qspec", "--epochs", "0"],
        ["compare", "runs/x/model.qmodel", "--images", "0"],
    ] {
        let (code, _, stderr) = qatc_in(&root, &args);
        assert_eq!(code, 2, "{args:?}");
        assert!(
            stderr.contains("it must be at least 1") && !stderr.contains("-- -1"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn the_readme_states_the_rust_version_cargo_requires() {
    // Item 25: the README said 1.87 while cranelift-codegen 0.135 needs 1.95.
    let toml = std::fs::read_to_string(common::root().join("Cargo.toml")).unwrap();
    let version = toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("Cargo.toml sets rust-version");
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("Rust {version} or newer")),
        "README does not say Rust {version}"
    );
    assert!(readme.contains("[profile.dev.package.\"*\"]\nopt-level = 3"));
}

#[test]
fn an_unwritable_output_folder_fails_before_the_first_epoch() {
    // Item 1: `--out` naming an existing file trained to the end, then failed.
    let work = scratch("outfile");
    let file = work.join("afile");
    std::fs::write(&file, b"x").unwrap();
    let spec = common::root().join("specs/lenet_mnist.qspec");
    let (code, stdout, stderr) = qatc_in(&work, &["train", path(&spec), "--out", path(&file)]);
    assert_eq!(code, 2);
    assert!(stderr.contains("is a file"), "{stderr}");
    assert!(!stdout.contains("epoch  1"), "it trained first: {stdout}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn two_runs_with_the_same_seed_write_the_same_bytes() {
    // Item 23: the safetensors metadata was written in hash order (and speeds were in the
    // files).
    let spec = common::root().join("specs/mnist_mlp.qspec");
    let runs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|tag| {
            let work = scratch(&format!("repro-{tag}"));
            let (code, _, stderr) = qatc_in(
                &work,
                &["train", path(&spec), "--epochs", "1", "--out", "run"],
            );
            assert_eq!(code, 0, "{stderr}");
            work
        })
        .collect();
    let mut names: Vec<String> = std::fs::read_dir(runs[0].join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    for name in &names {
        let a = std::fs::read(runs[0].join("run").join(name)).unwrap();
        let b = std::fs::read(runs[1].join("run").join(name)).unwrap();
        assert!(a == b, "{name} differs between two runs with the same seed");
    }
    for dir in runs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn internal_names_do_not_leak() {
    // Item 19: `unknown X86_64 feature`, `act=None`, `1 test images`, `eps: 0.00000001`.
    let work = scratch("names");
    let spec = common::root().join("specs/lenet_custom.qspec");
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "../data/mnist10k",
        path(&common::root().join("data/mnist10k")),
    );
    let adam = work.join("adam.qspec");
    let with_adam = with_optimizer(&text, "adam(lr: 0.001)");
    std::fs::write(&adam, with_adam).unwrap();
    let (code, table, stderr) = qatc_in(&work, &["check", path(&adam)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        table.contains("eps: 1e-8") && !table.contains("0.00000001"),
        "{table}"
    );

    // One epoch of lenet_custom is its float pretraining: refused before it runs.
    let (code, _, stderr) = qatc_in(&work, &["train", path(&spec), "--epochs", "1"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("1 epoch would all be float pretraining"),
        "{stderr}"
    );
    let (code, stdout, stderr) = qatc_in(
        &work,
        &["train", path(&spec), "--epochs", "2", "--out", "run"],
    );
    assert_eq!(code, 0, "{stderr}");
    // Item 21: each accuracy says after how much training it was measured.
    assert!(
        stdout.contains("float, after 1 epoch of pretraining")
            && stdout.contains("fake quant, after 2 epochs (1 with fake quant)"),
        "{stdout}"
    );
    let model = work.join("run/model.qmodel");
    // lenet_custom keeps fc3 float.
    let (_, ir, _) = qatc_in(&work, &["compile", path(&model), "--emit", "ir"]);
    assert!(ir.contains("= linear(") && !ir.contains("act=None"), "{ir}");
    let (_, _, stderr) = qatc_in(
        &work,
        &[
            "compile",
            path(&model),
            "--emit",
            "clif",
            "--target",
            "x86_64",
            "--features",
            "sse9",
        ],
    );
    assert!(stderr.contains("unknown x86_64 feature `sse9`"), "{stderr}");
    let (code, stdout, stderr) = qatc_in(&work, &["compare", path(&model), "--images", "1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("on 1 test image ("), "{stdout}");
    let _ = std::fs::remove_dir_all(&work);
}

/// `text` with its `optimizer:` line replaced.
fn with_optimizer(text: &str, optimizer: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("optimizer:") {
                format!("    optimizer: {optimizer}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn train_speaks_json_quietly_and_takes_overrides() {
    // Items 18 and 20: `--json` (one object on stdout), `--quiet`, `--seed`, `--lr`, `--data`;
    // epoch lines fit 80 columns.
    let work = scratch("json");
    // The spec's data path is wrong; --data gives the folder.
    let text = std::fs::read_to_string(common::root().join("specs/mnist_mlp.qspec"))
        .unwrap()
        .replace("../data/mnist10k", "nowhere");
    std::fs::write(work.join("m.qspec"), text).unwrap();
    let digits = common::root().join("data/mnist10k");
    let (code, stdout, stderr) = qatc_in(
        &work,
        &[
            "train",
            "m.qspec",
            "--epochs",
            "1",
            "--seed",
            "3",
            "--lr",
            "0.05",
            "--data",
            path(&digits),
            "--out",
            "run",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout).expect("stdout is one JSON object");
    assert_eq!(report["epochs"], 1);
    assert!(report["int8_acc"].as_f64().is_some() && report["jit_b1_us"].as_f64().is_some());
    assert!(
        stderr.contains("seed 3") && stderr.contains("lr: 0.05"),
        "{stderr}"
    );

    let (code, stdout, stderr) = qatc_in(
        &work,
        &[
            "train",
            "m.qspec",
            "--epochs",
            "2",
            "--data",
            path(&digits),
            "--out",
            "run",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    // Everything after the model table: the epoch lines and the results.
    let after_table = stdout.split_once("\ndata: ").expect("a data line").1;
    for line in after_table.lines().skip(1) {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line}",
            line.chars().count()
        );
    }
    let epochs: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("1 ") || l.starts_with("2 "))
        .collect();
    assert_eq!(epochs.len(), 2, "{stdout}");

    let (code, stdout, _) = qatc_in(
        &work,
        &[
            "train",
            "m.qspec",
            "--epochs",
            "1",
            "--data",
            path(&digits),
            "--out",
            "run",
            "-q",
        ],
    );
    assert_eq!(code, 0);
    assert!(
        stdout.contains("test accuracy")
            && !stdout.contains("layer")
            && !stdout.contains("img/s  "),
        "{stdout}"
    );

    let (code, stdout, _) = qatc_in(&work, &["check", "m.qspec", "--json"]);
    assert_eq!(code, 0);
    let table: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(table["layers"][1]["name"], "fc1");
    let (code, stdout, _) = qatc_in(
        &work,
        &[
            "eval",
            "run/model.qmodel",
            "--json",
            "--data",
            path(&digits),
        ],
    );
    assert_eq!(code, 0);
    let eval: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(eval["test_images"], 2000);
    let _ = std::fs::remove_dir_all(&work);
}

/// Items 6, 7 and 8: rustc-style warnings (exit 0; `--deny-warnings` makes them fail), and the
/// check table shows what fuses into what.
#[test]
fn warnings_name_the_mistakes_a_pytorch_user_makes() {
    let work = scratch("warnings");
    let spec = work.join("w.qspec");
    std::fs::write(
        &spec,
        "model m {
    input: [1, 28, 28]
    conv1: Conv2d(1, 16, 3)
    bn1: BatchNorm2d
    relu1: ReLU
    flat: Flatten
    fc: Linear(out: 10)
}
quantize {
    backend: fbgemm
    default: qat(qnnpack)
    qconfig spare { activation: fake_quant(observer: minmax) }
    bn1: none
    fc: ptq(fbgemm)
}
train { data: mnist(\"digits\") }
",
    )
    .unwrap();
    let (code, table, stderr) = qatc_in(&work, &["check", "w.qspec"]);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        // 6: the tutorial's PTQ preset under QAT.
        "warning: `ptq(fbgemm)` is a post-training preset",
        "write `qat(fbgemm)`",
        // 7: another backend's preset, an unused qconfig, an override fusion ignores.
        "warning: `qat(qnnpack)` is the qnnpack preset, but the backend is fbgemm",
        "warning: qconfig `spare` is not used",
        "warning: `bn1: none` has no effect: `bn1` fuses into `conv1`",
        // 8: PyTorch's positional Conv2d.
        "this reads as `Conv2d(out: 1, kernel: 16, stride: 3)`",
        "`Conv2d(out: 16, kernel: 3)`",
        // Spans, as rustc shows them.
        "--> w.qspec:13:5",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in\n{stderr}"
        );
    }
    assert!(table.contains("fused into conv1"), "{table}");
    let (code, _, stderr) = qatc_in(&work, &["check", "w.qspec", "--deny-warnings"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--deny-warnings"), "{stderr}");

    // PyTorch's Linear(in, out) is an error that says what to write.
    std::fs::write(&spec, "model m { input: [784] fc: Linear(784, 10) }\n").unwrap();
    let (code, _, stderr) = qatc_in(&work, &["check", "w.qspec"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("write `Linear(out: 10)`"), "{stderr}");
    let _ = std::fs::remove_dir_all(&work);
}

/// Item 11: a duplicate shows where the first one is, and diagnostics are coloured when asked
/// (a terminal, or `CLICOLOR_FORCE`), never with `NO_COLOR`.
#[test]
fn duplicates_point_at_the_first_and_colour_follows_the_terminal() {
    let work = scratch("colour");
    std::fs::write(
        work.join("d.qspec"),
        "model m {\n    input: [4]\n    fc: Linear(out: 2)\n    fc: Linear(out: 2)\n}\n",
    )
    .unwrap();
    let (code, _, plain) = qatc_in(&work, &["check", "d.qspec"]);
    assert_eq!(code, 2);
    assert!(
        plain.contains("first defined here") && plain.contains("3 |") && !plain.contains('\x1b'),
        "{plain}"
    );
    let coloured = Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(["check", "d.qspec"])
        .current_dir(&work)
        .env_remove("NO_COLOR")
        .env("CLICOLOR_FORCE", "1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&coloured.stderr).contains("\x1b["));
    let _ = std::fs::remove_dir_all(&work);
}

/// Item 22: `qatc fmt` keeps comments, has `--check` and `--write`, and the shipped specs are
/// in its layout.
#[test]
fn fmt_keeps_comments_and_the_shipped_specs_are_fmt_clean() {
    for spec in common::spec_files() {
        let (code, _, stderr) = qatc_in(&common::root(), &["fmt", "--check", path(&spec)]);
        assert_eq!(code, 0, "{}: {stderr}", spec.display());
    }
    let work = scratch("fmt");
    let messy = "# The header.\nmodel m {\n  input: [4]   # one sample\n\n  # the only layer\n  fc: Linear(10)\n}\ntrain {\n    seed: 3\n    epochs: 2 # short\n    # before the brace\n}\n";
    std::fs::write(work.join("m.qspec"), messy).unwrap();
    let (code, _, stderr) = qatc_in(&work, &["fmt", "--check", "m.qspec"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("m.qspec is not in canonical form"),
        "{stderr}"
    );
    let (code, printed, _) = qatc_in(&work, &["fmt", "m.qspec"]);
    assert_eq!(code, 0);
    for comment in [
        "# The header.",
        "# one sample",
        "# the only layer",
        "# short",
        "# before the brace",
    ] {
        assert!(printed.contains(comment), "lost `{comment}`:\n{printed}");
    }
    assert!(printed.contains("    epochs: 2  # short\n"), "{printed}");
    let (code, _, _) = qatc_in(&work, &["fmt", "--write", "m.qspec"]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(work.join("m.qspec")).unwrap(),
        printed
    );
    let (code, _, _) = qatc_in(&work, &["fmt", "--check", "m.qspec"]);
    assert_eq!(code, 0, "fmt is idempotent");
    let _ = std::fs::remove_dir_all(&work);
}

/// Item 2 from the command line: Ctrl-C (SIGINT) after the first epoch stops the run with its
/// state saved and says how to resume; `--resume` finishes it.
#[test]
fn ctrl_c_saves_the_run_and_resume_finishes_it() {
    let work = scratch("sigint");
    let spec = common::root().join("specs/lenet_custom.qspec");
    let child = Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(["train", path(&spec), "--out", "run", "-q"])
        .current_dir(&work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first epoch's files, then interrupt.
    let metrics = work.join("run/metrics.csv");
    let started = std::time::Instant::now();
    while !metrics.exists() {
        assert!(started.elapsed().as_secs() < 300, "no epoch finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The shell's own `kill` (no procps needed).
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--resume run"), "{stderr}");
    assert!(work.join("run/train_state.safetensors").exists());
    let (code, stdout, stderr) = qatc_in(&work, &["train", path(&spec), "--resume", "run", "-q"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("fake quant, after 6 epochs"), "{stdout}");
    let _ = std::fs::remove_dir_all(&work);
}

/// Item 21: `train { validation: F }` measures the epochs on held-out training data and keeps
/// the test set for the end.
#[test]
fn a_validation_split_keeps_the_test_set_for_the_end() {
    let work = scratch("validation");
    let text = std::fs::read_to_string(common::root().join("specs/mnist_mlp.qspec"))
        .unwrap()
        .replace(
            "../data/mnist10k",
            path(&common::root().join("data/mnist10k")),
        )
        .replace("    seed: 0\n", "    seed: 0\n    validation: 0.1\n");
    std::fs::write(work.join("v.qspec"), text).unwrap();
    let (code, stdout, stderr) = qatc_in(
        &work,
        &["train", "v.qspec", "--epochs", "1", "--out", "run"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("data: 7200 training images, 800 validation images and 2000 test images")
            && stdout.contains("val acc")
            && stdout.contains("test accuracy on 2000 images"),
        "{stdout}"
    );
    let metrics = std::fs::read_to_string(work.join("run/metrics.csv")).unwrap();
    assert!(
        metrics.starts_with("epoch,phase,lr,train_loss,train_acc,val_acc\n"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// Item 4 for `bench-train`: its default specs are found from any working directory.
#[test]
fn bench_train_finds_its_default_specs_from_anywhere() {
    let work = scratch("bench-train");
    let (code, stdout, stderr) = qatc_in(&work, &["bench-train", "--epochs", "1", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let _ = std::fs::remove_dir_all(&work);
}
