//! The state dict: every node's trainable parameters, BatchNorm statistics and observers,
//! keyed by node (`State::nodes[i]` belongs to node `i` of its graph). The training engine
//! updates it; `convert`, `compare`, the checkpoint and calibration read it. BatchNorm's eval-mode
//! affine map (what folding multiplies by) is defined here, once.

pub mod checkpoint;

pub use crate::param::Param;

use crate::ir::BnAttrs;
use crate::quant::observer::{Learned, Observer};

/// A learnable fake quant's scale and zero point, when it has them.
/// A learnable fake quant's scale and zero point, when it has them.
fn learned(obs: Option<&mut Observer>) -> [Option<&mut Param>; 2] {
    match obs.and_then(|o| o.learned.as_mut()) {
        Some(l) => [Some(&mut l.scale), Some(&mut l.zero_point)],
        None => [None, None],
    }
}

impl NodeState {
    /// The node's parameters, in a fixed order: weight, bias, a fused BatchNorm's gamma and
    /// beta, then a learnable fake quant's scale and zero point.
    fn params_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        let params: [Option<&mut Param>; 6] = match self {
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
                let (gamma, beta) = match bn {
                    Some(bn) => (Some(&mut bn.gamma), Some(&mut bn.beta)),
                    None => (None, None),
                };
                let [scale, zero_point] = learned(weight_obs.as_mut());
                [Some(weight), bias.as_mut(), gamma, beta, scale, zero_point]
            }
            NodeState::Bn(bn) => [
                Some(&mut bn.gamma),
                Some(&mut bn.beta),
                None,
                None,
                None,
                None,
            ],
            NodeState::FakeQuant { obs } => {
                let [scale, zero_point] = learned(Some(obs));
                [scale, zero_point, None, None, None, None]
            }
            NodeState::None => [None, None, None, None, None, None],
        };
        params.into_iter().flatten()
    }
}

/// A BatchNorm's parameters and running statistics.
#[derive(Clone, Debug)]
pub struct BnState {
    pub attrs: BnAttrs,
    pub gamma: Param,
    pub beta: Param,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
}

/// What a node owns.
#[derive(Clone, Debug)]
pub enum NodeState {
    None,
    Linear {
        weight: Param,
        bias: Option<Param>,
        /// A fused BatchNorm1d (LinearBn1d).
        bn: Option<Box<BnState>>,
        weight_obs: Option<Observer>,
    },
    Conv {
        weight: Param,
        bias: Option<Param>,
        bn: Option<Box<BnState>>,
        weight_obs: Option<Observer>,
    },
    Bn(BnState),
    FakeQuant {
        obs: Observer,
    },
}

/// Every node's state, indexed like the graph's nodes.
#[derive(Clone, Debug)]
pub struct State {
    pub nodes: Vec<NodeState>,
}

impl State {
    /// Every parameter, in a fixed order.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.each_param_mut().collect()
    }

    /// [`State::params_mut`] as an iterator (it allocates nothing).
    pub fn each_param_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.nodes.iter_mut().flat_map(NodeState::params_mut)
    }

    /// Every learnable fake quant's parameters.
    pub fn learned_mut(&mut self) -> impl Iterator<Item = &mut Learned> {
        self.nodes.iter_mut().filter_map(|s| match s {
            NodeState::Linear { weight_obs, .. } | NodeState::Conv { weight_obs, .. } => {
                weight_obs.as_mut().and_then(|o| o.learned.as_mut())
            }
            NodeState::FakeQuant { obs } => obs.learned.as_mut(),
            NodeState::Bn(_) | NodeState::None => None,
        })
    }

    /// The quantization parameters of fake-quant node `i`'s observer, once it has seen data.
    pub fn observer(&self, i: usize) -> Option<&Observer> {
        match self.nodes.get(i) {
            Some(NodeState::FakeQuant { obs }) => Some(obs),
            _ => None,
        }
    }
}

impl BnState {
    /// The per-channel affine map `y = x · scale + shift` of the BatchNorm in eval mode:
    /// `scale = gamma / sqrt(running_var + eps)`, `shift = beta - running_mean · scale`. Folding
    /// it into the conv before multiplies the weights by `scale`.
    pub fn affine(&self) -> (Vec<f32>, Vec<f32>) {
        let scale = self.fold_scale();
        let shift = scale
            .iter()
            .zip(&self.running_mean)
            .zip(&self.beta.value)
            .map(|((s, m), b)| b - m * s)
            .collect();
        (scale, shift)
    }

    /// `gamma / sqrt(running_var + eps)` per channel.
    pub fn fold_scale(&self) -> Vec<f32> {
        let mut scale = vec![0.0; self.gamma.value.len()];
        self.fold_scale_into(&mut scale);
        scale
    }

    /// [`BnState::fold_scale`] into `scale` (one value per channel).
    pub fn fold_scale_into(&self, scale: &mut [f32]) {
        let eps = self.attrs.eps as f32;
        for ((s, g), v) in scale
            .iter_mut()
            .zip(&self.gamma.value)
            .zip(&self.running_var)
        {
            *s = g / (v + eps).sqrt();
        }
    }
}
