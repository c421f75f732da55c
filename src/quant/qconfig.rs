//! Resolved qconfigs: what each fake-quant node does, with every default filled in.
//!
//! Presets mirror PyTorch's `get_default_qat_qconfig` exactly (see [`preset`]).

use serde::{Deserialize, Serialize};

use super::numerics::QParams;

/// How a tensor is fake-quantized: the observer that tracks its range and the integer grid.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FakeQuantConfig {
    pub observer: ObserverKind,
    pub dtype: DType,
    pub scheme: Scheme,
    /// The integer range actually used (7 bits when `reduce_range` was asked for).
    pub quant_min: i32,
    pub quant_max: i32,
    /// Moving-average constant (PyTorch's `averaging_constant`); unused by plain min/max.
    pub averaging: f32,
    /// Fixed parameters instead of observed ones (torch's `FixedQParamsFakeQuantize`, after
    /// sigmoid-like activations): the observer then observes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<QParams>,
    /// LSQ: the scale (and, affine, the zero point) are trained once the observer stops setting
    /// them (torch's `_LearnableFakeQuantize`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learnable: bool,
}

impl FakeQuantConfig {
    /// `quint8 affine 0..127 moving_average_minmax(0.01)`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {} {}..{} {}",
            self.dtype.name(),
            self.scheme.name(),
            self.quant_min,
            self.quant_max,
            self.observer.name()
        );
        if let Some(q) = self.fixed {
            return format!(
                "{} {} {}..{} fixed(scale={:?}, zero_point={})",
                self.dtype.name(),
                self.scheme.name(),
                self.quant_min,
                self.quant_max,
                q.scale,
                q.zero_point
            );
        }
        if self.observer.is_moving_average() {
            s.push_str(&format!("({})", self.averaging));
        }
        if self.learnable {
            s.push_str(" learnable");
        }
        s
    }
}

/// Whether fake quantization runs during training (QAT) or only the observers (PTQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantMode {
    Qat,
    Ptq,
}

/// A layer's resolved qconfig.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QConfig {
    /// As the user named it: `qat(fbgemm)`, `wide`.
    pub name: String,
    pub mode: QuantMode,
    pub activation: FakeQuantConfig,
    pub weight: FakeQuantConfig,
}

pub const DEFAULT_AVERAGING: f32 = 0.01;

/// The preset for a backend, as `torch.ao.quantization.get_default_qat_qconfig(backend)`:
/// - fbgemm: activations moving-average min/max, quint8 affine with reduce_range (0..127);
///   weights moving-average per-channel min/max, qint8 per-channel symmetric (-128..127).
/// - qnnpack: activations moving-average min/max quint8 affine 0..255; weights moving-average
///   min/max, qint8 per-tensor symmetric (-128..127).
/// - native (ours): fbgemm's weights with full-range 0..255 activations, since our int8 kernels
///   accumulate exactly and need no 7-bit headroom.
pub fn preset(backend: Backend, mode: QuantMode) -> QConfig {
    let activation = FakeQuantConfig {
        observer: ObserverKind::MovingAverageMinmax,
        dtype: DType::Quint8,
        scheme: Scheme::Affine,
        quant_min: 0,
        quant_max: if backend == Backend::Fbgemm { 127 } else { 255 },
        averaging: DEFAULT_AVERAGING,
        fixed: None,
        learnable: false,
    };
    let weight = FakeQuantConfig {
        observer: if backend == Backend::Qnnpack {
            ObserverKind::MovingAverageMinmax
        } else {
            ObserverKind::MovingAveragePerChannelMinmax
        },
        dtype: DType::Qint8,
        scheme: Scheme::Symmetric,
        quant_min: -128,
        quant_max: 127,
        averaging: DEFAULT_AVERAGING,
        fixed: None,
        learnable: false,
    };
    let mode_name = match mode {
        QuantMode::Qat => "qat",
        QuantMode::Ptq => "ptq",
    };
    QConfig {
        name: format!("{mode_name}({})", backend.name()),
        mode,
        activation,
        weight,
    }
}

/// Applies the fields a user wrote over a base config. `reduce_range` halves the range of the
/// dtype (as torch does); explicit `quant_min`/`quant_max` win over both.
pub fn apply(base: FakeQuantConfig, spec: &FakeQuantSpec) -> FakeQuantConfig {
    let dtype = spec.dtype.unwrap_or(base.dtype);
    let (mut quant_min, mut quant_max) = if spec.dtype.is_some() || spec.reduce_range.is_some() {
        let (lo, hi) = dtype.range();
        if spec.reduce_range == Some(true) {
            (lo / 2, hi / 2)
        } else {
            (lo, hi)
        }
    } else {
        (base.quant_min, base.quant_max)
    };
    if let Some(lo) = spec.quant_min {
        quant_min = lo.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    }
    if let Some(hi) = spec.quant_max {
        quant_max = hi.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    }
    FakeQuantConfig {
        observer: spec.observer.unwrap_or(base.observer),
        dtype,
        scheme: spec.scheme.unwrap_or(base.scheme),
        quant_min,
        quant_max,
        averaging: spec.averaging.map(|a| a as f32).unwrap_or(base.averaging),
        fixed: base.fixed,
        learnable: spec.learnable.unwrap_or(base.learnable),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Fbgemm,
    Qnnpack,
    Native,
}

pub const BACKEND_NAMES: &[&str] = &["fbgemm", "qnnpack", "native"];

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Fbgemm => "fbgemm",
            Backend::Qnnpack => "qnnpack",
            Backend::Native => "native",
        }
    }

    pub fn from_name(name: &str) -> Option<Backend> {
        match name {
            "fbgemm" => Some(Backend::Fbgemm),
            "qnnpack" => Some(Backend::Qnnpack),
            "native" => Some(Backend::Native),
            _ => None,
        }
    }
}

/// `fake_quant(observer: ..., dtype: ..., ...)`; unset fields come from the backend's preset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeQuantSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<ObserverKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce_range: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_max: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub averaging: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learnable: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObserverKind {
    Minmax,
    MovingAverageMinmax,
    PerChannelMinmax,
    MovingAveragePerChannelMinmax,
}

impl ObserverKind {
    pub const ALL: [ObserverKind; 4] = [
        ObserverKind::Minmax,
        ObserverKind::MovingAverageMinmax,
        ObserverKind::PerChannelMinmax,
        ObserverKind::MovingAveragePerChannelMinmax,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ObserverKind::Minmax => "minmax",
            ObserverKind::MovingAverageMinmax => "moving_average_minmax",
            ObserverKind::PerChannelMinmax => "per_channel_minmax",
            ObserverKind::MovingAveragePerChannelMinmax => "moving_average_per_channel_minmax",
        }
    }

    pub fn is_per_channel(self) -> bool {
        matches!(
            self,
            ObserverKind::PerChannelMinmax | ObserverKind::MovingAveragePerChannelMinmax
        )
    }

    pub fn is_moving_average(self) -> bool {
        matches!(
            self,
            ObserverKind::MovingAverageMinmax | ObserverKind::MovingAveragePerChannelMinmax
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Quint8,
    Qint8,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::Quint8 => "quint8",
            DType::Qint8 => "qint8",
        }
    }

    /// The full range of the type.
    pub fn range(self) -> (i32, i32) {
        match self {
            DType::Quint8 => (0, 255),
            DType::Qint8 => (-128, 127),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Affine,
    Symmetric,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Affine => "affine",
            Scheme::Symmetric => "symmetric",
        }
    }
}
