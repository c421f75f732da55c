//! The largest sizes qatc accepts, from a spec or from a `.qmodel` file.
//!
//! Every size that comes from input (a shape, a sliding window, a fan-in, a parameter count) is
//! computed here with checked arithmetic and bounded by these limits. Within them, every later
//! product (bytes of scratch, MACs, i32 accumulator ranges, code size) stays far from overflow,
//! so the stages after the checker and the loader compute with plain arithmetic. A spec or a
//! model over a limit gets an error that names it; nothing wraps.

/// Values in one sample of any tensor, padded inputs of windows included (64 Mi).
pub const MAX_ELEMENTS: usize = 1 << 26;
/// Weights of one layer (256 Mi).
pub const MAX_PARAMS: usize = 1 << 28;
/// Taps of one convolution or pooling window, `kh · kw`: the code for a window is unrolled.
pub const MAX_KERNEL_TAPS: usize = 1 << 12;
/// A kernel side, a stride or a padding.
pub const MAX_WINDOW: usize = 1 << 24;
/// Values one global average pools per channel (`h · w`): their codes are summed in an i32.
pub const MAX_POOLED: usize = i32::MAX as usize / 255;

/// Values per sample of `shape`, or `None` above [`MAX_ELEMENTS`].
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

/// `shape`'s number of values as a float, exact or not: for messages about shapes too large to
/// count in a `usize`.
pub fn approx_elements(shape: &[usize]) -> f64 {
    shape.iter().map(|&d| d as f64).product()
}

/// A count for a message: `67,108,864`, or `2.8e13` when large.
pub fn count_text(n: f64) -> String {
    if n < 1e12 {
        thousands(n as u128)
    } else {
        format!("{n:.1e}")
    }
}

/// `44426` -> `44,426`.
pub fn thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Why a sliding window (convolution or pooling) does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowError {
    /// A kernel side, stride or padding is 0 where it may not be, or above [`MAX_WINDOW`].
    OutOfRange,
    /// `kh · kw` is above [`MAX_KERNEL_TAPS`].
    TooManyTaps,
    /// The kernel is larger than the padded input (height, width after padding).
    KernelTooLarge(usize, usize),
    /// The padded input has more than [`MAX_ELEMENTS`] values.
    PaddedTooLarge,
}

impl std::fmt::Display for WindowError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            WindowError::OutOfRange => write!(
                f,
                "kernel and stride must be 1 to {MAX_WINDOW}, padding at most {MAX_WINDOW}"
            ),
            WindowError::TooManyTaps => write!(f, "more than {MAX_KERNEL_TAPS} kernel taps"),
            WindowError::KernelTooLarge(h, w) => {
                write!(f, "the kernel is larger than the {h}x{w} padded input")
            }
            WindowError::PaddedTooLarge => {
                write!(f, "the padded input has more than {MAX_ELEMENTS} values")
            }
        }
    }
}

/// The output height and width of a window over `channels` planes of `h · w`, as PyTorch
/// computes them (floor mode), with every bound above checked.
pub fn window(
    (channels, h, w): (usize, usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<(usize, usize), WindowError> {
    let sides = [kernel.0, kernel.1, stride.0, stride.1];
    if sides.contains(&0)
        || sides
            .iter()
            .chain([&padding.0, &padding.1])
            .any(|&v| v > MAX_WINDOW)
    {
        return Err(WindowError::OutOfRange);
    }
    if kernel.0 * kernel.1 > MAX_KERNEL_TAPS {
        return Err(WindowError::TooManyTaps);
    }
    // Each term is at most 2^26 + 2^25: no overflow.
    let (ph, pw) = (h + 2 * padding.0, w + 2 * padding.1);
    if elements(&[channels, ph, pw]).is_none() {
        return Err(WindowError::PaddedTooLarge);
    }
    if kernel.0 > ph || kernel.1 > pw {
        return Err(WindowError::KernelTooLarge(ph, pw));
    }
    Ok((
        (ph - kernel.0) / stride.0 + 1,
        (pw - kernel.1) / stride.1 + 1,
    ))
}

/// Products per output of a convolution (`in_channels / groups · kh · kw`), or `None` when the
/// groups are 0 or the count is above [`MAX_PARAMS`].
pub fn fan_in(in_channels: usize, groups: usize, kernel: (usize, usize)) -> Option<usize> {
    if groups == 0 {
        return None;
    }
    (in_channels / groups)
        .checked_mul(kernel.0)?
        .checked_mul(kernel.1)
        .filter(|&k| k <= MAX_PARAMS)
}

/// Weights of a layer with `outputs` outputs of `fan_in` products each, or `None` above
/// [`MAX_PARAMS`].
pub fn weights(outputs: usize, fan_in: usize) -> Option<usize> {
    outputs.checked_mul(fan_in).filter(|&n| n <= MAX_PARAMS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_would_wrap_are_refused() {
        assert_eq!(elements(&[1 << 24, 1 << 24, 1 << 24]), None);
        assert_eq!(elements(&[usize::MAX, 2]), None);
        assert_eq!(elements(&[1, 28, 28]), Some(784));
        assert_eq!(
            window((1, 28, 28), (5, 5), (1, 1), (usize::MAX / 2, 0)),
            Err(WindowError::OutOfRange)
        );
        assert_eq!(
            window((1, 28, 28), (1 << 16, 1 << 16), (1, 1), (0, 0)),
            Err(WindowError::TooManyTaps)
        );
        assert_eq!(
            window((1 << 20, 28, 28), (3, 3), (1, 1), (1 << 20, 0)),
            Err(WindowError::PaddedTooLarge)
        );
        assert_eq!(
            window((1, 4, 4), (5, 5), (1, 1), (0, 0)),
            Err(WindowError::KernelTooLarge(4, 4))
        );
        assert_eq!(window((1, 28, 28), (5, 5), (1, 1), (2, 2)), Ok((28, 28)));
        assert_eq!(fan_in(16, 1, (1 << 32, 1 << 32)), None);
        assert_eq!(fan_in(16, 0, (3, 3)), None);
        assert_eq!(weights(1 << 20, 1 << 20), None);
        assert_eq!(count_text(67108864.0), "67,108,864");
        assert_eq!(count_text(2.8e13), "2.8e13");
    }
}
