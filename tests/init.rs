//! `init:` in `train`: a network starts from a PyTorch-style state dict in safetensors form,
//! loaded as strictly as torch's `load_state_dict`.

use std::path::Path;

use qatc::pipeline::{SpecFile, Stage};
use safetensors::tensor::{Dtype, TensorView};

const SPEC: &str = r#"
model m {
    input: [1, 4, 4]
    conv: Conv2d(out: 2, kernel: 3)
    bn: BatchNorm2d
    relu: ReLU
    flat: Flatten
    fc: Linear(out: 3)
}
quantize { backend: fbgemm }
train {
    init: "weights.safetensors"
}
"#;

/// A tensor as safetensors stores it: a name, a dtype, a shape and little-endian bytes.
struct Tensor(&'static str, Dtype, Vec<usize>, Vec<u8>);

fn f32s(name: &'static str, shape: &[usize], first: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let bytes = (0..n)
        .flat_map(|i| (first + i as f32 * 0.25).to_le_bytes())
        .collect();
    Tensor(name, Dtype::F32, shape.to_vec(), bytes)
}

/// Every tensor torch's `state_dict()` of this model holds, BatchNorm's batch counter included.
fn state_dict() -> Vec<Tensor> {
    vec![
        f32s("conv.weight", &[2, 1, 3, 3], 0.5),
        f32s("conv.bias", &[2], -1.0),
        f32s("bn.weight", &[2], 2.0),
        f32s("bn.bias", &[2], 0.125),
        f32s("bn.running_mean", &[2], 0.75),
        f32s("bn.running_var", &[2], 3.0),
        Tensor(
            "bn.num_batches_tracked",
            Dtype::I64,
            vec![],
            7i64.to_le_bytes().to_vec(),
        ),
        f32s("fc.weight", &[3, 8], -0.5),
        f32s("fc.bias", &[3], 0.0),
    ]
}

fn save(tensors: &[Tensor], path: &Path) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|Tensor(name, dtype, shape, bytes)| {
            (
                *name,
                TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

/// The spec in a fresh folder beside `tensors` saved as its `init:` file.
fn spec_with(tag: &str, tensors: &[Tensor]) -> SpecFile {
    let dir = std::env::temp_dir().join(format!("qatc-init-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    save(tensors, &dir.join("weights.safetensors"));
    let path = dir.join("m.qspec");
    SpecFile::from_text(&path, "m.qspec".into(), SPEC.into()).unwrap()
}

#[test]
fn a_state_dict_loads_with_every_value_in_its_place() {
    // A spec without data checks: `qatc import` writes such specs.
    let spec = spec_with("ok", &state_dict());
    let cfg = spec.train_config("test").unwrap();
    assert!(cfg.data.is_none());
    let net = spec.net(&cfg).unwrap();
    let loaded = qatc::state::checkpoint::state_tensors(&net.graph, &net.state);
    for Tensor(name, dtype, shape, bytes) in state_dict() {
        if dtype != Dtype::F32 {
            continue;
        }
        let (_, got_shape, got) = loaded
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not in the network's state"));
        let want: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!((got_shape, got), (&shape, &want), "{name}");
    }
    // Training without data says what is missing.
    let e = spec.data(&cfg).err().unwrap();
    assert_eq!(e.stage, Stage::Data);
    assert!(e.message.contains("names no data"), "{e}");
}

#[test]
fn every_offending_tensor_is_named() {
    let mut tensors = state_dict();
    tensors.retain(|t| t.0 != "bn.running_var");
    for t in &mut tensors {
        match t.0 {
            "fc.weight" => *t = f32s("fc.weight", &[3, 9], 0.0),
            "conv.bias" => *t = Tensor("conv.bias", Dtype::I32, vec![2], vec![0; 8]),
            _ => {}
        }
    }
    tensors.push(f32s("fc2.weight", &[1], 0.0));
    tensors.push(f32s("conv.weight_fake_quant.scale", &[2], 1.0));
    let spec = spec_with("bad", &tensors);
    let cfg = spec.train_config("test").unwrap();
    let e = spec.net(&cfg).err().unwrap();
    assert_eq!(e.stage, Stage::Read);
    for want in [
        "weights.safetensors",
        "missing: `bn.running_var`",
        "unexpected (no layer of the spec has them): `fc2.weight`",
        "`fc.weight` has shape [3, 9] in the file, the model needs [3, 8]",
        "`conv.bias` is I32; qatc reads F32 or F64",
    ] {
        assert!(e.message.contains(want), "{want:?} in {e}");
    }
    // Observer state is skipped, not unexpected.
    assert!(!e.message.contains("weight_fake_quant"), "{e}");

    let dir = spec.dir().to_path_buf();
    std::fs::write(dir.join("weights.safetensors"), b"not safetensors").unwrap();
    let e = spec.net(&cfg).err().unwrap();
    assert!(e.message.contains("not a valid safetensors file"), "{e}");
    std::fs::remove_file(dir.join("weights.safetensors")).unwrap();
    let e = spec.net(&cfg).err().unwrap();
    assert!(
        e.message
            .contains("`init` state dict `weights.safetensors` is missing"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}
