//! Learnable fake quantization (LSQ, and LSQ+ with a learned zero point), with torch 2.9.1's
//! numerics: `_fake_quantize_learnable_per_tensor_affine` and
//! `_fake_quantize_learnable_per_channel_affine` (axis 0), forward and backward, as their CPU
//! kernels compute them.
//!
//! Forward: the zero point is rounded half to even and clamped into the range, then the values
//! are fake-quantized as by [`fake_quantize`]. Backward (per element, with upstream gradient
//! `dy`, the zero point taken as `z`: torch adds 0.5 and truncates per tensor, and rounds per
//! channel):
//! - inside the range, `dx = dy`, `dscale = dy · (x̂ − x) / s · g`, `dzero_point = 0`, where
//!   `x̂ − x` is computed with one rounding (the fused multiply-add torch's kernel compiles to);
//! - below or above it, `dx = 0`, `dscale = dy · (q_min − z)` or `dy · (q_max − z)` times `g`,
//!   and `dzero_point = −dy · s · g`;
//!
//! summed over the tensor (or each channel). `g` is the gradient factor, LSQ's
//! `1 / sqrt(numel · q_max)` by default ([`default_grad_factor`]).

use super::numerics::{fake_quantize, round_half_even, QParams};

/// LSQ's gradient scale for a tensor of `numel` values: torch's `_LearnableFakeQuantize` with
/// `use_grad_scaling` passes `1 / sqrt(X.numel() · quant_max)`, the whole tensor's count also
/// per channel.
pub fn default_grad_factor(numel: usize, quant_max: i32) -> f32 {
    (1.0 / ((numel as f64) * (quant_max as f64)).sqrt()) as f32
}

/// The zero point the forward pass uses: rounded half to even, clamped into the range.
fn forward_zero_point(zero_point: f32, quant_min: i32, quant_max: i32) -> i32 {
    round_half_even(zero_point).clamp(quant_min as f32, quant_max as f32) as i32
}

/// Fake-quantizes `x` into `y` with a learnable scale and zero point (one pair for the tensor).
pub fn forward(x: &[f32], y: &mut [f32], scale: f32, zero_point: f32, range: (i32, i32)) {
    let (lo, hi) = range;
    let q = QParams {
        scale,
        zero_point: forward_zero_point(zero_point, lo, hi),
    };
    let inv = 1.0 / scale;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = fake_quantize(v, q, inv, lo, hi);
    }
}

/// The same per channel: `x` holds `scale.len()` channels of equal length (axis 0).
pub fn forward_per_channel(
    x: &[f32],
    y: &mut [f32],
    scale: &[f32],
    zero_point: &[f32],
    range: (i32, i32),
) {
    let per = x.len() / scale.len();
    for (c, (xs, ys)) in x.chunks(per).zip(y.chunks_mut(per)).enumerate() {
        forward(xs, ys, scale[c], zero_point[c], range);
    }
}

/// Gradients of a learnable fake quantization: `grad` holds the upstream gradient and becomes
/// x's; the sums for the scale and the zero point are returned.
pub fn backward(
    x: &[f32],
    grad: &mut [f32],
    scale: f32,
    zero_point: f32,
    range: (i32, i32),
    grad_factor: f32,
) -> (f32, f32) {
    // torch per tensor: `static_cast<int64_t>(clamp(zero_point + 0.5))`.
    let (lo, hi) = range;
    let z = (zero_point + 0.5).clamp(lo as f32, hi as f32).trunc();
    backward_with(x, grad, scale, z, range, grad_factor)
}

/// The same per channel (axis 0): writes each channel's sums into `ds` and `dz`.
pub fn backward_per_channel(
    (x, grad): (&[f32], &mut [f32]),
    (scale, zero_point): (&[f32], &[f32]),
    range: (i32, i32),
    grad_factor: f32,
    (ds, dz): (&mut [f32], &mut [f32]),
) {
    let per = x.len() / scale.len();
    let (lo, hi) = range;
    for (c, (xs, gs)) in x.chunks(per).zip(grad.chunks_mut(per)).enumerate() {
        // torch per channel: the zero point rounded, then clamped.
        let z = round_half_even(zero_point[c]).clamp(lo as f32, hi as f32);
        (ds[c], dz[c]) = backward_with(xs, gs, scale[c], z, range, grad_factor);
    }
}

/// The backward kernel for one scale and one (already rounded) zero point `z`. Sums in f64:
/// torch's order of summation differs, so sums agree to about 1e-7 relative.
fn backward_with(
    x: &[f32],
    grad: &mut [f32],
    scale: f32,
    z: f32,
    (lo, hi): (i32, i32),
    grad_factor: f32,
) -> (f32, f32) {
    let inv = 1.0 / scale;
    let (below, above) = (lo as f32 - z, hi as f32 - z);
    let (mut dscale, mut dzero) = (0.0f64, 0.0f64);
    for (&v, d) in x.iter().zip(grad.iter_mut()) {
        let g = *d;
        let q = round_half_even(z + v * inv);
        if q < lo as f32 || q > hi as f32 {
            *d = 0.0;
            let edge = if q < lo as f32 { below } else { above };
            dscale += ((g * edge) * grad_factor) as f64;
            dzero += ((-g * scale) * grad_factor) as f64;
        } else {
            // x̂ − x with a single rounding: (q − z)·s − x fused.
            let err = (q - z).mul_add(scale, -v);
            dscale += (((g * err) * inv) * grad_factor) as f64;
        }
    }
    (dscale as f32, dzero as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: [f32; 12] = [
        -1.7, -0.51, -0.0049, 0.0, 0.3337, 0.9, 1.2345, 2.6, -0.2, 1.9999, 0.0125, -0.77,
    ];
    const DY: [f32; 12] = [
        0.3, -1.0, 0.5, 2.0, -0.25, 1.5, 0.75, -0.6, 1.0, 0.1, -2.0, 0.4,
    ];

    fn close(got: f32, want: f64) -> bool {
        let want = want as f32;
        got == want || (got - want).abs() <= 1e-6 * want.abs()
    }

    /// Golden values from torch 2.9.1 (`tools/torch_lsq_golden.py`): outputs and gradients of
    /// `sum(y · dy)` for x, the scale and the zero point.
    #[test]
    #[allow(clippy::excessive_precision)]
    #[rustfmt::skip]
    fn per_tensor_matches_torch() {
        type Case<'a> = (f64, f64, i32, i32, &'a [f64], &'a [f64], f64, f64);
        let cases: &[Case] = &[
            (0.02, 0.0, 0, 255, &[0.0, 0.0, 0.0, 0.0, 0.3400000035762787, 0.8999999761581421, 1.2400000095367432, 2.5999999046325684, 0.0, 2.0, 0.019999999552965164, 0.0], &[0.0, -0.0, 0.5, 2.0, -0.25, 1.5, 0.75, -0.6000000238418579, 0.0, 0.10000000149011612, -2.0, 0.0], -0.009029797278344631, -0.0002530854835640639),
            (0.02, 64.0, 0, 255, &[-1.2799999713897705, -0.5199999809265137, 0.0, 0.0, 0.3400000035762787, 0.8999999761581421, 1.2400000095367432, 2.5999999046325684, -0.19999998807907104, 2.0, 0.019999999552965164, -0.7599999904632568], &[0.0, -1.0, 0.5, 2.0, -0.25, 1.5, 0.75, -0.6000000238418579, 1.0, 0.10000000149011612, -2.0, 0.4000000059604645], -0.3434642255306244, -0.00010846522491192445),
            (0.0137, -3.0, -128, 127, &[-1.698799967765808, -0.5069000124931335, 0.0, 0.0, 0.3287999927997589, 0.90420001745224, 1.2330000400543213, 1.781000018119812, -0.20550000667572021, 1.781000018119812, 0.013700000010430813, -0.7671999931335449], &[0.30000001192092896, -1.0, 0.5, 2.0, -0.25, 1.5, 0.75, -0.0, 1.0, 0.0, -2.0, 0.4000000059604645], -1.6534702777862549, 0.0001754680706653744),
            (0.25, 0.0, -8, 7, &[-1.75, -0.5, 0.0, 0.0, 0.25, 1.0, 1.25, 1.75, -0.25, 1.75, 0.0, -0.75], &[0.30000001192092896, -1.0, 0.5, 2.0, -0.25, 1.5, 0.75, -0.0, 1.0, 0.0, -2.0, 0.4000000059604645], -0.3194710314273834, 0.013638618402183056),
            (0.1, 2.4, 0, 15, &[-0.20000000298023224, -0.20000000298023224, 0.0, 0.0, 0.30000001192092896, 0.9000000357627869, 1.2000000476837158, 1.3000000715255737, -0.20000000298023224, 1.3000000715255737, 0.0, -0.20000000298023224], &[0.0, -0.0, 0.5, 2.0, -0.25, 1.5, 0.75, -0.0, 1.0, 0.0, -2.0, 0.0], -0.4323064684867859, 0.0059628477320075035),
        ];
        for &(scale, zp, lo, hi, y_want, dx_want, ds_want, dz_want) in cases {
            let (scale, zp) = (scale as f32, zp as f32);
            let mut y = [0.0; 12];
            forward(&X, &mut y, scale, zp, (lo, hi));
            for (i, &w) in y_want.iter().enumerate() {
                assert_eq!(y[i], w as f32, "y at {} (scale {scale}, zp {zp})", X[i]);
            }
            let mut dx = DY;
            let g = default_grad_factor(12, hi);
            let (ds, dz) = backward(&X, &mut dx, scale, zp, (lo, hi), g);
            for (i, &w) in dx_want.iter().enumerate() {
                assert_eq!(dx[i], w as f32, "dx at {}", X[i]);
            }
            assert!(close(ds, ds_want), "dscale {ds}, torch {ds_want} (scale {scale}, zp {zp})");
            assert!(close(dz, dz_want), "dzero_point {dz}, torch {dz_want}");
        }
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    #[rustfmt::skip]
    fn per_channel_matches_torch() {
        type Case<'a> = (&'a [f64], &'a [f64], i32, i32, &'a [f64], &'a [f64], &'a [f64], &'a [f64]);
        let cases: &[Case] = &[
            (&[0.02, 0.05, 0.3], &[0.0, 10.0, -1.0], -128, 127, &[-1.6999999284744263, -0.5199999809265137, 0.0, 0.0, 0.3499999940395355, 0.9000000357627869, 1.25, 2.6000001430511475, -0.30000001192092896, 2.1000001430511475, 0.0, -0.9000000357627869], &[0.30000001192092896, -1.0, 0.5, 2.0, -0.25, 1.5, 0.75, -0.6000000238418579, 1.0, 0.10000000149011612, -2.0, 0.4000000059604645], &[0.027619022876024246, 0.006699498277157545, -0.017301972955465317], &[0.0, 0.0, 0.0]),
            (&[0.25, 0.1, 0.4], &[0.0, 0.0, 0.0], -8, 7, &[-1.75, -0.5, 0.0, 0.0, 0.30000001192092896, 0.699999988079071, 0.699999988079071, 0.699999988079071, 0.0, 2.0, 0.0, -0.800000011920929], &[0.30000001192092896, -1.0, 0.5, 2.0, -0.25, 0.0, 0.0, -0.0, 1.0, 0.10000000149011612, -2.0, 0.4000000059604645], &[-0.017046179622411728, 2.198666572570801, 0.1006377562880516], &[0.0, -0.031182069331407547, 0.0]),
        ];
        for &(scales, zps, lo, hi, y_want, dx_want, ds_want, dz_want) in cases {
            let scales: Vec<f32> = scales.iter().map(|&s| s as f32).collect();
            let zps: Vec<f32> = zps.iter().map(|&z| z as f32).collect();
            let mut y = [0.0; 12];
            forward_per_channel(&X, &mut y, &scales, &zps, (lo, hi));
            for (i, &w) in y_want.iter().enumerate() {
                assert_eq!(y[i], w as f32, "y at {}", X[i]);
            }
            let mut dx = DY;
            let g = default_grad_factor(4, hi);
            let (mut ds, mut dz) = ([f32::NAN; 3], [f32::NAN; 3]);
            backward_per_channel((&X, &mut dx), (&scales, &zps), (lo, hi), g, (&mut ds, &mut dz));
            for (i, &w) in dx_want.iter().enumerate() {
                assert_eq!(dx[i], w as f32, "dx at {}", X[i]);
            }
            for c in 0..3 {
                assert!(close(ds[c], ds_want[c]), "channel {c}: dscale {}, torch {}", ds[c], ds_want[c]);
                assert!(close(dz[c], dz_want[c]), "channel {c}: dzero_point {}, torch {}", dz[c], dz_want[c]);
            }
        }
    }

    /// The scale's gradient against a central finite difference of `sum(y · dy)`, with the
    /// gradient factor 1 and away from rounding boundaries (the loss is piecewise smooth in s:
    /// inside the range `round(x/s)` is fixed for small steps, and the straight-through
    /// estimator's `(x̂ − x)/s` is the derivative of `x̂ = q·s` less the rounding's jumps, so
    /// the check uses values whose quantized code does not change over the step).
    #[test]
    fn scale_gradient_matches_finite_differences() {
        let (lo, hi) = (-8, 7);
        let (scale, zp) = (0.3f64, 1.0f64);
        // Codes clear of rounding boundaries and of the clamp, plus values beyond the range.
        let x: Vec<f32> = [-5.2, -2.1, -0.9, 0.25, 1.1, 1.8, 4.0, 9.0, -12.0]
            .iter()
            .map(|&k: &f64| (k * scale) as f32)
            .collect();
        let dy: Vec<f32> = (0..x.len()).map(|i| 0.5 + i as f32 * 0.25).collect();
        let loss = |s: f64| -> f64 {
            let mut y = vec![0.0; x.len()];
            forward(&x, &mut y, s as f32, zp as f32, (lo, hi));
            y.iter().zip(&dy).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        let h = 1e-4;
        let numeric = (loss(scale + h) - loss(scale - h)) / (2.0 * h);
        let mut dx = dy.clone();
        let (ds, _) = backward(&x, &mut dx, scale as f32, zp as f32, (lo, hi), 1.0);
        // LSQ's gradient: (round(x/s) − x/s) inside, the clamp's edge outside; the loss's
        // derivative is q·dy inside (the code is fixed), so compare with that.
        let analytic: f64 = x
            .iter()
            .zip(&dy)
            .map(|(&v, &g)| {
                let q = (v as f64 / scale).round() + zp;
                let q = q.clamp(lo as f64, hi as f64);
                (q - zp) * g as f64
            })
            .sum();
        assert!(
            (numeric - analytic).abs() < 1e-3,
            "finite difference {numeric}, q·dy {analytic}"
        );
        // Inside the range LSQ's gradient differs from q·dy by −(x/s)·dy: the term the
        // straight-through estimator adds for x's own dependence on s.
        let straight: f64 = x
            .iter()
            .zip(&dy)
            .map(|(&v, &g)| {
                let r = v as f64 / scale;
                let q = r.round() + zp;
                if q < lo as f64 || q > hi as f64 {
                    0.0
                } else {
                    -r * g as f64
                }
            })
            .sum();
        assert!(
            (ds as f64 - (analytic + straight)).abs() < 1e-3,
            "LSQ gradient {ds}, finite difference {numeric} plus the estimator's term {straight}"
        );
    }
}
