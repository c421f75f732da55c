//! Checked model -> float IR: one node per layer, in execution order, behind an input node.
//! No fusion and no quantization yet (the passes do that).

use super::{CheckedModel, LayerKind, Source};
use crate::ir::{Act, BnAttrs, Graph, Node, Op};

pub fn lower(model: &CheckedModel) -> Graph {
    let mut nodes = vec![Node {
        name: "input".into(),
        op: Op::Input,
        inputs: Vec::new(),
        shape: model.input.clone(),
        qconfig: None,
    }];
    for layer in &model.layers {
        let op = match &layer.kind {
            LayerKind::Linear {
                in_features,
                out_features,
                bias,
            } => Op::Linear {
                in_features: *in_features,
                out_features: *out_features,
                bias: *bias,
                bn: None,
                act: Act::None,
                weight_fq: None,
            },
            LayerKind::Conv2d { geom, bias } => Op::Conv2d {
                geom: *geom,
                bias: *bias,
                bn: None,
                act: Act::None,
                weight_fq: None,
            },
            LayerKind::Activation(a) => Op::Activation(*a),
            LayerKind::Pool(p) => Op::Pool(*p),
            LayerKind::Flatten => Op::Flatten,
            LayerKind::Norm {
                kind,
                eps,
                momentum,
                ..
            } => Op::BatchNorm(BnAttrs {
                name: layer.name.clone(),
                kind: *kind,
                eps: *eps,
                momentum: *momentum,
            }),
            LayerKind::Dropout { p } => Op::Dropout { p: *p },
            LayerKind::Combine(c) => Op::Combine(*c),
        };
        nodes.push(Node {
            name: layer.name.clone(),
            op,
            inputs: layer
                .inputs
                .iter()
                .map(|s| match s {
                    Source::Input => 0,
                    Source::Layer(j) => j + 1,
                })
                .collect(),
            shape: layer.out_shape.clone(),
            qconfig: layer.qconfig.clone(),
        });
    }
    Graph {
        name: model.name.clone(),
        nodes,
        output: model.output + 1,
        backend: model.backend,
    }
}
