//! Depthwise convolution (one input channel per output channel): channels-last, sixteen channels
//! per vector, each tap a product of u8 codes and i8 weights in i16 (at most 255 · 128 = 32640,
//! so exact) added into i32 accumulators. A GEMM would see one output channel per group and fill
//! one lane in eight.

use cranelift_codegen::ir::types::{F32X4, I16X8, I32X4, I8X16};
use cranelift_codegen::ir::{InstBuilder, Value};

use super::builder::{accumulators_bounded, chw, flags, Emitter, Order, Tensor};
use crate::int8::QWeights;
use crate::ir::ConvGeom;
use crate::quant::numerics::{requant_multiplier, QParams};

/// Channels per vector.
const LANES: usize = 16;

/// Whether a convolution is depthwise: one input and one output channel per group.
pub(super) fn is_depthwise(geom: &ConvGeom) -> bool {
    geom.groups > 1 && geom.groups == geom.in_channels && geom.groups == geom.out_channels
}

impl Emitter<'_, '_> {
    /// `y[p][c] = requant(Σ_tap (x[p + tap][c] - zp) · w[c][tap] + bias[c])` on channels-last
    /// codes, as the interpreter's convolution computes it: the input zero point is folded into
    /// the bias (`Σ x·w - zp·Σ w`), padding taps hold the zero point.
    pub(super) fn depthwise(
        &mut self,
        x: Tensor,
        in_shape: &[usize],
        out_shape: &[usize],
        geom: &ConvGeom,
        w: &QWeights,
        yq: QParams,
    ) -> Tensor {
        let (c, h, wd) = chw(in_shape);
        let (_, ho, wo) = chw(out_shape);
        let xq = x.q.expect("u8 input");
        let (xp, _, wp) = self.pad_hwc(x, (c, h, wd), geom.padding, xq.zero_point);
        let y = self.tensor(c * ho * wo, Some(yq), Order::Hwc(c, ho, wo));
        let (kh, kw) = geom.kernel;
        let taps = kh * kw;
        let cp = c.next_multiple_of(LANES);
        // Weights widened to i16, tap-major: `[tap][channel]`, zero past the last channel.
        let weight = |ch: usize, tap: usize| -> i16 {
            if ch < c {
                w.weight[ch * taps + tap] as i16
            } else {
                0
            }
        };
        let wbytes: Vec<u8> = (0..taps)
            .flat_map(|t| (0..cp).map(move |ch| (t, ch)))
            .flat_map(|(t, ch)| weight(ch, t).to_le_bytes())
            .collect();
        let bias: Vec<i32> = (0..cp)
            .map(|ch| {
                if ch >= c {
                    return 0;
                }
                let sum: i32 = (0..taps).map(|t| weight(ch, t) as i32).sum();
                w.bias[ch] - xq.zero_point * sum
            })
            .collect();
        let mult: Vec<f32> = (0..cp)
            .map(|ch| {
                if ch < c {
                    requant_multiplier(xq.scale, w.scale(ch), yq.scale)
                } else {
                    1.0
                }
            })
            .collect();
        let weights = self.constant(&wbytes);
        let bias = self.constant(&Self::i32_bytes(bias));
        let mult = self.constant(&Self::f32_bytes(mult));
        let bounded = accumulators_bounded(
            c,
            &|ch| w.bias[ch],
            &|ch| w.weight[ch * taps..(ch + 1) * taps].to_vec(),
            &|ch| requant_multiplier(xq.scale, w.scale(ch), yq.scale),
        );
        let requant = self.requant(yq.zero_point, w.clamp, bounded);
        let (sh, sw) = geom.stride;
        self.for_samples(|e, s| {
            let xs = e.at(xp.ptr, s, xp.size);
            let ys = e.at(y.ptr, s, y.size);
            e.for_const(ho, |e, oh| {
                let row = e.b.ins().imul_imm_s(oh, (sh * wp * c) as i64);
                let row = e.b.ins().iadd(xs, row);
                e.for_const(wo, |e, ow| {
                    let px = e.at(row, ow, sw * c);
                    let out = e.b.ins().imul_imm_s(oh, wo as i64);
                    let out = e.b.ins().iadd(out, ow);
                    let out = e.at(ys, out, c);
                    e.for_const(cp / LANES, |e, chunk| {
                        let x0 = e.at(px, chunk, LANES);
                        let w0 = e.at(weights, chunk, 2 * LANES);
                        let b0 = e.at(bias, chunk, 4 * LANES);
                        let mut accs: Vec<Value> = (0..4)
                            .map(|k: i32| e.b.ins().load(I32X4, flags(), b0, 16 * k))
                            .collect();
                        for i in 0..kh {
                            for j in 0..kw {
                                let t = i * kw + j;
                                let off = ((i * wp + j) * c) as i32;
                                let xv = e.b.ins().load(I8X16, flags(), x0, off);
                                let woff = (t * cp * 2) as i32;
                                let products = [
                                    (e.b.ins().uwiden_low(xv), woff),
                                    (e.b.ins().uwiden_high(xv), woff + 16),
                                ]
                                .map(|(xh, wo)| {
                                    let wv = e.b.ins().load(I16X8, flags(), w0, wo);
                                    e.b.ins().imul(xh, wv)
                                });
                                for (k, p) in products.into_iter().enumerate() {
                                    let lo = e.b.ins().swiden_low(p);
                                    let hi = e.b.ins().swiden_high(p);
                                    accs[2 * k] = e.b.ins().iadd(accs[2 * k], lo);
                                    accs[2 * k + 1] = e.b.ins().iadd(accs[2 * k + 1], hi);
                                }
                            }
                        }
                        let m0 = e.at(mult, chunk, 4 * LANES);
                        let q: Vec<Value> = accs
                            .iter()
                            .enumerate()
                            .map(|(k, &acc)| {
                                let m = e.b.ins().load(F32X4, flags(), m0, 16 * k as i32);
                                e.requantize(acc, m, &requant)
                            })
                            .collect();
                        let codes = e.narrow([q[0], q[1], q[2], q[3]]);
                        let codes = e.clamp_packed(codes, &requant);
                        // Past the last channel this runs into the next pixel, written later,
                        // or into the scratch region's slack.
                        let to = e.at(out, chunk, LANES);
                        e.b.ins().store(flags(), codes, to, 0);
                    });
                });
            });
        });
        y
    }
}
