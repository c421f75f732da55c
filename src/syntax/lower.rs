//! CST -> AST: gives each `key: value` entry its meaning and checks that values have the right
//! type. Reports every problem it finds. It does not resolve names or infer shapes (the checker
//! does that).

use std::cell::RefCell;
use std::collections::HashSet;

/// Builds `Path { field: value? ... }` after evaluating every value (each an `Option`, `None`
/// once its error is reported), so every bad argument of a call is reported in one run, not
/// only the first.
macro_rules! every {
    ($($path:ident)::+ { $($field:ident: $value:expr),* $(,)? }) => {{
        $(let $field = $value;)*
        $($path)::+ { $($field: $field?),* }
    }};
}

use super::ast::*;
use super::cst::{self, Arg, BlockKind, Entry, Item, Value, ValueKind};
use crate::diag::{suggest, Diag};
use crate::ops::activation::{Activation, NAMES as ACTIVATION_NAMES};
use crate::ops::combine::{Combine, NAMES as COMBINE_NAMES};
use crate::ops::norm::{Norm, NAMES as NORM_NAMES};

/// Lowers a parsed file, or returns every error found.
pub fn lower(file: &cst::File) -> Result<Spec, Vec<Diag>> {
    let cx = Lower {
        diags: RefCell::new(Vec::new()),
    };
    let spec = cx.file(file);
    let diags = cx.diags.into_inner();
    match spec {
        Some(spec) if diags.is_empty() => Ok(spec),
        _ => Err(diags),
    }
}

const MODEL_KEYS: &[&str] = &["input", "output"];
const TRAIN_KEYS: &[&str] = &[
    "data",
    "normalize",
    "epochs",
    "batch",
    "optimizer",
    "schedule",
    "pretrain",
    "freeze_bn",
    "freeze_observers",
    "seed",
    "validation",
    "init",
];

/// Lowering state: only the errors found so far (a `RefCell` so that helpers can nest calls).
struct Lower {
    diags: RefCell<Vec<Diag>>,
}

/// The arguments of one call, matched to the callee's parameters.
struct Bound<'a> {
    args: Vec<(&'static str, &'a Value)>,
}

impl<'a> Bound<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.args.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// Where each argument was written, and how many of the call's were positional.
    fn spans(&self, positional: usize) -> ArgSpans {
        ArgSpans(
            self.args
                .iter()
                .map(|(n, v)| (n.to_string(), v.span))
                .collect(),
            positional,
        )
    }
}

impl Lower {
    fn error(&self, diag: Diag) {
        self.diags.borrow_mut().push(diag);
    }

    fn file(&self, file: &cst::File) -> Option<Spec> {
        let mut model = None;
        let mut quantize = None;
        let mut train = None;
        for block in &file.blocks {
            let (slot_taken, what) = match block.kind {
                BlockKind::Model { .. } => (model.is_some(), "model"),
                BlockKind::Quantize => (quantize.is_some(), "quantize"),
                BlockKind::Train => (train.is_some(), "train"),
            };
            if slot_taken {
                self.error(
                    Diag::error(block.keyword_span, format!("a second `{what}` block"))
                        .with_label("a spec has at most one of each block"),
                );
                continue;
            }
            match &block.kind {
                BlockKind::Model { name } => model = Some(self.model(name, block)),
                BlockKind::Quantize => quantize = Some(self.quantize(block)),
                BlockKind::Train => train = Some(self.train(block)),
            }
        }
        let Some(model) = model.flatten() else {
            if self.diags.borrow().is_empty() {
                self.error(
                    Diag::error_at_file("the spec has no `model` block")
                        .with_help("start with `model NAME { input: [1, 28, 28] ... }`"),
                );
            }
            return None;
        };
        Some(Spec {
            model,
            quantize,
            train,
        })
    }

    // -------------------------------------------------------------------------------- model

    fn model(&self, name: &cst::Ident, block: &cst::Block) -> Option<Model> {
        let mut input = None;
        let mut input_given = false;
        let mut output = None;
        let mut layers = Vec::new();
        for item in &block.items {
            let Item::Entry(entry) = item else {
                if let Item::Qconfig { name, .. } = item {
                    self.error(Diag::error(
                        name.span,
                        "a qconfig outside the `quantize` block",
                    ));
                }
                continue;
            };
            match entry.key.text.as_str() {
                "input" => {
                    if input_given {
                        self.duplicate(entry);
                    }
                    input_given = true;
                    input = self.shape(&entry.value);
                }
                "output" => {
                    if output.is_some() {
                        self.duplicate(entry);
                    }
                    output = self.name(&entry.value, "the output layer's name");
                }
                _ => {
                    if let Some(layer) = self.layer(entry) {
                        layers.push(layer);
                    }
                }
            }
        }
        let Some(input) = input else {
            if input_given {
                return None; // its error is reported already
            }
            self.error(
                Diag::error(
                    name.span,
                    format!("model `{}` has no `input` shape", name.text),
                )
                .with_help("add `input: [channels, height, width]` or `input: [features]`"),
            );
            return None;
        };
        Some(Model {
            name: spanned_name(name),
            input,
            output,
            layers,
        })
    }

    fn shape(&self, value: &Value) -> Option<Spanned<Vec<usize>>> {
        let ValueKind::List(items) = &value.kind else {
            self.error(
                Diag::error(
                    value.span,
                    format!(
                        "expected a shape like `[1, 28, 28]`, found {}",
                        value.describe()
                    ),
                )
                .with_label("the input shape"),
            );
            return None;
        };
        if items.is_empty() || items.len() > 3 {
            self.error(
                Diag::error(
                    value.span,
                    format!(
                        "an input shape has 1 to 3 dimensions, this one has {}",
                        items.len()
                    ),
                )
                .with_label("one sample's shape, without the batch dimension")
                .with_help(
                    "use `[channels, height, width]` for images or `[features]` for vectors",
                ),
            );
            return None;
        }
        let dims: Option<Vec<usize>> = items
            .iter()
            .map(|v| self.positive(v, "a dimension"))
            .collect();
        Some(Spanned::new(dims?, value.span))
    }

    fn layer(&self, entry: &Entry) -> Option<Layer> {
        let value = &entry.value;
        let (callee, args): (&cst::Ident, &[Arg]) = match &value.kind {
            ValueKind::Call { callee, args } => (callee, args),
            ValueKind::Ident(_) => {
                // `relu: ReLU`: a call with no arguments.
                let ValueKind::Ident(text) = &value.kind else {
                    unreachable!()
                };
                let callee = cst::Ident {
                    text: text.clone(),
                    span: value.span,
                };
                return self.layer_call(entry, &callee, &[]);
            }
            _ => {
                let d = Diag::error(
                    value.span,
                    format!(
                        "expected a layer such as `Linear(out: 10)`, found {}",
                        value.describe()
                    ),
                )
                .with_label(format!("layer `{}`", entry.key.text));
                let d = suggest(d, &entry.key.text, MODEL_KEYS.iter().copied());
                self.error(d);
                return None;
            }
        };
        self.layer_call(entry, callee, args)
    }

    fn layer_call(&self, entry: &Entry, callee: &cst::Ident, args: &[Arg]) -> Option<Layer> {
        // Positional names are inputs; everything else is an argument of the layer.
        let mut inputs = Vec::new();
        let mut rest = Vec::new();
        for arg in args {
            match arg {
                Arg::Positional(Value {
                    kind: ValueKind::Ident(name),
                    span,
                }) => {
                    inputs.push(Spanned::new(name.clone(), *span));
                }
                other => rest.push(other.clone()),
            }
        }
        let activation = Activation::params(&callee.text);
        let activation_names: Vec<&'static str> = activation
            .unwrap_or_default()
            .iter()
            .map(|p| p.name)
            .collect();
        let (params, positional): (&[&'static str], &[&'static str]) = match callee.text.as_str() {
            _ if activation.is_some() => (&activation_names, &activation_names),
            "Linear" => (&["out", "bias"], &["out"]),
            "Conv2d" => (
                &["out", "kernel", "stride", "padding", "groups", "bias"],
                &["out", "kernel", "stride", "padding"],
            ),
            "MaxPool2d" | "AvgPool2d" => (
                &["kernel", "stride", "padding"],
                &["kernel", "stride", "padding"],
            ),
            name if Norm::from_name(name).is_some() => (&["eps", "momentum"], &[]),
            "AdaptiveAvgPool2d" => (&["output_size"], &["output_size"]),
            "Dropout" => (&["p"], &["p"]),
            "GlobalAvgPool" | "Flatten" => (&[], &[]),
            name if Combine::from_name(name).is_some() => (&[], &[]),
            other => {
                let d = Diag::error(callee.span, format!("unknown layer type `{other}`"))
                    .with_label("not a layer type");
                let names: Vec<&str> = OP_NAMES
                    .iter()
                    .chain(NORM_NAMES)
                    .chain(COMBINE_NAMES)
                    .chain(ACTIVATION_NAMES)
                    .chain(&["AdaptiveAvgPool2d"])
                    .copied()
                    .collect();
                let d = suggest(d, other, names.iter().copied())
                    .with_note(format!("layer types are {}", names.join(", ")));
                self.error(d);
                return None;
            }
        };
        let bound = self.bind(callee, &rest, params, positional)?;
        let arg_spans = bound.spans(
            rest.iter()
                .filter(|a| matches!(a, Arg::Positional(_)))
                .count(),
        );
        let op = match callee.text.as_str() {
            name if activation.is_some() => {
                let mut values = Vec::new();
                for p in activation.unwrap_or_default() {
                    let what = format!("`{}`", p.name);
                    let v = self.opt(&bound, p.name, |cx, v| {
                        cx.float_in(v, &what, p.min, p.max, true)
                    })?;
                    values.push(v.unwrap_or(p.default));
                }
                Op::Activation(ActivationSpec(Activation::from_args(name, &values)?))
            }
            "Linear" => every!(Op::Linear {
                out: self
                    .require(&bound, callee, "out")
                    .and_then(|v| self.positive(v, "`out`")),
                bias: self.opt(&bound, "bias", Self::bool),
            }),
            "Conv2d" => every!(Op::Conv2d {
                out: self
                    .require(&bound, callee, "out")
                    .and_then(|v| self.positive(v, "`out`")),
                kernel: self
                    .require(&bound, callee, "kernel")
                    .and_then(|v| self.size2(v, "`kernel`", 1)),
                stride: self.opt(&bound, "stride", |cx, v| cx.size2(v, "`stride`", 1)),
                padding: self.opt(&bound, "padding", |cx, v| cx.size2(v, "`padding`", 0)),
                groups: self.opt(&bound, "groups", |cx, v| cx.positive(v, "`groups`")),
                bias: self.opt(&bound, "bias", Self::bool),
            }),
            "MaxPool2d" | "AvgPool2d" => {
                let pool = every!(Pool {
                    kernel: self
                        .require(&bound, callee, "kernel")
                        .and_then(|v| self.size2(v, "`kernel`", 1)),
                    stride: self.opt(&bound, "stride", |cx, v| cx.size2(v, "`stride`", 1)),
                    padding: self.opt(&bound, "padding", |cx, v| cx.size2(v, "`padding`", 0)),
                });
                if callee.text == "MaxPool2d" {
                    Op::MaxPool2d(pool)
                } else {
                    Op::AvgPool2d(pool)
                }
            }
            name if Norm::from_name(name).is_some() => Op::Norm(every!(NormSpec {
                kind: Norm::from_name(name),
                eps: self.opt(&bound, "eps", |cx, v| {
                    cx.float_in(v, "`eps`", 0.0, f64::MAX, false)
                }),
                momentum: self.opt(&bound, "momentum", |cx, v| {
                    cx.float_in(v, "`momentum`", 0.0, 1.0, true)
                }),
            })),
            "Dropout" => Op::Dropout {
                p: self.opt(&bound, "p", |cx, v| cx.float_in(v, "`p`", 0.0, 1.0, true))?,
            },
            "GlobalAvgPool" => Op::GlobalAvgPool,
            // PyTorch's spelling of global average pooling; other output sizes are not layers
            // qatc has.
            "AdaptiveAvgPool2d" => {
                let size = self.require(&bound, callee, "output_size")?;
                if !matches!(
                    self.size2(size, "`output_size`", 1)?,
                    Size2::Square(1) | Size2::Rect([1, 1])
                ) {
                    self.error(
                        Diag::error(size.span, "qatc has `AdaptiveAvgPool2d` with output size 1 only")
                            .with_label("not 1")
                            .with_help("use `GlobalAvgPool` (its output size is 1), or `AvgPool2d` with a kernel and a stride"),
                    );
                    return None;
                }
                Op::GlobalAvgPool
            }
            "Flatten" => Op::Flatten,
            name => Op::Combine(CombineSpec(Combine::from_name(name)?)),
        };
        Some(Layer {
            name: spanned_name(&entry.key),
            op: Spanned::new(op, entry.value.span),
            inputs,
            arg_spans,
        })
    }

    // -------------------------------------------------------------------------------- quantize

    fn quantize(&self, block: &cst::Block) -> Quantize {
        let mut q = Quantize::default();
        let mut seen = HashSet::new();
        for item in &block.items {
            match item {
                Item::Qconfig { name, entries } => {
                    if let Some(def) = self.qconfig_def(name, entries) {
                        q.qconfigs.push(def);
                    }
                }
                Item::Entry(entry) => {
                    if !seen.insert(entry.key.text.clone()) {
                        self.duplicate(entry);
                        continue;
                    }
                    match entry.key.text.as_str() {
                        "backend" => {
                            q.backend = self
                                .backend(&entry.value)
                                .map(|b| Spanned::new(b, entry.value.span));
                        }
                        "default" => {
                            q.default = self
                                .qconfig_ref(&entry.value)
                                .map(|r| Spanned::new(r, entry.value.span));
                        }
                        _ => {
                            if let Some(r) = self.qconfig_ref(&entry.value) {
                                q.overrides.push(Override {
                                    layer: spanned_name(&entry.key),
                                    qconfig: Spanned::new(r, entry.value.span),
                                });
                            }
                        }
                    }
                }
            }
        }
        q
    }

    fn backend(&self, value: &Value) -> Option<Backend> {
        let name = self.word(value, "a backend (fbgemm, qnnpack or native)")?;
        let backend = Backend::from_name(&name);
        if backend.is_none() {
            let d = Diag::error(value.span, format!("unknown backend `{name}`"))
                .with_label("expected fbgemm, qnnpack or native");
            let d = suggest(d, &name, BACKEND_NAMES.iter().copied());
            self.error(d);
        }
        backend
    }

    fn qconfig_ref(&self, value: &Value) -> Option<QconfigRef> {
        match &value.kind {
            ValueKind::Ident(name) if name == "none" => Some(QconfigRef::None),
            ValueKind::Ident(name) => Some(QconfigRef::Named(name.clone())),
            ValueKind::Call { callee, args } if callee.text == "qat" || callee.text == "ptq" => {
                let bound = self.bind(callee, args, &["backend"], &["backend"])?;
                let backend = self.backend(self.require(&bound, callee, "backend")?)?;
                Some(if callee.text == "qat" {
                    QconfigRef::Qat(backend)
                } else {
                    QconfigRef::Ptq(backend)
                })
            }
            ValueKind::Call { callee, .. } => {
                let d = Diag::error(
                    callee.span,
                    format!("unknown qconfig preset `{}`", callee.text),
                )
                .with_label("expected `qat(BACKEND)` or `ptq(BACKEND)`");
                let d = suggest(d, &callee.text, ["qat", "ptq"]);
                self.error(d);
                None
            }
            _ => {
                self.error(
                    Diag::error(
                        value.span,
                        format!("expected a qconfig, found {}", value.describe()),
                    )
                    .with_label(
                        "expected `qat(BACKEND)`, `ptq(BACKEND)`, a qconfig's name or `none`",
                    ),
                );
                None
            }
        }
    }

    fn qconfig_def(&self, name: &cst::Ident, entries: &[Entry]) -> Option<QconfigDef> {
        let mut def = QconfigDef {
            name: spanned_name(name),
            activation: None,
            weight: None,
            field_spans: Default::default(),
        };
        let mut ok = true;
        for entry in entries {
            let (slot, spans) = match entry.key.text.as_str() {
                "activation" => (&mut def.activation, &mut def.field_spans[0]),
                "weight" => (&mut def.weight, &mut def.field_spans[1]),
                other => {
                    let d = Diag::error(entry.key.span, format!("unknown qconfig field `{other}`"))
                        .with_label("a qconfig has `activation` and `weight`");
                    self.error(suggest(d, other, ["activation", "weight"]));
                    ok = false;
                    continue;
                }
            };
            if slot.is_some() {
                self.duplicate(entry);
                ok = false;
                continue;
            }
            let fq = self.fake_quant(&entry.value);
            ok &= fq.is_some();
            if let Some((f, field_spans)) = fq {
                *slot = Some(Spanned::new(f, entry.value.span));
                *spans = field_spans;
            }
        }
        ok.then_some(def)
    }

    /// A `fake_quant(...)` call, and where each of its fields was written.
    fn fake_quant(&self, value: &Value) -> Option<(FakeQuantSpec, ArgSpans)> {
        let ValueKind::Call { callee, args } = &value.kind else {
            self.error(
                Diag::error(
                    value.span,
                    format!("expected `fake_quant(...)`, found {}", value.describe()),
                )
                .with_label("e.g. `fake_quant(observer: minmax, dtype: quint8)`"),
            );
            return None;
        };
        if callee.text != "fake_quant" {
            let d = Diag::error(callee.span, format!("unknown quantizer `{}`", callee.text))
                .with_label("expected `fake_quant(...)`");
            self.error(suggest(d, &callee.text, ["fake_quant"]));
            return None;
        }
        let params = &[
            "observer",
            "dtype",
            "scheme",
            "reduce_range",
            "quant_min",
            "quant_max",
            "averaging",
            "learnable",
        ];
        let bound = self.bind(callee, args, params, &[])?;
        let spans = bound.spans(0);
        let spec = every!(FakeQuantSpec {
            observer: self.opt(&bound, "observer", Self::observer),
            dtype: self.opt(&bound, "dtype", Self::dtype),
            scheme: self.opt(&bound, "scheme", Self::scheme),
            reduce_range: self.opt(&bound, "reduce_range", Self::bool),
            quant_min: self.opt(&bound, "quant_min", |cx, v| cx.int(v, "`quant_min`")),
            quant_max: self.opt(&bound, "quant_max", |cx, v| cx.int(v, "`quant_max`")),
            averaging: self.opt(&bound, "averaging", |cx, v| {
                cx.float_in(v, "`averaging`", 0.0, 1.0, false)
            }),
            learnable: self.opt(&bound, "learnable", Self::bool),
        });
        Some((spec, spans))
    }

    fn observer(&self, value: &Value) -> Option<ObserverKind> {
        let names: Vec<&str> = ObserverKind::ALL.iter().map(|o| o.name()).collect();
        self.keyword(value, "an observer", &names, &ObserverKind::ALL)
    }

    fn dtype(&self, value: &Value) -> Option<DType> {
        self.keyword(
            value,
            "a dtype",
            &["quint8", "qint8"],
            &[DType::Quint8, DType::Qint8],
        )
    }

    fn scheme(&self, value: &Value) -> Option<Scheme> {
        self.keyword(
            value,
            "a scheme",
            &["affine", "symmetric"],
            &[Scheme::Affine, Scheme::Symmetric],
        )
    }

    // -------------------------------------------------------------------------------- train

    fn train(&self, block: &cst::Block) -> Train {
        let mut t = Train::default();
        let mut seen = HashSet::new();
        for item in &block.items {
            let Item::Entry(entry) = item else {
                if let Item::Qconfig { name, .. } = item {
                    self.error(Diag::error(
                        name.span,
                        "a qconfig outside the `quantize` block",
                    ));
                }
                continue;
            };
            if !seen.insert(entry.key.text.clone()) {
                self.duplicate(entry);
                continue;
            }
            let v = &entry.value;
            match entry.key.text.as_str() {
                "data" => t.data = self.data_source(v).map(|x| Spanned::new(x, v.span)),
                "normalize" => t.normalize = self.normalize(v).map(|x| Spanned::new(x, v.span)),
                "epochs" => {
                    t.epochs = self
                        .positive(v, "`epochs`")
                        .map(|x| Spanned::new(x, v.span))
                }
                "batch" => t.batch = self.positive(v, "`batch`").map(|x| Spanned::new(x, v.span)),
                "optimizer" => t.optimizer = self.optimizer(v).map(|x| Spanned::new(x, v.span)),
                "schedule" => t.schedule = self.schedule(v).map(|x| Spanned::new(x, v.span)),
                "pretrain" => t.pretrain = self.epochs(v, false).map(|x| Spanned::new(x, v.span)),
                "freeze_bn" => t.freeze_bn = self.epochs(v, true).map(|x| Spanned::new(x, v.span)),
                "freeze_observers" => {
                    t.freeze_observers = self.epochs(v, true).map(|x| Spanned::new(x, v.span))
                }
                "seed" => {
                    t.seed = self
                        .int(v, "`seed`")
                        .and_then(|n| {
                            self.check(u64::try_from(n).ok(), v, "`seed` must not be negative")
                        })
                        .map(|x| Spanned::new(x, v.span))
                }
                "init" => t.init = self.string(v, "`init`").map(|x| Spanned::new(x, v.span)),
                "validation" => {
                    t.validation = self
                        .float_in(v, "`validation`", 0.0, 1.0, false)
                        .and_then(|f| {
                            self.check((f < 1.0).then_some(f), v, "`validation` must be below 1")
                        })
                        .map(|x| Spanned::new(x, v.span))
                }
                other => {
                    let d = Diag::error(entry.key.span, format!("unknown train setting `{other}`"))
                        .with_label("not a train setting");
                    let d = suggest(d, other, TRAIN_KEYS.iter().copied())
                        .with_note(format!("train settings are {}", TRAIN_KEYS.join(", ")));
                    self.error(d);
                }
            }
        }
        t
    }

    fn data_source(&self, value: &Value) -> Option<DataSource> {
        let ValueKind::Call { callee, args } = &value.kind else {
            self.error(
                Diag::error(
                    value.span,
                    format!("expected a data source, found {}", value.describe()),
                )
                .with_label("e.g. `mnist(\"data/mnist10k\")`"),
            );
            return None;
        };
        match callee.text.as_str() {
            "mnist" | "cifar10" => {
                let bound = self.bind(callee, args, &["dir"], &["dir"])?;
                let dir = self.string(self.require(&bound, callee, "dir")?, "`dir`")?;
                Some(if callee.text == "mnist" {
                    DataSource::Mnist { dir }
                } else {
                    DataSource::Cifar10 { dir }
                })
            }
            "idx" => {
                let params = &["images", "labels", "test_images", "test_labels"];
                let bound = self.bind(callee, args, params, &[])?;
                Some(DataSource::Idx {
                    images: self.string(self.require(&bound, callee, "images")?, "`images`")?,
                    labels: self.string(self.require(&bound, callee, "labels")?, "`labels`")?,
                    test_images: self
                        .opt(&bound, "test_images", |cx, v| cx.string(v, "`test_images`"))?,
                    test_labels: self
                        .opt(&bound, "test_labels", |cx, v| cx.string(v, "`test_labels`"))?,
                })
            }
            other => {
                let d = Diag::error(callee.span, format!("unknown data source `{other}`"))
                    .with_label(
                        "expected mnist(DIR), cifar10(DIR) or idx(images: ..., labels: ...)",
                    );
                self.error(suggest(d, other, ["mnist", "cifar10", "idx"]));
                None
            }
        }
    }

    fn normalize(&self, value: &Value) -> Option<Normalize> {
        let ValueKind::Map(entries) = &value.kind else {
            self.error(
                Diag::error(
                    value.span,
                    format!(
                        "expected `{{ mean: ..., std: ... }}`, found {}",
                        value.describe()
                    ),
                )
                .with_label("normalize takes a mean and a std"),
            );
            return None;
        };
        let callee = cst::Ident {
            text: "normalize".into(),
            span: value.span,
        };
        let args: Vec<Arg> = entries.iter().cloned().map(Arg::Named).collect();
        let bound = self.bind(&callee, &args, &["mean", "std"], &[])?;
        let mean = self.per_channel(self.require(&bound, &callee, "mean")?, "`mean`", false)?;
        let std = self.per_channel(self.require(&bound, &callee, "std")?, "`std`", true)?;
        Some(Normalize { mean, std })
    }

    fn per_channel(&self, value: &Value, what: &str, positive: bool) -> Option<PerChannel> {
        let lo = if positive { 0.0 } else { f64::MIN };
        match &value.kind {
            ValueKind::List(items) if !items.is_empty() => {
                let vals: Option<Vec<f64>> = items
                    .iter()
                    .map(|v| self.float_in(v, what, lo, f64::MAX, !positive))
                    .collect();
                vals.map(PerChannel::Each)
            }
            _ => self
                .float_in(value, what, lo, f64::MAX, !positive)
                .map(PerChannel::All),
        }
    }

    fn optimizer(&self, value: &Value) -> Option<Optimizer> {
        let ValueKind::Call { callee, args } = &value.kind else {
            self.error(
                Diag::error(
                    value.span,
                    format!("expected an optimizer, found {}", value.describe()),
                )
                .with_label("e.g. `sgd(lr: 0.01, momentum: 0.9)` or `adam(lr: 0.001)`"),
            );
            return None;
        };
        let rate = |cx: &Lower, v: &Value, what: &str| cx.float_in(v, what, 0.0, f64::MAX, false);
        let frac = |cx: &Lower, v: &Value, what: &str| cx.float_in(v, what, 0.0, 1.0, true);
        match callee.text.as_str() {
            "sgd" => {
                let bound = self.bind(
                    callee,
                    args,
                    &["lr", "momentum", "weight_decay", "nesterov"],
                    &["lr"],
                )?;
                Some(every!(Optimizer::Sgd {
                    lr: self
                        .require(&bound, callee, "lr")
                        .and_then(|v| rate(self, v, "`lr`")),
                    momentum: self.opt(&bound, "momentum", |cx, v| frac(cx, v, "`momentum`")),
                    weight_decay: self.opt(&bound, "weight_decay", |cx, v| {
                        frac(cx, v, "`weight_decay`")
                    }),
                    nesterov: self.opt(&bound, "nesterov", Self::bool),
                }))
            }
            "adam" => {
                let bound = self.bind(
                    callee,
                    args,
                    &["lr", "beta1", "beta2", "eps", "weight_decay"],
                    &["lr"],
                )?;
                Some(every!(Optimizer::Adam {
                    lr: self.opt(&bound, "lr", |cx, v| rate(cx, v, "`lr`")),
                    beta1: self.opt(&bound, "beta1", |cx, v| frac(cx, v, "`beta1`")),
                    beta2: self.opt(&bound, "beta2", |cx, v| frac(cx, v, "`beta2`")),
                    eps: self.opt(&bound, "eps", |cx, v| rate(cx, v, "`eps`")),
                    weight_decay: self.opt(&bound, "weight_decay", |cx, v| {
                        frac(cx, v, "`weight_decay`")
                    }),
                }))
            }
            other => {
                let d = Diag::error(callee.span, format!("unknown optimizer `{other}`"))
                    .with_label("expected sgd(...) or adam(...)");
                self.error(suggest(d, other, ["sgd", "adam"]));
                None
            }
        }
    }

    fn schedule(&self, value: &Value) -> Option<Schedule> {
        match &value.kind {
            ValueKind::Ident(name) if name == "cosine" => Some(Schedule::Cosine),
            ValueKind::Call { callee, args } if callee.text == "step" => {
                let bound = self.bind(
                    callee,
                    args,
                    &["step_size", "gamma"],
                    &["step_size", "gamma"],
                )?;
                Some(every!(Schedule::Step {
                    step_size: self
                        .require(&bound, callee, "step_size")
                        .and_then(|v| self.positive(v, "`step_size`")),
                    gamma: self.opt(&bound, "gamma", |cx, v| {
                        cx.float_in(v, "`gamma`", 0.0, f64::MAX, false)
                    }),
                }))
            }
            _ => {
                let d = Diag::error(value.span, format!("unknown schedule {}", value.describe()))
                    .with_label("expected `cosine` or `step(step_size: N, gamma: G)`");
                let word = match &value.kind {
                    ValueKind::Ident(w) => w.clone(),
                    ValueKind::Call { callee, .. } => callee.text.clone(),
                    _ => String::new(),
                };
                self.error(suggest(d, &word, ["cosine", "step"]));
                None
            }
        }
    }

    /// `N epochs`, `after N epochs` (when `after` is expected), or a bare count.
    fn epochs(&self, value: &Value, after: bool) -> Option<usize> {
        match &value.kind {
            ValueKind::Epochs {
                after: has_after,
                n,
            } => {
                if *has_after != after {
                    let want = if after { "after N epochs" } else { "N epochs" };
                    self.error(
                        Diag::error(value.span, format!("expected `{want}`")).with_label("here"),
                    );
                    return None;
                }
                self.check(
                    usize::try_from(*n).ok().filter(|n| *n <= 1_000_000),
                    value,
                    "too many epochs",
                )
            }
            _ => {
                let n = self.int(value, "an epoch count")?;
                self.check(
                    usize::try_from(n).ok().filter(|n| *n <= 1_000_000),
                    value,
                    "expected a count of epochs",
                )
            }
        }
    }

    // -------------------------------------------------------------------------------- arguments

    /// Matches a call's arguments to parameters: positional ones in the order of `positional`,
    /// then named ones. Reports unknown, repeated and surplus arguments.
    fn bind<'a>(
        &self,
        callee: &cst::Ident,
        args: &'a [Arg],
        params: &[&'static str],
        positional: &[&'static str],
    ) -> Option<Bound<'a>> {
        let mut bound = Bound { args: Vec::new() };
        let mut ok = true;
        let mut next_positional = positional.iter();
        for arg in args {
            let (name, value): (&'static str, &Value) = match arg {
                Arg::Positional(value) => match next_positional.next() {
                    Some(name) => (name, value),
                    None => {
                        let d = Diag::error(
                            value.span,
                            format!("`{}` takes no more positional arguments", callee.text),
                        )
                        .with_label("unexpected argument");
                        let positional_args = args
                            .iter()
                            .filter(|a| matches!(a, Arg::Positional(_)))
                            .count();
                        let d = if params.is_empty() {
                            d.with_note(format!("`{}` takes no arguments", callee.text))
                        } else if callee.text == "Linear" && positional_args == 2 {
                            // PyTorch's `nn.Linear(in_features, out_features)`.
                            d.with_help(format!(
                                "this looks like PyTorch's `Linear(in_features, out_features)`; \
                                 qatc infers the input size from the layer before: write \
                                 `Linear(out: {})`",
                                match &value.kind {
                                    cst::ValueKind::Number { int: Some(n), .. } => n.to_string(),
                                    _ => "N".to_string(),
                                }
                            ))
                        } else {
                            d.with_help(format!(
                                "name it: {}",
                                params
                                    .iter()
                                    .map(|p| format!("`{p}: ...`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                        };
                        self.error(d);
                        ok = false;
                        continue;
                    }
                },
                Arg::Named(entry) => match params.iter().find(|p| **p == alias(&entry.key.text)) {
                    Some(name) => (name, &entry.value),
                    None => {
                        let d = Diag::error(
                            entry.key.span,
                            format!("`{}` has no argument `{}`", callee.text, entry.key.text),
                        )
                        .with_label("unknown argument");
                        let d = if params.is_empty() {
                            d.with_note(format!("`{}` takes no arguments", callee.text))
                        } else {
                            suggest(d, &entry.key.text, params.iter().copied())
                                .with_note(format!("its arguments are {}", params.join(", ")))
                        };
                        self.error(d);
                        ok = false;
                        continue;
                    }
                },
            };
            if bound.get(name).is_some() {
                self.error(
                    Diag::error(value.span, format!("argument `{name}` given twice"))
                        .with_label("second value"),
                );
                ok = false;
                continue;
            }
            bound.args.push((name, value));
        }
        ok.then_some(bound)
    }

    fn require<'a>(&self, bound: &Bound<'a>, callee: &cst::Ident, name: &str) -> Option<&'a Value> {
        let value = bound.get(name);
        if value.is_none() {
            self.error(
                Diag::error(
                    callee.span,
                    format!("`{}` needs the argument `{name}`", callee.text),
                )
                .with_label(format!("missing `{name}`")),
            );
        }
        value
    }

    /// `Some(None)` when the argument is absent, `Some(Some(x))` when valid, `None` on error.
    fn opt<T>(
        &self,
        bound: &Bound,
        name: &str,
        f: impl FnOnce(&Self, &Value) -> Option<T>,
    ) -> Option<Option<T>> {
        match bound.get(name) {
            None => Some(None),
            Some(v) => f(self, v).map(Some),
        }
    }

    // -------------------------------------------------------------------------------- scalars

    fn check<T>(&self, x: Option<T>, value: &Value, message: &str) -> Option<T> {
        if x.is_none() {
            self.error(Diag::error(value.span, message.to_string()).with_label("here"));
        }
        x
    }

    fn int(&self, value: &Value, what: &str) -> Option<i64> {
        match &value.kind {
            ValueKind::Number { int: Some(n), .. } => Some(*n),
            _ => {
                self.error(
                    Diag::error(
                        value.span,
                        format!("{what} must be an integer, found {}", value.describe()),
                    )
                    .with_label("expected an integer"),
                );
                None
            }
        }
    }

    fn positive(&self, value: &Value, what: &str) -> Option<usize> {
        let n = self.int(value, what)?;
        let ok = usize::try_from(n)
            .ok()
            .filter(|n| (1..=1 << 24).contains(n));
        if ok.is_none() {
            self.error(
                Diag::error(
                    value.span,
                    format!("{what} must be a positive integer (at most 16777216), found {n}"),
                )
                .with_label("out of range"),
            );
        }
        ok
    }

    fn nonnegative(&self, value: &Value, what: &str) -> Option<usize> {
        let n = self.int(value, what)?;
        let ok = usize::try_from(n).ok().filter(|n| *n <= 1 << 24);
        if ok.is_none() {
            self.error(
                Diag::error(
                    value.span,
                    format!("{what} must not be negative, found {n}"),
                )
                .with_label("out of range"),
            );
        }
        ok
    }

    /// A 2-D size: `5` or `[3, 5]`, each at least `min`.
    fn size2(&self, value: &Value, what: &str, min: usize) -> Option<Size2> {
        let one = |cx: &Lower, v: &Value| {
            if min == 0 {
                cx.nonnegative(v, what)
            } else {
                cx.positive(v, what)
            }
        };
        match &value.kind {
            ValueKind::List(items) if items.len() == 2 => {
                let h = one(self, &items[0]);
                let w = one(self, &items[1]);
                Some(Size2::Rect([h?, w?]))
            }
            ValueKind::List(_) => {
                self.error(
                    Diag::error(
                        value.span,
                        format!("{what} takes one number or a pair `[h, w]`"),
                    )
                    .with_label("here"),
                );
                None
            }
            _ => one(self, value).map(Size2::Square),
        }
    }

    /// A number in `[lo, hi]` (or `(lo, hi]` when `lo_inclusive` is false).
    fn float_in(
        &self,
        value: &Value,
        what: &str,
        lo: f64,
        hi: f64,
        lo_inclusive: bool,
    ) -> Option<f64> {
        let ValueKind::Number { value: x, .. } = value.kind else {
            self.error(
                Diag::error(
                    value.span,
                    format!("{what} must be a number, found {}", value.describe()),
                )
                .with_label("expected a number"),
            );
            return None;
        };
        let above = if lo_inclusive { x >= lo } else { x > lo };
        if !(x.is_finite() && above && x <= hi) {
            let bound = if lo_inclusive {
                "at least"
            } else {
                "greater than"
            };
            let range = if hi == f64::MAX {
                format!("{bound} {lo}")
            } else {
                format!("{bound} {lo} and at most {hi}")
            };
            self.error(
                Diag::error(value.span, format!("{what} must be {range}, found {x}"))
                    .with_label("out of range"),
            );
            return None;
        }
        Some(x)
    }

    /// What `extract` finds in `value`, or an error saying what was expected and what was found.
    fn expect<T>(
        &self,
        value: &Value,
        extract: impl FnOnce(&ValueKind) -> Option<T>,
        message: impl FnOnce(String) -> String,
        label: &str,
    ) -> Option<T> {
        let found = extract(&value.kind);
        if found.is_none() {
            self.error(Diag::error(value.span, message(value.describe())).with_label(label));
        }
        found
    }

    fn bool(&self, value: &Value) -> Option<bool> {
        self.expect(
            value,
            |kind| match kind {
                ValueKind::Ident(w) if w == "true" => Some(true),
                ValueKind::Ident(w) if w == "false" => Some(false),
                _ => None,
            },
            |found| format!("expected `true` or `false`, found {found}"),
            "expected a boolean",
        )
    }

    fn string(&self, value: &Value, what: &str) -> Option<String> {
        self.expect(
            value,
            |kind| match kind {
                ValueKind::Str(s) => Some(s.clone()),
                _ => None,
            },
            |found| format!("{what} must be a string, found {found}"),
            "expected a quoted string",
        )
    }

    fn word(&self, value: &Value, what: &str) -> Option<String> {
        self.expect(
            value,
            |kind| match kind {
                ValueKind::Ident(w) => Some(w.clone()),
                _ => None,
            },
            |found| format!("expected {what}, found {found}"),
            "here",
        )
    }

    fn name(&self, value: &Value, what: &str) -> Option<Name> {
        self.word(value, what).map(|w| Spanned::new(w, value.span))
    }

    fn keyword<T: Copy>(
        &self,
        value: &Value,
        what: &str,
        names: &[&str],
        items: &[T],
    ) -> Option<T> {
        let word = self.word(value, what)?;
        match names.iter().position(|n| *n == word) {
            Some(i) => Some(items[i]),
            None => {
                let d = Diag::error(
                    value.span,
                    format!(
                        "unknown {} `{word}`",
                        what.trim_start_matches("an ").trim_start_matches("a ")
                    ),
                )
                .with_label(format!("expected {}", names.join(", ")));
                self.error(suggest(d, &word, names.iter().copied()));
                None
            }
        }
    }

    fn duplicate(&self, entry: &Entry) {
        self.error(
            Diag::error(entry.key.span, format!("`{}` is set twice", entry.key.text))
                .with_label("second setting"),
        );
    }
}

fn spanned_name(ident: &cst::Ident) -> Name {
    Spanned::new(ident.text.clone(), ident.span)
}

/// PyTorch's name for an argument qatc spells more briefly (`kernel_size` for `kernel`), as
/// qatc spells it; any other name as it is.
fn alias(name: &str) -> &str {
    match name {
        "kernel_size" => "kernel",
        other => other,
    }
}
