//! Elementwise activations, each defined once: its PyTorch name and arguments, its float
//! function and derivative (as [`Program`]s that training, the interpreter and the JIT all
//! run), and how it is quantized: as a clamp of its input's codes (ReLU, ReLU6: these also fuse
//! into a Linear or Conv2d before them) or as a 256-entry table from input codes to output codes,
//! computed at convert time ([`Activation::table`]).
//!
//! Adding an activation is a variant here and an arm in each `match` below; every match is
//! exhaustive, so a missing piece does not compile. No other file names activations one by one.

use serde::{Deserialize, Serialize};

use super::expr::{exp, Builder, Program};
use crate::quant::numerics::{dequantize, quantize, QParams};

/// An elementwise activation, as PyTorch spells it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    ReLU,
    ReLU6,
    Hardswish,
    Hardsigmoid,
    LeakyReLU { negative_slope: f64 },
    Sigmoid,
    Tanh,
    SiLU,
}

/// An activation applied at the end of a Linear or Conv2d (fused), as a clamp of its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Act {
    None,
    ReLU,
    ReLU6,
}

/// How an activation runs on quantized values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Quantized {
    /// A clamp of the input's codes; the output keeps the input's parameters (no observer).
    Clamp(Act),
    /// A table; the output's parameters come from an observer after it (torch's
    /// `activation_post_process`, from the layer's qconfig).
    Observed,
    /// A table; the output's parameters are fixed (torch's `FixedQParamsFakeQuantize`).
    Fixed(QParams),
}

/// A spec argument of an activation, with its default and its valid range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Param {
    pub name: &'static str,
    pub default: f64,
    pub min: f64,
    pub max: f64,
}

/// torch.ao.quantization's fixed output parameters for activations with values in [0, 1]
/// (`default_fixed_qparams_range_0to1_observer`): scale 1/256, zero point 0.
const UNIT_INTERVAL: QParams = QParams {
    scale: 1.0 / 256.0,
    zero_point: 0,
};

/// Every activation name users can write.
pub const NAMES: &[&str] = &[
    "ReLU",
    "ReLU6",
    "Hardswish",
    "Hardsigmoid",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "SiLU",
];

impl Activation {
    /// Every activation, with its default arguments.
    pub fn all() -> Vec<Activation> {
        NAMES
            .iter()
            .filter_map(|name| {
                let defaults: Vec<f64> = Activation::params(name)?
                    .iter()
                    .map(|p| p.default)
                    .collect();
                Activation::from_args(name, &defaults)
            })
            .collect()
    }

    /// The spec arguments of the activation called `name`, or `None` when `name` is not an
    /// activation.
    pub fn params(name: &str) -> Option<&'static [Param]> {
        match name {
            "ReLU" | "ReLU6" | "Hardswish" => Some(&[]),
            "SiLU" => Some(&[]),
            "Tanh" => Some(&[]),
            "Sigmoid" => Some(&[]),
            "LeakyReLU" => Some(&[Param {
                name: "negative_slope",
                default: 0.01,
                min: -1e6,
                max: 1e6,
            }]),
            "Hardsigmoid" => Some(&[]),
            _ => None,
        }
    }

    /// The activation called `name` with `values` for its [`Activation::params`], in order.
    pub fn from_args(name: &str, values: &[f64]) -> Option<Activation> {
        match (name, values) {
            ("ReLU", []) => Some(Activation::ReLU),
            ("ReLU6", []) => Some(Activation::ReLU6),
            ("Hardswish", []) => Some(Activation::Hardswish),
            ("SiLU", []) => Some(Activation::SiLU),
            ("Tanh", []) => Some(Activation::Tanh),
            ("Sigmoid", []) => Some(Activation::Sigmoid),
            ("LeakyReLU", [negative_slope]) => Some(Activation::LeakyReLU {
                negative_slope: *negative_slope,
            }),
            ("Hardsigmoid", []) => Some(Activation::Hardsigmoid),
            _ => None,
        }
    }

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            Activation::ReLU => "ReLU",
            Activation::ReLU6 => "ReLU6",
            Activation::Hardswish => "Hardswish",
            Activation::SiLU => "SiLU",
            Activation::Tanh => "Tanh",
            Activation::Sigmoid => "Sigmoid",
            Activation::LeakyReLU { .. } => "LeakyReLU",
            Activation::Hardsigmoid => "Hardsigmoid",
        }
    }

    /// The name in the IR's text form.
    pub fn mnemonic(self) -> &'static str {
        match self {
            Activation::ReLU => "relu",
            Activation::ReLU6 => "relu6",
            Activation::Hardswish => "hardswish",
            Activation::SiLU => "silu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::LeakyReLU { .. } => "leaky_relu",
            Activation::Hardsigmoid => "hardsigmoid",
        }
    }

    /// The argument values, named as in the spec.
    pub fn args(self) -> Vec<(&'static str, f64)> {
        match self {
            Activation::ReLU | Activation::ReLU6 | Activation::Hardswish => Vec::new(),
            Activation::SiLU => Vec::new(),
            Activation::Tanh => Vec::new(),
            Activation::Sigmoid => Vec::new(),
            Activation::LeakyReLU { negative_slope } => vec![("negative_slope", negative_slope)],
            Activation::Hardsigmoid => Vec::new(),
        }
    }

    /// The float function, as PyTorch computes it.
    pub fn program(self) -> Program {
        self.program_builder().build()
    }

    fn program_builder(self) -> Builder {
        let x = Builder::x;
        let c = Builder::constant;
        match self {
            Activation::ReLU => x().max(c(0.0)),
            Activation::ReLU6 => x().max(c(0.0)).min(c(6.0)),
            // ATen: `x * min(max(x + 3, 0), 6) / 6`.
            Activation::Hardswish => x() * (x() + c(3.0)).max(c(0.0)).min(c(6.0)) / c(6.0),
            // ATen: `x / (1 + e^-x)`.
            Activation::SiLU => x() / (c(1.0) + exp(c(0.0) - x())),
            // `2 / (1 + e^-2x) - 1`.
            Activation::Tanh => c(2.0) / (c(1.0) + exp(c(0.0) - c(2.0) * x())) - c(1.0),
            // `1 / (1 + e^-x)`, with qatc's exponential (`expr::exp`).
            Activation::Sigmoid => c(1.0) / (c(1.0) + exp(c(0.0) - x())),
            // ATen: `x > 0 ? x : x * negative_slope`, the slope as f32.
            Activation::LeakyReLU { negative_slope } => {
                x().if_gt(0.0, x(), x() * c(negative_slope as f32))
            }
            // ATen: `min(max(x + 3, 0), 6) / 6`.
            Activation::Hardsigmoid => (x() + c(3.0)).max(c(0.0)).min(c(6.0)) / c(6.0),
        }
    }

    /// The derivative at the input `x`, as PyTorch's backward uses it (at the kinks it takes
    /// the value PyTorch takes).
    pub fn derivative(self) -> Program {
        let x = Builder::x;
        let c = Builder::constant;
        match self {
            // torch: threshold_backward passes the gradient where the output is > 0.
            Activation::ReLU => x().if_gt(0.0, c(1.0), c(0.0)),
            // torch: hardtanh_backward passes it where 0 < x < 6.
            Activation::ReLU6 => x().if_gt(0.0, (c(6.0) - x()).if_gt(0.0, c(1.0), c(0.0)), c(0.0)),
            // ATen: 0 up to -3, x / 3 + 1/2 below 3, then 1.
            Activation::Hardswish => {
                x().if_gt(-3.0, x().if_ge(3.0, c(1.0), x() / c(3.0) + c(0.5)), c(0.0))
            }
            // ATen: `s * (1 + x * (1 - s))`, `s` the sigmoid of `x`.
            Activation::SiLU => {
                let s = Activation::Sigmoid.program_builder();
                s.clone() * (c(1.0) + x() * (c(1.0) - s))
            }
            // ATen: `1 - y * y`.
            Activation::Tanh => {
                let y = Activation::Tanh.program_builder();
                c(1.0) - y.clone() * y
            }
            // ATen: `(1 - y) * y`.
            Activation::Sigmoid => {
                let y = Activation::Sigmoid.program_builder();
                (c(1.0) - y.clone()) * y
            }
            Activation::LeakyReLU { negative_slope } => {
                x().if_gt(0.0, c(1.0), c(negative_slope as f32))
            }
            // ATen: 1/6 strictly between -3 and 3, else 0.
            Activation::Hardsigmoid => {
                x().if_gt(-3.0, x().if_ge(3.0, c(0.0), c(1.0 / 6.0)), c(0.0))
            }
        }
        .build()
    }

    /// How the activation runs on quantized values.
    pub fn quantized(self) -> Quantized {
        match self {
            Activation::ReLU => Quantized::Clamp(Act::ReLU),
            Activation::ReLU6 => Quantized::Clamp(Act::ReLU6),
            // torch: nnq.Hardswish, its output observed.
            Activation::Hardswish => Quantized::Observed,
            // torch: no fixed parameters; the output is observed.
            Activation::SiLU => Quantized::Observed,
            // torch.ao.quantization: fixed output parameters for [-1, 1].
            Activation::Tanh => Quantized::Fixed(QParams {
                scale: 2.0 / 256.0,
                zero_point: 128,
            }),
            // torch.ao.quantization: fixed output parameters for [0, 1].
            Activation::Sigmoid => Quantized::Fixed(UNIT_INTERVAL),
            // torch: nnq.LeakyReLU, its output observed.
            Activation::LeakyReLU { .. } => Quantized::Observed,
            // torch.ao.quantization: fixed output parameters for [0, 1].
            Activation::Hardsigmoid => Quantized::Fixed(UNIT_INTERVAL),
        }
    }

    /// The fused form, for activations that fold into a Linear or Conv2d before them.
    pub fn fused(self) -> Option<Act> {
        match self.quantized() {
            Quantized::Clamp(act) => Some(act),
            Quantized::Observed | Quantized::Fixed(_) => None,
        }
    }

    /// The output code for every input code: the float function on the dequantized input,
    /// quantized with the output's parameters (exactly what fake quantization computes in
    /// training on the same input).
    pub fn table(self, x: QParams, y: QParams) -> Vec<u8> {
        let program = self.program();
        let inputs: Vec<f32> = (0..256).map(|c| dequantize(c, x)).collect();
        let mut outputs = vec![0.0; 256];
        program.eval(&inputs, &mut outputs);
        outputs
            .iter()
            .map(|&v| quantize(v, 1.0 / y.scale, y.zero_point, 0, 255) as u8)
            .collect()
    }
}

impl Act {
    /// The activation a fused clamp stands for.
    pub fn activation(self) -> Option<Activation> {
        match self {
            Act::None => None,
            Act::ReLU => Some(Activation::ReLU),
            Act::ReLU6 => Some(Activation::ReLU6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_to_an_activation_of_that_name() {
        for name in NAMES {
            let params = Activation::params(name).expect("a name has params");
            let defaults: Vec<f64> = params.iter().map(|p| p.default).collect();
            let a = Activation::from_args(name, &defaults).expect("defaults are valid");
            assert_eq!(a.name(), *name);
            assert!(a.program().is_valid() && a.derivative().is_valid());
        }
        assert!(Activation::params("Softmax").is_none());
    }

    #[test]
    fn derivatives_match_finite_differences_away_from_kinks() {
        for a in Activation::all() {
            let name = a.name();
            let (f, d) = (a.program(), a.derivative());
            for i in -80..=80 {
                let x = i as f32 / 10.0 + 0.05;
                let h = 1e-2;
                let fd = (f.eval_one(x + h) - f.eval_one(x - h)) / (2.0 * h);
                assert!((fd - d.eval_one(x)).abs() < 1e-2, "{name} at {x}");
            }
        }
    }
}
