//! The training checkpoint: every parameter, BatchNorm statistic and observer range as f32
//! tensors in one safetensors file, with the model name, the spec text and the qatc version in
//! its metadata. Names follow PyTorch's state_dict (`conv1.weight`, `bn1.running_var`,
//! `conv1.weight_fake_quant.min_val`, `fc1.fq.activation_post_process.max_val`, and a learnable
//! fake quant's `conv1.weight_fake_quant.scale` and `.zero_point`).

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, TensorView};

use super::{NodeState, State};
use crate::ir::Graph;
use crate::quant::observer::Observer;

/// Named f32 tensors of a network's state, in a fixed order.
pub fn state_tensors(graph: &Graph, state: &State) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    let observer =
        |out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, prefix: String, obs: &Observer| {
            if let Some(l) = &obs.learned {
                for p in [&l.scale, &l.zero_point] {
                    out.push((p.name.clone(), p.shape.clone(), p.value.clone()));
                }
            }
            if !obs.min.is_empty() {
                out.push((
                    format!("{prefix}.min_val"),
                    vec![obs.min.len()],
                    obs.min.clone(),
                ));
                out.push((
                    format!("{prefix}.max_val"),
                    vec![obs.max.len()],
                    obs.max.clone(),
                ));
            }
        };
    for (node, state) in graph.nodes.iter().zip(&state.nodes) {
        let mut params = Vec::new();
        let mut bn_state = None;
        match state {
            NodeState::Linear {
                weight,
                bias,
                bn,
                weight_obs,
            }
            | NodeState::Conv {
                weight,
                bias,
                bn,
                weight_obs,
            } => {
                params.push(weight);
                params.extend(bias.as_ref());
                bn_state = bn.as_deref();
                if let Some(obs) = weight_obs {
                    observer(&mut out, format!("{}.weight_fake_quant", node.name), obs);
                }
            }
            NodeState::Bn(bn) => bn_state = Some(bn),
            NodeState::FakeQuant { obs } => observer(
                &mut out,
                format!("{}.activation_post_process", node.name),
                obs,
            ),
            NodeState::None => {}
        }
        for p in params {
            out.push((p.name.clone(), p.shape.clone(), p.value.clone()));
        }
        if let Some(bn) = bn_state {
            let c = bn.gamma.value.len();
            let name = &bn.attrs.name;
            out.push((bn.gamma.name.clone(), vec![c], bn.gamma.value.clone()));
            out.push((bn.beta.name.clone(), vec![c], bn.beta.value.clone()));
            out.push((
                format!("{name}.running_mean"),
                vec![c],
                bn.running_mean.clone(),
            ));
            out.push((
                format!("{name}.running_var"),
                vec![c],
                bn.running_var.clone(),
            ));
        }
    }
    out
}

/// The checkpoint file's bytes.
pub fn to_bytes(
    graph: &Graph,
    state: &State,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    tensors_to_bytes(state_tensors(graph, state), metadata)
}

/// Named f32 tensors as a safetensors file.
pub fn tensors_to_bytes(
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            (
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| format!("tensor {name}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    serialize(views, metadata).map_err(|e| format!("cannot serialize the checkpoint: {e}"))
}

/// A safetensors file of `views` with `metadata`, the same bytes for the same content: the
/// safetensors crate writes its metadata map in hash order, so the header is written again with
/// every key sorted (the tensors' data and offsets do not change).
pub fn serialize(
    views: Vec<(String, TensorView<'_>)>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let bytes = safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| e.to_string())?;
    let (len, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or("safetensors wrote no header")?;
    let n = u64::from_le_bytes(*len) as usize;
    let (header, data) = rest.split_at(n.min(rest.len()));
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    if let Some(meta) = header.remove("__metadata__") {
        let sorted: BTreeMap<String, String> =
            serde_json::from_value(meta).map_err(|e| format!("metadata: {e}"))?;
        let sorted = serde_json::to_value(sorted).map_err(|e| format!("metadata: {e}"))?;
        header.insert("__metadata__".into(), sorted);
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| format!("header: {e}"))?;
    // safetensors pads its header with spaces to a multiple of 8 bytes.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    Ok(out)
}

/// A tensor the state owns besides observers: a parameter or a BatchNorm statistic, by its
/// state_dict name, with its shape and its values to overwrite.
struct Slot<'a> {
    name: String,
    shape: Vec<usize>,
    values: &'a mut Vec<f32>,
}

/// Every parameter and BatchNorm statistic of `state`, in node order.
fn slots<'a>(state: &'a mut State) -> Vec<Slot<'a>> {
    let mut out = Vec::new();
    let param = |p: &'a mut super::Param| Slot {
        name: p.name.clone(),
        shape: p.shape.clone(),
        values: &mut p.value,
    };
    for node in &mut state.nodes {
        let bn = match node {
            NodeState::Linear {
                weight, bias, bn, ..
            }
            | NodeState::Conv {
                weight, bias, bn, ..
            } => {
                out.push(param(weight));
                out.extend(bias.as_mut().map(param));
                bn.as_deref_mut()
            }
            NodeState::Bn(bn) => Some(bn),
            NodeState::FakeQuant { .. } | NodeState::None => None,
        };
        if let Some(bn) = bn {
            let name = bn.attrs.name.clone();
            let c = bn.running_mean.len();
            out.push(param(&mut bn.gamma));
            out.push(param(&mut bn.beta));
            for (stat, values) in [
                ("running_mean", &mut bn.running_mean),
                ("running_var", &mut bn.running_var),
            ] {
                out.push(Slot {
                    name: format!("{name}.{stat}"),
                    shape: vec![c],
                    values,
                });
            }
        }
    }
    out
}

/// A tensor's values as f32 (from f32 or f64), or why not.
pub fn f32_values(t: &TensorView) -> Result<Vec<f32>, String> {
    match t.dtype() {
        Dtype::F32 => Ok(t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()),
        Dtype::F64 => Ok(t
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect()),
        other => Err(format!(
            "is {other:?}; qatc reads F32 or F64 (save with `.float()`)"
        )),
    }
}

/// Whether a state_dict entry is one that initialization skips: BatchNorm's batch counter and
/// observer state (observers start afresh).
fn skipped(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
        || name.contains(".weight_fake_quant.")
        || name.contains(".activation_post_process.")
}

/// Loads a PyTorch-style state dict (safetensors, as `safetensors.torch.save_file(
/// model.state_dict(), path)` writes it) into a fresh network, strictly as torch's
/// `load_state_dict`: every parameter and BatchNorm statistic must be there with its shape, and
/// every tensor of the file must be one of them. `num_batches_tracked` and observer state are
/// skipped. The error lists every offending tensor.
pub fn load_state_dict(state: &mut State, bytes: &[u8]) -> Result<(), String> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let mut slots = slots(state);
    let (mut missing, mut mismatched, mut unexpected) = (Vec::new(), Vec::new(), Vec::new());
    for slot in &mut slots {
        let Ok(t) = file.tensor(&slot.name) else {
            missing.push(format!("`{}`", slot.name));
            continue;
        };
        if t.shape() != slot.shape.as_slice() {
            mismatched.push(format!(
                "`{}` has shape {:?} in the file, the model needs {:?}",
                slot.name,
                t.shape(),
                slot.shape
            ));
            continue;
        }
        match f32_values(&t) {
            Ok(values) => *slot.values = values,
            Err(e) => mismatched.push(format!("`{}` {e}", slot.name)),
        }
    }
    let mut names: Vec<&str> = file.names();
    names.sort_unstable();
    for name in names {
        if !skipped(name) && !slots.iter().any(|s| s.name == name) {
            unexpected.push(format!("`{name}`"));
        }
    }
    if missing.is_empty() && mismatched.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let mut lines = Vec::new();
    if !missing.is_empty() {
        lines.push(format!("missing: {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        lines.push(format!(
            "unexpected (no layer of the spec has them): {}",
            unexpected.join(", ")
        ));
    }
    lines.extend(mismatched);
    Err(format!(
        "the tensors do not fit the model:\n  {}",
        lines.join("\n  ")
    ))
}

/// Loads a checkpoint's tensors into a network built from the same spec: every parameter and
/// BatchNorm statistic must be present with its size; observer ranges are loaded when present
/// (a float checkpoint has none). Returns the checkpoint's metadata.
pub fn load(
    graph: &Graph,
    state: &mut State,
    bytes: &[u8],
) -> Result<HashMap<String, String>, String> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid checkpoint: {e}"))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format!("bad header: {e}"))?;
    let get = |name: &str, len: usize| -> Result<Option<Vec<f32>>, String> {
        let Ok(t) = file.tensor(name) else {
            return Ok(None);
        };
        let values = f32_values(&t).map_err(|e| format!("tensor `{name}` {e}"))?;
        if values.len() != len {
            return Err(format!(
                "tensor `{name}` has {} values, the model needs {len}",
                values.len(),
            ));
        }
        Ok(Some(values))
    };
    for slot in slots(state) {
        *slot.values = get(&slot.name, slot.values.len())?.ok_or_else(|| {
            format!(
                "the checkpoint has no `{}`: was it trained from this spec?",
                slot.name
            )
        })?;
    }
    let observer = |prefix: String, obs: &mut Observer, channels: usize| -> Result<(), String> {
        let len = if obs.config.observer.is_per_channel() {
            channels
        } else {
            1
        };
        let min = get(&format!("{prefix}.min_val"), len)?;
        let max = get(&format!("{prefix}.max_val"), len)?;
        if let (Some(min), Some(max)) = (min, max) {
            obs.min = min;
            obs.max = max;
        }
        if let Some(l) = &mut obs.learned {
            for p in [&mut l.scale, &mut l.zero_point] {
                if let Some(values) = get(&p.name, p.value.len())? {
                    p.value = values;
                }
            }
        }
        Ok(())
    };
    for (node, state) in graph.nodes.iter().zip(state.nodes.iter_mut()) {
        match state {
            NodeState::Linear {
                weight,
                weight_obs: Some(obs),
                ..
            }
            | NodeState::Conv {
                weight,
                weight_obs: Some(obs),
                ..
            } => observer(
                format!("{}.weight_fake_quant", node.name),
                obs,
                weight.shape[0],
            )?,
            NodeState::FakeQuant { obs } => {
                observer(format!("{}.activation_post_process", node.name), obs, 1)?
            }
            NodeState::Linear { .. }
            | NodeState::Conv { .. }
            | NodeState::Bn(_)
            | NodeState::None => {}
        }
    }
    Ok(header.metadata().clone().unwrap_or_default())
}
