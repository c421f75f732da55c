//! The commands as library calls: typed reports, no CLI output parsed.

mod common;

use qatc::pipeline::{self, CompileOptions, Emit, SpecFile, Stage, TrainOptions, TrainRun};

/// A short run of the MLP (2048 training images, one epoch) into a fresh folder.
fn short_run(tag: &str) -> pipeline::TrainReport {
    let spec = SpecFile::load(&common::root().join("specs/mnist_mlp.qspec")).unwrap();
    let out = std::env::temp_dir().join(format!("qatc-pipeline-{tag}-{}", std::process::id()));
    let options = TrainOptions {
        out: Some(out),
        epochs: Some(1),
    };
    let mut run = TrainRun::prepare(spec, &options).unwrap();
    let size = run.data.train.image_size();
    run.data.train.images.truncate(2048 * size);
    run.data.train.labels.truncate(2048);
    run.run(&mut qatc::train::Quiet).unwrap()
}

#[test]
fn train_evaluate_compare_and_compile_agree() {
    let report = short_run("all");
    let int8 = report.int8.as_ref().expect("the MLP is quantized");
    assert_eq!(report.epochs, 1);
    assert_eq!(report.fake_quant_acc, Some(report.test_acc));
    assert!(int8.int8_acc > 30.0, "better than chance: {report:?}");
    assert_eq!(int8.int8_acc, int8.jit_int8_acc, "the JIT is bit-exact");
    for file in [
        "checkpoint.safetensors",
        "metrics.csv",
        "model.qmodel",
        "summary.json",
    ] {
        assert!(report.files.iter().any(|f| f == file), "{:?}", report.files);
        assert!(report.dir.join(file).exists(), "{file}");
    }
    // summary.json is the report.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["int8_acc"].as_f64(), Some(int8.int8_acc));
    assert_eq!(summary["model"], "mlp");

    // Evaluating the written model gives the accuracy training reported.
    let model = report.dir.join("model.qmodel");
    let eval =
        pipeline::evaluate(&model, Some(&common::root().join("specs/mnist_mlp.qspec"))).unwrap();
    assert_eq!(eval.test_images, report.test_images);
    assert!((eval.accuracy - int8.int8_acc).abs() < 0.006, "{eval:?}");
    let total: usize = eval.confusion.iter().flatten().sum();
    assert_eq!(total, eval.test_images);

    // Compare (tests run in the project root, where the stored spec's data path leads): the
    // int8 graph follows the fake-quant network, exactly at the input's quantization.
    let cmp = pipeline::compare(&model, None, 16).unwrap();
    assert_eq!(cmp.images, 16);
    assert_eq!(cmp.layers[0].op, "quantize");
    assert!(cmp.layers.iter().all(|l| l.sqnr_db > 10.0), "{cmp:?}");

    // Compile: the IR text, and an object with its entry points.
    let ir = pipeline::compile(
        &model,
        &CompileOptions {
            emit: Emit::Ir,
            target: None,
            features: Vec::new(),
        },
    )
    .unwrap();
    assert!(String::from_utf8(ir.bytes)
        .unwrap()
        .starts_with("graph mlp"));
    let obj = pipeline::compile(
        &model,
        &CompileOptions {
            emit: Emit::Obj,
            target: Some("aarch64".into()),
            features: vec!["dotprod".into()],
        },
    )
    .unwrap();
    assert_eq!(&obj.bytes[..4], b"\x7fELF");
    assert_eq!(obj.entry_points[0], "qatc_mlp_run");
    let bad = pipeline::compile(
        &model,
        &CompileOptions {
            emit: Emit::Obj,
            target: Some("riscv".into()),
            features: Vec::new(),
        },
    )
    .unwrap_err();
    assert_eq!(bad.stage, Stage::Compile);
    assert!(bad.message.contains("unknown target `riscv`"), "{bad}");
    std::fs::remove_dir_all(&report.dir).ok();
}

#[test]
fn failures_name_their_stage() {
    let missing = pipeline::evaluate(std::path::Path::new("no/such/model.qmodel"), None);
    let e = missing.unwrap_err();
    assert_eq!(e.stage, Stage::Read);
    assert!(
        e.render()
            .starts_with("error: cannot read `no/such/model.qmodel`"),
        "{e}"
    );

    let dir = std::env::temp_dir().join(format!("qatc-pipeline-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("bad.qspec");
    std::fs::write(&spec, "model m { input: [4] fc: Linaer(out: 2) }").unwrap();
    let e = SpecFile::load(&spec).err().unwrap();
    assert_eq!(e.stage, Stage::Spec);
    assert!(
        e.render().contains("did you mean `Linear`?"),
        "{}",
        e.render()
    );

    std::fs::write(
        &spec,
        "model m { input: [1, 28, 28] f: Flatten l: Linear(out: 10) }\ntrain { data: mnist(\"nowhere\") }\n",
    )
    .unwrap();
    let spec = SpecFile::load(&spec).unwrap();
    let e = TrainRun::prepare(spec, &TrainOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.stage, Stage::Data);
    assert!(e.message.contains("MNIST file missing"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
