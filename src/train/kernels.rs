//! Float kernels for training, forward and backward. Image tensors are kept channel-major,
//! `[C, B, H, W]` (CNHW), so that a convolution is one matrix product whose output rows are
//! already its output channels, and per-channel work (bias, BatchNorm) is contiguous; vectors
//! are `[B, F]`. `Flatten` converts between the two. Matrix products
//! go through [`gemm`] (ndarray views), split over rayon's threads by [`matmul`]; the elementwise
//! work runs in parallel over images or rows. One thread pool does all the parallel work, and
//! every split is fixed by the data's shape, never by timing, so results are the same bit for
//! bit from run to run.

use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use std::ops::Range;

use rayon::prelude::*;

use super::buffers::{scratch, Pool};
pub use super::gemm::library_products;
use super::gemm::{gemm, Lanes, LANES as VECTOR};
use crate::ir::{Act, ConvGeom};
use crate::ops::shape::tap;

/// Products smaller than this many multiply-adds run on one thread.
const PAR_MIN_MACS: usize = 1 << 16;

/// `c = a · b + beta * c` (beta 0 or 1), with `a: [m, k]`, `b: [k, n]`, `c: [m, n]` given as
/// views (transposed views welcome), by [`gemm`]. Large products are split along the longer of
/// `m` and `n` into one block per thread; each element's sum runs in the same order however it
/// is split.
pub fn matmul(a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let threads = rayon::current_num_threads();
    if threads == 1 || m * k * n < PAR_MIN_MACS {
        gemm(a, b, beta, c);
        return;
    }
    // Along n: blocks of the columns of b and c; along m: of the rows of a and c.
    let (axis, len) = if n >= m { (1, n) } else { (0, m) };
    let block = len.div_ceil(threads).next_multiple_of(16);
    split((a.view(), b.view()), beta, c.view_mut(), (axis, block));
}

/// [`matmul`] cut into blocks of `block` along `axis` of `c` (and the matching factor), run in
/// parallel: halves by `rayon::join`, which allocates nothing.
fn split(
    (a, b): (ArrayView2<f32>, ArrayView2<f32>),
    beta: f32,
    mut c: ArrayViewMut2<f32>,
    (axis, block): (usize, usize),
) {
    let blocks = c.len_of(Axis(axis)).div_ceil(block);
    if blocks <= 1 {
        gemm(&a, &b, beta, &mut c);
        return;
    }
    let mid = blocks / 2 * block;
    let (c0, c1) = c.split_at(Axis(axis), mid);
    let (first, second) = if axis == 1 {
        let (b0, b1) = b.split_at(Axis(1), mid);
        ((a.view(), b0), (a, b1))
    } else {
        let (a0, a1) = a.split_at(Axis(0), mid);
        ((a0, b.view()), (a1, b))
    };
    rayon::join(
        || split(first, beta, c0, (axis, block)),
        || split(second, beta, c1, (axis, block)),
    );
}

fn view(data: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), data).expect("buffer matches its shape")
}

fn view_mut(data: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), data).expect("buffer matches its shape")
}

/// `y = x`, by all threads when large.
pub fn copy(x: &[f32], y: &mut [f32]) {
    map(x, |v| v, y)
}

/// `y = f(x)`, value by value, by all threads when large: one pass over fixed-size chunks,
/// each a plain loop that vectorizes.
pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync + Send, y: &mut [f32]) {
    let chunk = PAR_MIN / 4;
    let pass =
        |(out, src): (&mut [f32], &[f32])| out.iter_mut().zip(src).for_each(|(o, &v)| *o = f(v));
    if x.len() < PAR_MIN {
        pass((y, x));
    } else {
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(pass);
    }
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
    y: &mut [f32],
) {
    if let Some(b) = b {
        for row in y.chunks_exact_mut(n_out) {
            row.copy_from_slice(b);
        }
    }
    let beta = if b.is_some() { 1.0 } else { 0.0 };
    matmul(
        &view(x, batch, n_in),
        &view(w, n_out, n_in).t(),
        beta,
        &mut view_mut(y, batch, n_out),
    );
}

/// Gradients of a linear layer: `dw = dy^T · x`, `db = Σ dy`, and `dx = dy · w` when wanted
/// (overwritten).
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (batch, n_in, n_out): (usize, usize, usize),
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
) {
    matmul(
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
    if let Some(dx) = dx {
        matmul(
            &view(dy, batch, n_out),
            &view(w, n_out, n_in),
            0.0,
            &mut view_mut(dx, batch, n_in),
        );
    }
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
/// `[kg, n * P]` for `n` images, one row per kernel tap `(c, i, j)`, one column per output pixel,
/// written into `cols` (all of it).
pub fn im2col(
    x: &[f32],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
    (g, images): (usize, Range<usize>),
    cols: &mut [f32],
) {
    let p = d.pixels();
    let hw = d.h * d.w;
    let n = images.len() * p;
    let (kh, kw) = geom.kernel;
    if geom.stride == (1, 1) && geom.padding == (0, 0) {
        // Written in order with no padding to fill: output row oh of tap (c, i, j) is input
        // row oh + i from column j, so each run is a slice copy.
        let mut out = &mut cols[..];
        for k in 0..d.kg {
            let (c, i, j) = (k / (kh * kw), k / kw % kh, k % kw);
            for b in images.clone() {
                let plane = &x[((g * d.cg + c) * batch + b) * hw..][..hw];
                for src in plane[i * d.w + j..].chunks(d.w).take(d.ho) {
                    out = copy_run(out, &src[..d.wo]);
                }
            }
        }
        return;
    }
    cols.fill(0.0);
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
}

/// Copies a short run of values to the start of `out` and returns the rest of `out`. Runs here
/// are a few to a few dozen values long; a plain copy becomes a `memcpy` call, which costs more
/// than the copy, so this copies fixed-size groups of eight (which compile to vector moves) and
/// then the rest one by one.
#[inline]
fn copy_run<'a>(out: &'a mut [f32], run: &[f32]) -> &'a mut [f32] {
    let (dst, rest_out) = out.split_at_mut(run.len());
    let (dst_groups, src_groups) = (dst.chunks_exact_mut(8), run.chunks_exact(8));
    let src_rest = src_groups.remainder();
    for (d, s) in dst_groups.zip(src_groups) {
        let s: &[f32; 8] = s.try_into().expect("chunks of eight");
        let d: &mut [f32; 8] = d.try_into().expect("chunks of eight");
        *d = *s;
    }
    let done = run.len() - src_rest.len();
    for (d, &v) in dst[done..].iter_mut().zip(src_rest) {
        *d = v;
    }
    rest_out
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
                    add_into(&mut dst[..d.wo], s);
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
                    add_into(&mut dst[j..j + d.wo], s);
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

/// `dst[i] += src[i]` for a run as long as `dst`, eight values at a time: col2im's runs are
/// output rows, often shorter than a loop vectorized 16 at a time would need (the direct input
/// gradient adds whole vectors of 16 with it too).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed, on copies: the form that vectorizes everywhere
pub fn add_into(dst: &mut [f32], src: &[f32]) {
    let (dst8, dst_rest) = dst.as_chunks_mut::<8>();
    let (src8, src_rest) = src[..dst8.len() * 8 + dst_rest.len()].as_chunks::<8>();
    for (d, s) in dst8.iter_mut().zip(src8) {
        let (mut total, s) = (*d, *s);
        for l in 0..8 {
            total[l] += s[l];
        }
        *d = total;
    }
    dst_rest.iter_mut().zip(src_rest).for_each(|(a, v)| *a += v);
}

/// Bytes of im2col matrix one block of images should fill (tuned on lenet: small enough that a
/// block's columns are still in cache when its product reads them).
const BLOCK_BYTES: usize = 1 << 18;

/// Images in a block.
pub fn block_images(d: &ConvDims) -> usize {
    (BLOCK_BYTES / (d.kg * d.pixels() * 4)).max(1)
}

/// Block `index` of the batch cut into blocks of images.
fn block(d: &ConvDims, batch: usize, index: usize) -> Range<usize> {
    let size = block_images(d);
    index * size..((index + 1) * size).min(batch)
}

/// Convolution without bias, CNHW in and out (`y: [O, B*P]`, overwritten). The batch is cut
/// into blocks of images processed in parallel; each block builds its im2col matrix (which fits
/// in cache) and multiplies: `y[group rows, block columns] = w_g [og, kg] · cols [kg, n*P]`.
pub fn conv_forward(
    x: &[f32],
    w: &[f32],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
    y: &mut [f32],
) {
    let p = d.pixels();
    let n = batch * p;
    for g in 0..geom.groups {
        let wg = view(&w[g * d.og * d.kg..(g + 1) * d.og * d.kg], d.og, d.kg);
        let mut yg = view_mut(&mut y[g * d.og * n..(g + 1) * d.og * n], d.og, n);
        yg.axis_chunks_iter_mut(Axis(1), block_images(d) * p)
            .into_par_iter()
            .enumerate()
            .for_each(|(index, mut yb)| {
                let images = block(d, batch, index);
                let nb = images.len() * p;
                scratch(d.kg * nb, |cols| {
                    im2col(x, geom, d, batch, (g, images), cols);
                    gemm(&wg, &view(cols, d.kg, nb), 0.0, &mut yb);
                });
            });
    }
}

/// Number of fixed parts the batch is split into for weight gradients: partial sums are added in
/// this order whatever the thread count, so results do not depend on it.
const GRAD_PARTS: usize = 4;

/// Adds the weight gradient of a part's images (whole blocks of [`block_images`]) into the
/// part's sum (`[O, kg]`, zeros on entry) exactly as the matrix products in [`conv_backward`]
/// do, block by block; given, it replaces the im2col matrices and products.
pub type PartWeightGrad<'a> = dyn Fn(Range<usize>, &mut [f32]) + Sync + 'a;

/// Writes one block of images' input gradient into its staging area, image by image and pixel
/// by pixel with the channels in vectors of 16 (`[images, ⌈cg / 16⌉, H * W, 16]`, every value
/// written, lanes past the last channel unread), with the values the matrix product `wᵀ · dy`
/// and [`col2im`] in [`conv_backward`] give; given, it replaces both.
pub type BlockInputGrad<'a> = dyn Fn(Range<usize>, &mut [Lanes]) + Sync + 'a;

/// Direct computations that stand in for [`conv_backward`]'s products (none: the products):
/// the weight gradient's, part by part, and the input gradient's with col2im, block by block.
#[derive(Clone, Copy, Default)]
pub struct DirectGrads<'a> {
    pub dw: Option<&'a PartWeightGrad<'a>>,
    pub dx: Option<&'a BlockInputGrad<'a>>,
}

/// Gradients of a convolution without bias, CNHW: `dw` and `dx` when given (both overwritten).
/// im2col matrices are rebuilt block by block rather than kept from the forward pass; with
/// `direct.dw`, the weight gradient skips them (the input gradient never needs them), and with
/// `direct.dx` the input gradient skips its product and col2im. The parts' partial sums and
/// input gradients are kept in buffers from `buffers`.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
    (dw, mut dx): (&mut [f32], Option<&mut [f32]>),
    direct: DirectGrads<'_>,
    buffers: &mut Pool<f32>,
) {
    let p = d.pixels();
    let n = batch * p;
    let hw = d.h * d.w;
    let blocks = batch.div_ceil(block_images(d));
    let per_part = blocks.div_ceil(GRAD_PARTS).max(1);
    let parts = blocks.div_ceil(per_part);
    let part_images = per_part * block_images(d);
    // Each part's weight-gradient partial sum, and its blocks' input gradients: a block of
    // images `s..e` at `s * image`, laid out `[cg, e - s, H, W]` (`image = cg * H * W`), or
    // with `direct.dx` `[e - s, ⌈cg / 16⌉, H * W, 16]` (`image` rounded up to whole vectors);
    // without `dx`, one unused value per part.
    let mut dw_parts = buffers.take(parts * d.og * d.kg);
    let image = match direct.dx {
        Some(_) => d.cg.div_ceil(VECTOR) * VECTOR * hw,
        None => d.cg * hw,
    };
    let (staging_len, part_len) = match dx {
        Some(_) => (image * batch, part_images * image),
        None => (parts, 1),
    };
    let mut staging = buffers.take(staging_len);
    for g in 0..geom.groups {
        let wg = view(&w[g * d.og * d.kg..(g + 1) * d.og * d.kg], d.og, d.kg);
        let dyg = view(&dy[g * d.og * n..(g + 1) * d.og * n], d.og, n);
        let want_dx = dx.is_some();
        dw_parts
            .par_chunks_mut(d.og * d.kg)
            .zip(staging.par_chunks_mut(part_len))
            .enumerate()
            .for_each(|(part, (dw_part, staged))| {
                dw_part.fill(0.0);
                let indices = part * per_part..((part + 1) * per_part).min(blocks);
                if let Some(part_dw) = direct.dw {
                    let first = block(d, batch, indices.start).start;
                    part_dw(first..block(d, batch, indices.end - 1).end, dw_part);
                }
                for index in indices {
                    let images = block(d, batch, index);
                    let nb = images.len() * p;
                    let dyb = dyg.slice(ndarray::s![.., images.start * p..images.end * p]);
                    if direct.dw.is_none() {
                        scratch(d.kg * nb, |cols| {
                            im2col(x, geom, d, batch, (g, images.clone()), cols);
                            let cols = view(cols, d.kg, nb);
                            let mut dw_part = view_mut(dw_part, d.og, d.kg);
                            gemm(&dyb, &cols.t(), 1.0, &mut dw_part);
                        });
                    }
                    if want_dx {
                        let offset = (images.start - part * part_images) * image;
                        let local = &mut staged[offset..][..images.len() * image];
                        if let Some(block_dx) = direct.dx {
                            block_dx(images.clone(), local.as_chunks_mut().0);
                        } else {
                            local.fill(0.0);
                            scratch(d.kg * nb, |dcols| {
                                let mut dcols_view = view_mut(dcols, d.kg, nb);
                                gemm(&wg.t(), &dyb, 0.0, &mut dcols_view);
                                col2im(dcols, geom, d, images.len(), local);
                            });
                        }
                    }
                }
            });
        let dwg = &mut dw[g * d.og * d.kg..(g + 1) * d.og * d.kg];
        dwg.fill(0.0);
        for dw_part in dw_parts.chunks_exact(d.og * d.kg) {
            dwg.iter_mut().zip(dw_part).for_each(|(a, b)| *a += b);
        }
        if let Some(dx) = dx.as_deref_mut() {
            // Each block's staging into the CNHW gradient, in parallel over channels: a copy
            // of the channel's plane of each block, or with `direct.dx` the channel's lane of
            // each image's pixels.
            let group = &mut dx[g * d.cg * batch * hw..(g + 1) * d.cg * batch * hw];
            let staging = &staging;
            group
                .par_chunks_mut(batch * hw)
                .enumerate()
                .for_each(|(c, channel)| match direct.dx {
                    Some(_) => {
                        let (vector, lane) = (c / VECTOR, c % VECTOR);
                        let images = staging.as_chunks::<VECTOR>().0.chunks_exact(image / VECTOR);
                        for (plane, pixels) in channel.chunks_exact_mut(hw).zip(images) {
                            let pixels = &pixels[vector * hw..][..hw];
                            plane.iter_mut().zip(pixels).for_each(|(v, p)| *v = p[lane]);
                        }
                    }
                    None => {
                        for index in 0..blocks {
                            let images = block(d, batch, index);
                            let nb = images.len();
                            let local = &staging[images.start * image..][..d.cg * nb * hw];
                            channel[images.start * hw..images.end * hw]
                                .copy_from_slice(&local[c * nb * hw..(c + 1) * nb * hw]);
                        }
                    }
                });
        }
    }
    buffers.give(dw_parts);
    buffers.give(staging);
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

/// Per-channel sums of a `[C, N]` tensor, one per value of `sums` (C of them).
pub fn channel_sums(x: &[f32], sums: &mut [f32]) {
    let n = x.len() / sums.len();
    sums.par_iter_mut()
        .zip(x.par_chunks(n))
        .for_each(|(s, row)| *s = sum_of(row, |v| v));
}

/// Per-channel sums of the product of two `[C, N]` tensors, one per value of `sums`.
pub fn channel_dot(x: &[f32], y: &[f32], sums: &mut [f32]) {
    let n = x.len() / sums.len();
    sums.par_iter_mut()
        .zip(x.par_chunks(n).zip(y.par_chunks(n)))
        .for_each(|(s, (a, b))| *s = dot(a, b));
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

/// `y = x` transposed from `[B, C, H, W]` to `[C, B, H, W]` (or back, with `to_cnhw` false).
pub fn transpose_batch_channels(
    x: &[f32],
    (batch, channels, plane): (usize, usize, usize),
    to_cnhw: bool,
    y: &mut [f32],
) {
    if channels == 1 || batch == 1 {
        // The two layouts are the same.
        return copy(x, y);
    }
    let (outer, inner) = if to_cnhw {
        (channels, batch)
    } else {
        (batch, channels)
    };
    y.par_chunks_mut(inner * plane)
        .enumerate()
        .for_each(|(o, block)| {
            for (i, dst) in block.chunks_exact_mut(plane).enumerate() {
                dst.copy_from_slice(&x[(i * outer + o) * plane..][..plane]);
            }
        });
}

// ------------------------------------------------------------------------------------ loss

/// Mean softmax cross-entropy: returns (loss, number correct) and writes d loss / d logits
/// into `grad` (as long as `logits`).
pub fn softmax_cross_entropy(
    logits: &[f32],
    labels: &[u8],
    classes: usize,
    grad: &mut [f32],
) -> (f32, usize) {
    let batch = labels.len();
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
    ((loss / batch as f64) as f32, correct)
}
