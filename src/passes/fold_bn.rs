//! fold_bn: folds every fused BatchNorm into its Conv2d or Linear, graph and state together:
//! `W' = W · s`, `b' = (b - running_mean) · s + beta` with `s = gamma / sqrt(running_var + eps)`
//! per output channel ([`crate::state::BnState::affine`]). The layer then has a bias and no
//! BatchNorm; its weight observer is kept (QAT observed the folded weight already). Standalone
//! BatchNorms and every other node are left as they are. Shapes do not change.

use crate::ir::{Graph, Op};
use crate::state::{NodeState, Param, State};

/// The graph and state with every fused BatchNorm folded into its layer.
pub fn fold_batch_norm(graph: &Graph, state: &State) -> (Graph, State) {
    let mut graph = graph.clone();
    let mut state = state.clone();
    for (node, node_state) in graph.nodes.iter_mut().zip(&mut state.nodes) {
        let out = node.shape[0];
        let (Op::Conv2d {
            bias, bn: op_bn, ..
        }
        | Op::Linear {
            bias, bn: op_bn, ..
        }) = &mut node.op
        else {
            continue;
        };
        let (NodeState::Conv {
            weight,
            bias: bias_param,
            bn: state_bn,
            ..
        }
        | NodeState::Linear {
            weight,
            bias: bias_param,
            bn: state_bn,
            ..
        }) = node_state
        else {
            continue;
        };
        let Some(bn) = state_bn.take() else {
            continue;
        };
        let (scale, _) = bn.affine();
        let k = weight.value.len() / out.max(1);
        let mut b = bias_param
            .as_ref()
            .map_or(vec![0.0; out], |p| p.value.clone());
        for (c, s) in scale.iter().enumerate() {
            weight.value[c * k..(c + 1) * k]
                .iter_mut()
                .for_each(|v| *v *= s);
            b[c] = (b[c] - bn.running_mean[c]) * s + bn.beta.value[c];
        }
        *bias_param = Some(Param::new(format!("{}.bias", node.name), vec![out], b));
        *bias = true;
        *op_bn = None;
    }
    (graph, state)
}
