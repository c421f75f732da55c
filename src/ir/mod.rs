//! The IR: a DAG of typed ops over tensors with static per-sample shapes (the batch dimension
//! `N` is symbolic). One node, one output tensor. Nodes are stored in execution order, and a
//! node only reads nodes before it; [`verify`] checks that and every shape rule.
//!
//! The text form ([`Graph::to_text`]) is stable and diffable: tests snapshot it after every pass
//! and `qatc compile --emit ir` prints it.

pub use crate::ops::shape;
use crate::ops::shape::hw_text as hw;
pub use crate::ops::shape::ConvGeom;

use std::fmt::Write;

use serde::{Deserialize, Serialize};

pub use crate::ops::activation::{Act, Activation, Quantized};
pub use crate::ops::combine::Combine;
pub use crate::ops::norm::{Host, Norm};
pub use crate::ops::pool::{Pool, Pool2d};
use crate::quant::numerics::QParams;
use crate::quant::qconfig::{Backend, FakeQuantConfig, QConfig};

pub type NodeId = usize;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub output: NodeId,
    /// The model's backend, where placement rules depend on it ([`Graph::torch_relu6`]).
    #[serde(default)]
    pub backend: Option<Backend>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique; the source layer's name, or a name derived from it for inserted nodes.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
    /// One sample's output shape.
    pub shape: Vec<usize>,
    /// The layer's effective qconfig (`None`: float).
    pub qconfig: Option<QConfig>,
}

impl Node {
    /// Multiply-accumulates per sample: the weight layers' products (output values times
    /// fan-in), as [`crate::int8::QNode::macs`] counts them; 0 for every other op.
    pub fn macs(&self) -> usize {
        let outputs: usize = self.shape.iter().product();
        match &self.op {
            Op::Linear { in_features, .. } => outputs * in_features,
            Op::Conv2d { geom, .. } => outputs * geom.fan_in(),
            Op::Input
            | Op::BatchNorm(_)
            | Op::Activation(_)
            | Op::Pool(_)
            | Op::Flatten
            | Op::Dropout { .. }
            | Op::Combine(_)
            | Op::FakeQuant(_)
            | Op::DeQuantStub => 0,
        }
    }
}

/// A node's part in fusion.
#[derive(Clone, Debug, PartialEq)]
pub enum Fusion {
    /// A Conv2d or Linear that takes what follows it: a BatchNorm whose host it is, then an
    /// activation.
    Head(Host),
    /// A BatchNorm its host can absorb.
    BatchNorm(BnAttrs),
    /// An activation that becomes the clamp of the layer before it.
    Act(Act),
    None,
}

/// Where a quantized node's output parameters come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OutputQuant {
    /// A fake quant after the node observes them.
    Observed,
    /// They are the input's (pools, flatten, clamps).
    Shared,
    /// Fixed, whatever the data (sigmoid-like activations).
    Fixed(QParams),
    /// The output is float (a dequant).
    Float,
}

/// BatchNorm settings of a standalone or fused BatchNorm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BnAttrs {
    /// The BatchNorm layer's name (its parameters are stored under it).
    pub name: String,
    pub kind: Norm,
    pub eps: f64,
    pub momentum: f64,
}

/// The closed set of ops. Adding one fails to compile until its shape rule, its text form and
/// its training kernels exist.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Input,
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
        /// A fused BatchNorm1d (QAT LinearBn1d semantics, as a Conv2d's BatchNorm).
        bn: Option<BnAttrs>,
        act: Act,
        /// Fake quantization of the weight (set by prepare_qat).
        weight_fq: Option<FakeQuantConfig>,
    },
    Conv2d {
        geom: ConvGeom,
        bias: bool,
        /// A fused BatchNorm (QAT ConvBn2d semantics: statistics kept, folded for the weight's
        /// fake quantization).
        bn: Option<BnAttrs>,
        act: Act,
        weight_fq: Option<FakeQuantConfig>,
    },
    BatchNorm(BnAttrs),
    /// A standalone elementwise activation.
    Activation(Activation),
    Flatten,
    Dropout {
        p: f64,
    },
    /// An op combining its inputs (`Add`, ...).
    Combine(Combine),
    /// Fake quantization of an activation, with its observer.
    FakeQuant(FakeQuantConfig),
    /// Leaves the quantized domain (identity while training; a real dequantize after convert).
    DeQuantStub,
    /// Max, average or global average pooling (serialized as the pool itself; untagged
    /// variants come last).
    #[serde(untagged)]
    Pool(Pool),
}

impl Op {
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Linear { .. } => "linear",
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm(b) => b.kind.mnemonic(),
            Op::Activation(a) => a.mnemonic(),
            Op::Pool(p) => p.mnemonic(),
            Op::Flatten => "flatten",
            Op::Dropout { .. } => "dropout",
            Op::Combine(c) => c.mnemonic(),
            Op::FakeQuant(_) => "fake_quant",
            Op::DeQuantStub => "dequant",
        }
    }

    /// What the node is to fusion (torch's `fuse_modules` patterns).
    pub fn fusion(&self) -> Fusion {
        match self {
            Op::Conv2d {
                bn: None,
                act: Act::None,
                ..
            } => Fusion::Head(Host::Conv2d),
            Op::Linear {
                bn: None,
                act: Act::None,
                ..
            } => Fusion::Head(Host::Linear),
            Op::BatchNorm(attrs) => Fusion::BatchNorm(attrs.clone()),
            Op::Activation(a) => a.fused().map_or(Fusion::None, Fusion::Act),
            // Already fused, or never part of a pattern.
            Op::Conv2d { .. }
            | Op::Linear { .. }
            | Op::Input
            | Op::Pool(_)
            | Op::Flatten
            | Op::Dropout { .. }
            | Op::Combine(_)
            | Op::FakeQuant(_)
            | Op::DeQuantStub => Fusion::None,
        }
    }

    /// Where the output's quantization parameters come from when the node is quantized.
    pub fn output_quant(&self) -> OutputQuant {
        match self {
            Op::Linear { .. } | Op::Conv2d { .. } | Op::Combine(_) | Op::BatchNorm(_) => {
                OutputQuant::Observed
            }
            Op::Activation(a) => match a.quantized() {
                Quantized::Clamp(_) => OutputQuant::Shared,
                Quantized::Observed => OutputQuant::Observed,
                Quantized::Fixed(q) => OutputQuant::Fixed(q),
            },
            Op::Pool(_) | Op::Flatten | Op::Dropout { .. } | Op::Input | Op::FakeQuant(_) => {
                OutputQuant::Shared
            }
            Op::DeQuantStub => OutputQuant::Float,
        }
    }

    /// The shape rule: one sample's output shape from the inputs' shapes, or why it is invalid.
    pub fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let one = || match inputs {
            [x] => Ok(x.to_vec()),
            _ => Err(format!(
                "{} takes 1 input, got {}",
                self.mnemonic(),
                inputs.len()
            )),
        };
        let rule = |e: shape::ShapeError| format!("{} {e}", self.mnemonic());
        match self {
            Op::Input => Err("input has no inputs".into()),
            Op::Linear {
                in_features,
                out_features,
                ..
            } => shape::linear(&one()?, *in_features, *out_features).map_err(rule),
            Op::Conv2d { geom, .. } => shape::conv2d(&one()?, geom).map_err(rule),
            Op::Pool(p) => p.output_shape(&one()?).map_err(rule),
            Op::BatchNorm(b) => {
                let x = one()?;
                match b.kind.channels(&x) {
                    Some(_) => Ok(x),
                    None => Err(format!(
                        "{} needs {}, got {x:?}",
                        b.kind.mnemonic(),
                        b.kind.input_text()
                    )),
                }
            }
            Op::Flatten => Ok(shape::flatten(&one()?)),
            Op::Activation(_) | Op::Dropout { .. } | Op::FakeQuant(_) | Op::DeQuantStub => one(),
            Op::Combine(c) => c.output_shape(inputs, |k| format!("input #{k}")),
        }
    }
}

impl Graph {
    /// Whether ReLU6 keeps torch's eager-mode placement: not fused into the layer before it,
    /// its output observed. So it is under fbgemm and qnnpack: torch has no Conv+ReLU6 or
    /// Linear+ReLU6 fuser, and `prepare` observes `nn.ReLU6`. The `native` backend (and a float
    /// model) fuses it as a clamp of the layer's codes, which is exact and saves a
    /// requantization.
    pub fn torch_relu6(&self) -> bool {
        matches!(self.backend, Some(Backend::Fbgemm | Backend::Qnnpack))
    }

    /// How `op`'s output is quantized in this graph: [`Op::output_quant`], except a ReLU6 under
    /// torch's placement, which is observed.
    pub fn output_quant(&self, op: &Op) -> OutputQuant {
        match op {
            Op::Activation(Activation::ReLU6) if self.torch_relu6() => OutputQuant::Observed,
            _ => op.output_quant(),
        }
    }

    /// Indices of the nodes that read each node.
    /// Which node each node fuses into, as torch's `fuse_modules` would fuse them:
    /// Conv2d+BatchNorm2d(+ReLU), Linear+BatchNorm1d(+ReLU), Conv2d+ReLU and Linear+ReLU (each
    /// op says its part: [`Op::fusion`]); ReLU6 too, under the `native` backend only
    /// ([`Graph::torch_relu6`]). A pair fuses only when the first node's output has no other
    /// reader and is not the graph output. `None` for the nodes that stay.
    pub fn fusion_hosts(&self) -> Vec<Option<NodeId>> {
        let users = self.users();
        // The single reader of `i`, when fusing into it is allowed.
        let sole_user = |i: NodeId| -> Option<NodeId> {
            match users[i].as_slice() {
                [u] if i != self.output => Some(*u),
                _ => None,
            }
        };
        let mut host: Vec<Option<NodeId>> = vec![None; self.nodes.len()];
        for i in 0..self.nodes.len() {
            if host[i].is_some() {
                continue;
            }
            let Fusion::Head(kind) = self.nodes[i].op.fusion() else {
                continue;
            };
            let mut tail = i;
            if let Some(u) = sole_user(tail) {
                if let Fusion::BatchNorm(attrs) = self.nodes[u].op.fusion() {
                    if attrs.kind.host() == kind {
                        host[u] = Some(i);
                        tail = u;
                    }
                }
            }
            if let Some(u) = sole_user(tail) {
                if let Fusion::Act(a) = self.nodes[u].op.fusion() {
                    if !(a == Act::ReLU6 && self.torch_relu6()) {
                        host[u] = Some(i);
                    }
                }
            }
        }
        host
    }

    pub fn users(&self) -> Vec<Vec<NodeId>> {
        let mut users = vec![Vec::new(); self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for &j in &node.inputs {
                users[j].push(i);
            }
        }
        users
    }

    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node whose output is layer `name`'s value as later layers see it: the fake quant
    /// that observes it (its only reader) when there is one, else the node itself.
    pub fn observed_output(&self, name: &str) -> Option<NodeId> {
        let node = self.find(name)?;
        let readers: Vec<NodeId> = (node + 1..self.nodes.len())
            .filter(|&i| self.nodes[i].inputs.contains(&node))
            .collect();
        match readers.as_slice() {
            [fq] if matches!(self.nodes[*fq].op, Op::FakeQuant(_)) => Some(*fq),
            _ => Some(node),
        }
    }

    /// The stable text form.
    pub fn to_text(&self) -> String {
        let lines = self.nodes.iter().map(|node| {
            let qconfig = node
                .qconfig
                .as_ref()
                .map_or(String::new(), |q| format!("  @{}", q.name));
            TextLine {
                name: &node.name,
                mnemonic: node.op.mnemonic(),
                inputs: node
                    .inputs
                    .iter()
                    .map(|&i| self.nodes[i].name.as_str())
                    .collect(),
                attrs: attrs_text(&node.op),
                ty: format!("f32[N, {}]{qconfig}", dims_text(&node.shape)),
            }
        });
        graph_text(&self.name, lines, &self.nodes[self.output].name)
    }
}

/// One node of a graph's text form: `%name = mnemonic(%a, %b) {attrs} : type`.
pub struct TextLine<'a> {
    pub name: &'a str,
    pub mnemonic: &'static str,
    pub inputs: Vec<&'a str>,
    pub attrs: String,
    pub ty: String,
}

/// The text form shared by the float and the int8 IR.
pub fn graph_text<'a>(
    header: &str,
    lines: impl Iterator<Item = TextLine<'a>>,
    output: &str,
) -> String {
    let mut out = format!("graph {header} {{\n");
    for line in lines {
        let args = line
            .inputs
            .iter()
            .map(|i| format!("%{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let attrs = if line.attrs.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", line.attrs)
        };
        let _ = writeln!(
            out,
            "  %{} = {}({args}){attrs} : {}",
            line.name, line.mnemonic, line.ty
        );
    }
    let _ = writeln!(out, "  return %{output}");
    out.push_str("}\n");
    out
}

/// `1, 28, 28`.
pub fn dims_text(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A fused activation as the graphs' text shows it: `act=relu`.
pub(crate) fn act_text(act: Act) -> Option<&'static str> {
    match act {
        Act::None => None,
        Act::ReLU => Some("act=relu"),
        Act::ReLU6 => Some("act=relu6"),
    }
}

fn attrs_text(op: &Op) -> String {
    let mut parts: Vec<String> = Vec::new();
    match op {
        Op::Linear {
            in_features,
            out_features,
            bias,
            bn,
            act,
            weight_fq,
        } => {
            parts.push(format!("in={in_features} out={out_features}"));
            if !bias {
                parts.push("bias=false".into());
            }
            parts.extend(
                bn.as_ref()
                    .map(|b| format!("bn={} eps={:?} momentum={:?}", b.name, b.eps, b.momentum)),
            );
            parts.extend(act_text(*act).map(String::from));
            parts.extend(weight_fq.map(|fq| format!("weight_fq=[{}]", fq.describe())));
        }
        Op::Conv2d {
            geom,
            bias,
            bn,
            act,
            weight_fq,
        } => {
            parts.push(format!(
                "in={} out={} k={} s={} p={} g={}",
                geom.in_channels,
                geom.out_channels,
                hw(geom.kernel),
                hw(geom.stride),
                hw(geom.padding),
                geom.groups
            ));
            if !bias {
                parts.push("bias=false".into());
            }
            parts.extend(
                bn.as_ref()
                    .map(|b| format!("bn={} eps={:?} momentum={:?}", b.name, b.eps, b.momentum)),
            );
            parts.extend(act_text(*act).map(String::from));
            parts.extend(weight_fq.map(|fq| format!("weight_fq=[{}]", fq.describe())));
        }
        Op::BatchNorm(b) => parts.push(format!("eps={:?} momentum={:?}", b.eps, b.momentum)),
        Op::Pool(pool) => parts.extend(
            pool.window()
                .map(|p| format!("k={} s={} p={}", hw(p.kernel), hw(p.stride), hw(p.padding))),
        ),
        Op::Dropout { p } => parts.push(format!("p={p:?}")),
        Op::FakeQuant(fq) => parts.push(fq.describe()),
        Op::Activation(a) => parts.extend(a.args().iter().map(|(k, v)| format!("{k}={v:?}"))),
        Op::Input | Op::Flatten | Op::Combine(_) | Op::DeQuantStub => {}
    }
    parts.join(" ")
}

/// Checks the graph's invariants: one input node first, inputs only from earlier nodes, unique
/// names, every shape as its op's shape rule says. Returns every violation found.
pub fn verify(graph: &Graph) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if !names.insert(node.name.as_str()) {
            errors.push(format!("%{}: duplicate node name", node.name));
        }
        if (i == 0) != matches!(node.op, Op::Input) {
            errors.push(format!(
                "%{}: the input node must be first and only first",
                node.name
            ));
            continue;
        }
        if i == 0 {
            continue;
        }
        if let Some(&bad) = node.inputs.iter().find(|&&j| j >= i) {
            errors.push(format!(
                "%{}: reads node {bad}, which is not before it",
                node.name
            ));
            continue;
        }
        let shapes: Vec<&[usize]> = node
            .inputs
            .iter()
            .map(|&j| graph.nodes[j].shape.as_slice())
            .collect();
        match node.op.output_shape(&shapes) {
            Ok(shape) if shape == node.shape => {}
            Ok(shape) => errors.push(format!(
                "%{}: shape {:?}, but its op gives {shape:?}",
                node.name, node.shape
            )),
            Err(e) => errors.push(format!("%{}: {e}", node.name)),
        }
    }
    if graph.output >= graph.nodes.len() {
        errors.push(format!("output {} is not a node", graph.output));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
