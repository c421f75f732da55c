//! ONNX export, checked against onnxruntime: every spec of `specs/`, calibrated from its seed
//! weights, exports, and onnxruntime (run by `tools/ort_run.py`) gives qatc's codes (the
//! interpreter's, which the JIT's equal) for every quantized tensor of every sample, running the model's convolutions and matrix products as
//! int8 kernels (QLinearConv, QGemm).
//!
//! Needs Python 3 with `onnxruntime`, `onnx` and `numpy` (`.ci/run` installs them). Without
//! them the test fails and says so, unless `QATC_SKIP_ONNXRUNTIME=1` is set.

mod common;

use std::path::Path;
use std::process::Command;

use qatc::interp::Value;
use qatc::onnx::export::ExportOptions;
use qatc::pipeline::SpecFile;
use qatc::train::engine::Mode;

/// `n` inputs for a model: MNIST test images (normalized as the spec says) when they fit, else
/// deterministic values in about -2..2.
fn inputs(spec: &SpecFile, n: usize) -> Vec<f32> {
    let shape = &spec.model.input;
    let cfg = spec.train_config("test").unwrap();
    if shape == &[1, 28, 28] {
        let images = common::root().join("data/mnist10k/t10k-images-idx3-ubyte.gz");
        let (x, _) = qatc::data::read_inputs(&images, shape, Some(&cfg.normalization)).unwrap();
        return x[..n * 784].to_vec();
    }
    let size: usize = shape.iter().product();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n * size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

fn read_npy_u8(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    npyz::NpyFile::new(bytes.as_slice())
        .unwrap()
        .into_vec()
        .unwrap()
}

#[test]
fn every_spec_exports_and_onnxruntime_gives_qatc_codes() {
    if !common::onnxruntime() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("qatc-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let specs = common::spec_files();
    assert!(specs.len() >= 5, "{specs:?}");
    for path in specs {
        let spec = SpecFile::load(&path).unwrap();
        let name = spec.model.name.clone();
        let n = if spec.model.input == [1, 28, 28] {
            128
        } else {
            32
        };
        let x = inputs(&spec, n);

        // Post-training calibration of the seed weights on the inputs, then convert.
        let mut net = qatc::train::build_net(&spec.model, 0).unwrap();
        let observe = Mode::calibrate();
        net.forward(&x, n, observe, &mut qatc::train::rng::Rng::new(0));
        let graph = qatc::convert::convert(&net.graph, &net.state).unwrap();

        let onnx = dir.join(format!("{name}.onnx"));
        let bytes = qatc::onnx::export::export(&graph, ExportOptions { codes: true }).unwrap();
        std::fs::write(&onnx, bytes).unwrap();
        let x_path = dir.join(format!("{name}-x.npy"));
        let dims = [&[n][..], &spec.model.input].concat();
        std::fs::write(&x_path, qatc::data::npy_f32(&x, &dims).unwrap()).unwrap();
        let out = dir.join(&name);
        let status = Command::new("python3")
            .arg(common::root().join("tools/ort_run.py"))
            .args([&onnx, &x_path, &out])
            .status()
            .unwrap();
        assert!(status.success(), "{name}: onnxruntime failed");

        // Every quantized tensor, every sample: the same codes.
        let size: usize = spec.model.input.iter().product();
        let ours: Vec<Vec<Value>> = x
            .chunks(size)
            .map(|s| qatc::interp::run_all(&graph, s))
            .collect();
        let mut compared = 0;
        for (i, node) in graph.nodes.iter().enumerate() {
            if node.ty.qparams().is_none() {
                continue;
            }
            let file = out.join(format!("codes_{}.npy", node.name));
            let theirs = read_npy_u8(&file);
            let per: usize = node.shape.iter().product();
            assert_eq!(theirs.len(), n * per, "{name}/{}", node.name);
            let differ = (0..n)
                .filter(|&s| {
                    let Value::U8(codes) = &ours[s][i] else {
                        panic!("{name}/{} is quantized", node.name)
                    };
                    codes[..] != theirs[s * per..(s + 1) * per]
                })
                .count();
            assert_eq!(
                differ, 0,
                "{name}/{}: {differ} of {n} samples differ",
                node.name
            );
            compared += 1;
        }
        assert!(compared > 0, "{name} has quantized tensors");

        // The float output: bit-identical after a dequantize, within float rounding after a
        // float layer.
        let expect = qatc::interp::run(&graph, &x, n).unwrap();
        // `qatc run` (the JIT) gives the interpreter's bits.
        let compiled = qatc::Model::from_graph(graph.clone())
            .unwrap()
            .compile()
            .unwrap();
        let jit = compiled.run(&x).unwrap();
        assert!(
            jit.iter()
                .zip(&expect)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: the JIT differs from the interpreter"
        );
        let (output, rows) = qatc::data::read_inputs(
            &out.join("output.npy"),
            &graph.nodes[graph.output].shape,
            None,
        )
        .unwrap();
        assert_eq!(rows, n);
        let float_last = graph.nodes[graph.nodes[graph.output].inputs[0]]
            .ty
            .qparams()
            .is_none();
        for (a, b) in output.iter().zip(&expect) {
            if float_last {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{name}: {a} vs {b}"
                );
            } else {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}");
            }
        }

        // onnxruntime ran the weight layers as int8 kernels.
        let ops = std::fs::read_to_string(out.join("ops.txt")).unwrap();
        assert!(
            ops.lines().any(|op| op == "QLinearConv" || op == "QGemm"),
            "{name}: {ops}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
