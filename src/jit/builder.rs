//! The toolkit every lowering uses: the [`Emitter`] (a Cranelift function builder with the
//! model's constants and scratch layout), tensors and where their memory lives, loops, copies and
//! the vector forms of the shared numerics. It knows no op; `lower.rs` walks the graph and
//! `gemm.rs` emits the quantized GEMMs, both with these pieces.
//!
//! Memory safety: the caller's input and output are read and written element-exactly, scratch
//! regions have slack for whole-vector loads and stores past a tensor's end (`Memory`; tests put
//! every buffer against a guard page). Sizes come from a verified graph, whose every dimension
//! [`crate::limits`] bounds, so none of the arithmetic here can wrap.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I16X8, I32, I32X4, I64, I8, I8X16};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

use crate::quant::numerics::QParams;

/// Samples processed together by every op.
pub const TILE: usize = 32;
/// Bytes after every scratch region that vector loads and stores may run over into.
const SLACK: usize = 64;
/// Longest copy emitted as straight-line code: the code for an op stays proportional to its
/// kernel, not to its input's size.
const UNROLLED_COPY: usize = 256;
/// Output channels per weight block of a GEMM (two i32x4 accumulators).
pub(super) const BLOCK: usize = 8;

/// How a GEMM multiplies u8 activations by i8 weights. Every form is exact; they differ in which
/// instructions Cranelift can fold them into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotProduct {
    /// Four u8·i8 products per i32 lane, signed operand first: the tree Cranelift folds into one
    /// `vpdpbusd` on x86 with AVX-VNNI or AVX512-VNNI (and computes exactly elsewhere).
    Vnni,
    /// The same tree with the unsigned operand first: one `usdot` on aarch64 with FEAT_I8MM.
    Usdot,
    /// Activations shifted to signed (`code ^ 0x80` = `code - 128`, folded into the bias), four
    /// i8·i8 products per lane: one `sdot` on aarch64 with FEAT_DotProd.
    Sdot,
    /// Activations widened to i16 once, weights stored as i16, two products per lane with
    /// `pmaddwd`: about twice as fast as the tree's generic lowering on x86 without VNNI.
    I16,
    /// x86 without VNNI: `pmaddubsw` (u8·i8 pairs summed in i16, saturating) then `pmaddwd`
    /// by ones, used only when every activation code of a GEMM call is below 128, which a check
    /// at run time establishes: then no pair sum reaches the i16 limit (2·127·128 < 32768) and
    /// the result is exact. Otherwise that call runs the [`DotProduct::I16`] form.
    Pairs,
}

impl std::fmt::Display for DotProduct {
    /// The form as a user reads it: its instruction and the CPU feature that has it.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            DotProduct::Vnni => "vpdpbusd (VNNI)",
            DotProduct::Usdot => "usdot (i8mm)",
            DotProduct::Sdot => "sdot (dotprod)",
            DotProduct::I16 => "pmaddwd (i16 pairs)",
            DotProduct::Pairs => "pmaddubsw (u8 x i8 pairs)",
        })
    }
}

impl DotProduct {
    /// Columns one dot step consumes per output channel.
    pub(super) fn columns(self) -> usize {
        match self {
            DotProduct::I16 => 2,
            _ => 4,
        }
    }

    /// The GEMM's register tiles. Each block of channels is two accumulators; a tile's
    /// accumulators are independent, enough to keep two dot instructions per cycle busy at a
    /// latency of four or five cycles.
    pub(super) fn tile(self) -> Tile {
        match self {
            // Twelve accumulators, two weight vectors and a broadcast: 15 of x86's 16 vector
            // registers.
            DotProduct::Vnni => Tile {
                rows: 6,
                blocks: 1,
                row_blocks: 6,
            },
            // aarch64 has 32: 24 accumulators and four weight vectors, so each broadcast (a
            // `dup`, which takes a vector pipe as `sdot` does) feeds four dot instructions.
            DotProduct::Usdot | DotProduct::Sdot => Tile {
                rows: 6,
                blocks: 2,
                row_blocks: 6,
            },
            // `pmaddubsw` and the i16 form need temporaries for their products.
            DotProduct::I16 | DotProduct::Pairs => Tile {
                rows: 4,
                blocks: 1,
                row_blocks: 4,
            },
        }
    }

    /// The value the GEMM subtracts from each activation code (the input zero point, plus 128
    /// where the activations are shifted to signed).
    pub(super) fn offset(self, zero_point: i32) -> i32 {
        match self {
            DotProduct::Sdot => zero_point - 128,
            _ => zero_point,
        }
    }

    /// Products one [`DotProduct::emit`] computes (per 128-bit vector).
    pub fn macs_per_step(self) -> usize {
        4 * self.columns()
    }

    /// `acc + ` the dot products of 16-byte vectors `w` (weights) and `a` (activations) per
    /// i32 lane: four u8·i8 products per lane in the tree Cranelift folds into one `vpdpbusd`
    /// (x86 VNNI), `usdot` or `sdot` (aarch64), and computes exactly elsewhere; two i16
    /// products per lane (`pmaddwd`) for [`DotProduct::I16`]; `pmaddubsw` pairs summed by
    /// `pmaddwd` for [`DotProduct::Pairs`].
    pub(super) fn emit(self, b: &mut FunctionBuilder, w: Value, a: Value, acc: Value) -> Value {
        let s = match self {
            DotProduct::I16 => {
                let little =
                    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
                let a = b.ins().bitcast(I16X8, little, a);
                let w = b.ins().bitcast(I16X8, little, w);
                let (wl, al) = (b.ins().swiden_low(w), b.ins().swiden_low(a));
                let lo = b.ins().imul(al, wl);
                let (wh, ah) = (b.ins().swiden_high(w), b.ins().swiden_high(a));
                let hi = b.ins().imul(ah, wh);
                b.ins().iadd_pairwise(lo, hi)
            }
            DotProduct::Pairs => {
                let pairs = b.ins().x86_pmaddubsw(w, a);
                widen_pairs(b, pairs)
            }
            DotProduct::Vnni | DotProduct::Usdot | DotProduct::Sdot => {
                let (wl, wh) = (b.ins().swiden_low(w), b.ins().swiden_high(w));
                let (al, ah) = match self {
                    DotProduct::Sdot => (b.ins().swiden_low(a), b.ins().swiden_high(a)),
                    _ => (b.ins().uwiden_low(a), b.ins().uwiden_high(a)),
                };
                // The operand order each target's rule matches: x86 signed first, aarch64
                // unsigned first.
                let (lo, hi) = match self {
                    DotProduct::Vnni => (b.ins().imul(wl, al), b.ins().imul(wh, ah)),
                    _ => (b.ins().imul(al, wl), b.ins().imul(ah, wh)),
                };
                let lo = widen_pairs(b, lo);
                let hi = widen_pairs(b, hi);
                b.ins().iadd_pairwise(lo, hi)
            }
        };
        b.ins().iadd(s, acc)
    }
}

/// 1.5·2^23: added to an f32 of magnitude up to 2^22, it leaves the value rounded half to even
/// in the sum's low mantissa bits.
const ROUNDING: f32 = 12_582_912.0;

/// A requantization's constants ([`Emitter::requant`]).
pub(super) struct Requant {
    consts: Value,
    bounded: bool,
    clamp: (i32, i32),
}

/// Whether every accumulator times its multiplier stays below 2^21 in magnitude, whatever the
/// input codes: `|bias| + 255·Σ|w|` per channel (the most `bias + Σ (a - zp)·w` can reach),
/// times the multiplier. Then [`Emitter::requantize`] needs no clamp before rounding.
pub(super) fn accumulators_bounded(
    channels: usize,
    bias: &dyn Fn(usize) -> i32,
    weights: &dyn Fn(usize) -> Vec<i8>,
    mult: &dyn Fn(usize) -> f32,
) -> bool {
    (0..channels).all(|o| {
        let sum: i64 = weights(o).iter().map(|&w| (w as i64).abs()).sum();
        let bound = (bias(o) as i64).abs() + 255 * sum;
        (bound as f64) * (mult(o) as f64) < (1 << 21) as f64
    })
}

/// A GEMM's register tile: `rows` rows times `blocks` blocks of channels when the rows are
/// several, one row times `row_blocks` blocks when there is one.
#[derive(Clone, Copy)]
pub(super) struct Tile {
    pub(super) rows: usize,
    pub(super) blocks: usize,
    pub(super) row_blocks: usize,
}

/// Adjacent lanes summed into lanes twice as wide: `iadd_pairwise(swiden_low(v),
/// swiden_high(v))`.
fn widen_pairs(b: &mut FunctionBuilder, v: Value) -> Value {
    let lo = b.ins().swiden_low(v);
    let hi = b.ins().swiden_high(v);
    b.ins().iadd_pairwise(lo, hi)
}

/// The result of lowering: what the function needs besides its code.
pub struct Lowered {
    /// The read-only constants: packed weights, biases, multipliers.
    pub consts: Vec<u8>,
    /// Bytes of scratch memory one call needs, whatever the batch.
    pub scratch_bytes: usize,
}

/// Element order of a tensor in memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Order {
    /// The interpreter's order: C, H, W (or flat).
    Chw,
    /// Channels last, for a tensor of one sample's shape (c, h, w) (possibly flattened since).
    Hwc(usize, usize, usize),
}

#[derive(Clone, Copy)]
pub(super) struct Tensor {
    pub(super) ptr: Value,
    /// Where the tensor lives: the caller's buffer (exact) or scratch (with slack).
    pub(super) memory: Memory,
    /// Elements per sample.
    pub(super) size: usize,
    /// `None` for f32.
    pub(super) q: Option<QParams>,
    pub(super) order: Order,
}

impl Tensor {
    pub(super) fn elem_bytes(&self) -> usize {
        if self.q.is_some() {
            1
        } else {
            4
        }
    }
}

/// Who owns a tensor's memory, which decides how it may be read.
///
/// Caller memory ends where the caller says: only a reader that stays inside the tile's
/// `n · size` elements may use it (the f32 quantize, whose vector loads cover whole chunks and
/// whose tail is scalar). `Emitter::graph` gives every other reader a copy in scratch, made
/// once per tile by an exact loop. The caller's output is written by `copy_out` and `dequantize`
/// only, one element at a time, `n · size` of them. Scratch regions are followed by `SLACK` bytes, so readers
/// of scratch may load and store whole vectors past a tensor's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Memory {
    Caller,
    Scratch,
}

pub(super) fn chw(shape: &[usize]) -> (usize, usize, usize) {
    match shape {
        [c, h, w] => (*c, *h, *w),
        _ => (shape.iter().product(), 1, 1),
    }
}

pub(super) fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

pub struct Emitter<'a, 'b> {
    pub(super) b: &'a mut FunctionBuilder<'b>,
    pub(super) consts: Vec<u8>,
    pub(super) scratch: usize,
    pub(super) const_base: Value,
    pub(super) scratch_base: Value,
    /// Samples in the current tile (1..=TILE).
    pub(super) n: Value,
    pub(super) dot: DotProduct,
    /// The profiling hook, in code compiled to time its nodes.
    pub(super) mark: Option<cranelift_codegen::ir::FuncRef>,
    /// The 256-bit GEMM kernel ([`super::wide`]), in JIT code on a CPU that has it.
    pub(super) wide: Option<cranelift_codegen::ir::FuncRef>,
    /// The target is x86_64.
    pub(super) x86: bool,
}

impl Emitter<'_, '_> {
    /// An emitter for a function whose constants start at `const_base` and whose scratch
    /// memory starts at `scratch_base`.
    pub(super) fn new<'a, 'b>(
        b: &'a mut FunctionBuilder<'b>,
        const_base: Value,
        scratch_base: Value,
        dot: DotProduct,
    ) -> Emitter<'a, 'b> {
        let zero = b.ins().iconst(I64, 0);
        Emitter {
            b,
            consts: Vec::new(),
            scratch: 0,
            const_base,
            scratch_base,
            n: zero,
            dot,
            mark: None,
            wide: None,
            x86: false,
        }
    }

    /// In profiled code, the call that times node `index` (see `jit::profile`).
    pub(super) fn profile_mark(&mut self, index: usize) {
        if let Some(f) = self.mark {
            let i = self.b.ins().iconst(I64, index as i64);
            self.b.ins().call(f, &[i]);
        }
    }

    /// What the emitted function needs besides its code.
    pub(super) fn finish(self) -> Lowered {
        Lowered {
            consts: self.consts,
            scratch_bytes: self.scratch,
        }
    }

    /// A scratch region for a tile of tensors of `bytes` per sample.
    pub(super) fn alloc(&mut self, bytes: usize) -> Value {
        let off = self.scratch.next_multiple_of(64);
        self.scratch = off + TILE * bytes + SLACK;
        self.b.ins().iadd_imm_s(self.scratch_base, off as i64)
    }

    pub(super) fn tensor(&mut self, size: usize, q: Option<QParams>, order: Order) -> Tensor {
        let bytes = size * if q.is_some() { 1 } else { 4 };
        Tensor {
            ptr: self.alloc(bytes),
            memory: Memory::Scratch,
            size,
            q,
            order,
        }
    }

    /// Scratch for one sample's worth of `bytes` (plus slack), not a tile's.
    pub(super) fn alloc_one(&mut self, bytes: usize) -> Value {
        let off = self.scratch.next_multiple_of(64);
        self.scratch = off + bytes + SLACK;
        self.b.ins().iadd_imm_s(self.scratch_base, off as i64)
    }

    /// Appends constants (16-byte aligned) and returns their address.
    pub(super) fn constant(&mut self, bytes: &[u8]) -> Value {
        let off = self.consts.len().next_multiple_of(16);
        self.consts.resize(off, 0);
        self.consts.extend_from_slice(bytes);
        self.b.ins().iadd_imm_s(self.const_base, off as i64)
    }

    pub(super) fn i32_bytes(v: impl IntoIterator<Item = i32>) -> Vec<u8> {
        v.into_iter().flat_map(i32::to_le_bytes).collect()
    }

    pub(super) fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
        v.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    pub(super) fn at(&mut self, ptr: Value, index: Value, scale: usize) -> Value {
        let off = self.b.ins().imul_imm_s(index, scale as i64);
        self.b.ins().iadd(ptr, off)
    }

    pub(super) fn imm(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    pub(super) fn splat_f32(&mut self, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        self.b.ins().splat(F32X4, s)
    }

    /// `for i in (0..count).step_by(step) { body(i) }`; `count` is a runtime i64.
    pub(super) fn for_loop_step<R>(
        &mut self,
        count: Value,
        step: i64,
        body: impl FnOnce(&mut Self, Value) -> Result<R, String>,
    ) -> Result<R, String> {
        let header = self.b.create_block();
        let block = self.b.create_block();
        let exit = self.b.create_block();
        let i0 = self.b.append_block_param(header, I64);
        let zero = self.imm(0);
        self.b.ins().jump(header, &[zero.into()]);
        self.b.switch_to_block(header);
        let go = self.b.ins().icmp(IntCC::SignedLessThan, i0, count);
        self.b.ins().brif(go, block, &[], exit, &[]);
        self.b.switch_to_block(block);
        let r = body(self, i0)?;
        let next = self.b.ins().iadd_imm_s(i0, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
        Ok(r)
    }

    /// `if cond { then } else { otherwise }` on a runtime condition.
    pub(super) fn if_else(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Self),
        otherwise: impl FnOnce(&mut Self),
    ) {
        let (yes, no, done) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.ins().brif(cond, yes, &[], no, &[]);
        self.b.switch_to_block(yes);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(no);
        otherwise(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    pub(super) fn for_loop(&mut self, count: Value, body: impl FnOnce(&mut Self, Value)) {
        let _ = self.for_loop_step(count, 1, |e, i| {
            body(e, i);
            Ok(())
        });
    }

    /// A loop with a count known now; a count of one emits the body once, without a loop.
    pub(super) fn for_const(&mut self, count: usize, body: impl FnOnce(&mut Self, Value)) {
        if count == 1 {
            let zero = self.imm(0);
            body(self, zero);
        } else if count > 1 {
            let c = self.imm(count as i64);
            self.for_loop(c, body);
        }
    }

    /// Loops over the samples of the tile.
    pub(super) fn for_samples(&mut self, body: impl FnOnce(&mut Self, Value)) {
        let n = self.n;
        self.for_loop(n, body);
    }

    /// The interpreter's `quantize`: `clamp(round_half_even(x · (1/s)) + zp, 0, 255)`, the clamp
    /// done by saturating conversion and narrowing (equal for every input, NaN giving 0).
    pub(super) fn quantize_vec(&mut self, v: Value, inv: Value, zp: Value) -> Value {
        let v = self.b.ins().fmul(v, inv);
        let v = self.b.ins().nearest(v);
        let v = self.b.ins().fadd(v, zp);
        self.b.ins().fcvt_to_sint_sat(I32X4, v)
    }

    /// The constants [`Emitter::requantize`] reads, for an output zero point and code clamp
    /// `[lo, hi]` (the output's range, narrowed by a fused activation). `bounded` says that
    /// no accumulator times its multiplier can reach 2^21 in magnitude (checked from the
    /// weights and bias by [`accumulators_bounded`]).
    pub(super) fn requant(&mut self, zp: i32, (lo, hi): (i32, i32), bounded: bool) -> Requant {
        let (lo, hi) = (lo.clamp(0, 255), hi.clamp(0, 255));
        let f = |v: f32| v.to_le_bytes().repeat(4);
        let bytes = [
            f(ROUNDING),
            (ROUNDING.to_bits() as i32 - zp).to_le_bytes().repeat(4),
            f((lo - zp) as f32),
            f((hi - zp) as f32),
            vec![lo as u8; 16],
            vec![hi as u8; 16],
        ]
        .concat();
        Requant {
            consts: self.constant(&bytes),
            bounded,
            clamp: (lo, hi),
        }
    }

    /// Accumulators (i32, bias included) requantized to codes as i32 lanes:
    /// `round_half_even(acc as f32 · m) + zp`, the interpreter's [`crate::quant::numerics`]
    /// requantization, with its clamp to `[lo, hi]` left to [`Emitter::clamp_packed`] after
    /// narrowing. The product is rounded half to even by adding 1.5·2^23 (float addition
    /// rounds to nearest even, and the sum's units are whole numbers when the product's
    /// magnitude is below 2^22), and the integer is read from the sum's bits less those of the
    /// constant, the zero point folded in: four instructions. When the accumulators are not
    /// known to be bounded, the product is first clamped to `[lo - zp, hi - zp]` (for integer
    /// bounds the same as clamping after rounding; never NaN: an integer times a finite
    /// multiplier). The constants are loaded at their use: held in registers they would take
    /// ones a register tile needs.
    pub(super) fn requantize(&mut self, acc: Value, m: Value, r: &Requant) -> Value {
        let f = self.b.ins().fcvt_from_sint(F32X4, acc);
        let f = self.b.ins().fmul(f, m);
        let f = if r.bounded {
            f
        } else {
            let lo = self.b.ins().load(F32X4, flags(), r.consts, 32);
            let hi = self.b.ins().load(F32X4, flags(), r.consts, 48);
            self.fclamp(f, lo, hi)
        };
        let round = self.b.ins().load(F32X4, flags(), r.consts, 0);
        let f = self.b.ins().fadd(f, round);
        let little = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let bits = self.b.ins().bitcast(I32X4, little, f);
        let offset = self.b.ins().load(I32X4, flags(), r.consts, 16);
        self.b.ins().isub(bits, offset)
    }

    /// Sixteen codes narrowed (with saturation to 0..255) from [`Emitter::requantize`], clamped
    /// to the output's `[lo, hi]` where saturation did not already do it.
    pub(super) fn clamp_packed(&mut self, codes: Value, r: &Requant) -> Value {
        if !r.bounded {
            return codes;
        }
        let (lo, hi) = r.clamp;
        let codes = if lo > 0 {
            let lo = self.b.ins().load(I8X16, flags(), r.consts, 64);
            self.b.ins().umax(codes, lo)
        } else {
            codes
        };
        if hi < 255 {
            let hi = self.b.ins().load(I8X16, flags(), r.consts, 80);
            self.b.ins().umin(codes, hi)
        } else {
            codes
        }
    }

    /// `min(max(v, lo), hi)` of values that are never NaN: on x86 the compare-and-select form
    /// Cranelift lowers to one `maxps`/`minps` (its `fmax`/`fmin` handle NaN and signed zeros
    /// in five more), elsewhere `fmax`/`fmin`, single instructions there.
    fn fclamp(&mut self, v: Value, lo: Value, hi: Value) -> Value {
        if !self.x86 {
            let v = self.b.ins().fmax(v, lo);
            return self.b.ins().fmin(v, hi);
        }
        let little = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let below = self.b.ins().fcmp(FloatCC::LessThan, lo, v);
        let below = self.b.ins().bitcast(F32X4, little, below);
        let v = self.b.ins().bitselect(below, v, lo);
        let above = self.b.ins().fcmp(FloatCC::LessThan, v, hi);
        let above = self.b.ins().bitcast(F32X4, little, above);
        self.b.ins().bitselect(above, v, hi)
    }

    /// Narrows four i32x4 to sixteen u8 with saturation.
    pub(super) fn narrow(&mut self, v: [Value; 4]) -> Value {
        let a = self.b.ins().snarrow(v[0], v[1]);
        let b = self.b.ins().snarrow(v[2], v[3]);
        self.b.ins().unarrow(a, b)
    }

    pub(super) fn quantize_scalar(&mut self, v: Value, q: QParams) -> Value {
        let inv = self.b.ins().f32const(1.0 / q.scale);
        let zp = self.b.ins().f32const(q.zero_point as f32);
        let v = self.b.ins().fmul(v, inv);
        let v = self.b.ins().nearest(v);
        let v = self.b.ins().fadd(v, zp);
        let v = self.b.ins().fcvt_to_sint_sat(I32, v);
        let lo = self.b.ins().iconst(I32, 0);
        let hi = self.b.ins().iconst(I32, 255);
        let v = self.b.ins().smax(v, lo);
        self.b.ins().smin(v, hi)
    }

    pub(super) fn dequantize_scalar(&mut self, code: Value, q: QParams) -> Value {
        let c = self.b.ins().uextend(I32, code);
        let c = self.b.ins().iadd_imm_s(c, -(q.zero_point as i64));
        let f = self.b.ins().fcvt_from_sint(F32, c);
        let s = self.b.ins().f32const(q.scale);
        self.b.ins().fmul(f, s)
    }

    pub(super) fn splat_u8(&mut self, v: i32) -> Value {
        let s = self.b.ins().iconst(I8, v.clamp(0, 255) as i64);
        self.b.ins().splat(I8X16, s)
    }

    /// Loads element `i` of a tensor as f32 (dequantizing a code).
    pub(super) fn load_value(&mut self, x: &Tensor, i: Value) -> Value {
        match x.q {
            Some(q) => {
                let p = self.at(x.ptr, i, 1);
                let c = self.b.ins().load(I8, flags(), p, 0);
                self.dequantize_scalar(c, q)
            }
            None => {
                let p = self.at(x.ptr, i, 4);
                self.b.ins().load(F32, flags(), p, 0)
            }
        }
    }

    /// Stores an f32 as element `i` (quantizing it if the tensor is u8).
    pub(super) fn store_value(&mut self, y: &Tensor, i: Value, v: Value) {
        match y.q {
            Some(q) => {
                let c = self.quantize_scalar(v, q);
                let p = self.at(y.ptr, i, 1);
                self.b.ins().istore8(flags(), c, p, 0);
            }
            None => {
                let p = self.at(y.ptr, i, 4);
                self.b.ins().store(flags(), v, p, 0);
            }
        }
    }

    /// Copies each sample of an HWC tensor into a zero-bordered buffer filled with `fill`.
    pub(super) fn pad_hwc(
        &mut self,
        x: Tensor,
        shape: (usize, usize, usize),
        pad: (usize, usize),
        fill: i32,
    ) -> (Tensor, usize, usize) {
        let (c, h, w) = shape;
        let (hp, wp) = (h + 2 * pad.0, w + 2 * pad.1);
        if pad == (0, 0) {
            return (x, h, w);
        }
        let y = self.tensor(hp * wp * c, x.q, Order::Hwc(c, hp, wp));
        let fill_v = self.splat_u8(fill);
        let padded = hp * wp * c;
        self.for_samples(|e, s| {
            let dst = e.at(y.ptr, s, padded);
            let chunks = e.imm(padded.div_ceil(16) as i64);
            e.for_loop(chunks, |e, i| {
                let p = e.at(dst, i, 16);
                e.b.ins().store(flags(), fill_v, p, 0);
            });
            let src = e.at(x.ptr, s, x.size);
            e.for_const(h, |e, r| {
                let from = e.at(src, r, w * c);
                let to = e.at(dst, r, wp * c);
                let to = e.b.ins().iadd_imm_s(to, ((pad.0 * wp + pad.1) * c) as i64);
                e.copy_bytes(from, to, w * c, true);
            });
        });
        (y, hp, wp)
    }

    /// A copy of a caller tensor's tile in scratch, copied sixteen bytes at a time and the tail
    /// one byte at a time: nothing outside the tile's `n · size` elements is read.
    pub(super) fn copy_to_scratch(&mut self, x: Tensor) -> Tensor {
        let eb = x.elem_bytes();
        let y = self.tensor(x.size, x.q, x.order);
        let bytes = self.b.ins().imul_imm_s(self.n, (x.size * eb) as i64);
        let chunks = self.b.ins().ushr_imm_s(bytes, 4);
        self.for_loop(chunks, |e, i| {
            let from = e.at(x.ptr, i, 16);
            let v = e.b.ins().load(I8X16, flags(), from, 0);
            let to = e.at(y.ptr, i, 16);
            e.b.ins().store(flags(), v, to, 0);
        });
        let done = self.b.ins().ishl_imm_s(chunks, 4);
        let rest = self.b.ins().isub(bytes, done);
        self.for_loop(rest, |e, i| {
            let i = e.b.ins().iadd(i, done);
            let from = e.at(x.ptr, i, 1);
            let v = e.b.ins().load(I8, flags(), from, 0);
            let to = e.at(y.ptr, i, 1);
            e.b.ins().store(flags(), v, to, 0);
        });
        y
    }

    /// Copies `len` bytes; with `exact` the last piece is not written past `len`. Up to
    /// `UNROLLED_COPY` bytes are copied by straight-line code, longer runs by a loop of
    /// sixteen-byte pieces and a straight-line tail.
    pub(super) fn copy_bytes(&mut self, from: Value, to: Value, len: usize, exact: bool) {
        if len > UNROLLED_COPY {
            let chunks = len / 16;
            let count = self.imm(chunks as i64);
            self.for_loop(count, |e, i| {
                let f = e.at(from, i, 16);
                let v = e.b.ins().load(I8X16, flags(), f, 0);
                let t = e.at(to, i, 16);
                e.b.ins().store(flags(), v, t, 0);
            });
            let from = self.b.ins().iadd_imm_s(from, (chunks * 16) as i64);
            let to = self.b.ins().iadd_imm_s(to, (chunks * 16) as i64);
            return self.copy_bytes(from, to, len - chunks * 16, exact);
        }
        let mut off = 0;
        while off < len {
            let left = len - off;
            let (ty, size) = match left {
                _ if left >= 16 || !exact => (I8X16, 16),
                8..=15 => (I64, 8),
                4..=7 => (I32, 4),
                2..=3 => (cranelift_codegen::ir::types::I16, 2),
                _ => (I8, 1),
            };
            let v = self.b.ins().load(ty, flags(), from, off as i32);
            self.b.ins().store(flags(), v, to, off as i32);
            off += size;
        }
    }

    /// Whether `0 <= ih < h && 0 <= iw < w` (unsigned compares catch the negatives).
    pub(super) fn inside(&mut self, ih: Value, h: usize, iw: Value, w: usize) -> Value {
        let a = self
            .b
            .ins()
            .icmp_imm_s(IntCC::UnsignedLessThan, ih, h as i64);
        let b = self
            .b
            .ins()
            .icmp_imm_s(IntCC::UnsignedLessThan, iw, w as i64);
        self.b.ins().band(a, b)
    }
}
