//! The abstract syntax of a spec: what the user wrote, typed, with every node's span.
//!
//! Optional arguments stay `None` when the user did not write them, so `qatc fmt` prints back what
//! was written; defaults are filled in by the checker. The YAML form is this AST through serde;
//! spans are not part of it (and are ignored by equality, since they are not part of the meaning).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::diag::Span;
use crate::ops::activation::Activation;
use crate::ops::combine::Combine;
use crate::ops::norm::Norm;
use crate::ops::pool::Pool2d;
pub use crate::quant::qconfig::{
    Backend, DType, FakeQuantSpec, ObserverKind, Scheme, BACKEND_NAMES,
};

/// A value with the place it was written. Equality and the YAML form ignore the span.
#[derive(Clone, Debug, Default)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(node: T, span: Span) -> Spanned<T> {
        Spanned { node, span }
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.node == other.node
    }
}

impl<T: Serialize> Serialize for Spanned<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.node.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(|node| Spanned::new(node, Span::default()))
    }
}

/// A user-chosen name (a model, a layer, a qconfig).
pub type Name = Spanned<String>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub model: Model,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<Quantize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<Train>,
}

// ------------------------------------------------------------------------------------------ model

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub name: Name,
    /// The shape of one sample, without the batch dimension: `[C, H, W]` or `[F]`.
    pub input: Spanned<Vec<usize>>,
    /// The output layer, when it is not the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Name>,
    pub layers: Vec<Layer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub name: Name,
    pub op: Spanned<Op>,
    /// Named inputs; empty means "the previous layer's output".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Name>,
    /// Where each argument was written, for messages about one argument.
    #[serde(skip)]
    pub arg_spans: ArgSpans,
}

/// Argument name -> span of its value, and how many arguments were positional. Not part of
/// the meaning: always equal.
#[derive(Clone, Debug, Default)]
pub struct ArgSpans(pub Vec<(String, Span)>, pub usize);

impl ArgSpans {
    pub fn get(&self, arg: &str) -> Option<Span> {
        self.0
            .iter()
            .find(|(name, _)| name == arg)
            .map(|(_, span)| *span)
    }
}

impl PartialEq for ArgSpans {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// A layer type with the arguments the user wrote. Spelled as PyTorch spells it.
///
/// Its YAML form is `{ type: Name, arg: value, ... }` for every layer. serde derives the form
/// of the layers with their own variant (`remote = "Self"` makes the derived code inherent
/// functions); the trait impls below send activations to [`ActivationSpec`] by their name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "type", deny_unknown_fields)]
pub enum Op {
    Linear {
        out: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<bool>,
    },
    Conv2d {
        out: usize,
        kernel: Size2,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<Size2>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding: Option<Size2>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        groups: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<bool>,
    },
    MaxPool2d(Pool),
    AvgPool2d(Pool),
    GlobalAvgPool,
    Flatten,
    Dropout {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p: Option<f64>,
    },
    /// A normalization (`BatchNorm2d`, ...): its name is the `type`.
    #[serde(untagged, skip_deserializing)]
    Norm(NormSpec),
    /// An op combining its inputs (`Add`, ...): its name is the `type`.
    #[serde(untagged, skip_deserializing)]
    Combine(CombineSpec),
    /// An elementwise activation (`ReLU`, ...): its name is the `type`.
    #[serde(untagged, skip_deserializing)]
    Activation(ActivationSpec),
}

/// A normalization with the arguments the user wrote; its YAML form is
/// `{ type: Name, eps: ..., momentum: ... }`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormSpec {
    #[serde(rename = "type", with = "norm_name")]
    pub kind: Norm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
}

/// A [`Norm`] as its name.
mod norm_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::ops::norm::Norm;

    pub fn serialize<S: Serializer>(norm: &Norm, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(norm.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Norm, D::Error> {
        let name = String::deserialize(deserializer)?;
        Norm::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown normalization `{name}`")))
    }
}

/// An op combining its inputs, in the AST; its YAML form is `{ type: Name }`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CombineSpec(pub Combine);

impl Serialize for CombineSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("type", self.0.name())?;
        map.end()
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Op::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_yaml::Value::deserialize(deserializer)?;
        let name = value.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let activation = Activation::params(name).is_some();
        if Norm::from_name(name).is_some() {
            return NormSpec::deserialize(value)
                .map(Op::Norm)
                .map_err(D::Error::custom);
        }
        if let Some(combine) = Combine::from_name(name) {
            if let Some(extra) = value
                .as_mapping()
                .and_then(|m| m.keys().find(|k| k.as_str() != Some("type")))
            {
                return Err(D::Error::custom(format!(
                    "`{name}` takes no argument `{}`",
                    extra.as_str().unwrap_or("?")
                )));
            }
            return Ok(Op::Combine(CombineSpec(combine)));
        }
        if !activation && !OP_NAMES.contains(&name) {
            let names: Vec<String> = OP_NAMES
                .iter()
                .chain(crate::ops::norm::NAMES)
                .chain(crate::ops::combine::NAMES)
                .chain(crate::ops::activation::NAMES)
                .map(|n| format!("`{n}`"))
                .collect();
            return Err(D::Error::custom(format!(
                "unknown layer type `{name}`, expected one of {}",
                names.join(", ")
            )));
        }
        if activation {
            ActivationSpec::deserialize(value)
                .map(Op::Activation)
                .map_err(D::Error::custom)
        } else {
            Op::deserialize(value).map_err(D::Error::custom)
        }
    }
}

/// An activation in the AST; its YAML form is `{ type: Name, arg: value, ... }` like every
/// other layer's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActivationSpec(pub Activation);

impl Serialize for ActivationSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let args = self.0.args();
        let mut map = serializer.serialize_map(Some(1 + args.len()))?;
        map.serialize_entry("type", self.0.name())?;
        for (name, value) in args {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ActivationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map =
            std::collections::BTreeMap::<String, serde_yaml::Value>::deserialize(deserializer)?;
        let name = map
            .get("type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| D::Error::custom("a layer needs a `type`"))?;
        let params = crate::ops::activation::Activation::params(name)
            .ok_or_else(|| D::Error::custom(format!("unknown layer type `{name}`")))?;
        if let Some(extra) = map
            .keys()
            .find(|k| *k != "type" && !params.iter().any(|p| p.name == k.as_str()))
        {
            return Err(D::Error::custom(format!(
                "`{name}` takes no argument `{extra}`"
            )));
        }
        let mut values = Vec::new();
        for p in params {
            let v = match map.get(p.name) {
                None => p.default,
                Some(v) => v
                    .as_f64()
                    .filter(|v| (p.min..=p.max).contains(v))
                    .ok_or_else(|| {
                        D::Error::custom(format!(
                            "`{}` of `{name}` must be a number in {}..={}",
                            p.name, p.min, p.max
                        ))
                    })?,
            };
            values.push(v);
        }
        crate::ops::activation::Activation::from_args(name, &values)
            .map(ActivationSpec)
            .ok_or_else(|| D::Error::custom(format!("invalid arguments for `{name}`")))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub kernel: Size2,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Size2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<Size2>,
}

impl Pool {
    /// The window, PyTorch's defaults filled in: the stride is the kernel, no padding.
    pub fn window(&self) -> Pool2d {
        let kernel = self.kernel.hw();
        Pool2d {
            kernel,
            stride: self.stride.map_or(kernel, Size2::hw),
            padding: self.padding.map_or((0, 0), Size2::hw),
        }
    }
}

/// A 2-D size: `5` or `[3, 5]` (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size2 {
    Square(usize),
    Rect([usize; 2]),
}

impl Size2 {
    pub fn hw(self) -> (usize, usize) {
        match self {
            Size2::Square(n) => (n, n),
            Size2::Rect([h, w]) => (h, w),
        }
    }
}

/// Every layer type, as users spell it.
pub const OP_NAMES: &[&str] = &[
    "Linear",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "GlobalAvgPool",
    "Flatten",
    "Dropout",
];

impl Op {
    pub fn type_name(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "Linear",
            Op::Conv2d { .. } => "Conv2d",
            Op::Combine(c) => c.0.name(),
            Op::Activation(a) => a.0.name(),
            Op::MaxPool2d(_) => "MaxPool2d",
            Op::AvgPool2d(_) => "AvgPool2d",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::Flatten => "Flatten",
            Op::Norm(n) => n.kind.name(),
            Op::Dropout { .. } => "Dropout",
        }
    }

    /// Does this layer own weights (and so get a weight fake-quant)?
    pub fn has_weights(&self) -> bool {
        matches!(self, Op::Linear { .. } | Op::Conv2d { .. })
    }
}

// ------------------------------------------------------------------------------------------ quantize

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantize {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Spanned<Backend>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Spanned<QconfigRef>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qconfigs: Vec<QconfigDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
}

/// What a layer is quantized with: a preset, a named qconfig, or nothing (kept float).
/// Written and serialized as `qat(fbgemm)`, `ptq(qnnpack)`, `wide` or `none`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum QconfigRef {
    Qat(Backend),
    Ptq(Backend),
    Named(String),
    None,
}

impl fmt::Display for QconfigRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QconfigRef::Qat(b) => write!(f, "qat({})", b.name()),
            QconfigRef::Ptq(b) => write!(f, "ptq({})", b.name()),
            QconfigRef::Named(name) => f.write_str(name),
            QconfigRef::None => f.write_str("none"),
        }
    }
}

impl From<QconfigRef> for String {
    fn from(r: QconfigRef) -> String {
        r.to_string()
    }
}

impl FromStr for QconfigRef {
    type Err = String;

    fn from_str(s: &str) -> Result<QconfigRef, String> {
        let s = s.trim();
        for (prefix, make) in [
            ("qat(", QconfigRef::Qat as fn(Backend) -> QconfigRef),
            ("ptq(", QconfigRef::Ptq),
        ] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let backend = rest
                    .strip_suffix(')')
                    .map(str::trim)
                    .and_then(Backend::from_name);
                return backend.map(make).ok_or_else(|| format!("bad preset `{s}`"));
            }
        }
        match s {
            "none" => Ok(QconfigRef::None),
            _ if is_ident(s) => Ok(QconfigRef::Named(s.to_string())),
            _ => Err(format!("bad qconfig reference `{s}`")),
        }
    }
}

impl TryFrom<String> for QconfigRef {
    type Error = String;

    fn try_from(s: String) -> Result<QconfigRef, String> {
        s.parse()
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QconfigDef {
    pub name: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Spanned<FakeQuantSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Spanned<FakeQuantSpec>>,
    /// Where each field of `activation` and `weight` was written, for messages about one field.
    #[serde(skip)]
    pub field_spans: [ArgSpans; 2],
}

// ------------------------------------------------------------------------------------------ train

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Spanned<DataSource>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Spanned<Normalize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<Spanned<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Spanned<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<Spanned<Optimizer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Spanned<Schedule>>,
    /// Epochs of float training before fake quantization is switched on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<Spanned<usize>>,
    /// Freeze BatchNorm statistics after this many epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_bn: Option<Spanned<usize>>,
    /// Freeze observers (scales, zero points) after this many epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_observers: Option<Spanned<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<Spanned<u64>>,
    /// The fraction of the training data held out for the per-epoch accuracy (the test set is
    /// then used once, at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Spanned<f64>>,
    /// A safetensors state dict to start from instead of random weights (relative to the
    /// spec's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Spanned<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum DataSource {
    /// A folder with the four MNIST IDX files (plain or .gz).
    Mnist { dir: String },
    /// A folder with CIFAR-10's binary batches.
    Cifar10 { dir: String },
    /// IDX files named one by one.
    Idx {
        images: String,
        labels: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test_images: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test_labels: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: PerChannel,
    pub std: PerChannel,
}

/// One value for all channels, or one per channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerChannel {
    All(f64),
    Each(Vec<f64>),
}

impl PerChannel {
    pub fn count(&self) -> Option<usize> {
        match self {
            PerChannel::All(_) => None,
            PerChannel::Each(v) => Some(v.len()),
        }
    }

    pub fn values(&self) -> Vec<f64> {
        match self {
            PerChannel::All(v) => vec![*v],
            PerChannel::Each(v) => v.clone(),
        }
    }

    /// The value for channel `c`.
    pub fn get(&self, c: usize) -> f64 {
        match self {
            PerChannel::All(v) => *v,
            PerChannel::Each(v) => v[c],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Optimizer {
    Sgd {
        lr: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        momentum: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight_decay: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nesterov: Option<bool>,
    },
    Adam {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lr: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta1: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta2: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eps: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight_decay: Option<f64>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// Multiply the learning rate by `gamma` every `step_size` epochs (torch's StepLR).
    Step {
        step_size: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gamma: Option<f64>,
    },
    /// Cosine annealing from the initial rate to 0 over all epochs (torch's CosineAnnealingLR).
    Cosine,
}

/// `LAYER: QCONFIG` inside `quantize`: one layer's qconfig, overriding the default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub layer: Name,
    pub qconfig: Spanned<QconfigRef>,
}
