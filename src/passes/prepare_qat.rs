//! prepare_qat: inserts fake quantization as torch's `prepare_qat` does, per each node's
//! effective qconfig:
//! - a fake-quant on the input (the QuantStub) where a quantized node reads it;
//! - the weight fake-quant of every quantized Linear/Conv2d (an attribute of the node);
//! - a fake-quant after every quantized node whose output needs its own parameters
//!   ([`Op::output_quant`]): Linear, Conv2d, Add, standalone BatchNorm2d and table activations
//!   (after a fused activation, never between a layer and its fused ReLU); after sigmoid-like
//!   activations its parameters are fixed, as torch's `FixedQParamsFakeQuantize`;
//! - nothing after ops that share their input's qparams (ReLU, pools, Flatten, Dropout, and
//!   ReLU6 under `native`; under fbgemm and qnnpack ReLU6 is observed, as torch observes it:
//!   [`Graph::output_quant`]);
//! - a dequant where a float (`none`) node reads a quantized tensor, and a fake-quant where a
//!   quantized node reads a float tensor; a dequant on a quantized graph output.
//!
//! It changes no shape and no parameter. A graph with no qconfig anywhere comes out unchanged.

use crate::ir::{Graph, Node, NodeId, Op, OutputQuant};
use crate::quant::qconfig::{DType, FakeQuantConfig, QConfig, Scheme};

pub fn prepare_qat(graph: &Graph) -> Graph {
    let mut out: Vec<Node> = Vec::new();
    // For each old node: the new node holding its (possibly fake-quantized) output, and whether
    // that output is in the quantized domain.
    let mut value: Vec<NodeId> = vec![0; graph.nodes.len()];
    let mut quantized: Vec<bool> = vec![false; graph.nodes.len()];
    // Stubs already inserted on an old node's output: (quant stub, dequant stub).
    let mut stubs: Vec<(Option<NodeId>, Option<NodeId>)> = vec![(None, None); graph.nodes.len()];

    for (i, node) in graph.nodes.iter().enumerate() {
        if matches!(node.op, Op::Input) {
            value[i] = push(&mut out, node.clone());
            continue;
        }
        let qconfig = node.qconfig.clone();
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &j in &node.inputs {
            let source = graph.nodes[j].name.as_str();
            let id = match (&qconfig, quantized[j]) {
                (Some(q), false) => *stubs[j].0.get_or_insert_with(|| {
                    let stub = fake_quant_node(format!("{source}.quant"), value[j], &out, q);
                    push(&mut out, stub)
                }),
                (None, true) => *stubs[j].1.get_or_insert_with(|| {
                    let stub = dequant_node(format!("{source}.dequant"), value[j], &out);
                    push(&mut out, stub)
                }),
                _ => value[j],
            };
            inputs.push(id);
        }
        let mut op = node.op.clone();
        if let (Some(q), Op::Linear { weight_fq, .. } | Op::Conv2d { weight_fq, .. }) =
            (&qconfig, &mut op)
        {
            *weight_fq = Some(q.weight);
        }
        let output_quant = graph.output_quant(&op);
        let id = push(
            &mut out,
            Node {
                op,
                inputs,
                ..node.clone()
            },
        );
        value[i] = id;
        quantized[i] = match (&qconfig, output_quant) {
            (Some(q), OutputQuant::Observed) => {
                let fq = fake_quant_node(format!("{}.fq", node.name), id, &out, q);
                value[i] = push(&mut out, fq);
                true
            }
            (Some(q), OutputQuant::Fixed(fixed)) => {
                // torch's FixedQParamsFakeQuantize: quint8 0..255 (never reduced), parameters
                // fixed, whatever the qconfig says.
                let mut q = q.clone();
                q.activation = FakeQuantConfig {
                    dtype: DType::Quint8,
                    scheme: Scheme::Affine,
                    quant_min: 0,
                    quant_max: 255,
                    fixed: Some(fixed),
                    learnable: false,
                    ..q.activation
                };
                let fq = fake_quant_node(format!("{}.fq", node.name), id, &out, &q);
                value[i] = push(&mut out, fq);
                true
            }
            (Some(_), OutputQuant::Shared) => true,
            (Some(_), OutputQuant::Float) | (None, _) => false,
        };
    }
    let mut output = value[graph.output];
    if quantized[graph.output] {
        let name = format!("{}.dequant", graph.nodes[graph.output].name);
        let stub = dequant_node(name, output, &out);
        output = push(&mut out, stub);
    }
    Graph {
        name: graph.name.clone(),
        nodes: out,
        output,
        backend: graph.backend,
    }
}

fn push(nodes: &mut Vec<Node>, node: Node) -> NodeId {
    nodes.push(node);
    nodes.len() - 1
}

fn fake_quant_node(name: String, input: NodeId, nodes: &[Node], qconfig: &QConfig) -> Node {
    Node {
        name,
        op: Op::FakeQuant(qconfig.activation),
        inputs: vec![input],
        shape: nodes[input].shape.clone(),
        qconfig: Some(qconfig.clone()),
    }
}

fn dequant_node(name: String, input: NodeId, nodes: &[Node]) -> Node {
    Node {
        name,
        op: Op::DeQuantStub,
        inputs: vec![input],
        shape: nodes[input].shape.clone(),
        qconfig: None,
    }
}
