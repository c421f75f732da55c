//! Float kernels for training, forward and backward, on batches in NCHW layout. Matrix products
//! go through ndarray (matrixmultiply, threaded); the elementwise work runs in parallel over
//! images with rayon. Every split is fixed by the data's shape, never by timing, so results are
//! the same bit for bit from run to run.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::check::Pool2d;
use crate::ir::{Act, ConvGeom};

/// `c = alpha * a · b + beta * c`, with `a: [m, k]`, `b: [k, n]`, `c: [m, n]` given as views
/// (transposed views welcome).
pub fn matmul(
    alpha: f32,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    general_mat_mul(alpha, a, b, beta, c);
}

fn view(data: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), data).expect("buffer matches its shape")
}

fn view_mut(data: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), data).expect("buffer matches its shape")
}

/// Work below this many elements is not worth a parallel split.
const PAR_MIN: usize = 1 << 14;

/// Runs `f` on chunks of `data` (in parallel when it is large). Chunks are fixed-size.
pub fn for_chunks(data: &mut [f32], f: impl Fn(&mut [f32]) + Sync + Send) {
    if data.len() < PAR_MIN {
        f(data);
    } else {
        data.par_chunks_mut(PAR_MIN / 4).for_each(f);
    }
}

// ------------------------------------------------------------------------------------ activations

pub fn act_forward(act: Act, y: &mut [f32]) {
    match act {
        Act::None => {}
        Act::ReLU => for_chunks(y, |c| c.iter_mut().for_each(|v| *v = v.max(0.0))),
        Act::ReLU6 => for_chunks(y, |c| c.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0))),
    }
}

/// Zeroes `dy` where the activation's output `y` is flat (torch: relu passes where y > 0,
/// hardtanh where 0 < y < 6).
pub fn act_backward(act: Act, y: &[f32], dy: &mut [f32]) {
    match act {
        Act::None => {}
        Act::ReLU => dy.iter_mut().zip(y).for_each(|(d, &v)| {
            if v <= 0.0 {
                *d = 0.0
            }
        }),
        Act::ReLU6 => dy.iter_mut().zip(y).for_each(|(d, &v)| {
            if v <= 0.0 || v >= 6.0 {
                *d = 0.0
            }
        }),
    }
}

// ------------------------------------------------------------------------------------ linear

/// `y[B, out] = x[B, in] · w[out, in]^T + b`.
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    batch: usize,
    n_in: usize,
    n_out: usize,
) -> Vec<f32> {
    let mut y = vec![0.0; batch * n_out];
    if let Some(b) = b {
        for row in y.chunks_exact_mut(n_out) {
            row.copy_from_slice(b);
        }
    }
    let beta = if b.is_some() { 1.0 } else { 0.0 };
    matmul(
        1.0,
        &view(x, batch, n_in),
        &view(w, n_out, n_in).t(),
        beta,
        &mut view_mut(&mut y, batch, n_out),
    );
    y
}

/// Gradients of a linear layer: `dw = dy^T · x`, `db = Σ dy`, and `dx = dy · w` when wanted.
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (batch, n_in, n_out): (usize, usize, usize),
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    want_dx: bool,
) -> Option<Vec<f32>> {
    matmul(
        1.0,
        &view(dy, batch, n_out).t(),
        &view(x, batch, n_in),
        0.0,
        &mut view_mut(dw, n_out, n_in),
    );
    if let Some(db) = db {
        db.fill(0.0);
        for row in dy.chunks_exact(n_out) {
            db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
    }
    want_dx.then(|| {
        let mut dx = vec![0.0; batch * n_in];
        matmul(
            1.0,
            &view(dy, batch, n_out),
            &view(w, n_out, n_in),
            0.0,
            &mut view_mut(&mut dx, batch, n_in),
        );
        dx
    })
}

// ------------------------------------------------------------------------------------ conv2d

/// Sizes derived from a convolution's geometry and its input.
#[derive(Clone, Copy, Debug)]
pub struct ConvDims {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    /// Input channels per group.
    pub cg: usize,
    /// Output channels per group.
    pub og: usize,
    /// Reduction length per group: cg * kh * kw.
    pub kg: usize,
}

impl ConvDims {
    pub fn new(geom: &ConvGeom, in_shape: &[usize], out_shape: &[usize]) -> ConvDims {
        ConvDims {
            c: in_shape[0],
            h: in_shape[1],
            w: in_shape[2],
            ho: out_shape[1],
            wo: out_shape[2],
            cg: geom.in_channels / geom.groups,
            og: geom.out_channels / geom.groups,
            kg: geom.in_channels / geom.groups * geom.kernel.0 * geom.kernel.1,
        }
    }

    pub fn pixels(&self) -> usize {
        self.ho * self.wo
    }
}

/// The im2col matrix of group `g` for all images: `[B * P, kg]`, one row per output pixel.
pub fn im2col(x: &[f32], geom: &ConvGeom, d: &ConvDims, batch: usize, g: usize) -> Vec<f32> {
    let p = d.pixels();
    let mut cols = vec![0.0; batch * p * d.kg];
    let (kh, kw) = geom.kernel;
    let (sh, sw) = geom.stride;
    let (ph, pw) = geom.padding;
    let image = d.c * d.h * d.w;
    cols.par_chunks_mut(p * d.kg)
        .enumerate()
        .for_each(|(b, out)| {
            let xb = &x[b * image..(b + 1) * image];
            for oh in 0..d.ho {
                for ow in 0..d.wo {
                    let row = &mut out[(oh * d.wo + ow) * d.kg..][..d.kg];
                    let mut k = 0;
                    for c in 0..d.cg {
                        let plane = &xb[(g * d.cg + c) * d.h * d.w..][..d.h * d.w];
                        for i in 0..kh {
                            let ih = (oh * sh + i) as isize - ph as isize;
                            for j in 0..kw {
                                let iw = (ow * sw + j) as isize - pw as isize;
                                row[k] = if ih >= 0
                                    && (ih as usize) < d.h
                                    && iw >= 0
                                    && (iw as usize) < d.w
                                {
                                    plane[ih as usize * d.w + iw as usize]
                                } else {
                                    0.0
                                };
                                k += 1;
                            }
                        }
                    }
                }
            }
        });
    cols
}

/// Adds the columns' gradients back into the input's gradient (the adjoint of [`im2col`]).
pub fn col2im(
    dcols: &[f32],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
    g: usize,
    dx: &mut [f32],
) {
    let p = d.pixels();
    let (kh, kw) = geom.kernel;
    let (sh, sw) = geom.stride;
    let (ph, pw) = geom.padding;
    let image = d.c * d.h * d.w;
    dx.par_chunks_mut(image)
        .take(batch)
        .enumerate()
        .for_each(|(b, dxb)| {
            let cols = &dcols[b * p * d.kg..(b + 1) * p * d.kg];
            for oh in 0..d.ho {
                for ow in 0..d.wo {
                    let row = &cols[(oh * d.wo + ow) * d.kg..][..d.kg];
                    let mut k = 0;
                    for c in 0..d.cg {
                        let plane = &mut dxb[(g * d.cg + c) * d.h * d.w..][..d.h * d.w];
                        for i in 0..kh {
                            let ih = (oh * sh + i) as isize - ph as isize;
                            for j in 0..kw {
                                let iw = (ow * sw + j) as isize - pw as isize;
                                if ih >= 0 && (ih as usize) < d.h && iw >= 0 && (iw as usize) < d.w
                                {
                                    plane[ih as usize * d.w + iw as usize] += row[k];
                                }
                                k += 1;
                            }
                        }
                    }
                }
            }
        });
}

/// Convolution without bias: returns the output `[B, O, P]` and each group's im2col matrix
/// (kept for the backward pass).
pub fn conv_forward(
    x: &[f32],
    w: &[f32],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let p = d.pixels();
    let o = geom.out_channels;
    let mut y = vec![0.0; batch * o * p];
    let mut all_cols = Vec::with_capacity(geom.groups);
    for g in 0..geom.groups {
        let cols = im2col(x, geom, d, batch, g);
        let wg = &w[g * d.og * d.kg..(g + 1) * d.og * d.kg];
        // yt[B*P, og] = cols[B*P, kg] · wg[og, kg]^T
        let mut yt = vec![0.0; batch * p * d.og];
        matmul(
            1.0,
            &view(&cols, batch * p, d.kg),
            &view(wg, d.og, d.kg).t(),
            0.0,
            &mut view_mut(&mut yt, batch * p, d.og),
        );
        y.par_chunks_mut(o * p).enumerate().for_each(|(b, yb)| {
            let src = &yt[b * p * d.og..(b + 1) * p * d.og];
            for oc in 0..d.og {
                let dst = &mut yb[(g * d.og + oc) * p..][..p];
                for (px, v) in dst.iter_mut().enumerate() {
                    *v = src[px * d.og + oc];
                }
            }
        });
        all_cols.push(cols);
    }
    (y, all_cols)
}

/// Gradients of a convolution without bias: `dw` (overwritten) and `dx` when wanted.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    dy: &[f32],
    w: &[f32],
    cols: &[Vec<f32>],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
    dw: &mut [f32],
    want_dx: bool,
) -> Option<Vec<f32>> {
    let p = d.pixels();
    let o = geom.out_channels;
    let mut dx = want_dx.then(|| vec![0.0; batch * d.c * d.h * d.w]);
    for g in 0..geom.groups {
        // dyt[B*P, og]: this group's gradient, pixel-major.
        let mut dyt = vec![0.0; batch * p * d.og];
        dyt.par_chunks_mut(p * d.og)
            .enumerate()
            .for_each(|(b, dst)| {
                let yb = &dy[b * o * p..(b + 1) * o * p];
                for oc in 0..d.og {
                    let src = &yb[(g * d.og + oc) * p..][..p];
                    for (px, v) in src.iter().enumerate() {
                        dst[px * d.og + oc] = *v;
                    }
                }
            });
        let dwg = &mut dw[g * d.og * d.kg..(g + 1) * d.og * d.kg];
        matmul(
            1.0,
            &view(&dyt, batch * p, d.og).t(),
            &view(&cols[g], batch * p, d.kg),
            0.0,
            &mut view_mut(dwg, d.og, d.kg),
        );
        if let Some(dx) = dx.as_mut() {
            let wg = &w[g * d.og * d.kg..(g + 1) * d.og * d.kg];
            let mut dcols = vec![0.0; batch * p * d.kg];
            matmul(
                1.0,
                &view(&dyt, batch * p, d.og),
                &view(wg, d.og, d.kg),
                0.0,
                &mut view_mut(&mut dcols, batch * p, d.kg),
            );
            col2im(&dcols, geom, d, batch, g, dx);
        }
    }
    dx
}

/// Per-channel sums over batch and pixels of a `[B, C, P]` tensor.
pub fn channel_sums(x: &[f32], batch: usize, channels: usize, p: usize) -> Vec<f32> {
    (0..channels)
        .into_par_iter()
        .map(|c| {
            (0..batch)
                .map(|b| x[(b * channels + c) * p..][..p].iter().sum::<f32>())
                .sum()
        })
        .collect()
}

/// Per-channel sums of the product of two `[B, C, P]` tensors.
pub fn channel_dot(x: &[f32], y: &[f32], batch: usize, channels: usize, p: usize) -> Vec<f32> {
    (0..channels)
        .into_par_iter()
        .map(|c| {
            (0..batch)
                .map(|b| {
                    let at = (b * channels + c) * p;
                    x[at..at + p]
                        .iter()
                        .zip(&y[at..at + p])
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
                })
                .sum()
        })
        .collect()
}

/// `x[b, c, p] = x[b, c, p] * scale[c] + shift[c]`, in parallel over images.
pub fn channel_affine(x: &mut [f32], channels: usize, p: usize, scale: &[f32], shift: &[f32]) {
    x.par_chunks_mut(channels * p).for_each(|xb| {
        for c in 0..channels {
            let (s, t) = (scale[c], shift[c]);
            xb[c * p..(c + 1) * p]
                .iter_mut()
                .for_each(|v| *v = *v * s + t);
        }
    });
}

// ------------------------------------------------------------------------------------ pooling

/// Max pooling; returns the output and, for each output, the index of its maximum within the
/// image (for the backward pass). Padding counts as -inf.
pub fn max_pool_forward(
    x: &[f32],
    pool: &Pool2d,
    (c, h, w): (usize, usize, usize),
    (ho, wo): (usize, usize),
    batch: usize,
) -> (Vec<f32>, Vec<u32>) {
    let mut y = vec![0.0; batch * c * ho * wo];
    let mut arg = vec![0u32; batch * c * ho * wo];
    y.par_chunks_mut(c * ho * wo)
        .zip(arg.par_chunks_mut(c * ho * wo))
        .enumerate()
        .for_each(|(b, (yb, ab))| {
            let xb = &x[b * c * h * w..(b + 1) * c * h * w];
            for ch in 0..c {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let mut best = f32::NEG_INFINITY;
                        let mut best_at = 0usize;
                        for i in 0..pool.kernel.0 {
                            let ih = (oh * pool.stride.0 + i) as isize - pool.padding.0 as isize;
                            if ih < 0 || ih as usize >= h {
                                continue;
                            }
                            for j in 0..pool.kernel.1 {
                                let iw =
                                    (ow * pool.stride.1 + j) as isize - pool.padding.1 as isize;
                                if iw < 0 || iw as usize >= w {
                                    continue;
                                }
                                let at = ch * h * w + ih as usize * w + iw as usize;
                                if xb[at] > best || best == f32::NEG_INFINITY {
                                    best = xb[at];
                                    best_at = at;
                                }
                            }
                        }
                        let o = ch * ho * wo + oh * wo + ow;
                        yb[o] = best;
                        ab[o] = best_at as u32;
                    }
                }
            }
        });
    (y, arg)
}

pub fn max_pool_backward(
    dy: &[f32],
    arg: &[u32],
    in_size: usize,
    out_size: usize,
    batch: usize,
) -> Vec<f32> {
    let mut dx = vec![0.0; batch * in_size];
    dx.par_chunks_mut(in_size).enumerate().for_each(|(b, dxb)| {
        let (d, a) = (
            &dy[b * out_size..(b + 1) * out_size],
            &arg[b * out_size..(b + 1) * out_size],
        );
        for (g, &i) in d.iter().zip(a) {
            dxb[i as usize] += g;
        }
    });
    dx
}

/// Average pooling with zero padding counted in the divisor (torch's count_include_pad=True).
/// With `dy` given, computes the input gradient instead (the adjoint).
pub fn avg_pool(
    src: &[f32],
    pool: &Pool2d,
    (c, h, w): (usize, usize, usize),
    (ho, wo): (usize, usize),
    batch: usize,
    backward: bool,
) -> Vec<f32> {
    let (in_size, out_size) = (c * h * w, c * ho * wo);
    let inv = 1.0 / (pool.kernel.0 * pool.kernel.1) as f32;
    let mut dst = vec![0.0; batch * if backward { in_size } else { out_size }];
    let chunk = if backward { in_size } else { out_size };
    dst.par_chunks_mut(chunk).enumerate().for_each(|(b, db)| {
        let sb = &src[b * if backward { out_size } else { in_size }..];
        for ch in 0..c {
            for oh in 0..ho {
                for ow in 0..wo {
                    let o = ch * ho * wo + oh * wo + ow;
                    let mut acc = 0.0;
                    for i in 0..pool.kernel.0 {
                        let ih = (oh * pool.stride.0 + i) as isize - pool.padding.0 as isize;
                        if ih < 0 || ih as usize >= h {
                            continue;
                        }
                        for j in 0..pool.kernel.1 {
                            let iw = (ow * pool.stride.1 + j) as isize - pool.padding.1 as isize;
                            if iw < 0 || iw as usize >= w {
                                continue;
                            }
                            let at = ch * h * w + ih as usize * w + iw as usize;
                            if backward {
                                db[at] += sb[o] * inv;
                            } else {
                                acc += sb[at];
                            }
                        }
                    }
                    if !backward {
                        db[o] = acc * inv;
                    }
                }
            }
        }
    });
    dst
}

// ------------------------------------------------------------------------------------ loss

/// Mean softmax cross-entropy; returns (loss, number correct, d loss / d logits).
pub fn softmax_cross_entropy(
    logits: &[f32],
    labels: &[u8],
    classes: usize,
) -> (f32, usize, Vec<f32>) {
    let batch = labels.len();
    let mut grad = vec![0.0; logits.len()];
    let mut loss = 0.0f64;
    let mut correct = 0;
    for (b, &label) in labels.iter().enumerate() {
        let row = &logits[b * classes..(b + 1) * classes];
        let g = &mut grad[b * classes..(b + 1) * classes];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for (gi, &v) in g.iter_mut().zip(row) {
            *gi = (v - max).exp();
            sum += *gi;
        }
        let label = label as usize;
        loss += (sum.ln() - (row[label] - max)) as f64;
        if argmax(row) == label {
            correct += 1;
        }
        let scale = 1.0 / (sum * batch as f32);
        g.iter_mut().for_each(|v| *v *= scale);
        g[label] -= 1.0 / batch as f32;
    }
    ((loss / batch as f64) as f32, correct, grad)
}

/// Index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
