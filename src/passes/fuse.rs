//! fuse: Conv2d+BatchNorm2d(+ReLU), Linear+BatchNorm1d(+ReLU), Conv2d+ReLU and Linear+ReLU
//! become one node, as torch's `fuse_modules` does; which nodes fuse is
//! [`Graph::fusion_hosts`]. The fused node keeps the first node's name and qconfig; it does not
//! change any shape or any parameter.

use crate::ir::{Fusion, Graph, Node, NodeId, Op};

pub fn fuse(graph: &Graph) -> Graph {
    let absorbed_into = graph.fusion_hosts();
    let mut fused: Vec<Node> = graph.nodes.clone();
    for (u, host) in absorbed_into.iter().enumerate() {
        let Some(i) = *host else { continue };
        // `fusion_hosts` absorbs BatchNorms and activations into Conv2d and Linear only.
        if let Op::Conv2d { bn, act, .. } | Op::Linear { bn, act, .. } = &mut fused[i].op {
            match graph.nodes[u].op.fusion() {
                Fusion::BatchNorm(attrs) => *bn = Some(attrs),
                Fusion::Act(a) => *act = a,
                Fusion::Head(_) | Fusion::None => {}
            }
        }
    }
    rebuild(graph, fused, &absorbed_into)
}

/// Drops absorbed nodes and points their readers at the node that absorbed them.
fn rebuild(graph: &Graph, nodes: Vec<Node>, absorbed_into: &[Option<NodeId>]) -> Graph {
    let mut new_id = vec![0; nodes.len()];
    let mut out = Vec::new();
    for (i, mut node) in nodes.into_iter().enumerate() {
        if let Some(host) = absorbed_into[i] {
            new_id[i] = new_id[host];
            continue;
        }
        node.inputs = node.inputs.iter().map(|&j| new_id[j]).collect();
        new_id[i] = out.len();
        out.push(node);
    }
    Graph {
        name: graph.name.clone(),
        nodes: out,
        output: new_id[graph.output],
        backend: graph.backend,
    }
}
