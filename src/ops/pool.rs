//! Pooling layers, each defined once: its name, its window, its shape rule, its float forward
//! and backward (training and float layers after convert) and its int8 semantics (the
//! reference interpreter's; the JIT lowers the same rules and is tested bit-exact against it).
//!
//! Every function works on planes: a tensor is a sequence of `H x W` planes (the training
//! engine's `[C, N, H, W]` and the interpreter's `[N, C, H, W]` alike), and pooling treats each
//! plane on its own. Adding a pool is a variant here and an arm in each `match` below, plus its
//! spelling in the spec language and its JIT lowering.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Planes per parallel task: a plane is small (a few hundred values), and one task per plane
/// spends more time being scheduled than working.
const PLANES_PER_TASK: usize = 32;

use super::shape::{chw, hw_text as hw, tap, ShapeError};
use crate::limits;
use crate::quant::numerics::average_codes;

/// A pooling window's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

/// A pooling layer. Its serde form is the variant's own (`{"MaxPool2d": {...}}`,
/// `"GlobalAvgPool"`), as stored in `.qmodel` files.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Pool {
    /// The maximum of each window; padding never wins.
    MaxPool2d(Pool2d),
    /// The mean of each window, padding counted as zeros in the divisor (torch's
    /// `count_include_pad=True`).
    AvgPool2d(Pool2d),
    /// The mean over H and W: `[C, H, W] -> [C, 1, 1]`, torch's `AdaptiveAvgPool2d(1)`.
    GlobalAvgPool,
}

/// Every name users can write.
pub const NAMES: &[&str] = &["MaxPool2d", "AvgPool2d", "GlobalAvgPool"];

impl Pool {
    /// The name users write.
    pub fn name(&self) -> &'static str {
        match self {
            Pool::MaxPool2d(_) => "MaxPool2d",
            Pool::AvgPool2d(_) => "AvgPool2d",
            Pool::GlobalAvgPool => "GlobalAvgPool",
        }
    }

    /// The name in the IR's and the int8 graph's text forms.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Pool::MaxPool2d(_) => "max_pool2d",
            Pool::AvgPool2d(_) => "avg_pool2d",
            Pool::GlobalAvgPool => "global_avg_pool",
        }
    }

    /// The sliding window, for the pools that have one.
    pub fn window(&self) -> Option<&Pool2d> {
        match self {
            Pool::MaxPool2d(p) | Pool::AvgPool2d(p) => Some(p),
            Pool::GlobalAvgPool => None,
        }
    }

    /// A short PyTorch-like description: `MaxPool2d(k=2)`, `AvgPool2d(k=3, s=2, p=1)`.
    pub fn describe(&self) -> String {
        let Some(p) = self.window() else {
            return self.name().into();
        };
        let mut s = format!("{}(k={}", self.name(), hw(p.kernel));
        if p.stride != p.kernel {
            s.push_str(&format!(", s={}", hw(p.stride)));
        }
        if p.padding != (0, 0) {
            s.push_str(&format!(", p={}", hw(p.padding)));
        }
        s + ")"
    }

    /// The shape rule: `[C, H, W] -> [C, H', W']`.
    pub fn output_shape(&self, x: &[usize]) -> Result<Vec<usize>, ShapeError> {
        let (c, h, w) = chw(x)?;
        match self {
            Pool::MaxPool2d(pool) | Pool::AvgPool2d(pool) => {
                if pool.padding.0 > pool.kernel.0 / 2 || pool.padding.1 > pool.kernel.1 / 2 {
                    return Err(ShapeError::PoolPadding {
                        padding: pool.padding,
                        kernel: pool.kernel,
                    });
                }
                let (ho, wo) = limits::window((c, h, w), pool.kernel, pool.stride, pool.padding)
                    .map_err(ShapeError::Window)?;
                Ok(vec![c, ho, wo])
            }
            // Its codes are summed in 32 bits.
            Pool::GlobalAvgPool if h * w > limits::MAX_POOLED => {
                Err(ShapeError::TooManyPooled { h, w })
            }
            Pool::GlobalAvgPool => Ok(vec![c, 1, 1]),
        }
    }

    /// The float forward pass over the planes of `x` (samples of `in_shape`, giving
    /// `out_shape`). Parallel over planes.
    pub fn forward(&self, x: &[f32], in_shape: &[usize], out_shape: &[usize]) -> Vec<f32> {
        let mut y = vec![0.0; x.len() / (in_shape[1] * in_shape[2]) * out_shape[1] * out_shape[2]];
        self.forward_into(x, in_shape, out_shape, &mut y);
        y
    }

    /// [`Pool::forward`] into `y` (every value written).
    pub fn forward_into(&self, x: &[f32], in_shape: &[usize], out_shape: &[usize], y: &mut [f32]) {
        let (h, w) = (in_shape[1], in_shape[2]);
        let (ho, wo) = (out_shape[1], out_shape[2]);
        match self {
            Pool::MaxPool2d(pool) => max_pool(x, pool, (h, w), (ho, wo), y),
            Pool::AvgPool2d(pool) => {
                let n = (pool.kernel.0 * pool.kernel.1) as f32;
                y.par_chunks_mut(ho * wo)
                    .enumerate()
                    .with_min_len(PLANES_PER_TASK)
                    .for_each(|(q, yp)| {
                        let plane = &x[q * h * w..][..h * w];
                        for (o, out) in yp.iter_mut().enumerate() {
                            let sum = window_taps(pool, (h, w), (o / wo, o % wo))
                                .fold(0.0f32, |s, i| s + plane[i]);
                            *out = sum / n;
                        }
                    });
            }
            Pool::GlobalAvgPool => {
                let p = h * w;
                y.par_iter_mut()
                    .zip(x.par_chunks(p))
                    .with_min_len(PLANES_PER_TASK)
                    .for_each(|(out, plane)| {
                        *out = plane.iter().fold(0.0f32, |s, v| s + v) / p as f32
                    });
            }
        }
    }

    /// [`Pool::forward`] for training: the same output, and for the common 2x2 stride-2 max
    /// pool also each output's route, the window tap (0 to 3, row by row) its gradient goes to
    /// ([`NO_ROUTE`] for none). The backward pass then reads one byte per output instead of the
    /// whole input, which it would otherwise reload from memory to find the maximum again.
    ///
    /// Writes `y`, and `route` (one per output) when given and the pool records routes
    /// ([`Pool::is_routed`]).
    pub fn forward_routed(
        &self,
        x: &[f32],
        (in_shape, out_shape): (&[usize], &[usize]),
        y: &mut [f32],
        route: Option<&mut [u8]>,
    ) {
        match route {
            Some(route) if self.is_routed() => {
                let (h, w) = (in_shape[1], in_shape[2]);
                let (ho, wo) = (out_shape[1], out_shape[2]);
                max_pool_2x2_routed(x, (h, w), (ho, wo), None::<fn(f32) -> f32>, (y, route));
            }
            _ => self.forward_into(x, in_shape, out_shape, y),
        }
    }

    /// Whether [`Pool::forward_routed`] records routes: a 2x2 stride-2 unpadded max pool.
    pub fn is_routed(&self) -> bool {
        matches!(self, Pool::MaxPool2d(pool) if is_two_by_two(pool))
    }

    /// [`Pool::forward_routed`] of `f` applied to each input value, for a routed pool, without
    /// writing `f(x)` out: the same output and routes, bit for bit, as pooling `f(x)`.
    pub fn forward_routed_of(
        &self,
        x: &[f32],
        f: impl Fn(f32) -> f32 + Sync,
        (in_shape, out_shape): (&[usize], &[usize]),
        (y, route): (&mut [f32], &mut [u8]),
    ) {
        assert!(
            self.is_routed(),
            "only a routed pool takes a function of its input"
        );
        let (h, w) = (in_shape[1], in_shape[2]);
        let (ho, wo) = (out_shape[1], out_shape[2]);
        max_pool_2x2_routed(x, (h, w), (ho, wo), Some(f), (y, route))
    }

    /// The input gradient from the output gradient `dy`, given the forward pass's input `x`
    /// and output `y`, or the route [`Pool::forward_routed`] gave. Max pooling routes each
    /// gradient to the first input of its window that equals the maximum (the element torch's
    /// max-pool picks). Writes every value of `dx` (as long as `x`).
    pub fn backward(
        &self,
        (x, y, route): (&[f32], &[f32], Option<&[u8]>),
        dy: &[f32],
        (in_shape, out_shape): (&[usize], &[usize]),
        dx: &mut [f32],
    ) {
        let (h, w) = (in_shape[1], in_shape[2]);
        let (ho, wo) = (out_shape[1], out_shape[2]);
        match (self, route) {
            (Pool::MaxPool2d(_), Some(route)) => {
                max_pool_2x2_backward(route, dy, (h, w), (ho, wo), dx)
            }
            (Pool::MaxPool2d(pool), None) => {
                max_pool_backward(x, y, dy, pool, (h, w), (ho, wo), dx)
            }
            (Pool::AvgPool2d(pool), _) => {
                let n = (pool.kernel.0 * pool.kernel.1) as f32;
                dx.par_chunks_mut(h * w)
                    .enumerate()
                    .with_min_len(PLANES_PER_TASK)
                    .for_each(|(q, dxp)| {
                        dxp.fill(0.0);
                        let dyp = &dy[q * ho * wo..][..ho * wo];
                        for (o, &g) in dyp.iter().enumerate() {
                            for i in window_taps(pool, (h, w), (o / wo, o % wo)) {
                                dxp[i] += g / n;
                            }
                        }
                    });
            }
            (Pool::GlobalAvgPool, _) => {
                let p = h * w;
                dx.par_chunks_mut(p)
                    .zip(dy.par_iter())
                    .with_min_len(PLANES_PER_TASK)
                    .for_each(|(plane, &g)| plane.fill(g / p as f32));
            }
        }
    }

    /// The int8 semantics, on the codes of `x` with zero point `zero_point`: the maximum of
    /// codes is the code of the maximum; averages sum the codes in 32 bits (a padding tap is
    /// the zero point, a zero value) and round half to even ([`average_codes`]).
    pub fn eval_u8(
        &self,
        x: &[u8],
        in_shape: &[usize],
        out_shape: &[usize],
        zero_point: i32,
    ) -> Vec<u8> {
        let (h, w) = (in_shape[1], in_shape[2]);
        let (ho, wo) = (out_shape[1], out_shape[2]);
        let planes = x.chunks_exact(h * w);
        match self {
            Pool::MaxPool2d(pool) => planes
                .flat_map(|plane| {
                    (0..ho * wo).map(move |o| {
                        window_taps(pool, (h, w), (o / wo, o % wo))
                            .map(|i| plane[i])
                            .max()
                            .expect("windows are not empty")
                    })
                })
                .collect(),
            Pool::AvgPool2d(pool) => {
                let n = (pool.kernel.0 * pool.kernel.1) as i32;
                planes
                    .flat_map(|plane| {
                        (0..ho * wo).map(move |o| {
                            let (mut sum, mut taps) = (0i32, 0i32);
                            for i in window_taps(pool, (h, w), (o / wo, o % wo)) {
                                sum += plane[i] as i32;
                                taps += 1;
                            }
                            let sum = sum + zero_point * (n - taps);
                            average_codes(sum, n).clamp(0, 255) as u8
                        })
                    })
                    .collect()
            }
            Pool::GlobalAvgPool => planes
                .map(|plane| {
                    let sum = plane.iter().map(|&c| c as i32).sum();
                    average_codes(sum, (h * w) as i32) as u8
                })
                .collect(),
        }
    }
}

/// The input index (within its plane) of each tap of a pooling window, padding left out.
#[inline]
fn window_taps(
    pool: &Pool2d,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> impl Iterator<Item = usize> + '_ {
    (0..pool.kernel.0).flat_map(move |i| {
        (0..pool.kernel.1).filter_map(move |j| {
            let ih = tap(oh, i, pool.stride.0, pool.padding.0, h)?;
            let iw = tap(ow, j, pool.stride.1, pool.padding.1, w)?;
            Some(ih * w + iw)
        })
    })
}

/// The running maximum's step, as the JIT emits it (a compare and a select): the first of
/// equal values stays, and a NaN never replaces a number.
#[inline]
fn larger(m: f32, v: f32) -> f32 {
    if v > m {
        v
    } else {
        m
    }
}

/// Max pooling over planes (padding counts as -inf), with the common 2x2 stride-2 window
/// written out.
fn max_pool(
    x: &[f32],
    pool: &Pool2d,
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
    y: &mut [f32],
) {
    let (kh, kw) = pool.kernel;
    let (sh, sw) = pool.stride;
    let unpadded = pool.padding == (0, 0);
    y.par_chunks_mut(ho * wo)
        .enumerate()
        .with_min_len(PLANES_PER_TASK)
        .for_each(|(q, yp)| {
            let plane = &x[q * h * w..(q + 1) * h * w];
            if unpadded && (kh, kw, sh, sw) == (2, 2, 2, 2) {
                // Four loads and three max per output.
                for oh in 0..ho {
                    let (r0, r1) = (&plane[2 * oh * w..][..w], &plane[(2 * oh + 1) * w..][..w]);
                    for (ow, out) in yp[oh * wo..(oh + 1) * wo].iter_mut().enumerate() {
                        let m = larger(r0[2 * ow], r0[2 * ow + 1]);
                        *out = larger(larger(m, r1[2 * ow]), r1[2 * ow + 1]);
                    }
                }
                return;
            }
            for (o, out) in yp.iter_mut().enumerate() {
                *out = window_taps(pool, (h, w), (o / wo, o % wo))
                    .fold(f32::NEG_INFINITY, |m, i| larger(m, plane[i]));
            }
        });
}

/// Whether a max pool takes the 2x2 stride-2 unpadded path.
fn is_two_by_two(pool: &Pool2d) -> bool {
    pool.padding == (0, 0) && pool.kernel == (2, 2) && pool.stride == (2, 2)
}

/// A 2x2 max-pool output's route when no tap equals its maximum (a NaN maximum).
pub const NO_ROUTE: u8 = 4;

/// [`max_pool`]'s 2x2 stride-2 path, with each output's route: the first tap, row by row, that
/// equals the maximum ([`max_pool_backward`]'s rule), found without branches (which tap wins is
/// data, and mispredicted branches would cost more than the loop). With `f`, the pool is of
/// `f(x)`: each pair of input rows goes through `f` into a small buffer on the stack first, a
/// run of [`RUN`] columns at a time (a plain loop that vectorizes), so `f(x)` is never written
/// out whole.
fn max_pool_2x2_routed<F: Fn(f32) -> f32 + Sync>(
    x: &[f32],
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
    f: Option<F>,
    (y, route): (&mut [f32], &mut [u8]),
) {
    y.par_chunks_mut(ho * wo)
        .zip(route.par_chunks_mut(ho * wo))
        .enumerate()
        .with_min_len(PLANES_PER_TASK)
        .for_each(|(q, (yp, rp))| {
            let plane = &x[q * h * w..(q + 1) * h * w];
            let mut rows = [0.0; 2 * RUN];
            for oh in 0..ho {
                let (r0, r1) = (
                    &plane[2 * oh * w..][..2 * wo],
                    &plane[(2 * oh + 1) * w..][..2 * wo],
                );
                let (y_row, route_row) = (&mut yp[oh * wo..][..wo], &mut rp[oh * wo..][..wo]);
                let runs = r0.chunks(RUN).zip(r1.chunks(RUN));
                let outs = y_row.chunks_mut(RUN / 2).zip(route_row.chunks_mut(RUN / 2));
                for ((x0, x1), (ys, routes)) in runs.zip(outs) {
                    let (x0, x1) = match &f {
                        Some(f) => {
                            let (b0, b1) = rows.split_at_mut(RUN);
                            let (b0, b1) = (&mut b0[..x0.len()], &mut b1[..x1.len()]);
                            b0.iter_mut().zip(x0).for_each(|(r, &v)| *r = f(v));
                            b1.iter_mut().zip(x1).for_each(|(r, &v)| *r = f(v));
                            (&*b0, &*b1)
                        }
                        None => (x0, x1),
                    };
                    pool_run(x0, x1, ys, routes);
                }
            }
        });
}

/// Input columns [`max_pool_2x2_routed`] takes at a time.
const RUN: usize = 128;

/// One run of 2x2 windows: rows `x0` and `x1`, outputs and routes.
#[inline(always)]
fn pool_run(x0: &[f32], x1: &[f32], ys: &mut [f32], routes: &mut [u8]) {
    let taps = x0.chunks_exact(2).zip(x1.chunks_exact(2));
    for ((t0, t1), (out, r)) in taps.zip(ys.iter_mut().zip(routes)) {
        let m = larger(larger(larger(t0[0], t0[1]), t1[0]), t1[1]);
        // How many taps come before the first that equals m (4: none does).
        let (n0, n1, n2, n3) = (
            u8::from(t0[0] != m),
            u8::from(t0[1] != m),
            u8::from(t1[0] != m),
            u8::from(t1[1] != m),
        );
        *out = m;
        *r = n0 * (1 + n1 * (1 + n2 * (1 + n3)));
    }
}

/// The gradient of [`max_pool_2x2_routed`]: each output's gradient to its route's tap. Windows
/// do not overlap, so each covered input is written once (and the rest, a last odd row or
/// column, set to zero).
fn max_pool_2x2_backward(
    route: &[u8],
    dy: &[f32],
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
    dx: &mut [f32],
) {
    dx.par_chunks_mut(h * w)
        .zip(route.par_chunks(ho * wo))
        .zip(dy.par_chunks(ho * wo))
        .with_min_len(PLANES_PER_TASK)
        .for_each(|((dxp, rp), dyp)| {
            for oh in 0..ho {
                let (d0, d1) = dxp[2 * oh * w..(2 * oh + 2) * w].split_at_mut(w);
                let taps = d0[..2 * wo]
                    .chunks_exact_mut(2)
                    .zip(d1[..2 * wo].chunks_exact_mut(2));
                let outs = rp[oh * wo..][..wo].iter().zip(&dyp[oh * wo..][..wo]);
                for ((d0, d1), (&r, &g)) in taps.zip(outs) {
                    d0[0] = if r == 0 { g } else { 0.0 };
                    d0[1] = if r == 1 { g } else { 0.0 };
                    d1[0] = if r == 2 { g } else { 0.0 };
                    d1[1] = if r == 3 { g } else { 0.0 };
                }
                d0[2 * wo..].fill(0.0);
                d1[2 * wo..].fill(0.0);
            }
            dxp[2 * ho * w..].fill(0.0);
        });
}

/// The gradient of [`max_pool`]: each window's maximum is found again rather than stored.
#[allow(clippy::too_many_arguments)]
fn max_pool_backward(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    pool: &Pool2d,
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
    dx: &mut [f32],
) {
    let (kh, kw) = pool.kernel;
    let (sh, sw) = pool.stride;
    let unpadded = pool.padding == (0, 0);
    dx.par_chunks_mut(h * w)
        .enumerate()
        .with_min_len(PLANES_PER_TASK)
        .for_each(|(q, dxp)| {
            dxp.fill(0.0);
            let plane = &x[q * h * w..(q + 1) * h * w];
            let (yp, dyp) = (
                &y[q * ho * wo..(q + 1) * ho * wo],
                &dy[q * ho * wo..(q + 1) * ho * wo],
            );
            if unpadded && (kh, kw, sh, sw) == (2, 2, 2, 2) {
                // Windows do not overlap, so each input is written once, with selects: the first
                // of the four that equals the maximum takes the gradient.
                for oh in 0..ho {
                    let (r0, r1) = (2 * oh * w, (2 * oh + 1) * w);
                    for ow in 0..wo {
                        let (m, g) = (yp[oh * wo + ow], dyp[oh * wo + ow]);
                        let (a, b) = (r0 + 2 * ow, r1 + 2 * ow);
                        let e0 = plane[a] == m;
                        let e1 = !e0 && plane[a + 1] == m;
                        let e2 = !(e0 || e1) && plane[b] == m;
                        let e3 = !(e0 || e1 || e2) && plane[b + 1] == m;
                        dxp[a] = if e0 { g } else { 0.0 };
                        dxp[a + 1] = if e1 { g } else { 0.0 };
                        dxp[b] = if e2 { g } else { 0.0 };
                        dxp[b + 1] = if e3 { g } else { 0.0 };
                    }
                }
                return;
            }
            for (o, (&m, &g)) in yp.iter().zip(dyp).enumerate() {
                if let Some(i) =
                    window_taps(pool, (h, w), (o / wo, o % wo)).find(|&i| plane[i] == m)
                {
                    dxp[i] += g;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: Pool2d = Pool2d {
        kernel: (2, 2),
        stride: (2, 2),
        padding: (0, 0),
    };

    /// [`Pool::backward`] into a buffer of garbage (NaNs): every value must be written.
    fn backward(
        pool: &Pool,
        tape: (&[f32], &[f32], Option<&[u8]>),
        dy: &[f32],
        shapes: (&[usize], &[usize]),
    ) -> Vec<f32> {
        let mut dx = vec![f32::NAN; tape.0.len()];
        pool.backward(tape, dy, shapes, &mut dx);
        dx
    }

    /// [`Pool::forward_routed`] into buffers of garbage; the route when the pool records one.
    fn forward_routed(
        pool: &Pool,
        x: &[f32],
        shapes: (&[usize], &[usize]),
    ) -> (Vec<f32>, Option<Vec<u8>>) {
        let len = x.len() / (shapes.0[1] * shapes.0[2]) * shapes.1[1] * shapes.1[2];
        let (mut y, mut route) = (vec![f32::NAN; len], vec![u8::MAX; len]);
        pool.forward_routed(x, shapes, &mut y, Some(&mut route));
        (y, pool.is_routed().then_some(route))
    }

    #[test]
    fn max_pool_gradient_goes_to_the_first_maximum_of_each_window() {
        // A 3x5 plane: a tie in the first window, the maximum last in the second, and a row
        // and a column no window covers.
        #[rustfmt::skip]
        let x = [
            1.0, 1.0, 0.0, 2.0, 9.0,
            1.0, 1.0, 3.0, 4.0, 9.0,
            9.0, 9.0, 9.0, 9.0, 9.0,
        ];
        #[rustfmt::skip]
        let want = [
            10.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 20.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        // The general path: the second window moves to columns 3 and 4.
        let wider = Pool2d {
            stride: (2, 3),
            ..TWO
        };
        #[rustfmt::skip]
        let want_wider = [
            10.0, 0.0, 0.0, 0.0, 20.0,
            0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        for (pool, want_y, want_dx) in [(TWO, [1.0, 4.0], want), (wider, [1.0, 9.0], want_wider)] {
            let pool = Pool::MaxPool2d(pool);
            let y = pool.forward(&x, &[1, 3, 5], &[1, 1, 2]);
            assert_eq!(y, want_y);
            let shapes: (&[usize], &[usize]) = (&[1, 3, 5], &[1, 1, 2]);
            let dx = backward(&pool, (&x, &y, None), &[10.0, 20.0], shapes);
            assert_eq!(dx, want_dx);
            // Training's routed form gives the same output and the same gradient.
            let (routed_y, route) = forward_routed(&pool, &x, shapes);
            assert_eq!(routed_y, y);
            let dx = backward(&pool, (&x, &y, route.as_deref()), &[10.0, 20.0], shapes);
            assert_eq!(dx, want_dx);
        }
    }

    #[test]
    fn pooling_a_function_of_the_input_is_pooling_its_values() {
        // Two 6x5 planes (a column no window covers), and rows longer than two runs of RUN
        // columns, through a coarse fake quant, which turns distinct inputs into ties: the
        // maximum and the route follow the quantized values.
        let f = |v: f32| (v.clamp(-2.0, 2.0) * 2.0).round_ties_even() / 2.0;
        let pool = Pool::MaxPool2d(TWO);
        let wide = 2 * RUN + 7;
        for (shape_in, shape_out) in [([2, 6, 5], [2, 3, 2]), ([1, 4, wide], [1, 2, wide / 2])] {
            let x: Vec<f32> = (0..shape_in.iter().product::<usize>())
                .map(|i| ((i * 37 % 23) as f32 - 9.0) * 0.3)
                .collect();
            let fx: Vec<f32> = x.iter().map(|&v| f(v)).collect();
            let shapes: (&[usize], &[usize]) = (&shape_in, &shape_out);
            let (want_y, want_route) = forward_routed(&pool, &fx, shapes);
            let (mut y, mut route) = (vec![f32::NAN; want_y.len()], vec![u8::MAX; want_y.len()]);
            pool.forward_routed_of(&x, f, shapes, (&mut y, &mut route));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&want_y));
            assert_eq!(Some(route), want_route);
        }
    }

    #[test]
    fn average_pooling_counts_padding_as_zero_values() {
        let pool = Pool::AvgPool2d(Pool2d {
            kernel: (2, 2),
            stride: (2, 2),
            padding: (1, 1),
        });
        // A 2x2 plane padded by one: each output window holds one real value and three zeros.
        let shape = pool.output_shape(&[1, 2, 2]).unwrap();
        assert_eq!(shape, [1, 2, 2]);
        let y = pool.forward(&[4.0, 8.0, 12.0, 16.0], &[1, 2, 2], &shape);
        assert_eq!(y, [1.0, 2.0, 3.0, 4.0]);
        // In codes with zero point 10, padding adds 10s: (14 + 30) / 4 = 11.
        let q = pool.eval_u8(&[14, 18, 22, 26], &[1, 2, 2], &shape, 10);
        assert_eq!(q, [11, 12, 13, 14]);
        let dx = backward(
            &pool,
            (&[0.0; 4], &y, None),
            &[4.0; 4],
            (&[1, 2, 2], &shape),
        );
        assert_eq!(dx, [1.0; 4]);
    }

    #[test]
    fn shape_rules_name_what_is_wrong() {
        let padded = Pool::MaxPool2d(Pool2d {
            padding: (2, 0),
            ..TWO
        });
        assert!(matches!(
            padded.output_shape(&[1, 8, 8]),
            Err(ShapeError::PoolPadding { .. })
        ));
        assert!(matches!(
            Pool::GlobalAvgPool.output_shape(&[4]),
            Err(ShapeError::NotChw(_))
        ));
        assert_eq!(
            Pool::GlobalAvgPool.output_shape(&[4, 3, 3]).unwrap(),
            [4, 1, 1]
        );
        for name in NAMES {
            assert!([
                Pool::MaxPool2d(TWO),
                Pool::AvgPool2d(TWO),
                Pool::GlobalAvgPool
            ]
            .iter()
            .any(|p| p.name() == *name));
        }
    }
}
