//! The commands as library calls: typed reports, no CLI output parsed.

mod common;

use qatc::pipeline::{self, CompileOptions, Emit, Engine, SpecFile, Stage, TrainOptions, TrainRun};

/// A short run of the MLP (2048 training images, one epoch) into a fresh folder.
fn short_run(tag: &str) -> pipeline::TrainReport {
    let spec = SpecFile::load(&common::root().join("specs/mnist_mlp.qspec")).unwrap();
    let out = std::env::temp_dir().join(format!("qatc-pipeline-{tag}-{}", std::process::id()));
    let options = TrainOptions {
        out: Some(out),
        epochs: Some(1),
        ..TrainOptions::default()
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

    // Bench: the roofline's peak, every batch size, the interpreter when asked, every layer.
    let bench = pipeline::bench(
        &model,
        &pipeline::BenchOptions {
            batches: vec![1, 4],
            threads: 1,
            dot: None,
            narrow: false,
            reference: true,
            layers: true,
        },
    )
    .unwrap();
    assert!(bench.peak_gmacs > 0.0, "{bench:?}");
    assert_eq!(bench.macs, 784 * 256 + 256 * 10);
    assert_eq!(bench.rows.len(), 2);
    assert!(bench
        .rows
        .iter()
        .all(|r| r.jit > 0.0 && r.gmacs > 0.0 && r.reference.is_some()));
    let names: Vec<&str> = bench.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["input.quant", "flat", "fc1", "fc2", "fc2.dequant"]);
    assert_eq!(
        bench.layers.iter().map(|l| l.macs).sum::<usize>(),
        bench.macs
    );
    assert!(
        bench.layers.iter().all(|l| l.us > 0.0) && bench.layers[2].gmacs > 0.0,
        "{bench:?}"
    );
    let json = bench.to_json();
    for key in [
        "peak_gmacs",
        "jit_b1_gmacs",
        "jit_b4_gmacs_per_core",
        "ref_b1_us",
        "layers",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }

    // Run, on the IDX test images: the JIT and the interpreter give the same bits, and the
    // predictions score what evaluation measured.
    let images = common::root().join("data/mnist10k/t10k-images-idx3-ubyte.gz");
    let jit = pipeline::run(&model, &images, Engine::Jit).unwrap();
    let interp = pipeline::run(&model, &images, Engine::Interpreter).unwrap();
    assert_eq!((jit.samples, jit.output_size), (report.test_images, 10));
    assert_eq!(bits(&jit.outputs), bits(&interp.outputs));
    let labels =
        qatc::data::read_file(&common::root().join("data/mnist10k/t10k-labels-idx1-ubyte.gz"))
            .unwrap();
    let correct = jit
        .predictions()
        .iter()
        .zip(&labels[8..])
        .filter(|(p, &l)| p.class == l as usize)
        .count();
    let acc = 100.0 * correct as f64 / jit.samples as f64;
    assert!(
        (acc - int8.int8_acc).abs() < 0.006,
        "{acc} vs {}",
        int8.int8_acc
    );

    // The same images as a .npy of normalized samples give the same outputs, and the outputs
    // written as .npy read back as they are.
    let shape = [1, 28, 28];
    let norm = qatc::data::Normalization {
        mean: vec![0.5],
        std: vec![0.5],
    };
    let (x, n) = qatc::data::read_inputs(&images, &shape, Some(&norm)).unwrap();
    let npy = report.dir.join("x.npy");
    std::fs::write(&npy, qatc::data::npy_f32(&x, &[n, 1, 28, 28]).unwrap()).unwrap();
    let from_npy = pipeline::run(&model, &npy, Engine::Jit).unwrap();
    assert_eq!(bits(&from_npy.outputs), bits(&jit.outputs));
    let out = report.dir.join("y.npy");
    std::fs::write(&out, jit.to_npy().unwrap()).unwrap();
    let (y, rows) = qatc::data::read_inputs(&out, &[10], None).unwrap();
    assert_eq!((rows, bits(&y)), (jit.samples, bits(&jit.outputs)));
    std::fs::remove_dir_all(&report.dir).ok();
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A `.npy` file with any header, as numpy writes them (version 1.0).
fn npy(descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(payload);
    out
}

/// Every malformed input file is an error naming the file and what is wrong.
#[test]
fn run_inputs_are_checked() {
    let dir = std::env::temp_dir().join(format!("qatc-run-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shape = [1, 2, 2];
    let norm = qatc::data::Normalization {
        mean: vec![0.0],
        std: vec![1.0],
    };
    let four = [0u8; 16];
    let good = npy("<f4", false, "(1, 1, 2, 2)", &four);
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
    idx.extend([0, 255, 51, 102, 0, 0, 0, 255]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "f64.npy",
            npy("<f8", false, "(1, 4)", &[0; 32]),
            "holds <f8 values",
        ),
        (
            "big-endian.npy",
            npy(">f4", false, "(1, 4)", &four),
            "holds >f4 values",
        ),
        (
            "fortran.npy",
            npy("<f4", true, "(1, 4)", &four),
            "Fortran order",
        ),
        (
            "shape.npy",
            npy("<f4", false, "(2, 2)", &four),
            "has shape [2, 2]",
        ),
        (
            "empty.npy",
            npy("<f4", false, "(0, 4)", &[]),
            "holds no samples",
        ),
        (
            "huge.npy",
            npy("<f4", false, "(4611686018427387904, 4)", &four),
            "truncated",
        ),
        (
            "overflow.npy",
            npy("<f4", false, "(1, 4294967296, 4294967296)", &four),
            "has shape",
        ),
        (
            "truncated.npy",
            npy("<f4", false, "(2, 4)", &four),
            "truncated",
        ),
        ("header.npy", good[..20].to_vec(), "not a valid .npy file"),
        ("text.txt", b"0.5, 0.25".to_vec(), "neither a .npy file"),
        (
            "idx-size.idx",
            [&idx[..8], &[0, 0, 0, 3, 0, 0, 0, 3]].concat(),
            "truncated",
        ),
    ];
    for (name, bytes, want) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = qatc::data::read_inputs(&path, &shape, Some(&norm)).unwrap_err();
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    let path = dir.join("good.npy");
    std::fs::write(&path, good).unwrap();
    assert_eq!(
        qatc::data::read_inputs(&path, &shape, None).unwrap(),
        (vec![0.0; 4], 1)
    );
    // Images: 2x2 pixels, normalized; a model of another size is refused.
    let path = dir.join("images.idx");
    std::fs::write(&path, &idx).unwrap();
    let (x, n) = qatc::data::read_inputs(&path, &shape, Some(&norm)).unwrap();
    let want = [0.0, 1.0, 0.2, 0.4, 0.0, 0.0, 0.0, 1.0];
    assert_eq!(n, 2);
    assert!(
        x.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{x:?}"
    );
    let e = qatc::data::read_inputs(&path, &[1, 3, 3], Some(&norm)).unwrap_err();
    assert!(
        e.contains("holds 1x2x2 images; the model takes [1, 3, 3]"),
        "{e}"
    );
    let e = qatc::data::read_inputs(&path, &shape, None).unwrap_err();
    assert!(e.contains("carries none"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
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
    assert!(
        e.message
            .contains("MNIST file `train-images-idx3-ubyte` missing"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The tutorial's CIFAR-10 program (`specs/cifar10_cnn.qspec`) for one epoch on synthetic
/// batches written in the real file format (`data_batch_1.bin` .. `data_batch_5.bin`,
/// `test_batch.bin`: records of a label byte and 3 x 32 x 32 pixel bytes). The classes differ in
/// colour and in which quadrant is bright, so one epoch learns them; the real data set cannot be
/// shipped (README, Training).
#[test]
fn cifar10_program_trains_on_batches_in_the_real_format() {
    let dir = std::env::temp_dir().join(format!("qatc-cifar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = qatc::train::rng::Rng::new(10);
    let mut batch = |records: usize| -> Vec<u8> {
        let mut bytes = Vec::with_capacity(records * qatc::data::CIFAR_RECORD);
        for r in 0..records {
            let label = (r % 10) as u8;
            bytes.push(label);
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let quadrant = (y / 16) * 2 + x / 16;
                        let bright = quadrant == label as usize % 4;
                        let tint = if c == label as usize % 3 { 60 } else { 0 };
                        let base = if bright { 170 } else { 50 } + tint;
                        bytes.push((base + rng.below(40)) as u8);
                    }
                }
            }
        }
        bytes
    };
    for i in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), batch(2000)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), batch(300)).unwrap();
    let path = common::root().join("specs/cifar10_cnn.qspec");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "../data/cifar-10-batches-bin",
        dir.to_str().expect("a UTF-8 temporary path"),
    );
    let spec = SpecFile::from_text(&path, "cifar10_cnn.qspec".into(), text).unwrap();
    let options = TrainOptions {
        out: Some(dir.join("run")),
        epochs: Some(1),
        ..TrainOptions::default()
    };
    let run = TrainRun::prepare(spec, &options).unwrap();
    assert_eq!(run.data.train.len(), 10000);
    assert_eq!(run.data.test.len(), 300);
    let report = run.run(&mut qatc::train::Quiet).unwrap();
    let int8 = report
        .int8
        .as_ref()
        .expect("the CIFAR-10 model is quantized");
    assert!(report.test_acc > 40.0, "learns the classes: {report:?}");
    assert!(
        (int8.int8_acc - report.test_acc).abs() <= 3.0,
        "int8 follows fake quant: {report:?}"
    );
    assert_eq!(int8.int8_acc, int8.jit_int8_acc, "the JIT is bit-exact");
    std::fs::remove_dir_all(dir).ok();
}

/// `qatc train --epochs N` prints the model's table with N epochs, not the spec's count.
#[test]
fn the_table_shows_the_epochs_that_will_run() {
    let spec = SpecFile::load(&common::root().join("specs/mnist_mlp.qspec")).unwrap();
    let out = std::env::temp_dir().join(format!("qatc-epochs-{}", std::process::id()));
    let options = TrainOptions {
        out: Some(out.clone()),
        epochs: Some(2),
        ..TrainOptions::default()
    };
    let run = TrainRun::prepare(spec, &options).unwrap();
    let table = qatc::check::model_table(&run.spec.model);
    assert!(table.contains("\ntrain: 2 epochs, batch 64"), "{table}");
    std::fs::remove_dir_all(out).ok();
}

/// Sets the stop flag when epoch `after` ends, as Ctrl-C would.
struct StopAfter<'a> {
    after: usize,
    stop: &'a std::sync::atomic::AtomicBool,
}

impl qatc::train::Progress for StopAfter<'_> {
    fn epoch_end(&mut self, stats: &qatc::train::EpochStats) {
        if stats.epoch == self.after {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// #16 item 2: a run stopped during an epoch keeps the previous epoch's files, and resuming it
/// gives the same bytes as a run never stopped (BatchNorm, float pretraining then QAT, a cosine
/// schedule, momentum).
#[test]
fn an_interrupted_run_resumes_to_the_same_bytes() {
    let root = std::env::temp_dir().join(format!("qatc-resume-{}", std::process::id()));
    let spec_path = common::root().join("specs/lenet_custom.qspec");
    let prepare = |options: TrainOptions| {
        let spec = SpecFile::load(&spec_path).unwrap();
        let mut run = TrainRun::prepare(spec, &options).unwrap();
        let size = run.data.train.image_size();
        run.data.train.images.truncate(600 * size);
        run.data.train.labels.truncate(600);
        run
    };
    let options = |dir: &str| TrainOptions {
        out: Some(root.join(dir)),
        epochs: Some(3),
        ..TrainOptions::default()
    };
    prepare(options("whole"))
        .run(&mut qatc::train::Quiet)
        .unwrap();

    let stop = std::sync::atomic::AtomicBool::new(false);
    let err = prepare(options("stopped"))
        .run_until(
            &mut StopAfter {
                after: 2,
                stop: &stop,
            },
            &stop,
        )
        .expect_err("the run stops");
    assert!(
        err.message.contains("interrupted during epoch 3") && err.message.contains("--resume"),
        "{err}"
    );
    let metrics = std::fs::read_to_string(root.join("stopped/metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "two epochs saved: {metrics}");

    prepare(TrainOptions {
        resume: Some(root.join("stopped")),
        epochs: Some(3),
        ..TrainOptions::default()
    })
    .run(&mut qatc::train::Quiet)
    .unwrap();
    for name in [
        "checkpoint.safetensors",
        "train_state.safetensors",
        "metrics.csv",
        "model.qmodel",
    ] {
        let a = std::fs::read(root.join("whole").join(name)).unwrap();
        let b = std::fs::read(root.join("stopped").join(name)).unwrap();
        assert!(a == b, "{name} differs after resuming");
    }
    let summary = |dir: &str| {
        let mut v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(dir).join("summary.json")).unwrap(),
        )
        .unwrap();
        v["dir"] = serde_json::Value::Null;
        v
    };
    assert_eq!(summary("whole"), summary("stopped"));
    std::fs::remove_dir_all(root).ok();
}
