//! Direct convolution for training: a stride-1, unpadded, ungrouped convolution computed
//! straight from its CNHW input, with no im2col matrix and no packed copy of one.
//!
//! The forward pass cuts the output into tiles of 16 consecutive output pixels by 16 output
//! channels. A tile's sums stay in registers, one vector of pixels per channel: for each kernel
//! tap `(c, i, j)`, the input values under the tile are two runs of eight in the input plane,
//! and the tap's weights for the tile's channels one run of the transposed weight; each weight
//! times the pixels is one fused multiply-add. The weight gradient (5-wide kernels) sums two
//! kernel rows' five taps each for 32 output channels (a whole 5x5 kernel for 16 channels where
//! they do not pair up) over the pixels the same way, into a transposed partial sum per part of
//! the batch. The input gradient is the general path's product `wᵀ · dy` with col2im folded
//! in: for each kernel tap, 16 input channels by 16 output pixels are summed in registers (one
//! vector of channels per pixel) and each pixel's vector is added to the input pixel under the
//! tap, in an image kept pixel by pixel (channels in vectors), which the caller transposes
//! into the planes; no column matrix, no col2im.
//!
//! Each sum is a chain of fused multiply-adds in the order, and cut into the blocks, that the
//! general path's matrix products use (`gemm`, in `matrixmultiply`'s order), so the two paths
//! agree bit for bit. The kernels are compiled for AVX-512 at run time (`multiversion`; the
//! default build targets baseline x86_64) and used only where the CPU has it: their
//! accumulators fill AVX-512's 32 vector registers, and with 16 (AVX2) or 128-bit vectors
//! (aarch64) they would spill. The weight gradient has a smaller kernel for those CPUs (one
//! row by 16 channels: 10 of AVX2's 16 registers), compiled for AVX2.

use multiversion::multiversion;
use rayon::prelude::*;

use super::buffers::{scratch, Pool};
use super::gemm::{avx512, fma, fma_row, fma_rows, transpose, Lanes, KC, LANES};
use super::kernels::{self, ConvDims};
use crate::ir::ConvGeom;
use std::ops::Range;

/// Pixels per tile: 16 consecutive output pixels, one vector's lanes.
const TILE: usize = 16;

/// A tile is two runs of eight pixels, each within one output row.
const HALF: usize = TILE / 2;

/// Output channels per tile: one accumulator each.
const CHANNELS: usize = 16;

/// Whether [`conv_forward`] handles this convolution: stride 1, no padding, one group, output
/// channels a multiple of 16, output rows a multiple of 8 wide (so that a run of eight never
/// crosses a row) and output planes a multiple of 16 pixels; and a CPU with AVX-512.
pub fn applies(geom: &ConvGeom, d: &ConvDims) -> bool {
    geom.groups == 1
        && geom.stride == (1, 1)
        && geom.padding == (0, 0)
        && d.wo.is_multiple_of(HALF)
        && d.pixels().is_multiple_of(TILE)
        && geom.out_channels.is_multiple_of(CHANNELS)
        && avx512()
}

/// Convolution without bias, CNHW in and out (`y: [O, B*P]`, overwritten): computed directly
/// when [`applies`] says so, else by [`kernels::conv_forward`] (im2col and matrix products). The
/// two give the same values bit for bit.
pub fn conv_forward(
    x: &[f32],
    w: &[f32],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
    y: &mut [f32],
) {
    if applies(geom, d) {
        direct_conv_forward(x, w, geom, d, batch, y)
    } else {
        kernels::conv_forward(x, w, geom, d, batch, y)
    }
}

/// [`conv_forward`]'s direct path. Groups of 16 output channels and images run in parallel.
fn direct_conv_forward(
    x: &[f32],
    w: &[f32],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
    y: &mut [f32],
) {
    let (o, kg) = (geom.out_channels, d.kg);
    let n = batch * d.pixels();
    // The weight regrouped as [O / 16, kg, 16]: a tap's weights for a tile's channels in one
    // run, and a tile's taps one after the other.
    scratch(kg * o, |wt: &mut [f32]| {
        for (oc, row) in w.chunks_exact(kg).enumerate() {
            let (group, lane) = (oc / CHANNELS, oc % CHANNELS);
            for (k, &v) in row.iter().enumerate() {
                wt[(group * kg + k) * CHANNELS + lane] = v;
            }
        }
        // Each tap's offset from its image's first input plane (CNHW: a channel's planes for
        // all images are adjacent).
        scratch(kg, |taps: &mut [usize]| {
            let (kh, kw) = geom.kernel;
            let channel_stride = batch * d.h * d.w;
            for (k, tap) in taps.iter_mut().enumerate() {
                *tap = (k / (kh * kw)) * channel_stride + (k / kw % kh) * d.w + k % kw;
            }
            let (wt, taps) = (&*wt, &*taps);
            y.par_chunks_mut(CHANNELS * n)
                .zip(wt.par_chunks(kg * CHANNELS))
                .for_each(|(slab, w_group)| {
                    let mut rows = slab.chunks_exact_mut(n);
                    let rows = std::array::from_fn(|_| rows.next().expect("16 rows"));
                    images(x, w_group.as_chunks().0, taps, d, (0, rows));
                });
        });
    });
}

/// Output channels `rows` (16 of them, each the segments of images `first..` in one output
/// row) of those images: halves of the images in parallel (`rayon::join`), down to one image.
fn images(
    x: &[f32],
    wt: &[[f32; CHANNELS]],
    taps: &[usize],
    d: &ConvDims,
    (first, rows): (usize, [&mut [f32]; CHANNELS]),
) {
    let p = d.pixels();
    let count = rows[0].len() / p;
    if count <= 1 {
        let mut rows = rows;
        return tiles(&x[first * d.h * d.w..], wt, taps, d, &mut rows);
    }
    let half = count / 2;
    let mut halves = rows.map(|row| {
        let (a, b) = row.split_at_mut(half * p);
        (Some(a), Some(b))
    });
    let left = std::array::from_fn(|c| halves[c].0.take().expect("split once"));
    let right = std::array::from_fn(|c| halves[c].1.take().expect("split once"));
    rayon::join(
        || images(x, wt, taps, d, (first, left)),
        || images(x, wt, taps, d, (first + half, right)),
    );
}

/// Kernel rows [`conv_backward`] computes the weight gradient of directly: five taps wide.
const KW: usize = 5;

/// Output channels per weight-gradient tile: two vectors (one where channels do not pair up).
const PAIR: usize = 2 * CHANNELS;

/// Gradients of a convolution without bias, CNHW: `dw` and `dx` when given (overwritten), by
/// [`kernels::conv_backward`]. When [`weight_grad_applies`] holds, the weight gradient is
/// computed straight from the input (no im2col matrix); when [`input_grad_applies`] holds, the
/// input gradient straight from the output gradient (no column matrix, no col2im). Both in the
/// general path's order, so the paths agree bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    geom: &ConvGeom,
    d: &ConvDims,
    batch: usize,
    grads: (&mut [f32], Option<&mut [f32]>),
    buffers: &mut Pool<f32>,
) {
    // Output channels in pairs of 16 where they pair up, else 16 at a time.
    let pairs = geom.out_channels.is_multiple_of(PAIR);
    let part_dw = |images: Range<usize>, dw_part: &mut [f32]| {
        let args = (x, dy, geom, d, batch);
        match (avx512(), pairs) {
            (true, true) => part_weight_grad(args, images, dw_part, RowGrads::PAIRS),
            (true, false) => part_weight_grad(args, images, dw_part, RowGrads::SINGLES),
            (false, _) => part_weight_grad(args, images, dw_part, RowGrads::AVX2),
        }
    };
    // The weight regrouped for the direct input gradient, once per batch.
    let dx_direct = grads.1.is_some() && input_grad_applies(geom);
    let regrouped = if dx_direct {
        d.cg.div_ceil(LANES) * LANES * (d.kg / d.cg) * geom.out_channels
    } else {
        0
    };
    let mut wt = buffers.take(regrouped);
    if dx_direct {
        regroup_for_input_grad(w, geom, d, wt.as_chunks_mut().0);
    }
    let block_dx = |images: Range<usize>, staged: &mut [Lanes]| {
        block_input_grad((dy, wt.as_chunks().0, geom, d, batch), images, staged)
    };
    let direct = kernels::DirectGrads {
        dw: weight_grad_applies(geom).then_some(&part_dw as _),
        dx: dx_direct.then_some(&block_dx as _),
    };
    kernels::conv_backward(x, dy, w, geom, d, batch, grads, direct, buffers);
    buffers.give(wt);
}

/// Whether [`conv_backward`] computes the weight gradient directly: stride 1, no padding, one
/// group, kernel rows five taps wide, output channels a multiple of 16; and a CPU with fused
/// multiply-add (AVX-512, AVX2, aarch64).
fn weight_grad_applies(geom: &ConvGeom) -> bool {
    geom.groups == 1
        && geom.stride == (1, 1)
        && geom.padding == (0, 0)
        && geom.kernel.1 == KW
        && geom.out_channels.is_multiple_of(CHANNELS)
        && fma()
}

/// Whether [`conv_backward`] computes the input gradient directly: stride 1, no padding, one
/// group, at most [`KC`] output channels (one chain per value), and a CPU with AVX-512.
fn input_grad_applies(geom: &ConvGeom) -> bool {
    geom.groups == 1
        && geom.stride == (1, 1)
        && geom.padding == (0, 0)
        && geom.out_channels <= KC
        && avx512()
}

/// `w` (`[O, kg]`) regrouped for the direct input gradient: for each vector of 16 input
/// channels and each kernel tap, each output channel's weights for those 16 channels in one
/// vector (zeros past the last channel), `[C / 16, kh * kw, O]`.
fn regroup_for_input_grad(w: &[f32], geom: &ConvGeom, d: &ConvDims, wt: &mut [Lanes]) {
    let (outs, taps) = (geom.out_channels, d.kg / d.cg);
    wt.fill([0.0; LANES]);
    for (o, row) in w.chunks_exact(d.kg).enumerate() {
        for (k, &v) in row.iter().enumerate() {
            let (c, tap) = (k / taps, k % taps);
            wt[(c / LANES * taps + tap) * outs + o][c % LANES] = v;
        }
    }
}

/// Writes the input gradient of `images` into `staged` (`[images, C / 16, H * W, 16]`, see
/// [`kernels::BlockInputGrad`]) as the general path's product `dcols = wᵀ · dy` and col2im give
/// it, with no column matrix. The column-matrix values are the product's chains (one fused
/// multiply-add chain per value from zero, output channels in order), 16 input channels by 16
/// output pixels at a time, for one kernel tap; each pixel's 16 values are added, as one vector,
/// into the input pixel under the tap for those channels. Taps are taken in order, so every
/// input value receives its terms in col2im's order.
fn block_input_grad(
    (dy, wt, geom, d, batch): (&[f32], &[Lanes], &ConvGeom, &ConvDims, usize),
    images: Range<usize>,
    staged: &mut [Lanes],
) {
    let (p, outs, hw) = (d.pixels(), geom.out_channels, d.h * d.w);
    let (n, panels, vectors) = (batch * p, p.div_ceil(TILE), d.cg.div_ceil(LANES));
    // The image's output gradients packed in panels of 16 pixels, one run per output channel
    // (zeros past the last pixel), and where each output pixel's window starts in the input
    // plane.
    scratch(panels * outs * TILE, |packed: &mut [f32]| {
        scratch(p, |corners: &mut [usize]| {
            let packed = packed.as_chunks_mut().0;
            for (pixel, corner) in corners.iter_mut().enumerate() {
                *corner = pixel / d.wo * d.w + pixel % d.wo;
            }
            for (image, image_dx) in images.zip(staged.chunks_exact_mut(vectors * hw)) {
                for (v, panel) in packed.chunks_exact_mut(outs).enumerate() {
                    let pixels = v * TILE..((v + 1) * TILE).min(p);
                    for (o, run) in panel.iter_mut().enumerate() {
                        let values = &dy[o * n + image * p..][pixels.clone()];
                        match <&[f32; TILE]>::try_from(values) {
                            // A whole run: one fixed-size copy (a copy of unknown length would
                            // call memcpy).
                            Ok(whole) => *run = *whole,
                            Err(_) => {
                                run[..values.len()].copy_from_slice(values);
                                run[values.len()..].fill(0.0);
                            }
                        }
                    }
                }
                image_dx.fill([0.0; LANES]);
                input_grad_image(packed, wt, (geom, d, corners), image_dx);
            }
        })
    });
}

/// [`block_input_grad`] for one image: `packed` its output gradients, `image_dx` its input
/// gradient (`[C / 16, H * W, 16]`, zeros on entry).
#[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
fn input_grad_image(
    packed: &[Lanes],
    wt: &[Lanes],
    (geom, d, corners): (&ConvGeom, &ConvDims, &[usize]),
    image_dx: &mut [Lanes],
) {
    let (outs, hw, kw) = (geom.out_channels, d.h * d.w, geom.kernel.1);
    let taps = d.kg / d.cg;
    for (plane, wt) in image_dx
        .chunks_exact_mut(hw)
        .zip(wt.chunks_exact(taps * outs))
    {
        for (tap, a) in wt.chunks_exact(outs).enumerate() {
            let offset = tap / kw * d.w + tap % kw;
            let plane = &mut plane[offset..];
            for (b, corners) in packed.chunks_exact(outs).zip(corners.chunks(TILE)) {
                let sums = pixel_sums(b, a);
                match <&[usize; TILE]>::try_from(corners) {
                    // A whole panel, of known length: sixteen adds straight from the registers.
                    Ok(whole) => add_sums(plane, &sums, whole),
                    Err(_) => add_sums(plane, &sums, corners),
                }
            }
        }
    }
}

/// Adds each pixel's sums into the input pixel at its corner in `plane`.
#[inline(always)]
fn add_sums(plane: &mut [Lanes], sums: &[Lanes; TILE], corners: &[usize]) {
    for (sum, &corner) in sums.iter().zip(corners) {
        kernels::add_into(&mut plane[corner], sum);
    }
}

/// `Σ_o a[o][r] · b[o]` for each of 16 pixels `r`: one fused multiply-add chain each from zero,
/// output channels in order (the product `wᵀ · dy`'s chains: its factors swapped, the same
/// values).
#[inline(always)]
fn pixel_sums(a: &[[f32; TILE]], b: &[Lanes]) -> [Lanes; TILE] {
    let zero = [0.0; LANES];
    let (mut c0, mut c1, mut c2, mut c3) = (zero, zero, zero, zero);
    let (mut c4, mut c5, mut c6, mut c7) = (zero, zero, zero, zero);
    let (mut c8, mut c9, mut c10, mut c11) = (zero, zero, zero, zero);
    let (mut c12, mut c13, mut c14, mut c15) = (zero, zero, zero, zero);
    for (av, bv) in a.iter().zip(b) {
        fma_rows!(av, bv; c0: 0, c1: 1, c2: 2, c3: 3, c4: 4, c5: 5, c6: 6, c7: 7, c8: 8,
            c9: 9, c10: 10, c11: 11, c12: 12, c13: 13, c14: 14, c15: 15);
    }
    [
        c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15,
    ]
}

/// Adds the weight gradient of a part's `images` into `dw_part` (`[O, kg]`, zeros on entry) as
/// the general path's products `dw_part += dy_block · cols_blockᵀ` do, block by block of
/// [`kernels::block_images`]: for each run of [`KC`] pixels of a block, one fused multiply-add
/// chain per weight from zero, pixels in order, then added to the part's sum. The sum is kept
/// transposed (`[O / N, kg, N]`: a kernel's sums are added as vectors) and written out once.
fn part_weight_grad<const N: usize>(
    (x, dy, geom, d, batch): (&[f32], &[f32], &ConvGeom, &ConvDims, usize),
    images: Range<usize>,
    dw_part: &mut [f32],
    kernels: RowGrads<N>,
) {
    let (p, hw, kh) = (d.pixels(), d.h * d.w, geom.kernel.0);
    let (n, per_block) = (batch * p, kernels::block_images(d));
    // The transposed sum; a run's output gradients for a group of channels, transposed (a
    // pixel's values in one run); a call's sums (five per kernel row); and each pixel's window
    // corner in its image's first input plane.
    let sizes = [d.kg * geom.out_channels, KC * N, kernels.rows * KW * N];
    scratch(sizes.iter().sum(), |space: &mut [f32]| {
        let (total, rest) = space.split_at_mut(sizes[0]);
        let (dyt, sums) = rest.split_at_mut(sizes[1]);
        let (total, sums) = (total.as_chunks_mut::<N>().0, sums.as_chunks_mut::<N>().0);
        total.fill([0.0; N]);
        scratch(KC, |corners: &mut [usize]| {
            let blocks = (images.start..images.end).step_by(per_block);
            let chunks = blocks.flat_map(|first| {
                let pixels = first * p..(first + per_block).min(images.end) * p;
                pixels
                    .clone()
                    .step_by(KC)
                    .map(move |s| s..(s + KC).min(pixels.end))
            });
            for chunk in chunks {
                let corners = &mut corners[..chunk.len()];
                let (mut image, mut oy, mut ox) = (chunk.start / p, chunk.start % p / d.wo, 0);
                ox += chunk.start % d.wo;
                for corner in corners.iter_mut() {
                    *corner = image * hw + oy * d.w + ox;
                    ox += 1;
                    if ox == d.wo {
                        (oy, ox) = (oy + 1, 0);
                        if oy == d.ho {
                            (image, oy) = (image + 1, 0);
                        }
                    }
                }
                let dyt = &mut dyt.as_chunks_mut::<N>().0[..chunk.len()];
                for (group, total) in total.chunks_exact_mut(d.kg).enumerate() {
                    let rows =
                        std::array::from_fn(|lane| &dy[(group * N + lane) * n..][chunk.clone()]);
                    transpose(&rows, dyt);
                    for c in 0..d.c {
                        // Kernel rows `kernels.rows` at a time, then one at a time.
                        let mut i = 0;
                        while i < kh {
                            let (rows, grad) = if i + kernels.rows <= kh {
                                (kernels.rows, kernels.many)
                            } else {
                                (1, kernels.one)
                            };
                            let sums = &mut sums[..rows * KW];
                            grad(&x[c * batch * hw + i * d.w..], d.w, dyt, corners, sums);
                            let k = (c * kh + i) * KW;
                            for (total, sums) in total[k..k + rows * KW].iter_mut().zip(&*sums) {
                                total.iter_mut().zip(sums).for_each(|(t, s)| *t += s);
                            }
                            i += rows;
                        }
                    }
                }
            }
        });
        for (group, total) in total.chunks_exact(d.kg).enumerate() {
            for (k, sums) in total.iter().enumerate() {
                for (lane, &s) in sums.iter().enumerate() {
                    dw_part[(group * N + lane) * d.kg + k] = s;
                }
            }
        }
    });
}

/// A weight-gradient kernel: kernel rows of `x` (`w` apart) by the transposed output gradients
/// of a run of pixels (`dyt`, windows at `corners`), into `sums` (five taps per row):
/// `Σ x[corner + row · w + j] · dy[pixel]` over the pixels, one fused multiply-add chain each
/// from zero, pixels in order.
type RowGrad<const N: usize> = fn(&[f32], usize, &[[f32; N]], &[usize], &mut [[f32; N]]);

/// The weight-gradient kernels for `N` output channels: `many` for `rows` kernel rows at once
/// (its accumulators fill the vector registers, as one row's five cannot), `one` for a row.
#[derive(Clone, Copy)]
struct RowGrads<const N: usize> {
    rows: usize,
    many: RowGrad<N>,
    one: RowGrad<N>,
}

impl RowGrads<PAIR> {
    /// 32 channels: two rows (20 accumulators of 16 lanes).
    const PAIRS: RowGrads<PAIR> = RowGrads {
        rows: 2,
        many: rows2_grad32,
        one: row_grad32,
    };
}

impl RowGrads<CHANNELS> {
    /// 16 channels: five rows (25 accumulators: a whole 5x5 kernel).
    const SINGLES: RowGrads<CHANNELS> = RowGrads {
        rows: 5,
        many: rows5_grad16,
        one: row_grad16,
    };

    /// 16 channels a row at a time with AVX2 (10 of its 16 vector registers) or on aarch64.
    const AVX2: RowGrads<CHANNELS> = RowGrads {
        rows: 1,
        many: row_grad16_avx2,
        one: row_grad16_avx2,
    };
}

/// Five taps of the kernel row at `x` (`xs(corner)` for a pixel's window corner).
macro_rules! taps {
    ($x:expr, $corner:expr) => {{
        let taps: &[f32; KW] = $x[$corner..$corner + KW].try_into().expect("a row of taps");
        taps
    }};
}

/// [`RowGrad`] for one row of 32 channels.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
fn row_grad32(
    x: &[f32],
    _: usize,
    dyt: &[[f32; PAIR]],
    corners: &[usize],
    out: &mut [[f32; PAIR]],
) {
    row_grad(x, dyt, corners, out)
}

/// [`RowGrad`] for one row of 16 channels.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
fn row_grad16(
    x: &[f32],
    _: usize,
    dyt: &[[f32; CHANNELS]],
    corners: &[usize],
    out: &mut [[f32; CHANNELS]],
) {
    row_grad(x, dyt, corners, out)
}

/// [`RowGrad`] for one row of 16 channels, compiled for AVX2.
#[multiversion(targets("x86_64+avx2+fma"))]
fn row_grad16_avx2(
    x: &[f32],
    _: usize,
    dyt: &[[f32; CHANNELS]],
    corners: &[usize],
    out: &mut [[f32; CHANNELS]],
) {
    row_grad(x, dyt, corners, out)
}

/// One kernel row's five taps by `N` channels.
#[inline(always)]
fn row_grad<const N: usize>(x: &[f32], dyt: &[[f32; N]], corners: &[usize], out: &mut [[f32; N]]) {
    let zero = [0.0; N];
    let (mut a0, mut a1, mut a2, mut a3, mut a4) = (zero, zero, zero, zero, zero);
    for (g, &corner) in dyt.iter().zip(corners) {
        fma_rows!(taps!(x, corner), g; a0: 0, a1: 1, a2: 2, a3: 3, a4: 4);
    }
    out.copy_from_slice(&[a0, a1, a2, a3, a4]);
}

/// [`RowGrad`] for two rows of 32 channels.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
fn rows2_grad32(
    x: &[f32],
    w: usize,
    dyt: &[[f32; PAIR]],
    corners: &[usize],
    out: &mut [[f32; PAIR]],
) {
    let zero = [0.0; PAIR];
    let (mut a0, mut a1, mut a2, mut a3, mut a4) = (zero, zero, zero, zero, zero);
    let (mut b0, mut b1, mut b2, mut b3, mut b4) = (zero, zero, zero, zero, zero);
    for (g, &corner) in dyt.iter().zip(corners) {
        fma_rows!(taps!(x, corner), g; a0: 0, a1: 1, a2: 2, a3: 3, a4: 4);
        fma_rows!(taps!(x, corner + w), g; b0: 0, b1: 1, b2: 2, b3: 3, b4: 4);
    }
    out.copy_from_slice(&[a0, a1, a2, a3, a4, b0, b1, b2, b3, b4]);
}

/// [`RowGrad`] for five rows of 16 channels.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
fn rows5_grad16(
    x: &[f32],
    w: usize,
    dyt: &[[f32; CHANNELS]],
    corners: &[usize],
    out: &mut [[f32; CHANNELS]],
) {
    let zero = [0.0; CHANNELS];
    let (mut a0, mut a1, mut a2, mut a3, mut a4) = (zero, zero, zero, zero, zero);
    let (mut b0, mut b1, mut b2, mut b3, mut b4) = (zero, zero, zero, zero, zero);
    let (mut c0, mut c1, mut c2, mut c3, mut c4) = (zero, zero, zero, zero, zero);
    let (mut d0, mut d1, mut d2, mut d3, mut d4) = (zero, zero, zero, zero, zero);
    let (mut e0, mut e1, mut e2, mut e3, mut e4) = (zero, zero, zero, zero, zero);
    for (g, &corner) in dyt.iter().zip(corners) {
        fma_rows!(taps!(x, corner), g; a0: 0, a1: 1, a2: 2, a3: 3, a4: 4);
        fma_rows!(taps!(x, corner + w), g; b0: 0, b1: 1, b2: 2, b3: 3, b4: 4);
        fma_rows!(taps!(x, corner + 2 * w), g; c0: 0, c1: 1, c2: 2, c3: 3, c4: 4);
        fma_rows!(taps!(x, corner + 3 * w), g; d0: 0, d1: 1, d2: 2, d3: 3, d4: 4);
        fma_rows!(taps!(x, corner + 4 * w), g; e0: 0, e1: 1, e2: 2, e3: 3, e4: 4);
    }
    out.copy_from_slice(&[
        a0, a1, a2, a3, a4, b0, b1, b2, b3, b4, c0, c1, c2, c3, c4, d0, d1, d2, d3, d4, e0, e1, e2,
        e3, e4,
    ]);
}

/// Every tile of 16 output channels: `out` their planes, `wt` their weights, one run of 16 per
/// tap. A tile's 16 pixels are consecutive in the output; in the input they are two runs of
/// eight, each within one row.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
fn tiles(x: &[f32], wt: &[[f32; CHANNELS]], taps: &[usize], d: &ConvDims, out: &mut [&mut [f32]]) {
    // The largest tap offset: clamping to it (a no-op) tells the compiler every run is in
    // bounds of the slices below, so the loop has no bounds checks.
    let last_tap = taps.iter().copied().max().unwrap_or(0);
    for start in (0..d.ho * d.wo).step_by(TILE) {
        // Where an output pixel's window starts in the input plane.
        let corner = |pixel: usize| pixel / d.wo * d.w + pixel % d.wo;
        let (first, second) = (corner(start), corner(start + HALF));
        let xa = &x[first..first + last_tap + HALF];
        let xb = &x[second..second + last_tap + HALF];
        // Taps in blocks of KC, each block's sums added to the earlier blocks' total, as the
        // general path's matrix product adds them: both give the same value bit for bit.
        for (block, (wt, taps)) in wt.chunks(KC).zip(taps.chunks(KC)).enumerate() {
            let sums = tile_sums(xa, xb, wt, taps, last_tap);
            for (row, sums) in out.iter_mut().zip(&sums) {
                let run = &mut row[start..start + TILE];
                if block == 0 {
                    run.copy_from_slice(sums);
                } else {
                    run.iter_mut().zip(sums).for_each(|(v, s)| *v += s);
                }
            }
        }
    }
}

/// A tile's sums over `taps`: one fused multiply-add chain per output, from zero, taps in order.
#[inline(always)]
fn tile_sums(
    xa: &[f32],
    xb: &[f32],
    wt: &[[f32; CHANNELS]],
    taps: &[usize],
    last_tap: usize,
) -> [[f32; TILE]; CHANNELS] {
    // One accumulator per channel, each a vector of the tile's pixels: separate variables, so
    // that they live in registers (an array of them is kept in memory).
    let zero = [0.0; TILE];
    let (mut c0, mut c1, mut c2, mut c3) = (zero, zero, zero, zero);
    let (mut c4, mut c5, mut c6, mut c7) = (zero, zero, zero, zero);
    let (mut c8, mut c9, mut c10, mut c11) = (zero, zero, zero, zero);
    let (mut c12, mut c13, mut c14, mut c15) = (zero, zero, zero, zero);
    for (ws, &tap) in wt.iter().zip(taps) {
        let tap = tap.min(last_tap);
        let mut xs = [0.0; TILE];
        xs[..HALF].copy_from_slice(&xa[tap..tap + HALF]);
        xs[HALF..].copy_from_slice(&xb[tap..tap + HALF]);
        fma_row(&mut c0, ws[0], &xs);
        fma_row(&mut c1, ws[1], &xs);
        fma_row(&mut c2, ws[2], &xs);
        fma_row(&mut c3, ws[3], &xs);
        fma_row(&mut c4, ws[4], &xs);
        fma_row(&mut c5, ws[5], &xs);
        fma_row(&mut c6, ws[6], &xs);
        fma_row(&mut c7, ws[7], &xs);
        fma_row(&mut c8, ws[8], &xs);
        fma_row(&mut c9, ws[9], &xs);
        fma_row(&mut c10, ws[10], &xs);
        fma_row(&mut c11, ws[11], &xs);
        fma_row(&mut c12, ws[12], &xs);
        fma_row(&mut c13, ws[13], &xs);
        fma_row(&mut c14, ws[14], &xs);
        fma_row(&mut c15, ws[15], &xs);
    }
    [
        c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    /// The convolution in f64, summed plainly: the reference both paths are held to.
    fn reference(x: &[f32], w: &[f32], geom: &ConvGeom, d: &ConvDims, batch: usize) -> Vec<f64> {
        let (kh, kw) = geom.kernel;
        let mut y = vec![0.0; geom.out_channels * batch * d.pixels()];
        for (o, plane) in y.chunks_exact_mut(batch * d.pixels()).enumerate() {
            for (q, v) in plane.iter_mut().enumerate() {
                let (b, oh, ow) = (q / d.pixels(), q % d.pixels() / d.wo, q % d.wo);
                for k in 0..d.kg {
                    let (c, i, j) = (k / (kh * kw), k / kw % kh, k % kw);
                    let xv = x[((c * batch + b) * d.h + oh + i) * d.w + ow + j];
                    *v += f64::from(xv) * f64::from(w[o * d.kg + k]);
                }
            }
        }
        y
    }

    #[test]
    fn direct_weight_gradients_equal_the_im2col_ones() {
        // lenet's second convolution (a 2-image block of 128 pixels), one whose blocks are
        // longer than a chain of KC pixels, with two pairs of channel vectors, lenet's first
        // (16 channels: one vector at a time), one with two vectors of input channels and more
        // than KC output channels (input gradient through the product), and one with 35-pixel
        // outputs (a panel of pixels cut short) and 5 input channels (a vector of them cut
        // short).
        for (c, h, w, o, batch) in [
            (16, 12, 12, 32, 5),
            (3, 20, 20, 64, 3),
            (1, 28, 28, 16, 6),
            (32, 12, 12, 288, 2),
            (5, 9, 11, 16, 3),
        ] {
            let geom = ConvGeom {
                in_channels: c,
                out_channels: o,
                kernel: (5, 5),
                stride: (1, 1),
                padding: (0, 0),
                groups: 1,
            };
            let d = ConvDims::new(&geom, &[c, h, w], &[o, h - 4, w - 4]);
            let x: Vec<f32> = (0..c * batch * h * w)
                .map(|i| ((i * 7919 % 2003) as f32 / 1001.0) - 1.0)
                .collect();
            let dy: Vec<f32> = (0..o * batch * d.pixels())
                .map(|i| ((i * 104_729 % 997) as f32 / 498.0) - 1.0)
                .collect();
            let wt: Vec<f32> = (0..o * d.kg)
                .map(|i| ((i * 7919 % 1009) as f32 / 504.0) - 1.0)
                .collect();
            // Outputs and buffers start as garbage: every value must be written.
            let mut buffers = Pool::default();
            buffers.give(vec![f32::NAN; 4 * o * d.kg + x.len()]);
            let (mut direct, mut general) = (vec![f32::NAN; o * d.kg], vec![f32::NAN; o * d.kg]);
            let (mut dx_direct, mut dx_general) =
                (vec![f32::NAN; x.len()], vec![f32::NAN; x.len()]);
            // The AVX-512 kernels, then the AVX2 ones (each runs on any CPU: without the
            // instructions it was built for, in a plain build).
            let avx2 = std::sync::atomic::AtomicBool::new(false);
            let part_dw = |images: Range<usize>, dw_part: &mut [f32]| {
                let args = (&x[..], &dy[..], &geom, &d, batch);
                match (avx2.load(Relaxed), o % PAIR == 0) {
                    (false, true) => part_weight_grad(args, images, dw_part, RowGrads::PAIRS),
                    (false, false) => part_weight_grad(args, images, dw_part, RowGrads::SINGLES),
                    (true, _) => part_weight_grad(args, images, dw_part, RowGrads::AVX2),
                }
            };
            let mut regrouped = vec![[f32::NAN; LANES]; c.div_ceil(LANES) * 25 * o];
            regroup_for_input_grad(&wt, &geom, &d, &mut regrouped);
            let block_dx = |images: Range<usize>, staged: &mut [Lanes]| {
                block_input_grad((&dy[..], &regrouped[..], &geom, &d, batch), images, staged)
            };
            let both = kernels::DirectGrads {
                dw: Some(&part_dw),
                dx: (o <= KC).then_some(&block_dx as _),
            };
            let paths = [
                (&mut direct, &mut dx_direct, both),
                (
                    &mut general,
                    &mut dx_general,
                    kernels::DirectGrads::default(),
                ),
            ];
            for (dw, dx, block_grads) in paths {
                let grads = (&mut dw[..], Some(&mut dx[..]));
                kernels::conv_backward(
                    &x,
                    &dy,
                    &wt,
                    &geom,
                    &d,
                    batch,
                    grads,
                    block_grads,
                    &mut buffers,
                );
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            if avx512() {
                assert!(
                    bits(&direct) == bits(&general),
                    "{c}x{h}x{w} -> {o}: weight gradients differ"
                );
                assert!(
                    bits(&dx_direct) == bits(&dx_general),
                    "{c}x{h}x{w} -> {o}: input gradients differ"
                );
            }
            // The AVX2 kernels' weight gradient is the same too.
            avx2.store(true, Relaxed);
            let mut dw_avx2 = vec![f32::NAN; o * d.kg];
            let only_dw = kernels::DirectGrads {
                dw: Some(&part_dw),
                dx: None,
            };
            let grads = (&mut dw_avx2[..], None);
            kernels::conv_backward(&x, &dy, &wt, &geom, &d, batch, grads, only_dw, &mut buffers);
            if fma() {
                assert!(
                    bits(&dw_avx2) == bits(&general),
                    "{c}x{h}x{w} -> {o}: AVX2 weight gradients differ"
                );
            }
            // The input gradient: dx[c][b, y, x] = Σ w[o][c, i, j] · dy[o][b, y - i, x - j].
            let (kh, kw) = geom.kernel;
            for dx in [&dx_direct, &dx_general] {
                for (index, &got) in dx.iter().enumerate() {
                    let (ci, b, y, xx) = (
                        index / (batch * h * w),
                        index / (h * w) % batch,
                        index / w % h,
                        index % w,
                    );
                    let mut want = 0.0f64;
                    for (oc, (i, j)) in
                        (0..o).flat_map(|oc| (0..kh * kw).map(move |t| (oc, (t / kw, t % kw))))
                    {
                        if y >= i && xx >= j && y - i < d.ho && xx - j < d.wo {
                            let q = b * d.pixels() + (y - i) * d.wo + xx - j;
                            want += f64::from(wt[oc * d.kg + (ci * kh + i) * kw + j])
                                * f64::from(dy[oc * batch * d.pixels() + q]);
                        }
                    }
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-5 * (o * kh * kw) as f64,
                        "dx[{index}]: {got} vs {want}"
                    );
                }
            }
            // And both are the gradient: dw[o][k] = Σ dy[o][q] · cols[k][q].
            for (ok, &got) in general.iter().enumerate() {
                let (oc, k) = (ok / d.kg, ok % d.kg);
                let (ci, i, j) = (k / (kh * kw), k / kw % kh, k % kw);
                let mut want = 0.0f64;
                for q in 0..batch * d.pixels() {
                    let (b, oh, ow) = (q / d.pixels(), q % d.pixels() / d.wo, q % d.wo);
                    let xv = x[((ci * batch + b) * h + oh + i) * w + ow + j];
                    want += f64::from(xv) * f64::from(dy[oc * batch * d.pixels() + q]);
                }
                let tolerance = 1e-6 * (batch * d.pixels()) as f64;
                assert!(
                    (f64::from(got) - want).abs() <= tolerance,
                    "dw[{ok}]: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn direct_and_im2col_convolutions_agree_with_the_reference() {
        // lenet's two convolutions, a 16-wide output, and two groups of 16 channels.
        let cases = [
            (1, 28, 28, 16, 5, 3),
            (16, 12, 12, 32, 5, 2),
            (3, 18, 18, 16, 3, 2),
            (2, 10, 10, 48, 3, 1),
        ];
        for (c, h, w, o, k, batch) in cases {
            let geom = ConvGeom {
                in_channels: c,
                out_channels: o,
                kernel: (k, k),
                stride: (1, 1),
                padding: (0, 0),
                groups: 1,
            };
            let d = ConvDims::new(&geom, &[c, h, w], &[o, h - k + 1, w - k + 1]);
            assert!(applies(&geom, &d) || !avx512(), "{c}x{h}x{w} -> {o}");
            let x: Vec<f32> = (0..c * batch * h * w)
                .map(|i| ((i * 7919 % 2003) as f32 / 1001.0) - 1.0)
                .collect();
            let wt: Vec<f32> = (0..o * d.kg)
                .map(|i| ((i * 104_729 % 997) as f32 / 498.0) - 1.0)
                .collect();
            let want = reference(&x, &wt, &geom, &d, batch);
            // Both start as garbage: every value must be written.
            let (mut direct, mut im2col) = (vec![f32::NAN; want.len()], vec![f32::NAN; want.len()]);
            direct_conv_forward(&x, &wt, &geom, &d, batch, &mut direct);
            kernels::conv_forward(&x, &wt, &geom, &d, batch, &mut im2col);
            if avx512() {
                // Same products, same order, same blocks: the same values.
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(
                    bits(&direct) == bits(&im2col),
                    "{c}x{h}x{w} -> {o}: paths differ"
                );
            }
            for (path, got) in [("direct", &direct), ("im2col", &im2col)] {
                assert_eq!(got.len(), want.len());
                for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                    // Terms are at most 1 in size: rounding error grows with their count.
                    let tolerance = 1e-6 * d.kg as f64;
                    assert!(
                        (f64::from(g) - r).abs() <= tolerance,
                        "{path} [{i}]: {g} vs {r}"
                    );
                }
            }
        }
    }
}
