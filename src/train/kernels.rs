//! Float kernels for training, forward and backward. Image tensors are kept channel-major,
//! `[C, B, H, W]` (CNHW), so that a convolution is one matrix product whose output rows are
//! already its output channels, and per-channel work (bias, BatchNorm) is contiguous; vectors
//! are `[B, F]`. `Flatten` converts between the two. Matrix products
//! go through ndarray (matrixmultiply), split over rayon's threads by [`matmul`]; the elementwise
//! work runs in parallel over images or rows. One thread pool does all the parallel work, and
//! every split is fixed by the data's shape, never by timing, so results are the same bit for
//! bit from run to run.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::check::Pool2d;
use crate::ir::{Act, ConvGeom};

/// Products smaller than this many multiply-adds run on one thread.
const PAR_MIN_MACS: usize = 1 << 16;

/// `c = alpha * a · b + beta * c`, with `a: [m, k]`, `b: [k, n]`, `c: [m, n]` given as views
/// (transposed views welcome). Large products are split along the longer of `m` and `n` into
/// one block per thread; each element's sum runs in the same order however it is split.
pub fn matmul(alpha: f32, a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let threads = rayon::current_num_threads();
    if threads == 1 || m * k * n < PAR_MIN_MACS {
        general_mat_mul(alpha, a, b, beta, c);
        return;
    }
    if n >= m {
        let block = n.div_ceil(threads).next_multiple_of(16);
        let parts: Vec<_> = b.axis_chunks_iter(Axis(1), block).zip(c.axis_chunks_iter_mut(Axis(1), block)).collect();
        parts.into_par_iter().for_each(|(b, mut c)| general_mat_mul(alpha, a, &b, beta, &mut c));
    } else {
        let block = m.div_ceil(threads).next_multiple_of(16);
        let parts: Vec<_> = a.axis_chunks_iter(Axis(0), block).zip(c.axis_chunks_iter_mut(Axis(0), block)).collect();
        parts.into_par_iter().for_each(|(a, mut c)| general_mat_mul(alpha, &a, b, beta, &mut c));
    }
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

/// The im2col matrix of group `g` for all images of a CNHW input: `[kg, B * P]`, one row per
/// kernel tap `(c, i, j)`, one column per output pixel of every image. Rows are filled in
/// parallel; stride-1 unpadded rows are runs of `wo` contiguous values.
pub fn im2col(x: &[f32], geom: &ConvGeom, d: &ConvDims, batch: usize, g: usize) -> Vec<f32> {
    let p = d.pixels();
    let hw = d.h * d.w;
    let mut cols = vec![0.0; d.kg * batch * p];
    let (kh, kw) = geom.kernel;
    cols.par_chunks_mut(batch * p).enumerate().for_each(|(k, row)| {
        let (c, i, j) = (k / (kh * kw), k / kw % kh, k % kw);
        for b in 0..batch {
            let plane = &x[((g * d.cg + c) * batch + b) * hw..][..hw];
            let out = &mut row[b * p..(b + 1) * p];
            for oh in 0..d.ho {
                let Some(ih) = tap(oh, i, geom.stride.0, geom.padding.0, d.h) else {
                    continue; // stays zero: padding
                };
                let dst = &mut out[oh * d.wo..(oh + 1) * d.wo];
                let src = &plane[ih * d.w..(ih + 1) * d.w];
                if geom.stride.1 == 1 && geom.padding.1 == 0 {
                    dst.copy_from_slice(&src[j..j + d.wo]);
                } else {
                    for (ow, v) in dst.iter_mut().enumerate() {
                        if let Some(iw) = tap(ow, j, geom.stride.1, geom.padding.1, d.w) {
                            *v = src[iw];
                        }
                    }
                }
            }
        }
    });
    cols
}

/// The input coordinate that output coordinate `o` reads at kernel offset `k`, if inside.
#[inline]
fn tap(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// Adds the columns' gradients back into the input's gradient (the adjoint of [`im2col`]), in
/// parallel over the input's planes (one per channel and image).
pub fn col2im(dcols: &[f32], geom: &ConvGeom, d: &ConvDims, batch: usize, g: usize, dx: &mut [f32]) {
    let p = d.pixels();
    let hw = d.h * d.w;
    let (kh, kw) = geom.kernel;
    let group = &mut dx[g * d.cg * batch * hw..(g + 1) * d.cg * batch * hw];
    group.par_chunks_mut(hw).enumerate().for_each(|(q, plane)| {
        let (c, b) = (q / batch, q % batch);
        for tap_index in 0..kh * kw {
            let (i, j) = (tap_index / kw, tap_index % kw);
            let k = c * kh * kw + tap_index;
            let src = &dcols[k * batch * p + b * p..][..p];
            for oh in 0..d.ho {
                let Some(ih) = tap(oh, i, geom.stride.0, geom.padding.0, d.h) else { continue };
                let s = &src[oh * d.wo..(oh + 1) * d.wo];
                let dst = &mut plane[ih * d.w..(ih + 1) * d.w];
                if geom.stride.1 == 1 && geom.padding.1 == 0 {
                    dst[j..j + d.wo].iter_mut().zip(s).for_each(|(a, v)| *a += v);
                } else {
                    for (ow, v) in s.iter().enumerate() {
                        if let Some(iw) = tap(ow, j, geom.stride.1, geom.padding.1, d.w) {
                            dst[iw] += v;
                        }
                    }
                }
            }
        }
    });
}

/// Convolution without bias, CNHW in and out: returns `[O, B, P]` and each group's im2col
/// matrix (kept for the backward pass). One matrix product per group, written in place:
/// `y[group rows] = w_g [og, kg] · cols [kg, B*P]`.
pub fn conv_forward(x: &[f32], w: &[f32], geom: &ConvGeom, d: &ConvDims, batch: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
    let n = batch * d.pixels();
    let mut y = vec![0.0; geom.out_channels * n];
    let mut all_cols = Vec::with_capacity(geom.groups);
    for g in 0..geom.groups {
        let cols = im2col(x, geom, d, batch, g);
        let wg = &w[g * d.og * d.kg..(g + 1) * d.og * d.kg];
        let yg = &mut y[g * d.og * n..(g + 1) * d.og * n];
        matmul(1.0, &view(wg, d.og, d.kg), &view(&cols, d.kg, n), 0.0, &mut view_mut(yg, d.og, n));
        all_cols.push(cols);
    }
    (y, all_cols)
}

/// Gradients of a convolution without bias, CNHW: `dw` (overwritten) and `dx` when wanted.
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
    let n = batch * d.pixels();
    let mut dx = want_dx.then(|| vec![0.0; batch * d.c * d.h * d.w]);
    for g in 0..geom.groups {
        let dyg = view(&dy[g * d.og * n..(g + 1) * d.og * n], d.og, n);
        let dwg = &mut dw[g * d.og * d.kg..(g + 1) * d.og * d.kg];
        matmul(1.0, &dyg, &view(&cols[g], d.kg, n).t(), 0.0, &mut view_mut(dwg, d.og, d.kg));
        if let Some(dx) = dx.as_mut() {
            let wg = &w[g * d.og * d.kg..(g + 1) * d.og * d.kg];
            let mut dcols = vec![0.0; d.kg * n];
            matmul(1.0, &view(wg, d.og, d.kg).t(), &dyg, 0.0, &mut view_mut(&mut dcols, d.kg, n));
            col2im(&dcols, geom, d, batch, g, dx);
        }
    }
    dx
}

/// Per-channel sums of a `[C, N]` tensor.
pub fn channel_sums(x: &[f32], channels: usize) -> Vec<f32> {
    let n = x.len() / channels;
    x.par_chunks(n).map(|row| row.iter().sum::<f32>()).collect()
}

/// Per-channel sums of the product of two `[C, N]` tensors.
pub fn channel_dot(x: &[f32], y: &[f32], channels: usize) -> Vec<f32> {
    let n = x.len() / channels;
    x.par_chunks(n).zip(y.par_chunks(n)).map(|(a, b)| a.iter().zip(b).map(|(a, b)| a * b).sum::<f32>()).collect()
}

/// `x[c, ..] = x[c, ..] * scale[c] + shift[c]` for a `[C, N]` tensor.
pub fn channel_affine(x: &mut [f32], channels: usize, scale: &[f32], shift: &[f32]) {
    let n = x.len() / channels;
    x.par_chunks_mut(n).enumerate().for_each(|(c, row)| {
        let (s, t) = (scale[c], shift[c]);
        row.iter_mut().for_each(|v| *v = *v * s + t);
    });
}

/// `[B, C, H, W]` -> `[C, B, H, W]` (or back, with `to_cnhw` false).
pub fn transpose_batch_channels(x: &[f32], batch: usize, channels: usize, plane: usize, to_cnhw: bool) -> Vec<f32> {
    let (outer, inner) = if to_cnhw { (channels, batch) } else { (batch, channels) };
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(inner * plane).enumerate().for_each(|(o, block)| {
        for (i, dst) in block.chunks_exact_mut(plane).enumerate() {
            dst.copy_from_slice(&x[(i * outer + o) * plane..][..plane]);
        }
    });
    y
}

// ------------------------------------------------------------------------------------ pooling

/// Max pooling over CNHW planes; returns the output and, for each output, the index of its
/// maximum in the input (for the backward pass). Padding counts as -inf.
pub fn max_pool_forward(x: &[f32], pool: &Pool2d, (h, w): (usize, usize), (ho, wo): (usize, usize)) -> (Vec<f32>, Vec<u32>) {
    let planes = x.len() / (h * w);
    let mut y = vec![0.0; planes * ho * wo];
    let mut arg = vec![0u32; planes * ho * wo];
    let (kh, kw) = pool.kernel;
    let (sh, sw) = pool.stride;
    let unpadded = pool.padding == (0, 0);
    y.par_chunks_mut(ho * wo).zip(arg.par_chunks_mut(ho * wo)).enumerate().for_each(|(q, (yp, ap))| {
        let base = q * h * w;
        let plane = &x[base..base + h * w];
        for oh in 0..ho {
            for ow in 0..wo {
                let mut best = f32::NEG_INFINITY;
                let mut best_at = usize::MAX;
                if unpadded {
                    let top = oh * sh * w + ow * sw;
                    for i in 0..kh {
                        for (j, &v) in plane[top + i * w..top + i * w + kw].iter().enumerate() {
                            if v > best || best_at == usize::MAX {
                                best = v;
                                best_at = top + i * w + j;
                            }
                        }
                    }
                } else {
                    for i in 0..kh {
                        let Some(ih) = tap(oh, i, sh, pool.padding.0, h) else { continue };
                        for j in 0..kw {
                            let Some(iw) = tap(ow, j, sw, pool.padding.1, w) else { continue };
                            let v = plane[ih * w + iw];
                            if v > best || best_at == usize::MAX {
                                best = v;
                                best_at = ih * w + iw;
                            }
                        }
                    }
                }
                yp[oh * wo + ow] = best;
                ap[oh * wo + ow] = (base + best_at) as u32;
            }
        }
    });
    (y, arg)
}

/// Routes each output gradient to the input that was the maximum. Parallel over the input's
/// planes: each plane gathers from its own outputs only.
pub fn max_pool_backward(dy: &[f32], arg: &[u32], in_plane: usize, out_plane: usize) -> Vec<f32> {
    let planes = dy.len() / out_plane;
    let mut dx = vec![0.0; planes * in_plane];
    dx.par_chunks_mut(in_plane).enumerate().for_each(|(q, dxp)| {
        let base = q * in_plane;
        for (g, &i) in dy[q * out_plane..(q + 1) * out_plane].iter().zip(&arg[q * out_plane..(q + 1) * out_plane]) {
            dxp[i as usize - base] += g;
        }
    });
    dx
}

/// Average pooling over planes, zero padding counted in the divisor (torch's
/// count_include_pad=True). With `backward`, `src` is the output gradient and the result the
/// input gradient (the adjoint).
pub fn avg_pool(src: &[f32], pool: &Pool2d, (h, w): (usize, usize), (ho, wo): (usize, usize), backward: bool) -> Vec<f32> {
    let (in_plane, out_plane) = (h * w, ho * wo);
    let planes = src.len() / if backward { out_plane } else { in_plane };
    let inv = 1.0 / (pool.kernel.0 * pool.kernel.1) as f32;
    let dst_plane = if backward { in_plane } else { out_plane };
    let mut dst = vec![0.0; planes * dst_plane];
    dst.par_chunks_mut(dst_plane).enumerate().for_each(|(q, dp)| {
        let sp = &src[q * if backward { out_plane } else { in_plane }..];
        for oh in 0..ho {
            for ow in 0..wo {
                let o = oh * wo + ow;
                let mut acc = 0.0;
                for i in 0..pool.kernel.0 {
                    let Some(ih) = tap(oh, i, pool.stride.0, pool.padding.0, h) else { continue };
                    for j in 0..pool.kernel.1 {
                        let Some(iw) = tap(ow, j, pool.stride.1, pool.padding.1, w) else { continue };
                        if backward {
                            dp[ih * w + iw] += sp[o] * inv;
                        } else {
                            acc += sp[ih * w + iw];
                        }
                    }
                }
                if !backward {
                    dp[o] = acc * inv;
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
