//! Normalization layers (BatchNorm), each defined once: its name, the input it takes, and the
//! layer it folds into. Their arithmetic is shared: training statistics, the eval-mode affine
//! map and folding live with the state (`state::BnState`), the fused QAT forward and backward
//! with the engine; both work per channel, whatever the kind.
//!
//! Adding one is a variant here and an arm in each `match` below.

use serde::{Deserialize, Serialize};

/// A BatchNorm, by the shape it normalizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Norm {
    /// Per channel of `[C, H, W]` inputs; folds into the Conv2d before it.
    BatchNorm2d,
    /// Per feature of `[F]` inputs; folds into the Linear before it.
    BatchNorm1d,
}

/// Every name users can write.
pub const NAMES: &[&str] = &["BatchNorm2d", "BatchNorm1d"];

/// The layer a normalization folds into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Conv2d,
    Linear,
}

/// PyTorch's defaults.
pub const DEFAULT_EPS: f64 = 1e-5;
pub const DEFAULT_MOMENTUM: f64 = 0.1;

impl Norm {
    pub fn from_name(name: &str) -> Option<Norm> {
        match name {
            "BatchNorm2d" => Some(Norm::BatchNorm2d),
            "BatchNorm1d" => Some(Norm::BatchNorm1d),
            _ => None,
        }
    }

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            Norm::BatchNorm2d => "BatchNorm2d",
            Norm::BatchNorm1d => "BatchNorm1d",
        }
    }

    /// The name in the IR's text form.
    pub fn mnemonic(self) -> &'static str {
        match self {
            Norm::BatchNorm2d => "batch_norm2d",
            Norm::BatchNorm1d => "batch_norm1d",
        }
    }

    /// The shape it takes, in words, for messages.
    pub fn input_text(self) -> &'static str {
        match self {
            Norm::BatchNorm2d => "a [channels, height, width] input",
            Norm::BatchNorm1d => "a [features] input",
        }
    }

    /// Dimensions of one sample of its input.
    pub fn dims(self) -> usize {
        match self {
            Norm::BatchNorm2d => 3,
            Norm::BatchNorm1d => 1,
        }
    }

    /// The channels of an input of this shape, or `None` when the shape is not one it takes.
    pub fn channels(self, shape: &[usize]) -> Option<usize> {
        match (self, shape) {
            (Norm::BatchNorm2d, [c, _, _]) => Some(*c),
            (Norm::BatchNorm1d, [f]) => Some(*f),
            (Norm::BatchNorm2d | Norm::BatchNorm1d, _) => None,
        }
    }

    /// The layer it folds into when it follows one (torch's `fuse_modules` pairs).
    pub fn host(self) -> Host {
        match self {
            Norm::BatchNorm2d => Host::Conv2d,
            Norm::BatchNorm1d => Host::Linear,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_norm_of_that_name() {
        for name in NAMES {
            let norm = Norm::from_name(name).expect("a name is a norm");
            assert_eq!(norm.name(), *name);
        }
        assert_eq!(Norm::BatchNorm2d.channels(&[3, 4, 4]), Some(3));
        assert_eq!(Norm::BatchNorm2d.channels(&[3]), None);
    }
}
