//! fuse: Conv2d+BatchNorm2d(+ReLU), Linear+BatchNorm1d(+ReLU), Conv2d+ReLU and Linear+ReLU
//! become one node, as torch's `fuse_modules` does (each op says its part: [`Op::fusion`]);
//! ReLU6 too under the `native` backend only ([`Graph::torch_relu6`]). A pair fuses only when
//! the first node's output has no
//! other reader and is not the graph output. The fused node keeps the first node's name and
//! qconfig; it does not change any shape or any parameter.

use crate::ir::{Act, Fusion, Graph, Node, NodeId, Op};

pub fn fuse(graph: &Graph) -> Graph {
    let users = graph.users();
    // The single reader of `i`, when fusing into it is allowed.
    let sole_user = |i: NodeId| -> Option<NodeId> {
        match users[i].as_slice() {
            [u] if i != graph.output => Some(*u),
            _ => None,
        }
    };
    let mut absorbed_into: Vec<Option<NodeId>> = vec![None; graph.nodes.len()];
    let mut fused: Vec<Node> = graph.nodes.clone();
    for i in 0..graph.nodes.len() {
        if absorbed_into[i].is_some() {
            continue;
        }
        let Fusion::Head(host) = graph.nodes[i].op.fusion() else {
            continue;
        };
        let mut tail = i;
        if let Some(u) = sole_user(tail) {
            if let (Fusion::BatchNorm(attrs), Op::Conv2d { bn, .. } | Op::Linear { bn, .. }) =
                (graph.nodes[u].op.fusion(), &mut fused[i].op)
            {
                if attrs.kind.host() == host {
                    *bn = Some(attrs);
                    absorbed_into[u] = Some(i);
                    tail = u;
                }
            }
        }
        if let Some(u) = sole_user(tail) {
            if let Fusion::Act(a) = graph.nodes[u].op.fusion() {
                if a == Act::ReLU6 && graph.torch_relu6() {
                    continue;
                }
                if let Op::Conv2d { act, .. } | Op::Linear { act, .. } = &mut fused[i].op {
                    *act = a;
                    absorbed_into[u] = Some(i);
                }
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
