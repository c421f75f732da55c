//! AST -> checked model: resolves layer names into a DAG, infers every tensor's shape, fills in
//! PyTorch's defaults, resolves each layer's effective qconfig and the training settings.
//!
//! It reports every error it can find, not just the first: a layer whose inputs failed is
//! skipped quietly, so one mistake gives one message.

mod lower;
mod table;

use crate::syntax::fmt::number;
use std::collections::HashMap;

use serde::Serialize;

pub use lower::lower;
pub use table::{model_json, model_table};

use crate::diag::{suggest, suggest_among, Diag, Span};
use crate::ir::shape::{self, hw_text as hw, ShapeError};
use crate::ir::{Activation, Combine, ConvGeom, Pool};
use crate::limits;
use crate::limits::WindowError;
use crate::ops::norm::{self, Norm};
use crate::quant::qconfig::{self, FakeQuantConfig, QConfig, QuantMode};
use crate::syntax::ast::{self, Backend, DType, Op, QconfigRef, Spec};

/// A model that passed every check: layers in a valid execution order, all shapes known.
#[derive(Clone, Debug, Serialize)]
pub struct CheckedModel {
    pub name: String,
    /// One sample's shape, without the batch dimension.
    pub input: Vec<usize>,
    /// Layers in execution order (a topological order of the DAG, stable w.r.t. the source).
    pub layers: Vec<CheckedLayer>,
    /// Index into `layers` of the output layer.
    pub output: usize,
    /// `None` when the spec has no `quantize` block: the model trains as plain float.
    pub backend: Option<Backend>,
    pub train: Option<TrainConfig>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckedLayer {
    pub name: String,
    pub kind: LayerKind,
    pub inputs: Vec<Source>,
    pub out_shape: Vec<usize>,
    pub params: usize,
    /// Multiply-accumulates for one sample.
    pub macs: usize,
    /// `None` keeps the layer float.
    pub qconfig: Option<QConfig>,
    #[serde(skip)]
    pub span: Span,
    /// Where the `quantize` block gives this layer its own qconfig (`bn1: none`), if it does.
    #[serde(skip)]
    pub qconfig_override: Option<Span>,
}

/// Where a layer's input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Source {
    /// The model's input.
    Input,
    /// The output of `layers[i]`.
    Layer(usize),
}

/// A layer with every argument resolved (PyTorch's defaults filled in) and its input sizes known.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum LayerKind {
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    Conv2d {
        geom: ConvGeom,
        bias: bool,
    },
    Activation(Activation),
    Pool(Pool),
    Flatten,
    Norm {
        kind: Norm,
        channels: usize,
        eps: f64,
        momentum: f64,
    },
    Dropout {
        p: f64,
    },
    Combine(Combine),
}

impl LayerKind {
    /// A short PyTorch-like description: `Conv2d(1, 16, k=5)`, `Linear(512, 120)`.
    pub fn describe(&self) -> String {
        match self {
            LayerKind::Linear {
                in_features,
                out_features,
                ..
            } => format!("Linear({in_features}, {out_features})"),
            LayerKind::Conv2d { geom: g, .. } => {
                let mut s = format!(
                    "Conv2d({}, {}, k={}",
                    g.in_channels,
                    g.out_channels,
                    hw(g.kernel)
                );
                if g.stride != (1, 1) {
                    s.push_str(&format!(", s={}", hw(g.stride)));
                }
                if g.padding != (0, 0) {
                    s.push_str(&format!(", p={}", hw(g.padding)));
                }
                if g.groups != 1 {
                    s.push_str(&format!(", g={}", g.groups));
                }
                s + ")"
            }
            LayerKind::Pool(p) => p.describe(),
            LayerKind::Norm { kind, channels, .. } => format!("{}({channels})", kind.name()),
            LayerKind::Dropout { p } => format!("Dropout({p})"),
            LayerKind::Activation(a) => {
                let args: Vec<String> = a.args().iter().map(|(_, v)| v.to_string()).collect();
                if args.is_empty() {
                    a.name().into()
                } else {
                    format!("{}({})", a.name(), args.join(", "))
                }
            }
            LayerKind::Flatten => "Flatten".into(),
            LayerKind::Combine(c) => c.name().into(),
        }
    }
}

/// The training settings with defaults filled in.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainConfig {
    /// `None` until the user names the data (a spec written by `qatc import`); commands that
    /// need data say so.
    pub data: Option<ast::DataSource>,
    /// Per input channel.
    pub normalization: crate::data::Normalization,
    pub epochs: usize,
    pub batch: usize,
    pub optimizer: OptimizerConfig,
    pub schedule: Option<ast::Schedule>,
    pub pretrain_epochs: usize,
    pub freeze_bn_after: Option<usize>,
    pub freeze_observers_after: Option<usize>,
    pub seed: u64,
    /// The fraction of the training data held out for the per-epoch accuracy; `None` (the
    /// default, as PyTorch's tutorial) measures each epoch on the test set.
    pub validation: Option<f64>,
    /// The state dict to start from, as written (relative to the spec's folder).
    pub init: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum OptimizerConfig {
    Sgd {
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    },
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// Replaces the learning rate (`qatc train --lr`).
    pub fn set_lr(&mut self, rate: f64) {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => *lr = rate,
        }
    }
}

impl std::fmt::Display for OptimizerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
                nesterov,
            } => write!(
                f,
                "sgd(lr: {}, momentum: {}, weight_decay: {}, nesterov: {nesterov})",
                number(*lr),
                number(*momentum),
                number(*weight_decay)
            ),
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => write!(
                f,
                "adam(lr: {}, beta1: {}, beta2: {}, eps: {}, weight_decay: {})",
                number(*lr),
                number(*beta1),
                number(*beta2),
                number(*eps),
                number(*weight_decay)
            ),
        }
    }
}

/// Checks a parsed spec. Warnings come back with the model; errors instead of it.
pub fn check(spec: &Spec) -> Result<(CheckedModel, Vec<Diag>), Vec<Diag>> {
    let mut diags = Vec::new();
    let model = check_model(spec, &mut diags);
    let train = spec
        .train
        .as_ref()
        .and_then(|t| check_train(t, spec, &mut diags));
    if diags.iter().any(Diag::is_error) {
        return Err(diags);
    }
    let mut model = model.ok_or_else(Vec::new)?;
    model.train = train;
    Ok((model, diags))
}

// ---------------------------------------------------------------------------------------- graph

fn check_model(spec: &Spec, diags: &mut Vec<Diag>) -> Option<CheckedModel> {
    let m = &spec.model;
    let layers = &m.layers;
    if layers.is_empty() {
        diags.push(Diag::error(
            m.name.span,
            format!("model `{}` has no layers", m.name.node),
        ));
        return None;
    }

    // Names -> index; the first of two equal names wins, the second is reported.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, layer) in layers.iter().enumerate() {
        let name = layer.name.node.as_str();
        if name == "input" || name == "output" {
            diags.push(Diag::error(
                layer.name.span,
                format!("`{name}` is reserved and cannot name a layer"),
            ));
        } else if let Some(&first) = index.get(name) {
            diags.push(
                Diag::error(layer.name.span, format!("duplicate layer name `{name}`"))
                    .with_label("second definition")
                    .with_secondary(
                        layers[first].name.span,
                        format!(
                            "first defined here, as a {}",
                            layers[first].op.node.type_name()
                        ),
                    ),
            );
        } else {
            index.insert(name, i);
        }
    }
    let names: Vec<&str> = layers.iter().map(|l| l.name.node.as_str()).collect();

    // Each layer's sources, in source order. `None` marks an input that failed to resolve.
    let mut sources: Vec<Vec<Option<Source>>> = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        if layer.inputs.is_empty() {
            sources.push(vec![Some(if i == 0 {
                Source::Input
            } else {
                Source::Layer(i - 1)
            })]);
            continue;
        }
        let resolved = layer
            .inputs
            .iter()
            .map(|input| {
                if input.node == "input" {
                    return Some(Source::Input);
                }
                match index.get(input.node.as_str()) {
                    Some(&j) => Some(Source::Layer(j)),
                    None => {
                        let d = Diag::error(input.span, format!("no layer named `{}`", input.node))
                            .with_label("unknown input");
                        diags.push(suggest_among(
                            diags.len(),
                            d,
                            &input.node,
                            names.iter().copied().chain(["input"]),
                        ));
                        None
                    }
                }
            })
            .collect();
        sources.push(resolved);
    }

    let order = topological_order(layers, &sources, diags)?;

    // Shapes, in execution order. `None` = unknown because an input failed.
    let mut shapes: Vec<Option<Vec<usize>>> = vec![None; layers.len()];
    let mut kinds: Vec<Option<(LayerKind, usize, usize)>> = vec![None; layers.len()];
    let input_shape = &m.input.node;
    let input_ok = check_size(input_shape, m.input.span, "the input", diags);
    for &i in &order {
        let in_shapes: Option<Vec<Vec<usize>>> = sources[i]
            .iter()
            .map(|s| match s {
                Some(Source::Input) => input_ok.then(|| input_shape.clone()),
                Some(Source::Layer(j)) => shapes[*j].clone(),
                None => None,
            })
            .collect();
        let Some(in_shapes) = in_shapes else { continue };
        if let Some((kind, out, params, macs)) =
            infer_layer(&layers[i], &in_shapes, &sources[i], &names, diags)
        {
            let what = format!("the output of `{}`", layers[i].name.node);
            if check_size(&out, layers[i].op.span, &what, diags) {
                shapes[i] = Some(out);
                kinds[i] = Some((kind, params, macs));
            }
        }
    }

    let output = match &m.output {
        None => layers.len() - 1,
        Some(name) => match index.get(name.node.as_str()) {
            Some(&i) => i,
            None => {
                let d = Diag::error(
                    name.span,
                    format!("the output names no layer: `{}`", name.node),
                );
                diags.push(suggest(d, &name.node, names.iter().copied()));
                return None;
            }
        },
    };
    warn_unused(layers, &sources, output, diags);

    let qconfigs = resolve_qconfigs(spec, diags);
    if diags.iter().any(Diag::is_error) {
        return None;
    }
    let (backend, qconfigs) = qconfigs?;

    // Renumber to execution order.
    let mut position = vec![0; layers.len()];
    for (pos, &i) in order.iter().enumerate() {
        position[i] = pos;
    }
    let checked = order
        .iter()
        .map(|&i| {
            let (kind, params, macs) = kinds[i]
                .clone()
                .expect("every layer has a shape when no error was found");
            CheckedLayer {
                name: layers[i].name.node.clone(),
                kind,
                inputs: sources[i]
                    .iter()
                    .map(|s| match s.expect("resolved") {
                        Source::Input => Source::Input,
                        Source::Layer(j) => Source::Layer(position[j]),
                    })
                    .collect(),
                out_shape: shapes[i].clone().expect("shape known"),
                params,
                macs,
                qconfig: qconfigs[i].clone(),
                span: layers[i].name.span.to(layers[i].op.span),
                qconfig_override: spec.quantize.as_ref().and_then(|q| {
                    q.overrides
                        .iter()
                        .find(|o| o.layer.node == layers[i].name.node)
                        .map(|o| o.layer.span.to(o.qconfig.span))
                }),
            }
        })
        .collect();
    let model = CheckedModel {
        name: m.name.node.clone(),
        input: input_shape.clone(),
        layers: checked,
        output: position[output],
        backend,
        train: None,
    };
    warn_fused_overrides(&model, diags);
    Some(model)
}

impl CheckedModel {
    /// Which layer each layer fuses into (`bn1` into `conv1`), as training and convert will
    /// fuse them ([`crate::ir::Graph::fusion_hosts`]); `None` for the layers that stay.
    pub fn fusion_hosts(&self) -> Vec<Option<usize>> {
        // The IR has the input as node 0, then one node per layer.
        let hosts = lower(self).fusion_hosts();
        hosts[1..].iter().map(|h| h.map(|node| node - 1)).collect()
    }
}

/// `Conv2d(1, 16, 3)` on a 1-channel input is PyTorch's `nn.Conv2d(in_channels, out_channels,
/// kernel_size)`, which qatc reads as `out: 1, kernel: 16, stride: 3`: said, with the form to
/// write.
fn torch_positional_conv(layer: &ast::Layer, in_channels: usize, diags: &mut Vec<Diag>) {
    let Op::Conv2d {
        out,
        kernel,
        stride,
        ..
    } = &layer.op.node
    else {
        return;
    };
    if layer.arg_spans.1 < 3 || *out != in_channels {
        return;
    }
    let (k, s) = (kernel.hw(), stride.map_or((1, 1), ast::Size2::hw));
    let size = |(a, b): (usize, usize)| {
        if a == b {
            a.to_string()
        } else {
            format!("({a}, {b})")
        }
    };
    diags.push(
        Diag::warning(
            layer.op.span,
            format!(
                "this reads as `Conv2d(out: {out}, kernel: {}, stride: {})`, with as many output \
                 channels as input channels",
                size(k),
                size(s)
            ),
        )
        .with_label("PyTorch's argument order?")
        .with_help(format!(
            "PyTorch's order is `Conv2d(in_channels, out_channels, kernel_size)`; qatc infers the \
             input channels, so that is `Conv2d(out: {}, kernel: {})`",
            size(k),
            size(s)
        )),
    );
}

/// A qconfig given to a layer that fuses into another has no effect: the fused layer is
/// quantized (or kept float) as its host is.
fn warn_fused_overrides(model: &CheckedModel, diags: &mut Vec<Diag>) {
    for (j, host) in model.fusion_hosts().into_iter().enumerate() {
        let (Some(h), Some(span)) = (host, model.layers[j].qconfig_override) else {
            continue;
        };
        let (layer, host) = (&model.layers[j], &model.layers[h]);
        let name = |q: &Option<QConfig>| q.as_ref().map_or("none".to_string(), |q| q.name.clone());
        if name(&layer.qconfig) == name(&host.qconfig) {
            continue;
        }
        diags.push(
            Diag::warning(
                span,
                format!(
                    "`{}: {}` has no effect: `{}` fuses into `{}`",
                    layer.name,
                    name(&layer.qconfig),
                    layer.name,
                    host.name
                ),
            )
            .with_label(format!(
                "`{}` follows `{}`'s qconfig",
                layer.name, host.name
            ))
            .with_note(format!(
                "`{}` ({}) is fused into `{}` ({}) before training, as torch's `fuse_modules` \
                 does, and quantized with it: {}",
                layer.name,
                layer.kind.describe(),
                host.name,
                host.kind.describe(),
                name(&host.qconfig)
            ))
            .with_help(format!(
                "give `{}` the qconfig instead, or remove this line",
                host.name
            )),
        );
    }
}

/// Kahn's algorithm, taking the earliest ready layer in source order each time so the order
/// is the source order whenever the source order is valid. A cycle is an error naming its layers.
fn topological_order(
    layers: &[ast::Layer],
    sources: &[Vec<Option<Source>>],
    diags: &mut Vec<Diag>,
) -> Option<Vec<usize>> {
    let n = layers.len();
    let mut pending: Vec<usize> = sources
        .iter()
        .map(|s| {
            s.iter()
                .filter(|s| matches!(s, Some(Source::Layer(_))))
                .count()
        })
        .collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, s) in sources.iter().enumerate() {
        for src in s.iter().flatten() {
            if let Source::Layer(j) = src {
                users[*j].push(i);
            }
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() == n {
        return Some(order);
    }
    // Walk back along unresolved inputs from a stuck layer until a layer repeats: that is a cycle.
    let stuck = (0..n)
        .find(|&i| pending[i] > 0)
        .expect("some layer is stuck");
    let mut path = vec![stuck];
    let mut at = stuck;
    loop {
        let next = sources[at]
            .iter()
            .flatten()
            .find_map(|s| match s {
                Source::Layer(j) if pending[*j] > 0 => Some(*j),
                _ => None,
            })
            .expect("a stuck layer waits on a stuck layer");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse();
            let names: Vec<&str> = cycle
                .iter()
                .chain(&cycle[..1])
                .map(|&i| layers[i].name.node.as_str())
                .collect();
            let first = cycle[0];
            diags.push(
                Diag::error(
                    layers[first].name.span,
                    format!("the layers form a cycle: {}", names.join(" -> ")),
                )
                .with_label("this layer depends on itself")
                .with_note("a model is a DAG: a layer may only use layers that do not use it"),
            );
            return None;
        }
        path.push(next);
        at = next;
    }
}

fn warn_unused(
    layers: &[ast::Layer],
    sources: &[Vec<Option<Source>>],
    output: usize,
    diags: &mut Vec<Diag>,
) {
    let mut used = vec![false; layers.len()];
    let mut stack = vec![output];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut used[i], true) {
            continue;
        }
        for s in sources[i].iter().flatten() {
            if let Source::Layer(j) = s {
                stack.push(*j);
            }
        }
    }
    for (i, layer) in layers.iter().enumerate() {
        if !used[i] {
            diags.push(
                Diag::warning(
                    layer.name.span,
                    format!(
                        "layer `{}` does not contribute to the output",
                        layer.name.node
                    ),
                )
                .with_label("unused"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------- shapes

/// Whether a shape's values per sample are within [`limits::MAX_ELEMENTS`]; an error at `span`
/// if not.
fn check_size(shape: &[usize], span: Span, what: &str, diags: &mut Vec<Diag>) -> bool {
    if limits::elements(shape).is_some() {
        return true;
    }
    diags.push(
        Diag::error(
            span,
            format!(
                "{what} is too large: {} values per sample; at most {}",
                limits::count_text(limits::approx_elements(shape)),
                limits::count_text(limits::MAX_ELEMENTS as f64)
            ),
        )
        .with_label(format!("gives {}", shape_text(shape))),
    );
    false
}

/// An error for a layer whose weights are over [`limits::MAX_PARAMS`].
fn too_many_weights(layer: &ast::Layer, count: f64, diags: &mut Vec<Diag>) {
    diags.push(
        Diag::error(
            layer.op.span,
            format!(
                "`{}` has too many weights: {}; at most {}",
                layer.name.node,
                limits::count_text(count),
                limits::count_text(limits::MAX_PARAMS as f64)
            ),
        )
        .with_label("too many weights"),
    );
}

fn shape_text(shape: &[usize]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Resolves one layer: its kind with defaults, output shape, parameter count and MACs.
fn infer_layer(
    layer: &ast::Layer,
    in_shapes: &[Vec<usize>],
    sources: &[Option<Source>],
    names: &[&str],
    diags: &mut Vec<Diag>,
) -> Option<(LayerKind, Vec<usize>, usize, usize)> {
    let op = &layer.op.node;
    let span = layer.op.span;
    let ty = op.type_name();
    let source_name = |k: usize| match sources.get(k).copied().flatten() {
        Some(Source::Layer(j)) => format!("`{}`", names[j]),
        _ => "the model input".to_string(),
    };
    let arg_span = |arg: &str| layer.arg_spans.get(arg).unwrap_or(span);

    let one_input = match op {
        Op::Combine(_) => false,
        Op::Linear { .. }
        | Op::Conv2d { .. }
        | Op::MaxPool2d(_)
        | Op::AvgPool2d(_)
        | Op::GlobalAvgPool
        | Op::Flatten
        | Op::Dropout { .. }
        | Op::Norm(_)
        | Op::Activation(_) => true,
    };
    if one_input && in_shapes.len() != 1 {
        diags.push(
            Diag::error(
                span,
                format!("`{ty}` takes one input, this one has {}", in_shapes.len()),
            )
            .with_label("too many inputs"),
        );
        return None;
    }
    let x = &in_shapes[0];
    // The diagnostic of each shape rule error (`ir::shape`), on the span it concerns.
    let shape_diag = |e: ShapeError| {
        match e {
        ShapeError::NotChw(_) => Diag::error(
            span,
            format!(
                "`{ty}` needs a [channels, height, width] input, but {} gives {}",
                source_name(0),
                shape_text(x)
            ),
        )
        .with_label(format!("expects a 3-D input per sample, got {}-D", x.len())),
        ShapeError::NotFlat(_) => Diag::error(
            span,
            format!(
                "`{ty}` needs a flat input, but {} gives {}",
                source_name(0),
                shape_text(x)
            ),
        )
        .with_label(format!("expects a 1-D input per sample, got {}-D", x.len()))
        .with_help(format!(
            "add a `Flatten` layer before `{}` (it would give [{}])",
            layer.name.node,
            x.iter().product::<usize>()
        )),
        ShapeError::Groups {
            groups,
            channels,
            out,
        } => Diag::error(
            arg_span("groups"),
            format!(
                "`groups: {groups}` must divide both the input channels ({channels}) and `out` ({out})"
            ),
        )
        .with_label("does not divide the channels"),
        ShapeError::Window(e) => window_diag(layer, x, e),
        ShapeError::PoolPadding { .. } => Diag::error(
            arg_span("padding"),
            "pooling padding must be at most half the kernel",
        )
        .with_label("too much padding")
        .with_note("PyTorch has the same rule"),
        ShapeError::TooManyPooled { h, w } => Diag::error(
            span,
            format!(
                "`{}` averages {h}x{w} values per channel; at most {} (their int8 codes are \
                 summed in 32 bits)",
                layer.name.node,
                limits::count_text(limits::MAX_POOLED as f64)
            ),
        )
        .with_label("too many values to average"),
        // The checker takes the channels and features from the input: these cannot happen.
        e @ (ShapeError::Features { .. } | ShapeError::Channels { .. }) => {
            Diag::error(span, format!("`{ty}` {e}"))
        }
    }
    };
    let rule = |result: Result<Vec<usize>, ShapeError>, diags: &mut Vec<Diag>| {
        result.map_err(|e| diags.push(shape_diag(e))).ok()
    };
    let pool_layer = |pool: Pool, diags: &mut Vec<Diag>| {
        let shape = rule(pool.output_shape(x), diags)?;
        Some((LayerKind::Pool(pool), shape, 0, 0))
    };

    match op {
        Op::Linear { out, bias } => {
            let in_features = x.first().copied().unwrap_or(0);
            rule(shape::linear(x, in_features, *out), diags)?;
            let in_features = &in_features;
            let bias = bias.unwrap_or(true);
            let kind = LayerKind::Linear {
                in_features: *in_features,
                out_features: *out,
                bias,
            };
            let Some(weights) = limits::weights(*out, *in_features) else {
                too_many_weights(layer, *out as f64 * *in_features as f64, diags);
                return None;
            };
            let params = weights + if bias { *out } else { 0 };
            Some((kind, vec![*out], params, weights))
        }
        Op::Conv2d {
            out,
            kernel,
            stride,
            padding,
            groups,
            bias,
        } => {
            let groups = groups.unwrap_or(1);
            let kernel = kernel.hw();
            let stride = stride.map_or((1, 1), ast::Size2::hw);
            let padding = padding.map_or((0, 0), ast::Size2::hw);
            let c = x.first().copied().unwrap_or(0);
            let geom = ConvGeom {
                in_channels: c,
                out_channels: *out,
                kernel,
                stride,
                padding,
                groups,
            };
            let [_, ho, wo] = rule(shape::conv2d(x, &geom), diags)?[..] else {
                return None;
            };
            let bias = bias.unwrap_or(true);
            torch_positional_conv(layer, c, diags);
            // The window's taps are bounded, so this fits; the weights may still be too many.
            let per_out = (c / groups) * kernel.0 * kernel.1;
            let Some(weights) = limits::weights(*out, per_out) else {
                too_many_weights(layer, *out as f64 * per_out as f64, diags);
                return None;
            };
            let Some(out_values) = limits::elements(&[*out, ho, wo]) else {
                let what = format!("the output of `{}`", layer.name.node);
                check_size(&[*out, ho, wo], span, &what, diags);
                return None;
            };
            let kind = LayerKind::Conv2d { geom, bias };
            let params = weights + if bias { *out } else { 0 };
            // At most 2^26 values of at most 2^28 products each: no overflow.
            Some((kind, vec![*out, ho, wo], params, out_values * per_out))
        }
        Op::MaxPool2d(p) => pool_layer(Pool::MaxPool2d(p.window()), diags),
        Op::AvgPool2d(p) => pool_layer(Pool::AvgPool2d(p.window()), diags),
        Op::GlobalAvgPool => pool_layer(Pool::GlobalAvgPool, diags),
        Op::Norm(n) => {
            let Some(c) = n.kind.channels(x) else {
                diags.push(
                    Diag::error(
                        span,
                        format!(
                            "`{ty}` needs {}, but {} gives {}",
                            n.kind.input_text(),
                            source_name(0),
                            shape_text(x)
                        ),
                    )
                    .with_label(format!(
                        "expects a {}-D input per sample, got {}-D",
                        n.kind.dims(),
                        x.len()
                    )),
                );
                return None;
            };
            let kind = LayerKind::Norm {
                kind: n.kind,
                channels: c,
                eps: n.eps.unwrap_or(norm::DEFAULT_EPS),
                momentum: n.momentum.unwrap_or(norm::DEFAULT_MOMENTUM),
            };
            Some((kind, x.clone(), 2 * c, 0))
        }
        Op::Flatten => Some((LayerKind::Flatten, shape::flatten(x), 0, 0)),
        Op::Activation(a) => Some((LayerKind::Activation(a.0), x.clone(), 0, 0)),
        Op::Dropout { p } => Some((
            LayerKind::Dropout {
                p: p.unwrap_or(0.5),
            },
            x.clone(),
            0,
            0,
        )),
        Op::Combine(c) => {
            let c = c.0;
            let shapes: Vec<&[usize]> = in_shapes.iter().map(Vec::as_slice).collect();
            match c.output_shape(&shapes, source_name) {
                Ok(shape) => Some((LayerKind::Combine(c), shape, 0, 0)),
                Err(message) => {
                    let d = if in_shapes.len() < 2 {
                        Diag::error(span, message)
                            .with_label("name its inputs")
                            .with_help(format!("write `{}: {}`", layer.name.node, c.example()))
                    } else {
                        Diag::error(span, message).with_label("shapes differ")
                    };
                    diags.push(d);
                    None
                }
            }
        }
    }
}

/// The diagnostic of a sliding window (conv or pool) that does not fit its input or breaks a
/// limit ([`limits::window`]).
fn window_diag(layer: &ast::Layer, x: &[usize], e: WindowError) -> Diag {
    let arg_span = |arg: &str| layer.arg_spans.get(arg).unwrap_or(layer.op.span);
    let (kernel, padding) = match &layer.op.node {
        Op::Conv2d {
            kernel, padding, ..
        } => (kernel.hw(), padding.map_or((0, 0), ast::Size2::hw)),
        Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
            (p.kernel.hw(), p.padding.map_or((0, 0), ast::Size2::hw))
        }
        // Only convolutions and pools have windows.
        Op::Linear { .. }
        | Op::GlobalAvgPool
        | Op::Flatten
        | Op::Dropout { .. }
        | Op::Norm(_)
        | Op::Combine(_)
        | Op::Activation(_) => ((0, 0), (0, 0)),
    };
    match e {
        WindowError::KernelTooLarge(ph, pw) => {
            let padded = if padding == (0, 0) {
                String::new()
            } else {
                " after padding".to_string()
            };
            Diag::error(
                arg_span("kernel"),
                format!(
                    "`{}` kernel {}x{} is larger than its {}x{} input{padded}",
                    layer.name.node, kernel.0, kernel.1, ph, pw
                ),
            )
            .with_label("kernel larger than the input")
        }
        WindowError::TooManyTaps => Diag::error(
            arg_span("kernel"),
            format!(
                "`{}` kernel {}x{} has more than {} taps",
                layer.name.node,
                kernel.0,
                kernel.1,
                limits::MAX_KERNEL_TAPS
            ),
        )
        .with_label("kernel too large"),
        WindowError::PaddedTooLarge => Diag::error(
            arg_span("padding"),
            format!(
                "`{}` pads its {} input to more than {} values per sample",
                layer.name.node,
                shape_text(x),
                limits::count_text(limits::MAX_ELEMENTS as f64)
            ),
        )
        .with_label("too much padding"),
        // The spec's integers are at most 2^24 = MAX_WINDOW, and kernel and stride at least 1.
        WindowError::OutOfRange => Diag::error(
            layer.op.span,
            format!(
                "`{}` has a kernel, stride or padding outside 0..{}",
                layer.name.node,
                limits::MAX_WINDOW
            ),
        ),
    }
}

// ---------------------------------------------------------------------------------------- qconfigs

/// Each layer's effective qconfig (source order), or `None` for float. The default is the
/// backend's QAT preset; `LAYER: QCONFIG` overrides one layer.
#[allow(clippy::type_complexity)]
fn resolve_qconfigs(
    spec: &Spec,
    diags: &mut Vec<Diag>,
) -> Option<(Option<Backend>, Vec<Option<QConfig>>)> {
    let n = spec.model.layers.len();
    let Some(q) = &spec.quantize else {
        return Some((None, vec![None; n]));
    };
    let backend = q.backend.as_ref().map_or(Backend::Fbgemm, |b| b.node);
    let base = qconfig::preset(backend, QuantMode::Qat);
    let errors_before = diags.len();

    // Named qconfigs, built on the backend's preset.
    let mut defined: HashMap<&str, QConfig> = HashMap::new();
    for def in &q.qconfigs {
        let name = def.name.node.as_str();
        if defined.contains_key(name) {
            diags.push(
                Diag::error(def.name.span, format!("qconfig `{name}` is defined twice"))
                    .with_label("second definition")
                    .with_secondary(
                        q.qconfigs
                            .iter()
                            .find(|d| d.name.node == name)
                            .map_or(def.name.span, |d| d.name.span),
                        "first defined here",
                    ),
            );
            continue;
        }
        if name == "none" || name == "qat" || name == "ptq" {
            diags.push(Diag::error(
                def.name.span,
                format!("`{name}` is reserved and cannot name a qconfig"),
            ));
            continue;
        }
        let mut activation = base.activation;
        let mut weight = base.weight;
        let mut ok = true;
        if let Some(a) = &def.activation {
            activation = qconfig::apply(base.activation, &a.node);
            let at = FieldAt(a.span, &def.field_spans[0]);
            ok &= validate_fake_quant(&activation, at, Role::Activation, diags);
        }
        if let Some(w) = &def.weight {
            weight = qconfig::apply(base.weight, &w.node);
            let at = FieldAt(w.span, &def.field_spans[1]);
            ok &= validate_fake_quant(&weight, at, Role::Weight, diags);
        }
        if ok {
            defined.insert(
                name,
                QConfig {
                    name: name.to_string(),
                    mode: QuantMode::Qat,
                    activation,
                    weight,
                },
            );
        }
    }
    let qconfig_names: Vec<&str> = q.qconfigs.iter().map(|d| d.name.node.as_str()).collect();
    let used: std::cell::RefCell<Vec<&str>> = Default::default();
    let resolve = |r: &ast::Spanned<QconfigRef>,
                   diags: &mut Vec<Diag>|
     -> Option<Option<QConfig>> {
        match &r.node {
            QconfigRef::None => Some(None),
            QconfigRef::Qat(b) | QconfigRef::Ptq(b) => {
                let mode = match &r.node {
                    QconfigRef::Ptq(_) => QuantMode::Ptq,
                    _ => QuantMode::Qat,
                };
                let preset = qconfig::preset(*b, mode);
                if *b != backend {
                    diags.push(
                        Diag::warning(
                            r.span,
                            format!(
                                "`{}` is the {} preset, but the backend is {}",
                                preset.name,
                                b.name(),
                                backend.name()
                            ),
                        )
                        .with_label("another backend's preset")
                        .with_help(format!(
                            "write `{}({})`, or set `backend: {}`",
                            &preset.name[..3],
                            backend.name(),
                            b.name()
                        )),
                    );
                }
                if mode == QuantMode::Ptq && spec.train.is_some() {
                    diags.push(
                        Diag::warning(
                            r.span,
                            format!(
                                "`{}` is a post-training preset: `qatc train` trains this model in \
                                 float and its observers only watch",
                                preset.name
                            ),
                        )
                        .with_label("no fake quantization while training")
                        .with_help(format!(
                            "for quantization-aware training write `qat({})` (PyTorch's tutorial \
                             passes `get_default_qconfig` to `prepare_qat`, the same mistake); \
                             `qatc calibrate` is what this preset is for",
                            b.name()
                        )),
                    );
                }
                Some(Some(preset))
            }
            QconfigRef::Named(name) => match defined.get(name.as_str()) {
                Some(qc) => {
                    used.borrow_mut().push(qc.name.as_str());
                    Some(Some(qc.clone()))
                }
                None if qconfig_names.contains(&name.as_str()) => None, // already reported
                None => {
                    let d = Diag::error(r.span, format!("no qconfig named `{name}`"))
                        .with_label("not defined in this `quantize` block");
                    let d = suggest_among(diags.len(), d, name, qconfig_names.iter().copied())
                        .with_help(format!("define it with `qconfig {name} {{ activation: ..., weight: ... }}`, or use a preset such as `qat({})`", backend.name()));
                    diags.push(d);
                    None
                }
            },
        }
    };

    let default = match &q.default {
        None => Some(Some(base.clone())),
        Some(r) => resolve(r, diags),
    };
    let mut per_layer = vec![default.clone().flatten(); n];
    let layer_names: Vec<&str> = spec
        .model
        .layers
        .iter()
        .map(|l| l.name.node.as_str())
        .collect();
    let mut overridden: HashMap<&str, Span> = HashMap::new();
    for o in &q.overrides {
        let name = o.layer.node.as_str();
        if let Some(prev) = overridden.insert(name, o.layer.span) {
            diags.push(
                Diag::error(
                    o.layer.span,
                    format!("layer `{name}` is given a qconfig twice"),
                )
                .with_label("second override")
                .with_secondary(prev, "first given here"),
            );
            continue;
        }
        let resolved = resolve(&o.qconfig, diags);
        match layer_names.iter().position(|l| *l == name) {
            Some(i) => {
                if let Some(qc) = resolved {
                    per_layer[i] = qc;
                }
            }
            None => {
                let d = Diag::error(o.layer.span, format!("no layer named `{name}` to quantize"))
                    .with_label("not a layer of the model")
                    .with_note(
                        "inside `quantize`, `NAME: QCONFIG` sets the qconfig of the layer NAME",
                    );
                diags.push(suggest_among(
                    diags.len(),
                    d,
                    name,
                    layer_names.iter().copied().chain(["backend", "default"]),
                ));
            }
        }
    }
    let used = used.into_inner();
    // After an error (a misspelt qconfig name) the "not used" warnings would only repeat it.
    let errors_here = diags[errors_before..].iter().any(Diag::is_error);
    for def in q.qconfigs.iter().filter(|_| !errors_here) {
        let name = def.name.node.as_str();
        if defined.contains_key(name) && !used.contains(&name) {
            diags.push(
                Diag::warning(def.name.span, format!("qconfig `{name}` is not used"))
                    .with_label("no layer uses it")
                    .with_help(format!(
                        "give it to layers with `LAYER: {name}` or `default: {name}`"
                    )),
            );
        }
    }
    default.map(|_| (Some(backend), per_layer))
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Activation,
    Weight,
}

/// Where a `fake_quant(...)` was written, and each of its fields.
struct FieldAt<'a>(Span, &'a ast::ArgSpans);

impl FieldAt<'_> {
    /// The span of the first of `fields` that was written, else the whole call's.
    fn of(&self, fields: &[&str]) -> Span {
        fields.iter().find_map(|f| self.1.get(f)).unwrap_or(self.0)
    }
}

fn validate_fake_quant(
    fq: &FakeQuantConfig,
    at: FieldAt,
    role: Role,
    diags: &mut Vec<Diag>,
) -> bool {
    let before = diags.len();
    let (lo, hi) = fq.dtype.range();
    match role {
        Role::Activation => {
            if fq.observer.is_per_channel() {
                diags.push(
                    Diag::error(
                        at.of(&["observer"]),
                        format!(
                            "per-channel observer `{}` used for activations",
                            fq.observer.name()
                        ),
                    )
                    .with_label("activations are quantized per tensor")
                    .with_help("use `minmax` or `moving_average_minmax` for activations"),
                );
            }
        }
        Role::Weight => {
            if fq.dtype != DType::Qint8 {
                diags.push(
                    Diag::error(
                        at.of(&["dtype"]),
                        format!("weights must be qint8, not {}", fq.dtype.name()),
                    )
                    .with_label("the int8 kernels take signed 8-bit weights"),
                );
            }
        }
    }
    if fq.quant_min >= fq.quant_max || fq.quant_min < lo || fq.quant_max > hi {
        // The bound that is out of the dtype's range, else the range as written.
        let field = if fq.quant_min < lo || fq.quant_min >= fq.quant_max {
            at.of(&["quant_min", "quant_max", "reduce_range", "dtype"])
        } else {
            at.of(&["quant_max", "quant_min", "reduce_range", "dtype"])
        };
        diags.push(
            Diag::error(
                field,
                format!(
                    "quantization range {}..{} is not a non-empty range inside {} ({lo}..{hi})",
                    fq.quant_min,
                    fq.quant_max,
                    fq.dtype.name()
                ),
            )
            .with_label("bad quant_min/quant_max"),
        );
    }
    diags.len() == before
}

// ---------------------------------------------------------------------------------------- train

fn check_train(t: &ast::Train, spec: &Spec, diags: &mut Vec<Diag>) -> Option<TrainConfig> {
    let before = diags.len();
    let channels = if spec.model.input.node.len() == 3 {
        spec.model.input.node[0]
    } else {
        1
    };
    let data = t.data.as_ref().map(|d| d.node.clone());
    let (mean, std) = match &t.normalize {
        None => (vec![0.0; channels], vec![1.0; channels]),
        Some(n) => {
            for (what, pc) in [("mean", &n.node.mean), ("std", &n.node.std)] {
                if let Some(len) = pc.count() {
                    if len != channels && len != 1 {
                        diags.push(
                            Diag::error(n.span, format!("normalize `{what}` has {len} values but the input has {channels} channels"))
                                .with_label("one value, or one per channel"),
                        );
                    }
                }
            }
            let expand = |pc: &ast::PerChannel| -> Vec<f32> {
                (0..channels).map(|c| if pc.count() == Some(1) { pc.get(0) } else { pc.get(c.min(pc.count().unwrap_or(1) - 1)) } as f32).collect()
            };
            (expand(&n.node.mean), expand(&n.node.std))
        }
    };
    let epochs = t.epochs.as_ref().map_or(5, |e| e.node);
    let after = |setting: &Option<ast::Spanned<usize>>,
                 what: &str,
                 diags: &mut Vec<Diag>|
     -> Option<usize> {
        let s = setting.as_ref()?;
        if s.node > epochs {
            diags.push(
                Diag::warning(
                    s.span,
                    format!(
                        "`{what}` after {} epochs never happens in a {epochs}-epoch run",
                        s.node
                    ),
                )
                .with_label("later than the last epoch"),
            );
        }
        Some(s.node)
    };
    let freeze_bn_after = after(&t.freeze_bn, "freeze_bn", diags);
    let freeze_observers_after = after(&t.freeze_observers, "freeze_observers", diags);
    let pretrain_epochs = t.pretrain.as_ref().map_or(0, |p| p.node);
    if let Some(p) = &t.pretrain {
        if p.node >= epochs && spec.quantize.is_some() {
            diags.push(
                Diag::error(
                    p.span,
                    format!(
                        "`pretrain: {} epochs` leaves no QAT epochs in a {epochs}-epoch run",
                        p.node
                    ),
                )
                .with_label("must be less than `epochs`"),
            );
        }
    }
    let optimizer = match t.optimizer.as_ref().map(|o| &o.node) {
        None => OptimizerConfig::Sgd {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        },
        Some(ast::Optimizer::Sgd {
            lr,
            momentum,
            weight_decay,
            nesterov,
        }) => {
            let momentum = momentum.unwrap_or(0.0);
            let nesterov = nesterov.unwrap_or(false);
            if nesterov && momentum == 0.0 {
                diags.push(
                    Diag::error(
                        t.optimizer.as_ref().map_or_else(Span::default, |o| o.span),
                        "nesterov needs a momentum above 0",
                    )
                    .with_label("as in PyTorch"),
                );
            }
            OptimizerConfig::Sgd {
                lr: *lr,
                momentum,
                weight_decay: weight_decay.unwrap_or(0.0),
                nesterov,
            }
        }
        Some(ast::Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        }) => OptimizerConfig::Adam {
            lr: lr.unwrap_or(0.001),
            beta1: beta1.unwrap_or(0.9),
            beta2: beta2.unwrap_or(0.999),
            eps: eps.unwrap_or(1e-8),
            weight_decay: weight_decay.unwrap_or(0.0),
        },
    };
    if diags[before..].iter().any(Diag::is_error) {
        return None;
    }
    Some(TrainConfig {
        data,
        normalization: crate::data::Normalization { mean, std },
        epochs,
        batch: t.batch.as_ref().map_or(64, |b| b.node),
        optimizer,
        schedule: t.schedule.as_ref().map(|s| s.node.clone()),
        pretrain_epochs,
        freeze_bn_after,
        freeze_observers_after,
        seed: t.seed.as_ref().map_or(0, |s| s.node),
        validation: t.validation.as_ref().map(|v| v.node),
        init: t.init.as_ref().map(|p| p.node.clone()),
    })
}

/// A spec that parsed and checked.
pub struct Checked {
    pub model: CheckedModel,
    pub spec: crate::syntax::Spec,
    pub warnings: Vec<Diag>,
}

/// Parses and checks a spec's text in one go: the front half of every command. The returned
/// source is what the spans of the spec and of the diagnostics refer to.
///
/// ```
/// let text = "model m { input: [1, 28, 28] flat: Flatten fc: Linear(out: 10) }";
/// let (result, _source) = qatc::front_end("m.qspec", text);
/// let checked = result.expect("a valid spec");
/// assert_eq!(checked.model.layers[1].out_shape, vec![10]);
///
/// let (result, source) = qatc::front_end("bad.qspec", "model m { input: [4] fc: Linaer(out: 2) }");
/// let text = qatc::diag::render(&result.err().unwrap(), &source.name, &source.text);
/// assert!(text.contains("did you mean `Linear`?"));
/// ```
pub fn front_end(
    file_name: &str,
    text: &str,
) -> (Result<Checked, Vec<Diag>>, crate::syntax::SourceFile) {
    let (parsed, source) = crate::syntax::parse_source(file_name, text);
    let result = parsed.and_then(|spec| {
        check(&spec).map(|(model, warnings)| Checked {
            model,
            spec,
            warnings,
        })
    });
    (result, source)
}
