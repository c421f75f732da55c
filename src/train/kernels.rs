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
use std::ops::Range;

use rayon::prelude::*;

use crate::ir::{Act, ConvGeom};
use crate::ops::shape::tap;

/// Products smaller than this many multiply-adds run on one thread.
const PAR_MIN_MACS: usize = 1 << 16;

/// `c = alpha * a · b + beta * c`, with `a: [m, k]`, `b: [k, n]`, `c: [m, n]` given as views
/// (transposed views welcome). Large products are split along the longer of `m` and `n` into
/// one block per thread; each element's sum runs in the same order however it is split.
pub fn matmul(
    alpha: f32,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let threads = rayon::current_num_threads();
    if threads == 1 || m * k * n < PAR_MIN_MACS {
        general_mat_mul(alpha, a, b, beta, c);
        return;
    }
    if n >= m {
        let block = n.div_ceil(threads).next_multiple_of(16);
        let parts: Vec<_> = b
            .axis_chunks_iter(Axis(1), block)
            .zip(c.axis_chunks_iter_mut(Axis(1), block))
            .collect();
        parts
            .into_par_iter()
            .for_each(|(b, mut c)| general_mat_mul(alpha, a, &b, beta, &mut c));
    } else {
        let block = m.div_ceil(threads).next_multiple_of(16);
        let parts: Vec<_> = a
            .axis_chunks_iter(Axis(0), block)
            .zip(c.axis_chunks_iter_mut(Axis(0), block))
            .collect();
        parts
            .into_par_iter()
            .for_each(|(a, mut c)| general_mat_mul(alpha, &a, b, beta, &mut c));
    }
}

fn view(data: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), data).expect("buffer matches its shape")
}

fn view_mut(data: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), data).expect("buffer matches its shape")
}

pub use crate::ops::zeros;

/// A copy of a buffer, made by all threads when large.
pub fn copy(x: &[f32]) -> Vec<f32> {
    map(x, |v| v)
}

/// `f` of each value of `x`, into a new buffer, by all threads when large: one pass over
/// fixed-size chunks, each a plain loop that vectorizes.
pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    if x.len() < PAR_MIN {
        // Collected straight from the slice: no zeroing first.
        return x.iter().map(|&v| f(v)).collect();
    }
    let mut y = zeros(x.len());
    let chunk = PAR_MIN / 4;
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(out, src)| out.iter_mut().zip(src).for_each(|(o, &v)| *o = f(v)));
    y
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
    if act == Act::None {
        return;
    }
    let (lo, hi) = act_bounds(act);
    let chunk = PAR_MIN / 4;
    dy.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk))
        .for_each(|(d, y)| {
            // A select rather than a conditional store, so the loop vectorizes.
            d.iter_mut()
                .zip(y)
                .for_each(|(d, &v)| *d = if v > lo && v < hi { *d } else { 0.0 })
        });
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
            kg: geom.fan_in(),
        }
    }

    pub fn pixels(&self) -> usize {
        self.ho * self.wo
    }
}

/// The im2col matrix of group `g` for images `images` of a CNHW input of `batch` images:
/// `[kg, n * P]` for `n` images, one row per kernel tap `(c, i, j)`, one column per output pixel.
pub fn im2col(
    x: &[f32],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
    g: usize,
    images: Range<usize>,
) -> Vec<f32> {
    let p = d.pixels();
    let hw = d.h * d.w;
    let n = images.len() * p;
    let (kh, kw) = geom.kernel;
    if geom.stride == (1, 1) && geom.padding == (0, 0) {
        // Written in order with no padding to fill: output row oh of tap (c, i, j) is input
        // row oh + i from column j, so each run is a slice copy and nothing needs zeroing.
        let mut cols = Vec::with_capacity(d.kg * n);
        for k in 0..d.kg {
            let (c, i, j) = (k / (kh * kw), k / kw % kh, k % kw);
            for b in images.clone() {
                let plane = &x[((g * d.cg + c) * batch + b) * hw..][..hw];
                for src in plane[i * d.w + j..].chunks(d.w).take(d.ho) {
                    push_run(&mut cols, &src[..d.wo]);
                }
            }
        }
        return cols;
    }
    let mut cols = vec![0.0; d.kg * n];
    for (k, row) in cols.chunks_exact_mut(n).enumerate() {
        let (c, i, j) = (k / (kh * kw), k / kw % kh, k % kw);
        for (slot, b) in images.clone().enumerate() {
            let plane = &x[((g * d.cg + c) * batch + b) * hw..][..hw];
            let out = &mut row[slot * p..(slot + 1) * p];
            for oh in 0..d.ho {
                let Some(ih) = tap(oh, i, geom.stride.0, geom.padding.0, d.h) else {
                    continue; // stays zero: padding
                };
                let dst = &mut out[oh * d.wo..(oh + 1) * d.wo];
                let src = &plane[ih * d.w..(ih + 1) * d.w];
                if geom.stride.1 == 1 && geom.padding.1 == 0 {
                    // An explicit loop: these runs are short, and memcpy calls would dominate.
                    for (a, b) in dst.iter_mut().zip(&src[j..j + d.wo]) {
                        *a = *b;
                    }
                } else {
                    for (ow, v) in dst.iter_mut().enumerate() {
                        if let Some(iw) = tap(ow, j, geom.stride.1, geom.padding.1, d.w) {
                            *v = src[iw];
                        }
                    }
                }
            }
        }
    }
    cols
}

/// Appends a short run of values. Runs here are a few to a few dozen values long; a plain copy
/// becomes a `memcpy` call, which costs more than the copy, so this copies fixed-size groups of
/// eight (which compile to vector moves) and then the rest one by one.
#[inline]
fn push_run(out: &mut Vec<f32>, run: &[f32]) {
    let groups = run.chunks_exact(8);
    let rest = groups.remainder();
    for group in groups {
        let group: [f32; 8] = group.try_into().expect("chunks of eight");
        out.extend_from_slice(&group);
    }
    for &v in rest {
        out.push(v);
    }
}

/// The adjoint of [`im2col`]: adds the columns' gradients of `n` images into `dx`, laid out
/// `[cg, n, H, W]` (this group's channels, these images only).
fn col2im(dcols: &[f32], geom: &ConvGeom, d: &ConvDims, n_images: usize, dx: &mut [f32]) {
    let p = d.pixels();
    let hw = d.h * d.w;
    let (kh, kw) = geom.kernel;
    let simple = geom.stride == (1, 1) && geom.padding == (0, 0);
    for (q, plane) in dx.chunks_exact_mut(hw).enumerate() {
        let (c, slot) = (q / n_images, q % n_images);
        for tap_index in 0..kh * kw {
            let (i, j) = (tap_index / kw, tap_index % kw);
            let k = c * kh * kw + tap_index;
            let src = &dcols[k * n_images * p + slot * p..][..p];
            if simple {
                for (s, dst) in src
                    .chunks_exact(d.wo)
                    .zip(plane[i * d.w + j..].chunks_mut(d.w))
                {
                    for (a, v) in dst.iter_mut().zip(s) {
                        *a += v;
                    }
                }
                continue;
            }
            for oh in 0..d.ho {
                let Some(ih) = tap(oh, i, geom.stride.0, geom.padding.0, d.h) else {
                    continue;
                };
                let s = &src[oh * d.wo..(oh + 1) * d.wo];
                let dst = &mut plane[ih * d.w..(ih + 1) * d.w];
                if geom.stride.1 == 1 && geom.padding.1 == 0 {
                    dst[j..j + d.wo]
                        .iter_mut()
                        .zip(s)
                        .for_each(|(a, v)| *a += v);
                } else {
                    for (ow, v) in s.iter().enumerate() {
                        if let Some(iw) = tap(ow, j, geom.stride.1, geom.padding.1, d.w) {
                            dst[iw] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Bytes of im2col matrix one block of images should fill (tuned on lenet: small enough that a
/// block's columns are still in cache when its product reads them).
const BLOCK_BYTES: usize = 1 << 18;

/// Images in a block.
fn block_images(d: &ConvDims) -> usize {
    (BLOCK_BYTES / (d.kg * d.pixels() * 4)).max(1)
}

/// The batch cut into blocks of images.
fn blocks(d: &ConvDims, batch: usize) -> Vec<Range<usize>> {
    let size = block_images(d);
    (0..batch)
        .step_by(size)
        .map(|b0| b0..(b0 + size).min(batch))
        .collect()
}

/// Convolution without bias, CNHW in and out (`[O, B*P]`). The batch is cut into blocks of
/// images processed in parallel; each block builds its im2col matrix (which fits in cache) and
/// multiplies: `y[group rows, block columns] = w_g [og, kg] · cols [kg, n*P]`.
pub fn conv_forward(x: &[f32], w: &[f32], geom: &ConvGeom, d: &ConvDims, batch: usize) -> Vec<f32> {
    let p = d.pixels();
    let n = batch * p;
    let mut y = zeros(geom.out_channels * n);
    let blocks = blocks(d, batch);
    for g in 0..geom.groups {
        let wg = view(&w[g * d.og * d.kg..(g + 1) * d.og * d.kg], d.og, d.kg);
        let mut yg = view_mut(&mut y[g * d.og * n..(g + 1) * d.og * n], d.og, n);
        let parts: Vec<_> = yg
            .axis_chunks_iter_mut(Axis(1), block_images(d) * p)
            .zip(&blocks)
            .collect();
        parts.into_par_iter().for_each(|(mut yb, images)| {
            let cols = im2col(x, geom, d, batch, g, images.clone());
            general_mat_mul(1.0, &wg, &view(&cols, d.kg, images.len() * p), 0.0, &mut yb);
        });
    }
    y
}

/// Number of fixed parts the batch is split into for weight gradients: partial sums are added in
/// this order whatever the thread count, so results do not depend on it.
const GRAD_PARTS: usize = 4;

/// Adds one block of images' weight gradient into a part's sum (`[O, kg]`) exactly as the
/// matrix product in [`conv_backward`] does; given, it replaces the im2col matrix and product.
pub type BlockWeightGrad<'a> = dyn Fn(Range<usize>, &mut [f32]) + Sync + 'a;

/// Gradients of a convolution without bias, CNHW: `dw` (overwritten) and `dx` when wanted.
/// im2col matrices are rebuilt block by block rather than kept from the forward pass; with
/// `block_dw`, the weight gradient skips them (the input gradient never needs them).
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
    dw: &mut [f32],
    want_dx: bool,
    block_dw: Option<&BlockWeightGrad<'_>>,
) -> Option<Vec<f32>> {
    let p = d.pixels();
    let n = batch * p;
    let hw = d.h * d.w;
    let blocks = blocks(d, batch);
    let per_part = blocks.len().div_ceil(GRAD_PARTS);
    let mut dx = want_dx.then(|| zeros(batch * d.c * hw));
    for g in 0..geom.groups {
        let wg = view(&w[g * d.og * d.kg..(g + 1) * d.og * d.kg], d.og, d.kg);
        let dyg = view(&dy[g * d.og * n..(g + 1) * d.og * n], d.og, n);
        // Each part: its weight-gradient partial sum and its blocks' input gradients.
        type Part = (Vec<f32>, Vec<(Range<usize>, Vec<f32>)>);
        let parts: Vec<Part> = blocks
            .par_chunks(per_part.max(1))
            .map(|part| {
                let mut dw_part = vec![0.0; d.og * d.kg];
                let mut dx_blocks = Vec::new();
                // The input-gradient columns of one block at a time, allocated (and zeroed)
                // once per part: the product overwrites them.
                let mut dcols_buffer = if want_dx {
                    vec![0.0; d.kg * block_images(d) * p]
                } else {
                    Vec::new()
                };
                for images in part {
                    let nb = images.len() * p;
                    let dyb = dyg.slice(ndarray::s![.., images.start * p..images.end * p]);
                    if let Some(block_dw) = block_dw {
                        block_dw(images.clone(), &mut dw_part);
                    } else {
                        let cols = im2col(x, geom, d, batch, g, images.clone());
                        let cols = view(&cols, d.kg, nb);
                        general_mat_mul(
                            1.0,
                            &dyb,
                            &cols.t(),
                            1.0,
                            &mut view_mut(&mut dw_part, d.og, d.kg),
                        );
                    }
                    if want_dx {
                        let dcols = &mut dcols_buffer[..d.kg * nb];
                        general_mat_mul(1.0, &wg.t(), &dyb, 0.0, &mut view_mut(dcols, d.kg, nb));
                        let mut local = vec![0.0; d.cg * images.len() * hw];
                        col2im(dcols, geom, d, images.len(), &mut local);
                        dx_blocks.push((images.clone(), local));
                    }
                }
                (dw_part, dx_blocks)
            })
            .collect();
        let dwg = &mut dw[g * d.og * d.kg..(g + 1) * d.og * d.kg];
        dwg.fill(0.0);
        for (dw_part, _) in &parts {
            dwg.iter_mut().zip(dw_part).for_each(|(a, b)| *a += b);
        }
        if let Some(dx) = dx.as_mut() {
            // Scatter each block's [cg, n, H, W] into the CNHW gradient, in parallel over channels.
            let group = &mut dx[g * d.cg * batch * hw..(g + 1) * d.cg * batch * hw];
            group
                .par_chunks_mut(batch * hw)
                .enumerate()
                .for_each(|(c, channel)| {
                    for (images, local) in parts.iter().flat_map(|(_, blocks)| blocks) {
                        let nb = images.len();
                        channel[images.start * hw..images.end * hw]
                            .copy_from_slice(&local[c * nb * hw..(c + 1) * nb * hw]);
                    }
                });
        }
    }
    dx
}

/// Independent partial sums a reduction keeps: a single running sum waits on its own previous
/// addition (4 cycles each), while this many lanes vectorize and overlap. They are added at the
/// end in a fixed order, so a sum is the same bit for bit from run to run.
const LANES: usize = 16;

/// `Σ f(x[i])`, over [`LANES`] partial sums.
pub fn sum_of(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let groups = x.chunks_exact(LANES);
    let rest = groups.remainder();
    for group in groups {
        lanes.iter_mut().zip(group).for_each(|(s, &v)| *s += f(v));
    }
    lanes.iter().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
}

/// `Σ x[i] · y[i]`, over [`LANES`] partial sums.
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (xs, ys) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let rest: f32 = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xs.zip(ys) {
        lanes
            .iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(s, (a, b))| *s += a * b);
    }
    lanes.iter().sum::<f32>() + rest
}

/// Per-channel sums of a `[C, N]` tensor.
pub fn channel_sums(x: &[f32], channels: usize) -> Vec<f32> {
    let n = x.len() / channels;
    x.par_chunks(n).map(|row| sum_of(row, |v| v)).collect()
}

/// Per-channel sums of the product of two `[C, N]` tensors.
pub fn channel_dot(x: &[f32], y: &[f32], channels: usize) -> Vec<f32> {
    let n = x.len() / channels;
    x.par_chunks(n)
        .zip(y.par_chunks(n))
        .map(|(a, b)| dot(a, b))
        .collect()
}

/// `x[c, ..] = x[c, ..] * scale[c] + shift[c]` for a `[C, N]` tensor.
pub fn channel_affine(x: &mut [f32], channels: usize, scale: &[f32], shift: &[f32]) {
    let n = x.len() / channels;
    x.par_chunks_mut(n).enumerate().for_each(|(c, row)| {
        let (s, t) = (scale[c], shift[c]);
        row.iter_mut().for_each(|v| *v = *v * s + t);
    });
}

/// BatchNorm's last pass over a `[C, N]` tensor, with three per-channel affines
/// `[(a0, b0), (a1, b1), (gamma, beta)]`: `u = x a0 + b0` (an affine before the BatchNorm),
/// `xhat = u a1 + b1` (the normalization) and `y = act(xhat gamma + beta)`; writes `y` and
/// `xhat`.
pub fn channel_normalize(
    x: &[f32],
    (y, xhat): (&mut [f32], &mut [f32]),
    channels: usize,
    affines: [(&[f32], &[f32]); 3],
    act: Act,
) {
    let n = x.len() / channels;
    let (lo, hi) = act_bounds(act);
    let [(a0, b0), (a1, b1), (g, beta)] = affines;
    y.par_chunks_mut(n)
        .zip(xhat.par_chunks_mut(n))
        .zip(x.par_chunks(n))
        .enumerate()
        .for_each(|(c, ((y, hat), x))| {
            let (a0, b0, a1, b1, g, beta) = (a0[c], b0[c], a1[c], b1[c], g[c], beta[c]);
            for ((y, h), &v) in y.iter_mut().zip(hat).zip(x) {
                *h = (v * a0 + b0) * a1 + b1;
                *y = (*h * g + beta).clamp(lo, hi);
            }
        });
}

/// `x[c, ..] = act(x[c, ..] + bias[c])` for a `[C, N]` tensor, in one pass.
pub fn channel_bias_act(x: &mut [f32], channels: usize, bias: Option<&[f32]>, act: Act) {
    let n = x.len() / channels;
    let (lo, hi) = act_bounds(act);
    x.par_chunks_mut(n).enumerate().for_each(|(c, row)| {
        let b = bias.map_or(0.0, |b| b[c]);
        row.iter_mut().for_each(|v| *v = (*v + b).clamp(lo, hi));
    });
}

/// The clamp an activation is: `(lo, hi)`, infinite where it does not bound.
pub fn act_bounds(act: Act) -> (f32, f32) {
    match act {
        Act::None => (f32::NEG_INFINITY, f32::INFINITY),
        Act::ReLU => (0.0, f32::INFINITY),
        Act::ReLU6 => (0.0, 6.0),
    }
}

/// `[B, C, H, W]` -> `[C, B, H, W]` (or back, with `to_cnhw` false).
pub fn transpose_batch_channels(
    x: &[f32],
    batch: usize,
    channels: usize,
    plane: usize,
    to_cnhw: bool,
) -> Vec<f32> {
    if channels == 1 || batch == 1 {
        // The two layouts are the same.
        return x.to_vec();
    }
    let (outer, inner) = if to_cnhw {
        (channels, batch)
    } else {
        (batch, channels)
    };
    let mut y = zeros(x.len());
    y.par_chunks_mut(inner * plane)
        .enumerate()
        .for_each(|(o, block)| {
            for (i, dst) in block.chunks_exact_mut(plane).enumerate() {
                dst.copy_from_slice(&x[(i * outer + o) * plane..][..plane]);
            }
        });
    y
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
        if crate::data::argmax(row) == label {
            correct += 1;
        }
        let scale = 1.0 / (sum * batch as f32);
        g.iter_mut().for_each(|v| *v *= scale);
        g[label] -= 1.0 / batch as f32;
    }
    ((loss / batch as f64) as f32, correct, grad)
}
