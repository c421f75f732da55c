//! The training checkpoint: every parameter, BatchNorm statistic and observer range as f32
//! tensors in one safetensors file, with the model name, the spec text and the qatc version in
//! its metadata. Names follow PyTorch's state_dict (`conv1.weight`, `bn1.running_var`,
//! `conv1.weight_fake_quant.min_val`, `fc1.fq.activation_post_process.max_val`).

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};

use super::{NodeState, State};
use crate::ir::Graph;
use crate::quant::observer::Observer;

/// Named f32 tensors of a network's state, in a fixed order.
pub fn state_tensors(graph: &Graph, state: &State) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    let observer =
        |out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, prefix: String, obs: &Observer| {
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
    let tensors = state_tensors(graph, state);
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
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| format!("cannot serialize the checkpoint: {e}"))
}

/// Loads a checkpoint's tensors into a network built from the same spec: every parameter and
/// BatchNorm statistic must be present with its shape; observer ranges are loaded when present
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
    let get = |name: &str, len: Option<usize>| -> Result<Option<Vec<f32>>, String> {
        let Ok(t) = file.tensor(name) else {
            return Ok(None);
        };
        if t.dtype() != Dtype::F32 {
            return Err(format!("tensor `{name}` is {:?}, expected F32", t.dtype()));
        }
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if len.is_some_and(|n| n != values.len()) {
            return Err(format!(
                "tensor `{name}` has {} values, the model needs {}",
                values.len(),
                len.unwrap_or(0)
            ));
        }
        Ok(Some(values))
    };
    let required = |name: &str, slot: &mut Vec<f32>| -> Result<(), String> {
        let values = get(name, Some(slot.len()))?.ok_or_else(|| {
            format!("the checkpoint has no `{name}`: was it trained from this spec?")
        })?;
        *slot = values;
        Ok(())
    };
    let observer = |prefix: String, obs: &mut Observer, channels: usize| -> Result<(), String> {
        let limit = Some(if obs.config.observer.is_per_channel() {
            channels
        } else {
            1
        });
        let min = get(&format!("{prefix}.min_val"), limit)?;
        let max = get(&format!("{prefix}.max_val"), limit)?;
        if let (Some(min), Some(max)) = (min, max) {
            obs.min = min;
            obs.max = max;
        }
        Ok(())
    };
    for (node, state) in graph.nodes.iter().zip(state.nodes.iter_mut()) {
        let mut bn_state = None;
        match state {
            NodeState::Linear {
                weight,
                bias,
                weight_obs,
                ..
            }
            | NodeState::Conv {
                weight,
                bias,
                weight_obs,
                ..
            } => {
                required(&weight.name.clone(), &mut weight.value)?;
                if let Some(b) = bias {
                    required(&b.name.clone(), &mut b.value)?;
                }
                let channels = weight.shape[0];
                if let Some(obs) = weight_obs {
                    observer(format!("{}.weight_fake_quant", node.name), obs, channels)?;
                }
            }
            NodeState::FakeQuant { obs } => {
                observer(format!("{}.activation_post_process", node.name), obs, 1)?
            }
            NodeState::Bn(_) | NodeState::None => {}
        }
        match state {
            NodeState::Conv { bn: Some(bn), .. } | NodeState::Linear { bn: Some(bn), .. } => {
                bn_state = Some(&mut **bn)
            }
            NodeState::Bn(bn) => bn_state = Some(bn),
            _ => {}
        }
        if let Some(bn) = bn_state {
            let name = bn.attrs.name.clone();
            required(&bn.gamma.name.clone(), &mut bn.gamma.value)?;
            required(&bn.beta.name.clone(), &mut bn.beta.value)?;
            required(&format!("{name}.running_mean"), &mut bn.running_mean)?;
            required(&format!("{name}.running_var"), &mut bn.running_var)?;
        }
    }
    Ok(header.metadata().clone().unwrap_or_default())
}
