//! Quantized convolutions and GEMMs: im2col, weight packing, the register-blocked microkernels
//! for each dot-product form, requantization of the accumulators, and the run-time check that
//! picks the `pmaddubsw` kernel or its exact fallback. Everything else an op needs lives in
//! `builder.rs`; this file only adds methods to its emitter.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32X4, I16X8, I32, I32X4, I64, I64X2, I8, I8X16};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value};

use super::builder::{
    accumulators_bounded, chw, flags, DotProduct, Emitter, Order, Requant, Tensor, BLOCK,
};
use crate::int8::QWeights;
use crate::ir::ConvGeom;
use crate::quant::numerics::{requant_multiplier, QParams};

impl Emitter<'_, '_> {
    // ---- quantized convolution and GEMM -----------------------------------------------------

    /// A quantized convolution, one sample at a time (its im2col rows stay in cache): per group,
    /// im2col then a GEMM over the sample's pixels. A 1x1, stride 1, unpadded convolution is a
    /// GEMM on the input itself.
    pub(super) fn conv(
        &mut self,
        x: Tensor,
        in_shape: &[usize],
        out_shape: &[usize],
        geom: &ConvGeom,
        w: &QWeights,
        yq: QParams,
    ) -> Tensor {
        let (c, h, wd) = chw(in_shape);
        let (o_n, ho, wo) = chw(out_shape);
        let xq = x.q.expect("u8 input");
        let y = self.tensor(o_n * ho * wo, Some(yq), Order::Hwc(o_n, ho, wo));
        let (kh, kw) = geom.kernel;
        let (groups, cg, og) = (geom.groups, c / geom.groups, o_n / geom.groups);
        let kg = cg * kh * kw;
        let pointwise =
            kh == 1 && kw == 1 && geom.stride == (1, 1) && geom.padding == (0, 0) && groups == 1;
        // Padding taps hold the zero point: a zero value, as the interpreter skips them.
        let (xp, _, wp) = self.pad_hwc(x, (c, h, wd), geom.padding, xq.zero_point);
        // im2col rows hold `kg` columns rounded up to whole dot steps, in the form's encoding.
        let enc = Encoding::of(self.dot);
        let elem = enc.bytes();
        let row = kg.next_multiple_of(4);
        let cols = (!pointwise).then(|| self.alloc_one(ho * wo * row * elem));
        let rows = self.imm((ho * wo) as i64);
        let packed: Vec<_> = (0..groups)
            .map(|g| {
                // Packed column t = (i·kw + j)·cg + ch; the interpreter's is (ch·kh + i)·kw + j.
                let wt = |o: usize, t: usize| {
                    let (tap, ch) = (t / cg, t % cg);
                    let (i, j) = (tap / kw, tap % kw);
                    w.weight[(g * og + o) * kg + (ch * kh + i) * kw + j]
                };
                let wg = QWeights {
                    weight: Vec::new(),
                    weight_scales: (0..og).map(|o| w.scale(g * og + o)).collect(),
                    bias: w.bias[g * og..(g + 1) * og].to_vec(),
                    clamp: w.clamp,
                };
                self.pack(kg, og, &wt, &wg, xq, yq)
            })
            .collect();
        self.for_samples(|e, s| {
            let xs = e.at(xp.ptr, s, xp.size);
            let ys = e.at(y.ptr, s, y.size);
            for (g, k) in packed.iter().enumerate() {
                let (a, a_stride, encoding) = match cols {
                    None => (xs, c, Encoding::Codes),
                    Some(col) => {
                        e.im2col(xs, col, (c, wp), (ho, wo), geom, g, row, enc);
                        (col, row * elem, enc)
                    }
                };
                let out = e.b.ins().iadd_imm_s(ys, (g * og) as i64);
                let gemm = Gemm {
                    a,
                    a_stride,
                    rows,
                    rows_per_sample: ho * wo,
                    samples: 1,
                    encoding,
                    out,
                    out_stride: o_n,
                    o: og,
                };
                e.run_gemm(gemm, k);
            }
        });
        y
    }

    /// Copies `len` codes in an encoding, sixteen at a time: the last piece may run past
    /// `len`.
    fn copy_codes(&mut self, from: Value, to: Value, len: usize, enc: Encoding) {
        if enc == Encoding::Codes {
            self.copy_bytes(from, to, len, false);
            return;
        }
        for chunk in 0..len.div_ceil(16) {
            let v = self.b.ins().load(I8X16, flags(), from, (chunk * 16) as i32);
            self.store_encoded(v, to, (chunk * 16 * enc.bytes()) as i32, enc);
        }
    }

    /// Stores sixteen codes at `to + off` in an encoding (see [`Encoding`]).
    fn store_encoded(&mut self, v: Value, to: Value, off: i32, enc: Encoding) {
        match enc {
            Encoding::Codes => {
                self.b.ins().store(flags(), v, to, off);
            }
            Encoding::Wide => {
                let lo = self.b.ins().uwiden_low(v);
                let hi = self.b.ins().uwiden_high(v);
                self.b.ins().store(flags(), lo, to, off);
                self.b.ins().store(flags(), hi, to, off + 16);
            }
            Encoding::Signed => {
                // The constant is loaded here: computed once it would hold a register through
                // every loop of the function.
                let bit = self.constant(&[0x80; 16]);
                let bit = self.b.ins().load(I8X16, flags(), bit, 0);
                let v = self.b.ins().bxor(v, bit);
                self.b.ins().store(flags(), v, to, off);
            }
        }
    }

    /// Writes one sample's im2col rows of group `g`: row (oh, ow) holds the taps in (i, j,
    /// channel) order, `row` elements apart, in the form's encoding. Pieces are copied sixteen codes at a time and may run past their end; later pieces
    /// and rows overwrite that, and the last runs into slack.
    #[allow(clippy::too_many_arguments)]
    fn im2col(
        &mut self,
        src: Value,
        col: Value,
        (c, wp): (usize, usize),
        (ho, wo): (usize, usize),
        geom: &ConvGeom,
        g: usize,
        row: usize,
        enc: Encoding,
    ) {
        let elem = enc.bytes();
        let (kh, kw) = geom.kernel;
        let cg = c / geom.groups;
        e_for_rows(self, ho, wo, |e, oh, ow| {
            let from = e.b.ins().imul_imm_s(oh, (geom.stride.0 * wp * c) as i64);
            let from = e.b.ins().iadd(src, from);
            let from = e.at(from, ow, geom.stride.1 * c);
            let from = e.b.ins().iadd_imm_s(from, (g * cg) as i64);
            let r = e.b.ins().imul_imm_s(oh, wo as i64);
            let r = e.b.ins().iadd(r, ow);
            let to = e.at(col, r, row * elem);
            for i in 0..kh {
                if geom.groups == 1 {
                    let f = e.b.ins().iadd_imm_s(from, (i * wp * c) as i64);
                    let t = e.b.ins().iadd_imm_s(to, (i * kw * c * elem) as i64);
                    e.copy_codes(f, t, kw * c, enc);
                } else {
                    for j in 0..kw {
                        let f = e.b.ins().iadd_imm_s(from, ((i * wp + j) * c) as i64);
                        let t = e.b.ins().iadd_imm_s(to, ((i * kw + j) * cg * elem) as i64);
                        e.copy_codes(f, t, cg, enc);
                    }
                }
            }
        });
    }

    /// `out[r][o] = requant(Σ_t a[r][t] · w(o, t) + bias[o] - zp·Σ_t w(o, t))` for `rows` rows.
    ///
    /// Weights are packed in blocks of [`BLOCK`] output channels: for each block and each group of
    /// four columns, 32 bytes (channel-major, four columns per channel), the operand order of
    /// `vpdpbusd`. A row's four activation bytes are broadcast to every lane.
    /// Packs a GEMM's weights (`wt(o, column)`) and requantization constants, with the exact
    /// fallback's too where the form needs one.
    pub(super) fn pack(
        &mut self,
        k_cols: usize,
        o_n: usize,
        wt: &dyn Fn(usize, usize) -> i8,
        w: &QWeights,
        xq: QParams,
        yq: QParams,
    ) -> Packed {
        let main = self.pack_for(self.dot, k_cols, o_n, wt, w, xq, yq);
        let fallback = (self.dot == DotProduct::Pairs).then(|| Kernel {
            compact: true,
            ..self.pack_for(DotProduct::I16, k_cols, o_n, wt, w, xq, yq)
        });
        Packed { main, fallback }
    }

    #[allow(clippy::too_many_arguments)]
    fn pack_for(
        &mut self,
        dot: DotProduct,
        k_cols: usize,
        o_n: usize,
        wt: &dyn Fn(usize, usize) -> i8,
        w: &QWeights,
        xq: QParams,
        yq: QParams,
    ) -> Kernel {
        let per = dot.columns();
        let steps = k_cols.div_ceil(per);
        let blocks = o_n.div_ceil(BLOCK);
        let mut packed = Vec::with_capacity(blocks * steps * 32);
        for blk in 0..blocks {
            for kk in 0..steps {
                for lane in 0..BLOCK {
                    for t in 0..per {
                        let (o, col) = (blk * BLOCK + lane, kk * per + t);
                        let v = if o < o_n && col < k_cols {
                            wt(o, col)
                        } else {
                            0
                        };
                        match dot {
                            DotProduct::I16 => packed.extend((v as i16).to_le_bytes()),
                            _ => packed.push(v as u8),
                        }
                    }
                }
            }
        }
        let bias = (0..blocks * BLOCK).map(|o| {
            if o >= o_n {
                return 0;
            }
            let wsum: i32 = (0..k_cols).map(|t| wt(o, t) as i32).sum();
            let offset = dot.offset(xq.zero_point);
            w.bias[o].wrapping_sub(offset.wrapping_mul(wsum))
        });
        let bias = Self::i32_bytes(bias);
        let mult = (0..blocks * BLOCK).map(|o| {
            if o < o_n {
                requant_multiplier(xq.scale, w.scale(o), yq.scale)
            } else {
                0.0
            }
        });
        let mult = Self::f32_bytes(mult);
        let bounded = accumulators_bounded(
            o_n,
            &|o| w.bias[o],
            &|o| (0..k_cols).map(|t| wt(o, t)).collect(),
            &|o| requant_multiplier(xq.scale, w.scale(o), yq.scale),
        );
        Kernel {
            bounded,
            dot,
            compact: false,
            weights: self.constant(&packed),
            bias: self.constant(&bias),
            mult: self.constant(&mult),
            k4: steps,
            blocks,
            zp: yq.zero_point,
            clamp: w.clamp,
        }
    }

    fn gemm(&mut self, g: Gemm, k: &Kernel) {
        // The kernels load rows as pure values (see `constant`), which Cranelift merges when
        // address and offset match. Two calls on one buffer rewritten in between (the groups of
        // a grouped convolution share their im2col rows) must not share loads: each call reads
        // through its own base, the rows' address plus a zero Cranelift cannot see through.
        let g = Gemm {
            a: self.opaque(g.a),
            ..g
        };
        // Rows not yet in the form's encoding (i16, or shifted to signed) are encoded once into
        // a buffer of their own.
        let enc = Encoding::of(k.dot);
        let g = if g.encoding != enc {
            debug_assert!(g.encoding == Encoding::Codes);
            let buf = self.alloc_rows(&g, enc.bytes() * g.a_stride * g.rows_per_sample);
            let total = self.b.ins().imul_imm_s(g.rows, g.a_stride as i64);
            self.encode(g.a, buf, total, enc);
            Gemm {
                a: buf,
                a_stride: enc.bytes() * g.a_stride,
                encoding: enc,
                ..g
            }
        } else {
            g
        };
        // The 256-bit kernel pays for its call and its separate requantization pass on GEMMs
        // with many columns and several rows (measured on lenet: conv2, 400 columns, 161 against
        // 104 GMAC/s; conv1, 25 columns, slower); a single row streams its weights either way.
        if let (Some(f), DotProduct::Vnni, false, 16..) = (self.wide, k.dot, k.compact, k.k4) {
            match g.fixed_rows() {
                Some(rows) if rows >= WIDE_ROWS => return self.gemm_wide(&g, k, f),
                Some(_) => {}
                None => {
                    let many = self.b.ins().icmp_imm_s(
                        IntCC::UnsignedGreaterThanOrEqual,
                        g.rows,
                        WIDE_ROWS as i64,
                    );
                    return self.if_else(many, |e| e.gemm_wide(&g, k, f), |e| e.gemm_narrow(&g, k));
                }
            }
        }
        self.gemm_narrow(&g, k);
    }

    /// The GEMM in Cranelift's 128-bit register tiles.
    fn gemm_narrow(&mut self, g: &Gemm, k: &Kernel) {
        let blocks = k.blocks;
        let full = g.o / BLOCK;
        let a_bytes = g.samples * g.rows_per_sample * g.a_stride;
        let tile = k.dot.tile();
        let tile_rows = tile.rows;
        if k.compact {
            let rows = g.rows;
            self.for_loop(rows, |e, r| e.row_blocks(g, k, r, 1, full, blocks));
        } else if k.k4 * k.step_bytes() * blocks <= a_bytes {
            // Few weights, many rows (convolutions): tiles of rows outer, each tile times every
            // block of channels; the weights stay in cache.
            let tiles = self.b.ins().udiv_imm_s(g.rows, tile_rows as i64);
            self.for_loop(tiles, |e, t| {
                let r0 = e.b.ins().imul_imm_s(t, tile_rows as i64);
                e.row_blocks(g, k, r0, tile_rows, full, blocks);
            });
            let done = self.b.ins().imul_imm_s(tiles, tile_rows as i64);
            match g.fixed_rows() {
                // A convolution's rows are known: the rest is one smaller tile.
                Some(rows) if rows % tile_rows > 0 => {
                    self.row_blocks(g, k, done, rows % tile_rows, full, blocks)
                }
                Some(_) => {}
                None => {
                    let rest = self.b.ins().isub(g.rows, done);
                    self.for_loop(rest, |e, r| {
                        let r0 = e.b.ins().iadd(done, r);
                        e.row_blocks(g, k, r0, 1, full, blocks);
                    });
                }
            }
        } else {
            // Many weights, few rows (Linear on a tile of samples). Fewer rows than a tile:
            // each row alone, times every block in single-row tiles.
            let few = self
                .b
                .ins()
                .icmp_imm_s(IntCC::UnsignedLessThan, g.rows, tile_rows as i64);
            self.if_else(
                few,
                |e| {
                    let rows = g.rows;
                    e.for_loop(rows, |e, r| e.row_blocks(g, k, r, 1, full, blocks));
                },
                |e| e.grouped_rows(g, k),
            );
        }
    }

    /// Many rows of a GEMM with many weights (Linear on a tile of samples): groups of blocks
    /// whose weights stay in the first-level cache while every tile of rows uses them (four
    /// blocks of 784 columns: 25 KB).
    fn grouped_rows(&mut self, g: &Gemm, k: &Kernel) {
        let tile = k.dot.tile();
        let tile_rows = tile.rows;
        let (blocks, full) = (k.blocks, g.o / BLOCK);
        const GROUP: usize = 4;
        let groups = full / GROUP;
        let emit_rows = |e: &mut Self, blk: Value, sub: usize, valid: usize| {
            let tiles = e.b.ins().udiv_imm_s(g.rows, tile_rows as i64);
            e.for_loop(tiles, |e, t| {
                let r0 = e.b.ins().imul_imm_s(t, tile_rows as i64);
                for sb in (0..sub).step_by(tile.blocks) {
                    let b = e.b.ins().iadd_imm_s(blk, sb as i64);
                    let n = tile.blocks.min(sub - sb);
                    let last = if sb + n == sub { valid } else { BLOCK };
                    e.microkernel(g, k, r0, tile_rows, b, n, last);
                }
            });
            let done = e.b.ins().imul_imm_s(tiles, tile_rows as i64);
            let rest = e.b.ins().isub(g.rows, done);
            e.for_loop(rest, |e, r| {
                let r0 = e.b.ins().iadd(done, r);
                e.microkernel(g, k, r0, 1, blk, sub, valid);
            });
        };
        if groups > 0 {
            let count = self.imm(groups as i64);
            self.for_loop(count, |e, gi| {
                let blk = e.b.ins().imul_imm_s(gi, GROUP as i64);
                emit_rows(e, blk, GROUP, BLOCK);
            });
        }
        // The blocks left over (the partial one last) form one narrower group.
        let rest = blocks - groups * GROUP;
        if rest > 0 {
            let b = self.imm((groups * GROUP) as i64);
            emit_rows(self, b, rest, g.last_valid());
        }
    }

    /// `v` plus zero, loaded from a constant of its own: a value no other computation equals.
    fn opaque(&mut self, v: Value) -> Value {
        let zero = self.constant(&[0; 8]);
        let zero = self.b.ins().load(I64, flags(), zero, 0);
        self.b.ins().iadd(v, zero)
    }

    /// The GEMM's sums by the 256-bit kernel ([`super::wide`]) into a buffer of i32, then
    /// requantized here, eight channels at a time.
    fn gemm_wide(&mut self, g: &Gemm, k: &Kernel, f: cranelift_codegen::ir::FuncRef) {
        let width = k.blocks * BLOCK;
        let sums = self.alloc_rows(g, 4 * width * g.rows_per_sample);
        let args = self.alloc_one(super::wide::ARGS_BYTES);
        let fields = [
            g.a,
            self.imm(g.a_stride as i64),
            g.rows,
            k.weights,
            self.imm(k.k4 as i64),
            self.imm(k.blocks as i64),
            k.bias,
            sums,
        ];
        for (i, v) in fields.into_iter().enumerate() {
            self.b.ins().store(flags(), v, args, 8 * i as i32);
        }
        self.b.ins().call(f, &[args]);
        let requant = self.requant(k.zp, k.clamp, k.bounded);
        let rows = g.rows;
        let full = g.o / BLOCK;
        self.for_loop(rows, |e, r| {
            let from = e.at(sums, r, 4 * width);
            let to = e.at(g.out, r, g.out_stride);
            let block = |e: &mut Self, bi: Value, valid: usize| {
                let sums = e.at(from, bi, 4 * BLOCK);
                let acc =
                    |e: &mut Self, v: usize| e.b.ins().load(I32X4, flags(), sums, 16 * v as i32);
                let mult = e.at(k.mult, bi, 4 * BLOCK);
                let out = |e: &mut Self| e.at(to, bi, BLOCK);
                e.store_block(&acc, mult, &requant, &out, valid);
            };
            let count = e.imm(full as i64);
            e.for_loop(count, |e, bi| block(e, bi, BLOCK));
            if k.blocks > full {
                let bi = e.imm(full as i64);
                block(e, bi, g.last_valid());
            }
        });
    }

    /// All channel blocks for the rows `r0..r0 + rows`, in the form's tiles ([`super::builder::Tile`]).
    fn row_blocks(
        &mut self,
        g: &Gemm,
        k: &Kernel,
        r0: Value,
        rows: usize,
        full: usize,
        blocks: usize,
    ) {
        let tile = k.dot.tile();
        let per = if rows == 1 {
            tile.row_blocks
        } else {
            tile.blocks
        };
        let groups = full / per;
        if groups > 0 {
            let count = self.imm(groups as i64);
            self.for_loop(count, |e, gi| {
                let blk = e.b.ins().imul_imm_s(gi, per as i64);
                e.microkernel(g, k, r0, rows, blk, per, BLOCK);
            });
        }
        // The blocks left over (at most `per`, the partial one last) form one narrower tile.
        let rest = blocks - groups * per;
        if rest > 0 {
            let b = self.imm((groups * per) as i64);
            self.microkernel(g, k, r0, rows, b, rest, g.last_valid());
        }
    }

    /// Accumulates `rows` rows times `nblk` blocks of channels over all columns, then requantizes
    /// and stores them (`valid` channels of the last block, all of the others).
    ///
    /// A register tile: one accumulator per row and weight vector, each independent of the
    /// others so the dot instructions overlap. Per dot step, a row's four activation bytes are
    /// loaded and broadcast to every lane (`pshufd`, `dup`; a broadcast from memory would need
    /// the load folded into it, which Cranelift does only for a value used once); with several
    /// rows, each weight vector is loaded once and kept in a register for all of them; with one
    /// row, the weights are each used once and stay memory operands.
    #[allow(clippy::too_many_arguments)]
    fn microkernel(
        &mut self,
        g: &Gemm,
        k: &Kernel,
        r0: Value,
        rows: usize,
        blk: Value,
        nblk: usize,
        valid: usize,
    ) {
        // Every constant is loaded where it is used. Cranelift computes a constant value once,
        // as early as it can, and keeps it in a register across every loop in between; a tile
        // needs all the registers. The accumulators start from the bias (which also saves
        // adding it at the end), the requantization's constants come from memory.
        let biases: Vec<Value> = (0..nblk)
            .map(|bi| {
                let blk_i = self.b.ins().iadd_imm_s(blk, bi as i64);
                self.at(k.bias, blk_i, BLOCK * 4)
            })
            .collect();
        // A tile with fewer than eight accumulators (a narrow layer, a tail) splits the columns
        // among several sets of them, step `u` into set `u % split`, summed at the end (i32
        // addition in any order is exact): no short chains of dependent dot instructions. (Up
        // to twelve in all, the register allocator spills some of them in the loop.)
        let tile_accs = rows * nblk * 2;
        let split = (8 / tile_accs).clamp(1, 4).min(k.k4.max(1));
        let zero = (split > 1).then(|| self.constant(&[0; 16]));
        let sets: Vec<Vec<_>> = (0..split)
            .map(|set| {
                (0..tile_accs)
                    .map(|i| {
                        let v = self.b.declare_var(I32X4);
                        let half = i % (nblk * 2);
                        let (from, off) = match zero {
                            Some(zero) if set > 0 => (zero, 0),
                            _ => (biases[half / 2], 16 * (half % 2) as i32),
                        };
                        let start = self.b.ins().load(I32X4, flags(), from, off);
                        self.b.def_var(v, start);
                        v
                    })
                    .collect()
            })
            .collect();
        let a0 = self.at(g.a, r0, g.a_stride);
        let step_bytes = k.step_bytes();
        let w0 = self.at(k.weights, blk, k.k4 * step_bytes);
        let wstride = (k.k4 * step_bytes) as i32;
        let lane0 = self.broadcast_mask(0);
        let group = |e: &mut Self, a: Value, wp: Value, steps: usize| {
            for u in 0..steps {
                let accs = &sets[u % split];
                let weights: Vec<Value> = (0..nblk * 2)
                    .map(|v| {
                        let off = (v / 2) as i32 * wstride + (u * step_bytes + (v % 2) * 16) as i32;
                        e.b.ins().load(I8X16, constant(), wp, off)
                    })
                    .collect();
                for r in 0..rows {
                    let off = (r * g.a_stride + 4 * u) as i32;
                    let row = e.b.ins().load(I8X16, constant(), a, off);
                    let av = e.b.ins().shuffle(row, row, lane0);
                    for (v, &wv) in weights.iter().enumerate() {
                        let acc = accs[r * nblk * 2 + v];
                        let old = e.b.use_var(acc);
                        let new = k.dot.emit(e.b, wv, av, old);
                        e.b.def_var(acc, new);
                    }
                }
            }
        };
        // Cranelift places each value at its first use, accumulator by accumulator, so the
        // unrolled steps feeding one accumulator have their weights and broadcasts live at
        // once: one step per set of accumulators for a tile of rows (12 accumulators, 2
        // weights, 1 broadcast), at least two for a single row (its weights are memory
        // operands).
        let unroll = if rows == 1 && split == 1 { 2 } else { split };
        let ap = self.b.declare_var(I64);
        let wp = self.b.declare_var(I64);
        self.b.def_var(ap, a0);
        self.b.def_var(wp, w0);
        let iters = self.imm((k.k4 / unroll) as i64);
        if k.k4 >= unroll {
            self.for_loop(iters, |e, _| {
                let a = e.b.use_var(ap);
                let w = e.b.use_var(wp);
                group(e, a, w, unroll);
                let a = e.b.ins().iadd_imm_s(a, (4 * unroll) as i64);
                let w = e.b.ins().iadd_imm_s(w, (step_bytes * unroll) as i64);
                e.b.def_var(ap, a);
                e.b.def_var(wp, w);
            });
        }
        if !k.k4.is_multiple_of(unroll) {
            let a = self.b.use_var(ap);
            let w = self.b.use_var(wp);
            group(self, a, w, k.k4 % unroll);
        }
        let accs = sets[0].clone();
        for set in &sets[1..] {
            for (&total, &part) in accs.iter().zip(set) {
                let (t, p) = (self.b.use_var(total), self.b.use_var(part));
                let sum = self.b.ins().iadd(t, p);
                self.b.def_var(total, sum);
            }
        }
        let requant = self.requant(k.zp, k.clamp, k.bounded);
        for bi in 0..nblk {
            let blk_i = self.b.ins().iadd_imm_s(blk, bi as i64);
            let mult = self.at(k.mult, blk_i, BLOCK * 4);
            for r in 0..rows {
                let acc = |e: &mut Self, v: usize| e.b.use_var(accs[r * nblk * 2 + bi * 2 + v]);
                let out = |e: &mut Self| {
                    let row = e.b.ins().iadd_imm_s(r0, r as i64);
                    let out = e.at(g.out, row, g.out_stride);
                    e.at(out, blk_i, BLOCK)
                };
                let valid = if bi + 1 == nblk { valid } else { BLOCK };
                self.store_block(&acc, mult, &requant, &out, valid);
            }
        }
    }

    /// One block of eight channels (two vectors of i32 sums, bias included, `acc(e, 0)` and
    /// `acc(e, 1)`) requantized with the multipliers at `mult`, narrowed to codes and stored at
    /// `out(e)` (`valid` channels). The sums and the address are computed where this needs
    /// them.
    fn store_block(
        &mut self,
        acc: &dyn Fn(&mut Self, usize) -> Value,
        mult: Value,
        requant: &Requant,
        out: &dyn Fn(&mut Self) -> Value,
        valid: usize,
    ) {
        let q = [0, 1].map(|v: usize| {
            let m = self.b.ins().load(F32X4, flags(), mult, 16 * v as i32);
            let a = acc(self, v);
            self.requantize(a, m, requant)
        });
        let codes = self.narrow([q[0], q[1], q[0], q[1]]);
        let codes = self.clamp_packed(codes, requant);
        let to = out(self);
        self.store_low_bytes(codes, to, valid);
    }

    /// Scratch for the GEMM's rows: `bytes` per sample, for one sample (a convolution runs
    /// sample by sample) or for the tile.
    fn alloc_rows(&mut self, g: &Gemm, bytes: usize) -> Value {
        if g.samples == 1 {
            self.alloc_one(bytes)
        } else {
            self.alloc(bytes)
        }
    }

    /// Stores the low `len` (at most 8) bytes of a vector.
    fn store_low_bytes(&mut self, v: Value, to: Value, len: usize) {
        let mut off = 0;
        let pieces = [
            (8, I64X2, I64),
            (4, I32X4, I32),
            (2, I16X8, cranelift_codegen::ir::types::I16),
            (1, I8X16, I8),
        ];
        for (size, vty, _) in pieces {
            if len - off >= size {
                let le =
                    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
                let cast = self.b.ins().bitcast(vty, le, v);
                let lane = self.b.ins().extractlane(cast, (off / size) as u8);
                self.b.ins().store(flags(), lane, to, off as i32);
                off += size;
            }
        }
    }
}

impl Emitter<'_, '_> {
    /// A shuffle mask that copies i32 lane `lane` to all four lanes: one `pshufd`.
    fn broadcast_mask(&mut self, lane: usize) -> cranelift_codegen::ir::Immediate {
        let bytes: Vec<u8> = (0..16).map(|i| (4 * lane + i % 4) as u8).collect();
        self.b.func.dfg.immediates.push(bytes.into())
    }

    /// Runs a GEMM with its main kernel, or with the exact fallback when any activation code
    /// of this call (the `rows` rows) is 128 or more.
    pub(super) fn run_gemm(&mut self, g: Gemm, p: &Packed) {
        let Some(fallback) = &p.fallback else {
            return self.gemm(g, &p.main);
        };
        let bytes = self.b.ins().imul_imm_s(g.rows, g.a_stride as i64);
        let small = self.all_below_128(g.a, bytes);
        self.if_else(
            small,
            |e| e.gemm(g.clone(), &p.main),
            |e| e.gemm(g.clone(), fallback),
        );
    }

    /// Whether every byte of `bytes` bytes at `ptr` is below 128: the bytes ORed sixteen at a
    /// time, then their high bits. The last vector may read into the slack, whose bytes are codes
    /// of the same tensor or zeros, so this can only be more cautious.
    fn all_below_128(&mut self, ptr: Value, bytes: Value) -> Value {
        let acc = self.b.declare_var(I8X16);
        let zero = self.splat_u8(0);
        self.b.def_var(acc, zero);
        let chunks = self.b.ins().iadd_imm_s(bytes, 15);
        let chunks = self.b.ins().ushr_imm_s(chunks, 4);
        self.for_loop(chunks, |e, i| {
            let p = e.at(ptr, i, 16);
            let v = e.b.ins().load(I8X16, flags(), p, 0);
            let a = e.b.use_var(acc);
            let a = e.b.ins().bor(a, v);
            e.b.def_var(acc, a);
        });
        let all = self.b.use_var(acc);
        let high = self.b.ins().vhigh_bits(I32, all);
        self.b.ins().icmp_imm_s(IntCC::Equal, high, 0)
    }

    /// Encodes `count` codes, sixteen at a time (running into the slack).
    fn encode(&mut self, src: Value, dst: Value, count: Value, enc: Encoding) {
        let chunks = self.b.ins().iadd_imm_s(count, 15);
        let chunks = self.b.ins().ushr_imm_s(chunks, 4);
        self.for_loop(chunks, |e, i| {
            let from = e.at(src, i, 16);
            let v = e.b.ins().load(I8X16, flags(), from, 0);
            let to = e.at(dst, i, 16 * enc.bytes());
            e.store_encoded(v, to, 0, enc);
        });
    }
}

/// Rows from which a GEMM goes to the 256-bit kernel: one of its tiles.
const WIDE_ROWS: usize = 6;

/// Flags of a load that is pure: from the constants, which never change, or from a GEMM's
/// rows while the GEMM runs (nothing it does writes them). Cranelift then places the load at its
/// use, so a tile's rows are not all loaded, and live, at once. Its address derives from the
/// GEMM's own base (`Emitter::opaque`), so no load of another GEMM call can be merged with it.
fn constant() -> MemFlagsData {
    MemFlagsData::new()
        .with_notrap()
        .with_readonly()
        .with_can_move()
}

/// `body(oh, ow)` for every output pixel.
fn e_for_rows(
    e: &mut Emitter,
    ho: usize,
    wo: usize,
    body: impl FnOnce(&mut Emitter, Value, Value),
) {
    e.for_const(ho, |e, oh| e.for_const(wo, |e, ow| body(e, oh, ow)));
}

/// How a GEMM's rows hold the activation codes for a dot-product form.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Encoding {
    /// As codes.
    Codes,
    /// Widened to i16 ([`DotProduct::I16`]).
    Wide,
    /// Shifted to signed, `code ^ 0x80` ([`DotProduct::Sdot`]): once per code, not once per
    /// broadcast in the kernel.
    Signed,
}

impl Encoding {
    fn of(dot: DotProduct) -> Encoding {
        match dot {
            DotProduct::I16 => Encoding::Wide,
            DotProduct::Sdot => Encoding::Signed,
            DotProduct::Vnni | DotProduct::Usdot | DotProduct::Pairs => Encoding::Codes,
        }
    }

    /// Bytes per code.
    fn bytes(self) -> usize {
        if self == Encoding::Wide {
            2
        } else {
            1
        }
    }
}

/// A GEMM's operands: `rows` rows of `k` u8 columns at `a` (`a_stride` bytes apart), `o` output
/// channels stored at `out` (`out_stride` bytes between rows).
#[derive(Clone)]
pub(super) struct Gemm {
    pub(super) a: Value,
    pub(super) a_stride: usize,
    pub(super) rows: Value,
    /// Rows per sample (`rows` is this times the samples).
    pub(super) rows_per_sample: usize,
    /// Samples the rows hold at most.
    pub(super) samples: usize,
    /// How the rows hold the codes.
    pub(super) encoding: Encoding,
    pub(super) out: Value,
    pub(super) out_stride: usize,
    pub(super) o: usize,
}

impl Gemm {
    /// Valid channels of the last block.
    fn last_valid(&self) -> usize {
        self.o - (self.o.div_ceil(BLOCK) - 1) * BLOCK
    }

    /// The number of rows when it is known while compiling: a convolution's output pixels.
    fn fixed_rows(&self) -> Option<usize> {
        (self.samples == 1).then_some(self.rows_per_sample)
    }
}

impl Kernel {
    /// Bytes of packed weights per dot step of one block of channels (eight i32 lanes of four
    /// u8 or two i16 columns).
    fn step_bytes(&self) -> usize {
        32
    }
}

/// A GEMM's kernels: the one to run, and the exact one to run instead when a run-time check
/// finds the first could saturate.
pub(super) struct Packed {
    main: Kernel,
    fallback: Option<Kernel>,
}

/// A GEMM's packed constants.
#[derive(Clone)]
struct Kernel {
    dot: DotProduct,
    /// Emit one row at a time only: less code (and compile time) for a kernel that rarely runs.
    compact: bool,
    blocks: usize,
    weights: Value,
    bias: Value,
    mult: Value,
    k4: usize,
    zp: i32,
    clamp: (i32, i32),
    /// Whether requantization may skip its clamp before rounding ([`accumulators_bounded`]).
    bounded: bool,
}
