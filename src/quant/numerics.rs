//! The numerics of the whole project, written once. Training (fake quantization), convert, the
//! reference interpreter and the JIT's tests all call these functions.
//!
//! Conventions, as PyTorch's fbgemm backend computes them, all in `f32`:
//! - quantize: `q = clamp(round_half_even(x * (1/scale)) + zero_point, qmin, qmax)`, a NaN
//!   giving `qmin` ([`saturate`]);
//! - dequantize: `x = (q - zero_point) * scale`;
//! - fake quantize: dequantize(quantize(x)), with the straight-through gradient passing where
//!   `round_half_even(x * (1/scale)) + zero_point` lies inside `[qmin, qmax]`.
//! - qparams from a range (torch's `_calculate_qparams`): the range is widened to include 0;
//!   affine: `scale = (max - min) / (qmax - qmin)`, `zp = qmin - round(min / scale)` clamped;
//!   symmetric: `scale = max(-min, max) / ((qmax - qmin) / 2)`, `zp = 0` for qint8 and 128 for
//!   quint8 (the midpoint of a custom range); `scale` is at least `f32::EPSILON`. Convert and
//!   post-training calibration use these.
//! - qparams during QAT with a moving-average observer (torch's `FusedMovingAvgObsFakeQuantize`,
//!   which `get_default_qat_qconfig` uses, calls fbgemm's `ChooseQuantizationParams`): see
//!   [`qparams_for_fake_quant`]. Symmetric weights then get
//!   `scale = max(-min / 128, max / 127)` rather than `max(-min, max) / 127.5`.
//! - requantization of an int8 layer (fbgemm's): the i32 accumulator
//!   `Σ (x_q - x_zp) · w_q + bias_q` (the input zero point folded in with the weight sums; weights
//!   are symmetric, zero point 0; `bias_q = round(bias / (x_scale · w_scale))`) is multiplied in f32
//!   by `x_scale · w_scale / out_scale`, rounded half to even, offset by the output zero point and
//!   saturated to the output type's range (for quint8 0..255, whatever the range the observer used:
//!   reduce_range only narrows the scale's range). A fused ReLU raises the lower bound to the
//!   zero point; ReLU6 also lowers the upper bound to the code of 6.0.

use crate::quant::qconfig::{DType, Scheme};

/// Rounds half to even, as `std::nearbyint` in the default rounding mode and `torch.round`.
///
/// Written with the 2^23 trick rather than `f32::round_ties_even`, which compiles to a libm call
/// on baseline x86_64: adding ±2^23 moves `x` to where the spacing of f32 is exactly one, so the
/// hardware's round-to-nearest-even does the rounding; values of magnitude 2^23 and more are
/// integers already. Zero comes out as +0.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    let shift = TWO_23.copysign(x);
    let rounded = (x + shift) - shift;
    // A select, not a branch, so loops over this vectorize.
    if x.abs() < TWO_23 {
        rounded
    } else {
        x
    }
}

/// Scale and zero point of one tensor or one channel.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

/// The integer grid a fake-quant node maps to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QRange {
    pub dtype: DType,
    pub scheme: Scheme,
    pub quant_min: i32,
    pub quant_max: i32,
}

impl QRange {
    /// Whether the range differs from the dtype's full range (torch's `has_customized_qrange`
    /// is true whenever quant_min/max are given, which `reduce_range` does not do).
    fn is_full(&self) -> bool {
        let (lo, hi) = self.dtype.range();
        let (rlo, rhi) = (lo / 2, hi / 2);
        (self.quant_min, self.quant_max) == (lo, hi)
            || (self.quant_min, self.quant_max) == (rlo, rhi)
    }
}

/// Scale and zero point for an observed `[min, max]`, exactly as torch's observers compute them.
pub fn qparams_from_range(min: f32, max: f32, range: &QRange) -> QParams {
    let min_neg = min.min(0.0);
    let max_pos = max.max(0.0);
    let (qmin, qmax) = (range.quant_min, range.quant_max);
    match range.scheme {
        Scheme::Symmetric => {
            let max_pos = (-min_neg).max(max_pos);
            let scale = (max_pos / ((qmax - qmin) as f32 / 2.0)).max(f32::EPSILON);
            let zero_point = match range.dtype {
                DType::Qint8 => 0,
                DType::Quint8 if range.is_full() => 128,
                DType::Quint8 => (qmin + qmax).div_euclid(2),
            };
            QParams { scale, zero_point }
        }
        Scheme::Affine => {
            let scale = ((max_pos - min_neg) / (qmax - qmin) as f32).max(f32::EPSILON);
            let zero_point = qmin - round_half_even(min_neg / scale) as i32;
            QParams {
                scale,
                zero_point: zero_point.clamp(qmin, qmax),
            }
        }
    }
}

/// Scale and zero point as fbgemm's `ChooseQuantizationParams` computes them (with
/// `preserve_sparsity` for symmetric schemes), which torch's fused observer + fake-quant op uses
/// during QAT. It differs from [`qparams_from_range`] in four ways:
/// - symmetric: the range is widened to `[-128·m, 127·m]` with `m = max(-min/128, max/127)`
///   (for qint8), only when `min < 0 < max`; otherwise the grid is affine over `[min, max]`;
/// - the scale is computed in f64 and rounded once to f32; a zero (or reciprocal-overflowing)
///   scale becomes 0.1 and one below 6.1e-5 is raised to 6.1e-5, the range widened to match;
/// - the zero point comes from whichever end of the range gives the smaller rounding error;
/// - the zero point is rounded half to even and clamped to `[qmin, qmax]`.
pub fn qparams_for_fake_quant(min: f32, max: f32, range: &QRange) -> QParams {
    const SMALL_SCALE: f32 = 6.1e-5;
    let (qmin, qmax) = (range.quant_min, range.quant_max);
    let symmetric = range.scheme == Scheme::Symmetric;
    let (mut min, mut max) = (min, max);
    if min < 0.0 && max > 0.0 && symmetric {
        let sym_qmin = -((qmax - qmin) / 2 + 1);
        let sym_qmax = (qmax - qmin) / 2;
        let m = f64::from(
            (min / sym_qmin as f32)
                .abs()
                .max((max / sym_qmax as f32).abs()),
        );
        min = (m * f64::from(sym_qmin)) as f32;
        max = (m * f64::from(sym_qmax)) as f32;
    }
    min = min.min(0.0);
    max = max.max(0.0);
    let steps = f64::from(qmax) - f64::from(qmin);
    let mut scale = ((f64::from(max) - f64::from(min)) / steps) as f32;
    if scale == 0.0 || (1.0 / scale).is_infinite() {
        scale = 0.1;
    }
    if scale < SMALL_SCALE {
        let original = scale;
        scale = SMALL_SCALE;
        if min == 0.0 {
            max = SMALL_SCALE * (qmax - qmin) as f32;
        } else if max == 0.0 {
            min = -SMALL_SCALE * (qmax - qmin) as f32;
        } else {
            let amplifier = SMALL_SCALE / original;
            min *= amplifier;
            max *= amplifier;
        }
    }
    let s = f64::from(scale);
    let (lo, hi) = (f64::from(min) / s, f64::from(max) / s);
    let from_min = f64::from(qmin) - lo;
    let from_max = f64::from(qmax) - hi;
    let mut zero_point =
        if f64::from(qmin.unsigned_abs()) + lo.abs() < f64::from(qmax.unsigned_abs()) + hi.abs() {
            from_min
        } else {
            from_max
        };
    if min < 0.0 && max > 0.0 && symmetric {
        zero_point = (f64::from(qmin) + f64::from(qmax)) / 2.0;
    }
    let zero_point = if zero_point < f64::from(qmin) {
        qmin
    } else if zero_point > f64::from(qmax) {
        qmax
    } else {
        zero_point.round_ties_even() as i32
    };
    QParams { scale, zero_point }
}

/// Quantizes one value to the integer grid.
#[inline]
pub fn quantize(x: f32, inv_scale: f32, zero_point: i32, quant_min: i32, quant_max: i32) -> i32 {
    let q = round_half_even(x * inv_scale) + zero_point as f32;
    saturate(q, quant_min, quant_max)
}

/// A rounded value as a code of `[lo, hi]`: clamped, and a NaN (which only a NaN input can
/// give: scales and multipliers are normal numbers) becomes `lo`. This is what the native
/// code's saturating conversion (NaN to 0) followed by the clamp computes for every `lo >= 0`.
#[inline]
pub fn saturate(q: f32, lo: i32, hi: i32) -> i32 {
    if q.is_nan() {
        lo
    } else {
        q.clamp(lo as f32, hi as f32) as i32
    }
}

/// One fake-quantized value: `(clamp(round(x / s) + zp) - zp) * s`, with `inv_scale = 1 / s`.
///
/// Computed as `round(clamp(x / s, quant_min - zp, quant_max - zp)) * s`, the same value bit for
/// bit: rounding is monotone and the bounds are integers, so clamping before rounding gives what
/// clamping after does; and a clamped value is small (the grid is at most 16 bits wide), so
/// adding and subtracting 1.5 · 2^23 rounds it half to even with no test for large magnitudes
/// (see [`round_half_even`]). A NaN stays NaN.
#[inline]
pub fn fake_quantize(x: f32, q: QParams, inv_scale: f32, quant_min: i32, quant_max: i32) -> f32 {
    const ROUNDER: f32 = 12_582_912.0;
    let zp = q.zero_point as f32;
    let (lo, hi) = (quant_min as f32 - zp, quant_max as f32 - zp);
    debug_assert!(
        lo.abs() <= 4_194_304.0 && hi.abs() <= 4_194_304.0,
        "grid {lo}..{hi}"
    );
    let clamped = (x * inv_scale).clamp(lo, hi);
    ((clamped + ROUNDER) - ROUNDER) * q.scale
}

/// Whether the straight-through estimator passes the gradient at `x`: its rounded value lies
/// inside `[quant_min, quant_max]` (PyTorch's mask).
#[inline]
pub fn fake_quant_passes(
    x: f32,
    q: QParams,
    inv_scale: f32,
    quant_min: i32,
    quant_max: i32,
) -> bool {
    let r = round_half_even(x * inv_scale) + q.zero_point as f32;
    r >= quant_min as f32 && r <= quant_max as f32
}

/// [`fake_quant_passes`] as a range of `x * inv_scale`: the gradient passes at `x` exactly when
/// `lo <= x * inv_scale <= hi`. Two comparisons per value instead of a rounding and two; the
/// bounds are where rounding half to even crosses into and out of the grid (a tie at a bound
/// rounds in only when it rounds to an even code).
pub fn fake_quant_pass_range(q: QParams, quant_min: i32, quant_max: i32) -> (f32, f32) {
    let (low, high) = (quant_min - q.zero_point, quant_max - q.zero_point);
    let lo = low as f32 - 0.5;
    let hi = high as f32 + 0.5;
    let lo = if low % 2 == 0 { lo } else { lo.next_up() };
    let hi = if high % 2 == 0 { hi } else { hi.next_down() };
    (lo, hi)
}

/// Fake-quantizes `x` in place; sets `mask[i]` to whether the gradient passes (straight-through
/// estimator with PyTorch's clipping mask).
pub fn fake_quantize_in_place(
    x: &mut [f32],
    mask: &mut [bool],
    q: QParams,
    quant_min: i32,
    quant_max: i32,
) {
    let inv_scale = 1.0 / q.scale;
    let (lo, hi) = fake_quant_pass_range(q, quant_min, quant_max);
    for (v, m) in x.iter_mut().zip(mask.iter_mut()) {
        let t = *v * inv_scale;
        *m = t >= lo && t <= hi;
        *v = fake_quantize(*v, q, inv_scale, quant_min, quant_max);
    }
}

/// The f32 multiplier that maps an accumulator in units of `in_scale · w_scale` to output units.
#[inline]
pub fn requant_multiplier(in_scale: f32, w_scale: f32, out_scale: f32) -> f32 {
    in_scale * w_scale / out_scale
}

/// Requantizes an i32 accumulator: `clamp(round_half_even(acc · multiplier) + out_zp, lo, hi)`.
#[inline]
pub fn requantize(acc: i32, multiplier: f32, out_zero_point: i32, lo: i32, hi: i32) -> i32 {
    let q = round_half_even(acc as f32 * multiplier) + out_zero_point as f32;
    saturate(q, lo, hi)
}

/// An int32 bias in units of `in_scale · w_scale`, saturated to i32.
#[inline]
pub fn quantize_bias(bias: f32, in_scale: f32, w_scale: f32) -> i32 {
    let q = round_half_even(bias / (in_scale * w_scale));
    q.clamp(i32::MIN as f32, i32::MAX as f32) as i32
}

/// The output clamp of a quantized layer with a fused activation, in output codes.
pub fn activation_clamp(act_relu: bool, relu6: bool, out: QParams, lo: i32, hi: i32) -> (i32, i32) {
    let mut range = (lo, hi);
    if act_relu || relu6 {
        range.0 = out.zero_point.clamp(lo, hi);
    }
    if relu6 {
        range.1 = quantize(6.0, 1.0 / out.scale, out.zero_point, lo, hi);
    }
    range
}

/// Dequantizes one code.
#[inline]
pub fn dequantize(q: i32, p: QParams) -> f32 {
    (q - p.zero_point) as f32 * p.scale
}

/// The mean of `n` codes, rounded half to even (average pooling on quantized data, where input and
/// output share their quantization parameters).
#[inline]
pub fn average_codes(sum: i32, n: i32) -> i32 {
    round_half_even(sum as f32 / n as f32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values from torch 2.9.1 on x86_64: the `scale` and `zero_point` buffers of
    /// `get_default_qat_qconfig("fbgemm")`'s activation and weight fake quants after one
    /// forward of a tensor whose (per-channel) min and max are the first two columns.
    #[test]
    #[allow(clippy::excessive_precision)] // the f32 values as torch printed them, in f64 digits
    fn fake_quant_qparams_match_torchs_fused_observer() {
        let range = |scheme, quant_min, quant_max| QRange {
            dtype: if quant_min < 0 {
                DType::Qint8
            } else {
                DType::Quint8
            },
            scheme,
            quant_min,
            quant_max,
        };
        let weights = range(Scheme::Symmetric, -128, 127);
        let acts = range(Scheme::Affine, 0, 127);
        let cases: &[(f32, f32, &QRange, f64, i32)] = &[
            (-2e-6, 1e-6, &weights, 6.0999998822808266e-05, 0),
            (0.0, 0.0, &weights, 0.10000000149011612, 127),
            (-1e-3, 1e-3, &weights, 6.0999998822808266e-05, 0),
            (1e-5, 3e-5, &weights, 6.0999998822808266e-05, -128),
            (-1e-30, 1e-30, &weights, 6.0999998822808266e-05, 0),
            (-3.0, 5.0, &weights, 0.03937007859349251, 0),
            (
                0.2505785822868347,
                2.1152193546295166,
                &weights,
                0.008294978179037571,
                -128,
            ),
            (
                -1.6959311962127686,
                1.237657904624939,
                &weights,
                0.013249462470412254,
                0,
            ),
            (
                -1.5550950765609741,
                1.85300612449646,
                &weights,
                0.014590599574148655,
                0,
            ),
            (
                -1.7066433429718018,
                -0.004785737954080105,
                &weights,
                0.006692719180136919,
                127,
            ),
            (0.0, 0.0, &acts, 0.10000000149011612, 0),
            (1e-7, 1e-6, &acts, 6.0999998822808266e-05, 0),
            (-1.0, 1.0, &acts, 0.015748031437397003, 64),
            (-0.3, 2.7, &acts, 0.023622047156095505, 13),
            (0.5, 3.0, &acts, 0.023622047156095505, 0),
            (-2.0, -0.5, &acts, 0.015748031437397003, 127),
            (-1e-4, 1e-4, &acts, 6.0999998822808266e-05, 64),
            (-0.123456, 0.987654, &acts, 0.008748897351324558, 14),
            (-1.0, 0.0039, &acts, 0.007904724217951298, 127),
        ];
        for &(min, max, range, scale, zero_point) in cases {
            let got = qparams_for_fake_quant(min, max, range);
            assert_eq!(
                got,
                QParams {
                    scale: scale as f32,
                    zero_point
                },
                "[{min}, {max}] on {}..{}",
                range.quant_min,
                range.quant_max
            );
        }
        // The observer's own rule (convert's) differs for symmetric weights: max(-min, max) / 127.5.
        let convert = qparams_from_range(-1.6959311962127686, 1.237657904624939, &weights);
        assert_eq!(convert.scale, 1.6959311962127686f32 / 127.5);
    }

    fn range(dtype: DType, scheme: Scheme, quant_min: i32, quant_max: i32) -> QRange {
        QRange {
            dtype,
            scheme,
            quant_min,
            quant_max,
        }
    }

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(-0.5), 0.0);
        assert_eq!(round_half_even(-1.5), -2.0);
        assert_eq!(round_half_even(-2.5), -2.0);
        assert_eq!(round_half_even(4_194_302.5), 4_194_302.0);
        assert_eq!(round_half_even(-8_388_606.5), -8_388_606.0);
        assert_eq!(round_half_even(1e9), 1e9);
        assert!(round_half_even(f32::NAN).is_nan());
        // Agrees with the standard library everywhere in a sweep of halves and near-halves.
        for i in -100_000..100_000 {
            for x in [i as f32 * 0.5, i as f32 * 0.37, i as f32 * 97.3 + 0.5] {
                assert_eq!(round_half_even(x), x.round_ties_even(), "{x}");
            }
        }
    }

    #[test]
    fn affine_qparams_match_torch() {
        // torch.ao.quantization.MinMaxObserver(quant_min=0, quant_max=127) on [-1, 3]:
        // scale = 4/127, zero_point = 0 - round(-1 / scale) = 32 (31.75 rounds to 32).
        let q = qparams_from_range(-1.0, 3.0, &range(DType::Quint8, Scheme::Affine, 0, 127));
        assert_eq!(q.scale, 4.0f32 / 127.0);
        assert_eq!(q.zero_point, 32);
        // A positive-only range is widened to include 0: zero point 0.
        let q = qparams_from_range(0.5, 2.55, &range(DType::Quint8, Scheme::Affine, 0, 255));
        assert_eq!(q.zero_point, 0);
        assert_eq!(q.scale, 2.55f32 / 255.0);
        // An all-zero range falls back to eps.
        let q = qparams_from_range(0.0, 0.0, &range(DType::Quint8, Scheme::Affine, 0, 255));
        assert_eq!(q.scale, f32::EPSILON);
    }

    #[test]
    fn symmetric_qparams_match_torch() {
        let q = qparams_from_range(
            -0.3,
            0.2,
            &range(DType::Qint8, Scheme::Symmetric, -128, 127),
        );
        assert_eq!(q.scale, 0.3f32 / 127.5);
        assert_eq!(q.zero_point, 0);
        let q = qparams_from_range(-0.3, 0.2, &range(DType::Quint8, Scheme::Symmetric, 0, 255));
        assert_eq!(q.zero_point, 128);
        let q = qparams_from_range(-0.3, 0.2, &range(DType::Quint8, Scheme::Symmetric, 0, 200));
        assert_eq!(q.zero_point, 100);
    }

    #[test]
    fn the_pass_range_is_the_rounded_mask() {
        let grids = [(0, 255), (0, 127), (-128, 127), (-127, 127)];
        for (quant_min, quant_max) in grids {
            for zero_point in [quant_min, quant_min + 1, 0, 3, quant_max - 1, quant_max] {
                let q = QParams {
                    scale: 0.037,
                    zero_point,
                };
                let inv = 1.0 / q.scale;
                let (lo, hi) = fake_quant_pass_range(q, quant_min, quant_max);
                // Every code's midpoints and their neighbours, where the two could differ.
                let mut xs = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, 1e30, -1e30];
                for code in quant_min - 3..=quant_max + 3 {
                    let t = (code - zero_point) as f32 - 0.5;
                    for v in [t.next_down(), t, t.next_up(), t + 0.25, t + 0.5] {
                        xs.push(v * q.scale);
                        xs.push(v);
                    }
                }
                for x in xs {
                    let t = x * inv;
                    assert_eq!(
                        t >= lo && t <= hi,
                        fake_quant_passes(x, q, inv, quant_min, quant_max),
                        "x {x} (x/scale {t}), zero point {zero_point}, grid {quant_min}..{quant_max}"
                    );
                }
            }
        }
    }

    #[test]
    fn fake_quant_is_round_then_clamp_bit_for_bit() {
        for (quant_min, quant_max) in [(0, 255), (0, 127), (-128, 127), (-32768, 32767)] {
            for zero_point in [quant_min, 0, 7, quant_max] {
                for scale in [0.037, 0.5, 3.0e-5] {
                    let q = QParams { scale, zero_point };
                    let inv = 1.0 / scale;
                    let textbook = |x: f32| {
                        let code = (round_half_even(x * inv) + zero_point as f32)
                            .clamp(quant_min as f32, quant_max as f32);
                        (code - zero_point as f32) * scale
                    };
                    let mut xs = vec![0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30];
                    for step in -300..300 {
                        for frac in [0.0, 0.25, 0.5, 0.75] {
                            let t = step as f32 + frac;
                            xs.extend([t * scale, t.next_up() * scale, t.next_down() * scale]);
                        }
                    }
                    for x in xs {
                        let (got, want) =
                            (fake_quantize(x, q, inv, quant_min, quant_max), textbook(x));
                        assert_eq!(got.to_bits(), want.to_bits(), "x {x}: {got} vs {want}");
                    }
                    assert!(fake_quantize(f32::NAN, q, inv, quant_min, quant_max).is_nan());
                }
            }
        }
    }

    #[test]
    fn fake_quant_rounds_clamps_and_masks() {
        let q = QParams {
            scale: 0.5,
            zero_point: 10,
        };
        let mut x = [0.26, 0.25, -5.0, -5.2, 200.0, 58.5];
        let mut mask = [false; 6];
        fake_quantize_in_place(&mut x, &mut mask, q, 0, 127);
        // 0.26/0.5 = 0.52 -> 1; 0.25/0.5 = 0.5 -> 0 (half to even); -5/0.5 + 10 = 0 (inside);
        // -5.2 -> -10.4 -> -10 + 10 = 0 (inside after rounding); 200 clamps to 127; 58.5 -> 117+10.
        assert_eq!(x, [0.5, 0.0, -5.0, -5.0, (127.0 - 10.0) * 0.5, 58.5]);
        assert_eq!(mask, [true, true, true, true, false, true]);
        assert_eq!(quantize(-5.8, 2.0, 10, 0, 127), 0);
    }

    #[test]
    fn requantization_rounds_saturates_and_offsets() {
        // 100 * 0.5 = 50 -> +3 = 53; halves go to even; both ends saturate.
        assert_eq!(requantize(100, 0.5, 3, 0, 255), 53);
        assert_eq!(requantize(5, 0.5, 0, 0, 255), 2);
        assert_eq!(requantize(7, 0.5, 0, 0, 255), 4);
        assert_eq!(requantize(-1000, 0.5, 10, 0, 255), 0);
        assert_eq!(requantize(1000, 0.5, 10, 0, 255), 255);
        // Accumulators near the i32 limits stay finite and saturate.
        assert_eq!(requantize(i32::MAX, 1e-3, 0, 0, 255), 255);
        assert_eq!(requantize(i32::MIN, 1e-3, 128, 0, 255), 0);
        assert_eq!(requantize(i32::MAX, 1e-9, 128, 0, 255), 130);
        assert_eq!(quantize_bias(0.3, 0.1, 0.01), 300);
        assert_eq!(quantize_bias(1e30, 1e-3, 1e-3), i32::MAX);
    }

    #[test]
    fn activation_clamps() {
        let out = QParams {
            scale: 0.05,
            zero_point: 20,
        };
        assert_eq!(activation_clamp(false, false, out, 0, 255), (0, 255));
        assert_eq!(activation_clamp(true, false, out, 0, 255), (20, 255));
        // 6 / 0.05 = 120, + 20.
        assert_eq!(activation_clamp(false, true, out, 0, 255), (20, 140));
        assert_eq!(average_codes(10, 4), 2);
        assert_eq!(average_codes(14, 4), 4);
        assert_eq!(dequantize(25, out), 0.25);
    }
}
