//! The geometry of the plain layers (Linear, Conv2d, Flatten), their shape rules and the shape
//! errors of every windowed layer, written once. The checker renders each [`ShapeError`] with
//! the span it concerns; `ir::verify` and the int8 verifier print it. The pools' rules live with
//! them in [`super::pool`], the other families' in their modules.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{self, WindowError};

/// A convolution's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvGeom {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub groups: usize,
}

impl ConvGeom {
    /// Products per output value: input channels per group times the kernel's taps.
    pub fn fan_in(&self) -> usize {
        self.in_channels / self.groups * self.kernel.0 * self.kernel.1
    }
}

/// Why an input does not fit a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// The layer takes `[C, H, W]` samples.
    NotChw(Vec<usize>),
    /// The layer takes `[F]` samples.
    NotFlat(Vec<usize>),
    /// A Linear of `want` features reads `got`.
    Features { want: usize, got: usize },
    /// A Conv2d of `want` channels reads `got`.
    Channels { want: usize, got: usize },
    /// `groups` is 0 or does not divide both channel counts.
    Groups {
        groups: usize,
        channels: usize,
        out: usize,
    },
    /// The sliding window does not fit, or breaks a limit.
    Window(WindowError),
    /// Pooling pads more than half its kernel (PyTorch's rule).
    PoolPadding {
        padding: (usize, usize),
        kernel: (usize, usize),
    },
    /// Global average pooling of more than [`limits::MAX_POOLED`] values per channel.
    TooManyPooled { h: usize, w: usize },
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ShapeError::NotChw(x) => write!(f, "needs a [C, H, W] input, got {x:?}"),
            ShapeError::NotFlat(x) => write!(f, "needs a flat [F] input, got {x:?}"),
            ShapeError::Features { want, got } => write!(f, "expects {want} features, got {got}"),
            ShapeError::Channels { want, got } => write!(f, "expects {want} channels, got {got}"),
            ShapeError::Groups {
                groups,
                channels,
                out,
            } => write!(
                f,
                "{groups} groups do not divide {channels} input and {out} output channels"
            ),
            ShapeError::Window(e) => write!(f, "{e}"),
            ShapeError::PoolPadding { padding, kernel } => {
                write!(
                    f,
                    "pool padding {padding:?} exceeds half its kernel {kernel:?}"
                )
            }
            ShapeError::TooManyPooled { h, w } => write!(
                f,
                "global average pooling of {h}x{w} values per channel: at most {}",
                limits::MAX_POOLED
            ),
        }
    }
}

/// A 2-D size as text: `5` when square, else `3x5`.
pub fn hw_text((h, w): (usize, usize)) -> String {
    if h == w {
        h.to_string()
    } else {
        format!("{h}x{w}")
    }
}

/// The `(C, H, W)` of a `[C, H, W]` sample.
pub fn chw(x: &[usize]) -> Result<(usize, usize, usize), ShapeError> {
    match x {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(ShapeError::NotChw(x.to_vec())),
    }
}

/// `[in_features] -> [out_features]`.
pub fn linear(
    x: &[usize],
    in_features: usize,
    out_features: usize,
) -> Result<Vec<usize>, ShapeError> {
    match x {
        [f] if *f == in_features => Ok(vec![out_features]),
        [f] => Err(ShapeError::Features {
            want: in_features,
            got: *f,
        }),
        _ => Err(ShapeError::NotFlat(x.to_vec())),
    }
}

/// `[C, H, W] -> [out, H', W']`.
pub fn conv2d(x: &[usize], geom: &ConvGeom) -> Result<Vec<usize>, ShapeError> {
    let (c, h, w) = chw(x)?;
    if c != geom.in_channels {
        return Err(ShapeError::Channels {
            want: geom.in_channels,
            got: c,
        });
    }
    let g = geom.groups;
    if g == 0 || !c.is_multiple_of(g) || !geom.out_channels.is_multiple_of(g) {
        return Err(ShapeError::Groups {
            groups: g,
            channels: c,
            out: geom.out_channels,
        });
    }
    let (ho, wo) = limits::window((c, h, w), geom.kernel, geom.stride, geom.padding)
        .map_err(ShapeError::Window)?;
    Ok(vec![geom.out_channels, ho, wo])
}

/// Any shape -> `[product]`.
pub fn flatten(x: &[usize]) -> Vec<usize> {
    vec![x.iter().product()]
}

/// The input row (or column) read by output position `o` at kernel tap `k`, or `None` in the
/// padding.
#[inline]
pub fn tap(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}
