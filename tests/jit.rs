//! The JIT against the reference interpreter: every output bit must match, on every spec, on
//! each op alone with random shapes and parameters, and on random small networks.

mod common;

use common::random::{random_op_graph, random_spec, u8_type};
use common::{node, runnable_forms};
use proptest::prelude::*;
use qatc::int8::{QGraph, QOp, QParamsDef, QWeights, TensorType};
use qatc::ir::ConvGeom;
use qatc::jit::DotProduct;
use qatc::train::{self, rng::Rng};
use qatc::{interp, Model};

/// Inputs in [-2, 2], with some exact zeros and some values far outside any observed range.
fn inputs(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len)
        .map(|_| match rng.below(20) {
            0 => 0.0,
            1 => rng.uniform(-1e4, 1e4),
            _ => rng.uniform(-2.0, 2.0),
        })
        .collect()
}

/// Every GEMM form in Cranelift's 128-bit kernels, and VNNI with the 256-bit kernels where this
/// CPU runs them (`jit::wide`).
fn configurations() -> Vec<(DotProduct, bool)> {
    let mut all: Vec<_> = runnable_forms().into_iter().map(|d| (d, true)).collect();
    if qatc::jit::wide::available() {
        all.push((DotProduct::Vnni, false));
    }
    all
}

/// Runs the graph compiled and interpreted on batches of several sizes (a partial tile, whole
/// tiles and more than one thread's share) and requires identical bits.
/// Every GEMM formulation is checked (each is exact on any CPU), whichever this one prefers.
fn assert_bit_exact(graph: &QGraph, seed: u64) {
    let model = Model::from_graph(graph.clone()).expect("the graph verifies");
    for (dot, narrow) in configurations() {
        let options = qatc::jit::Options {
            dot_product: Some(dot),
            listing: false,
            u8_entry: true,
            narrow,
        };
        let (compiled, _) = model.compile_with(&options).expect("the graph compiles");
        assert_same(graph, &compiled, seed);
    }
}

/// The u8 entry against the interpreter's codes: the input's quantize node and the output's
/// codes (before a final dequantize), sample by sample.
fn assert_same_u8(graph: &QGraph, compiled: &qatc::Compiled, x: &[f32]) {
    let Some(_) = compiled.u8_qparams() else {
        assert!(compiled.run_u8(&vec![0; compiled.input_size()]).is_err());
        return;
    };
    let (codes_in, want) = common::u8_entry_codes(graph, x);
    assert_eq!(
        compiled.run_u8(&codes_in).unwrap(),
        want,
        "{}: u8 entry",
        graph.name
    );
}

fn assert_same(graph: &QGraph, compiled: &qatc::Compiled, seed: u64) {
    let size: usize = graph.nodes[0].shape.iter().product();
    let out: usize = graph.nodes[graph.output].shape.iter().product();
    let mut rng = Rng::new(seed);
    for (k, batch) in [1, 3, 33, 70].into_iter().enumerate() {
        // Tame inputs as well as wild ones: with codes below 128 the `pmaddubsw` form runs its
        // fast kernel, otherwise its exact fallback.
        let x = if k % 2 == 0 {
            inputs(batch * size, &mut rng)
        } else {
            (0..batch * size).map(|_| rng.uniform(-1.0, 1.0)).collect()
        };
        let want = interp::run(graph, &x, batch).unwrap();
        let got = compiled.run(&x).unwrap();
        assert_eq!(got.len(), want.len());
        assert_same_u8(graph, compiled, &x);
        if let Some(i) = (0..want.len()).find(|&i| want[i].to_bits() != got[i].to_bits()) {
            panic!(
                "{} ({:?}): batch {batch}, sample {} output {}: JIT {} but the interpreter {}\n{}",
                graph.name,
                compiled.dot_product(),
                i / out,
                i % out,
                got[i],
                want[i],
                graph.to_text()
            );
        }
    }
}

#[test]
fn every_spec_is_bit_exact() {
    for path in common::spec_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let graph = common::calibrated(&path.display().to_string(), &text, 5, 3, 1.5);
        assert_bit_exact(&graph, 11);
    }
}

/// Both entries of every spec, in every form this CPU runs, on batches of 1 to 33 samples, with
/// the input, the output and the scratch memory each ending at an inaccessible page: a read or
/// write past any of them crashes the test. The results must still be the interpreter's.
#[test]
fn every_entry_stays_inside_the_callers_buffers() {
    use common::guard::Guarded;
    const BATCHES: [usize; 8] = [1, 2, 3, 4, 5, 31, 32, 33];
    let largest = BATCHES[BATCHES.len() - 1];
    for path in common::spec_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let graph = common::calibrated(&path.display().to_string(), &text, 5, 3, 1.5);
        let model = Model::from_graph(graph.clone()).unwrap();
        let (size, out) = (model.input_size(), model.output_size());
        let mut rng = Rng::new(21);
        let x = inputs(largest * size, &mut rng);
        // Samples are independent: a batch's outputs are the first ones of the largest batch.
        let want = interp::run(&graph, &x, largest).unwrap();
        let codes = qatc::jit::lower::u8_entry(&graph).map(|_| common::u8_entry_codes(&graph, &x));
        for (dot, narrow) in configurations() {
            let options = qatc::jit::Options {
                dot_product: Some(dot),
                listing: false,
                u8_entry: true,
                narrow,
            };
            let (compiled, _) = model.compile_with(&options).unwrap();
            let mut scratch = Guarded::new(compiled.scratch_bytes());
            let what = |b: usize| format!("{} ({dot:?}, narrow {narrow}), batch {b}", graph.name);
            for b in BATCHES {
                let mut input = Guarded::new(4 * b * size);
                let mut output = Guarded::new(4 * b * out);
                input.f32s().copy_from_slice(&x[..b * size]);
                compiled
                    .run_with_scratch(input.f32s(), output.f32s(), scratch.bytes())
                    .unwrap();
                let same = output
                    .f32s()
                    .iter()
                    .zip(&want[..b * out])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{}: f32 entry differs from the interpreter", what(b));

                let Some((codes_in, codes_want)) = &codes else {
                    continue;
                };
                let mut input = Guarded::new(b * size);
                let mut output = Guarded::new(b * out);
                input.bytes().copy_from_slice(&codes_in[..b * size]);
                compiled
                    .run_u8_with_scratch(input.bytes(), output.bytes(), scratch.bytes())
                    .unwrap();
                assert_eq!(
                    output.bytes(),
                    &codes_want[..b * out],
                    "{}: u8 entry",
                    what(b)
                );
            }
        }
    }
}

#[test]
fn trained_lenet_custom_is_bit_exact_on_test_images() {
    // Trained weights and BatchNorm folding, a per-channel fc1 and a float fc3.
    let path = common::root().join("specs/lenet_custom.qspec");
    let (result, _) = qatc::front_end("lenet_custom", &std::fs::read_to_string(&path).unwrap());
    let model = result.unwrap().model;
    let mut cfg = model.train.clone().unwrap();
    cfg.pretrain_epochs = 0;
    let mut data = train::load_data(&model, &cfg, &common::root().join("specs")).unwrap();
    let size = data.train.image_size();
    data.train.images.truncate(512 * size);
    data.train.labels.truncate(512);
    let mut net = train::build_net(&model, 3).unwrap();
    train::train(&mut net, &data, &cfg, 1, &mut train::Quiet);
    let graph = qatc::convert::convert(&net.graph, &net.state).unwrap();
    let compiled = Model::from_graph(graph.clone()).unwrap().compile().unwrap();
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    let images: Vec<usize> = (0..300).collect();
    data.test
        .batch(&images, &cfg.normalization, &mut x, &mut labels);
    let want = interp::run(&graph, &x, images.len()).unwrap();
    let got = compiled.run(&x).unwrap();
    let same = want
        .iter()
        .zip(&got)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "JIT and interpreter differ on test images");
    let reference = common::int8_accuracy(&graph, &data.test, &cfg);
    let jit = qatc::data::accuracy(&data.test, &cfg.normalization, 10, |x, _| {
        compiled.run(x).map_err(|e| e.to_string())
    })
    .unwrap();
    assert_eq!(jit, reference);
}

// ---- single ops with random shapes and parameters ----------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn each_op_alone_is_bit_exact(seed in any::<u64>()) {
        let graph = random_op_graph(seed);
        assert_bit_exact(&graph, seed ^ 1);
    }
}

/// The `pmaddubsw` form's fast kernel at its limits: codes up to 127 against weights of -128
/// and 127, where a pair sum reaches ±32,512 of the i16 range's 32,767.
#[test]
fn pairs_at_the_i16_limit_are_exact() {
    let mut rng = Rng::new(3);
    let (c, h, w) = (3, 6, 6);
    let q = |scale| {
        TensorType::U8(QParamsDef {
            scale,
            zero_point: 0,
        })
    };
    let k = c * 3 * 3;
    let extreme = |n: usize, rng: &mut Rng| -> Vec<i8> {
        (0..n)
            .map(|_| [-128, 127, -128, 127, 5][rng.below(5)])
            .collect()
    };
    let conv = QWeights {
        weight: extreme(8 * k, &mut rng),
        weight_scales: vec![1e-3],
        bias: vec![0; 8],
        clamp: (0, 127),
    };
    let fc = QWeights {
        weight: extreme(5 * 8 * 16, &mut rng),
        weight_scales: vec![1e-3],
        bias: vec![7; 5],
        clamp: (0, 255),
    };
    let geom = ConvGeom {
        in_channels: c,
        out_channels: 8,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (0, 0),
        groups: 1,
    };
    let graph = QGraph {
        name: "limits".into(),
        nodes: vec![
            node("input", QOp::Input, vec![], vec![c, h, w], TensorType::F32),
            node("q", QOp::Quantize, vec![0], vec![c, h, w], q(0.01)),
            node(
                "conv",
                QOp::Conv2d { geom, w: conv },
                vec![1],
                vec![8, 4, 4],
                q(0.05),
            ),
            node("flat", QOp::Flatten, vec![2], vec![128], q(0.05)),
            node(
                "fc",
                QOp::Linear {
                    in_features: 128,
                    out_features: 5,
                    w: fc,
                },
                vec![3],
                vec![5],
                q(0.5),
            ),
            node("out", QOp::Dequantize, vec![4], vec![5], TensorType::F32),
        ],
        output: 5,
    };
    let options = qatc::jit::Options {
        dot_product: Some(DotProduct::Pairs),
        listing: false,
        u8_entry: false,
        narrow: true,
    };
    let (compiled, _) = Model::from_graph(graph.clone())
        .unwrap()
        .compile_with(&options)
        .unwrap();
    for batch in [1, 5, 40] {
        // Inputs in [0, 1.27]: codes 0..127, many at 127.
        let x: Vec<f32> = (0..batch * c * h * w)
            .map(|_| {
                if rng.below(2) == 0 {
                    1.27
                } else {
                    rng.uniform(0.0, 1.27)
                }
            })
            .collect();
        let want = interp::run(&graph, &x, batch).unwrap();
        assert_eq!(compiled.run(&x).unwrap(), want);
    }
}

/// Requantization where products reach far past the code range (multipliers near one, biases
/// of millions), so the kernels cannot skip their clamp before rounding: depthwise, GEMM and
/// Linear, with fused clamps, in every form.
#[test]
fn requantization_of_huge_products_is_exact() {
    let mut rng = Rng::new(11);
    let (c, h, w) = (16, 6, 6);
    let q = |scale, zero_point| TensorType::U8(QParamsDef { scale, zero_point });
    let small =
        |n: usize, rng: &mut Rng| -> Vec<i8> { (0..n).map(|_| rng.below(7) as i8 - 3).collect() };
    let bias = |n: usize, rng: &mut Rng| -> Vec<i32> {
        (0..n)
            .map(|i| match i % 3 {
                0 => 0,
                1 => 9_000_000,
                _ => rng.below(2001) as i32 - 1000,
            })
            .collect()
    };
    let dw = QWeights {
        weight: small(c * 9, &mut rng),
        weight_scales: vec![1.0],
        bias: bias(c, &mut rng),
        clamp: (3, 250),
    };
    let conv = QWeights {
        weight: small(8 * c * 9, &mut rng),
        weight_scales: vec![1.0],
        bias: bias(8, &mut rng),
        clamp: (0, 255),
    };
    let fc = QWeights {
        weight: small(5 * 8 * 4, &mut rng),
        weight_scales: vec![1.0],
        bias: bias(5, &mut rng),
        clamp: (9, 255),
    };
    let geom = |cin: usize, cout: usize, groups: usize| ConvGeom {
        in_channels: cin,
        out_channels: cout,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1),
        groups,
    };
    let graph = QGraph {
        name: "huge".into(),
        nodes: vec![
            node("input", QOp::Input, vec![], vec![c, h, w], TensorType::F32),
            node("q", QOp::Quantize, vec![0], vec![c, h, w], q(0.01, 0)),
            node(
                "dw",
                QOp::Conv2d {
                    geom: geom(c, c, c),
                    w: dw,
                },
                vec![1],
                vec![c, h, w],
                q(0.02, 9),
            ),
            node(
                "conv",
                QOp::Conv2d {
                    geom: ConvGeom {
                        stride: (3, 3),
                        ..geom(c, 8, 1)
                    },
                    w: conv,
                },
                vec![2],
                vec![8, 2, 2],
                q(0.03, 128),
            ),
            node("flat", QOp::Flatten, vec![3], vec![32], q(0.03, 128)),
            node(
                "fc",
                QOp::Linear {
                    in_features: 32,
                    out_features: 5,
                    w: fc,
                },
                vec![4],
                vec![5],
                q(0.05, 7),
            ),
            node("out", QOp::Dequantize, vec![5], vec![5], TensorType::F32),
        ],
        output: 6,
    };
    assert_bit_exact(&graph, 11);
}

// ---- random small networks ---------------------------------------------------------------------

#[test]
fn random_networks_are_bit_exact() {
    for seed in 0..40 {
        let text = random_spec(seed);
        let graph = common::calibrated(&format!("g{seed}.qspec"), &text, seed, 3, 1.5);
        assert_bit_exact(&graph, seed);
    }
}

#[test]
fn wrong_lengths_are_errors_not_undefined_behaviour() {
    let text = std::fs::read_to_string(common::root().join("specs/mnist_mlp.qspec")).unwrap();
    let graph = common::calibrated("mlp", &text, 1, 3, 1.5);
    let compiled = Model::from_graph(graph).unwrap().compile().unwrap();
    assert_eq!(compiled.input_size(), 784);
    let err = compiled.run(&[0.0; 783]).unwrap_err();
    assert!(err.to_string().contains("783"), "{err}");
    assert!(compiled.run(&[]).is_err());
    let mut out = vec![0.0; 19];
    let err = compiled.run_into(&[0.0; 2 * 784], &mut out).unwrap_err();
    assert!(err.to_string().contains("20"), "{err}");
    let mut out = vec![0.0; 20];
    compiled.run_into(&[0.0; 2 * 784], &mut out).unwrap();
}

#[test]
fn one_compiled_model_serves_many_threads() {
    fn shareable<T: Send + Sync>(_: &T) {}
    let text = std::fs::read_to_string(common::root().join("specs/lenet_mnist.qspec")).unwrap();
    let graph = common::calibrated("lenet", &text, 2, 3, 1.5);
    let compiled = Model::from_graph(graph.clone()).unwrap().compile().unwrap();
    shareable(&compiled);
    let x = inputs(5 * 784, &mut Rng::new(4));
    let want = interp::run(&graph, &x, 5).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert_eq!(compiled.run(&x).unwrap(), want);
                }
            });
        }
    });
}

#[test]
fn no_page_is_writable_and_executable() {
    let text = std::fs::read_to_string(common::root().join("specs/lenet_mnist.qspec")).unwrap();
    let compiled = Model::from_graph(common::calibrated("lenet", &text, 2, 3, 1.5))
        .unwrap()
        .compile()
        .unwrap();
    compiled.run(&[0.5; 784]).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let wx: Vec<&str> = maps
        .lines()
        .filter(|l| {
            let perms = l.split_whitespace().nth(1).unwrap_or("");
            perms.contains('w') && perms.contains('x')
        })
        .collect();
    assert!(wx.is_empty(), "writable and executable mappings: {wx:?}");
    drop(compiled);
}

#[test]
fn models_needing_too_much_scratch_are_refused() {
    // 16.7M values a sample, as f32, u8 and f32 again: over 2 GiB for a tile of samples.
    let shape = vec![64, 512, 512];
    let graph = QGraph {
        name: "huge".into(),
        nodes: vec![
            node("input", QOp::Input, vec![], shape.clone(), TensorType::F32),
            node(
                "q",
                QOp::Quantize,
                vec![0],
                shape.clone(),
                u8_type(&mut Rng::new(1)),
            ),
            node("dq", QOp::Dequantize, vec![1], shape, TensorType::F32),
        ],
        output: 2,
    };
    let err = Model::from_graph(graph)
        .unwrap()
        .compile()
        .err()
        .expect("refused");
    assert!(err.to_string().contains("scratch"), "{err}");
}

/// `qatc compile` and `qatc bench` on a .qmodel, and their errors.
#[test]
fn compile_and_bench_commands() {
    let spec = common::root().join("specs/mnist_mlp.qspec");
    let text = std::fs::read_to_string(&spec).unwrap();
    let graph = common::calibrated("mlp", &text, 1, 3, 1.5);
    let info = qatc::qmodel::Info {
        backend: "fbgemm".into(),
        spec: text,
        qatc_version: "test".into(),
        normalization: common::calibrated_normalization(&spec),
        spec_dir: None,
    };
    let dir = std::env::temp_dir().join(format!("qatc-cli-jit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("mlp.qmodel");
    std::fs::write(&model, qatc::qmodel::to_bytes(&graph, &info).unwrap()).unwrap();
    let qatc = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_qatc"))
            .args(args)
            .output()
            .unwrap()
    };
    let m = model.to_str().unwrap();

    let out = qatc(&["compile", m, "--emit", "clif", "-v"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("function"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("compiled mlp in"));

    let obj = dir.join("m.o");
    let out = qatc(&[
        "compile",
        m,
        "--target",
        "aarch64",
        "--features",
        "i8mm",
        "--emit",
        "obj",
        "-o",
        obj.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&std::fs::read(&obj).unwrap()[..4], b"\x7fELF");

    let out = qatc(&["compile", m, "--target", "riscv", "--emit", "obj"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target `riscv`"));
    let out = qatc(&[
        "compile",
        m,
        "--target",
        "aarch64",
        "--features",
        "sve",
        "--emit",
        "asm",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown aarch64 feature `sve`"));

    let out = qatc(&[
        "bench",
        m,
        "--batch",
        "1,16",
        "--json",
        "--threads",
        "2",
        "--reference",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "jit_b1_us",
        "jit_b16_img_s",
        "ref_b1_us",
        "ref_b16_img_s",
        "compile_ms",
        "peak_gmacs",
        "jit_b1_gmacs",
        "jit_b16_gmacs_per_core",
    ] {
        assert!(
            json[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {json}"
        );
    }

    // Every --emit honours -o.
    let ir = dir.join("mlp.ir");
    let out = qatc(&["compile", m, "--emit", "ir", "-o", ir.to_str().unwrap()]);
    assert!(out.status.success() && out.stdout.is_empty());
    assert!(std::fs::read_to_string(&ir)
        .unwrap()
        .starts_with("graph mlp"));
    // A reader that stops early (`| head`) ends the listing quietly, with success. The CLIF
    // (about 160 KB) outgrows the pipe's buffer, so the write meets the closed pipe.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qatc"))
        .args(["compile", m, "--emit", "clif"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The table names the dot-product form by its instruction, not by an internal name.
    let out = qatc(&["bench", m, "--batch", "1", "--dot", "i16"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("peak of 128-bit pmaddwd (i16 pairs)"),
        "the form by its instruction:\n{text}"
    );
    assert!(!text.contains("I16"), "no internal name:\n{text}");

    let missing = dir.join("nope.qmodel");
    let out = qatc(&["bench", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.qmodel"));
    std::fs::remove_dir_all(dir).ok();
}

/// The roofline's peak loop computes the dot products it is timed for: each of its
/// accumulators adds one dot step of its operands per round, in every form this CPU runs.
#[test]
fn the_peak_loop_computes_its_dot_products() {
    use qatc::jit::peak::{PeakLoop, ACCUMULATORS};
    use qatc::jit::DotProduct;
    // The loop's operands: the seed's four bytes in every lane, and their complement.
    let w: [u8; 4] = 0x5a5a_1234u32.to_le_bytes();
    let a: [u8; 4] = w.map(|b| !b);
    let lane = |dot: DotProduct| -> i64 {
        match dot {
            DotProduct::I16 => (0..2)
                .map(|k| {
                    let w = i16::from_le_bytes([w[2 * k], w[2 * k + 1]]) as i64;
                    let a = i16::from_le_bytes([a[2 * k], a[2 * k + 1]]) as i64;
                    w * a
                })
                .sum(),
            DotProduct::Sdot => (0..4).map(|k| w[k] as i8 as i64 * a[k] as i8 as i64).sum(),
            _ => (0..4).map(|k| w[k] as i8 as i64 * a[k] as i64).sum(),
        }
    };
    for dot in common::runnable_forms() {
        let peak = PeakLoop::compile(Some(dot)).unwrap();
        for rounds in [0u64, 1, 3, 1000] {
            // (`pmaddubsw` sums pairs in i16 with saturation; these pairs, 0x34·0xcb + 0x12·0xed
            // and 2 · 0x5a·0xa5, fit, so Pairs gives the exact dot product too.)
            let want = lane(dot) * 4;
            // The accumulators wrap in i32, and so does their sum.
            let want = (want * ACCUMULATORS as i64 * rounds as i64) as i32;
            assert_eq!(peak.run(rounds), want, "{dot:?}, {rounds} rounds");
        }
        assert_eq!(
            peak.macs(10),
            (10 * ACCUMULATORS * dot.macs_per_step()) as f64
        );
    }
}

/// A grouped convolution (five groups of one input channel, three outputs each, 25 rows: four
/// tiles of six and one row) whose groups share the im2col buffer: a group's last tile once
/// reused the loads of the group before it, made before the buffer was rewritten (found by
/// `each_op_alone_is_bit_exact`).
#[test]
fn groups_sharing_im2col_rows_read_their_own() {
    let graph = random_op_graph(5773627522554049298);
    assert!(
        matches!(&graph.nodes[2].op, QOp::Conv2d { geom, .. } if geom.groups == 5),
        "the generator still makes the grouped convolution"
    );
    assert_bit_exact(&graph, 5773627522554049298 ^ 1);
}
