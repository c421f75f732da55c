//! Lowering of the int8 IR to one Cranelift function per model.
//!
//! The function is `fn(input: *const f32, output: *mut f32, batch: i64, scratch: *mut u8)`. It runs
//! the batch in tiles of [`TILE`] samples; every op of the graph processes a whole tile before the
//! next op starts, so a Linear layer multiplies a tile of samples at once and a convolution all the
//! pixels of the tile. Activations live in `scratch` (its size is `Lowered::scratch_bytes`);
//! weights and per-channel constants live in one read-only data object (`Lowered::consts`).
//!
//! Layout: quantized 3-D tensors are kept channels-last (HWC), so that a convolution's im2col rows
//! are contiguous runs of `kw · C` bytes and pooling works on whole channel vectors. Every other
//! tensor keeps the reference interpreter's order (CHW); a `Linear` after a `Flatten` of an HWC
//! tensor gets its weight columns permuted at compile time instead of moving data.
//!
//! Numerics: integer products are exact in any order, so `Linear` and `Conv2d` use the widening
//! dot-product tree that Cranelift lowers to `vpdpbusd` (u8 activations times i8 weights, i32
//! accumulators), with the input zero point folded into the bias at compile time
//! (`Σ(x - zp)·w = Σ x·w - zp·Σw`, wrapping, exact whenever the interpreter's sum is). Every float
//! step (quantize, requantize, dequantize, float layers) performs the interpreter's operations in
//! its order, so the result is bit-exact.
//!
//! This file walks the graph and lowers every op; the quantized convolutions and GEMMs come from
//! `gemm.rs`, the loops, copies and tensors from `builder.rs`.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, F32X4, I32, I64, I8, I8X16};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

use crate::int8::{FWeights, QGraph, QOp};
use crate::ir::{Pool, Pool2d};

use super::gemm::{Encoding, Gemm};
use crate::ir::{Act, ConvGeom};
use crate::ops::combine::{Region, Source};
use crate::ops::expr::{Inst, Program};
use crate::quant::numerics::QParams;

use super::builder::*;

/// The two entry points of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// f32 in, f32 out: the input is quantized and the output dequantized inside.
    F32,
    /// quint8 codes in (the input's quantization) and codes out (the output's, before its
    /// dequantize): for models whose input feeds only a quantize and whose output is quantized.
    U8,
}

/// Whether a graph has a u8-in/u8-out entry: its input feeds only `Quantize` nodes and its
/// output is quantized or the dequantize of a quantized node. Returns the input's and the
/// output's quantization parameters.
pub fn u8_entry(graph: &QGraph) -> Option<(QParams, QParams)> {
    let readers: Vec<&crate::int8::QNode> = graph
        .nodes
        .iter()
        .filter(|n| n.inputs.contains(&0))
        .collect();
    let input_q = match readers.as_slice() {
        [first, rest @ ..] if matches!(first.op, QOp::Quantize) => {
            let q = first.ty.qparams()?;
            rest.iter()
                .all(|n| matches!(n.op, QOp::Quantize) && n.ty.qparams() == Some(q))
                .then_some(q)?
        }
        _ => return None,
    };
    Some((input_q, u8_output(graph)?.1))
}

/// The node whose codes are the u8 entry's output, and their parameters.
fn u8_output(graph: &QGraph) -> Option<(usize, QParams)> {
    let out = &graph.nodes[graph.output];
    match (&out.op, out.ty.qparams()) {
        (_, Some(q)) => Some((graph.output, q)),
        (QOp::Dequantize, None) => {
            let src = out.inputs[0];
            Some((src, graph.nodes[src].ty.qparams()?))
        }
        _ => None,
    }
}

/// Emits the body of the entry function into `b`, whose current block has the four parameters.
/// `const_base` is the address of the constants data object.
/// How to lower a graph besides its GEMM form's choice of instructions.
#[derive(Clone, Copy)]
pub struct How {
    pub dot: DotProduct,
    pub entry: Entry,
    /// The profiling hook, in code that times its nodes.
    pub mark: Option<cranelift_codegen::ir::FuncRef>,
    /// The 256-bit GEMM kernel, in JIT code on a CPU that has it.
    pub wide: Option<cranelift_codegen::ir::FuncRef>,
    /// The target is x86_64 (x86-only instructions may be used).
    pub x86: bool,
}

pub fn lower(
    b: &mut FunctionBuilder,
    graph: &QGraph,
    params: [Value; 4],
    const_base: Value,
    how: How,
) -> Result<Lowered, String> {
    let How {
        dot,
        entry,
        mark,
        wide,
        x86,
    } = how;
    let [input, output, batch, scratch_base] = params;
    let in_size: usize = graph.nodes[0].shape.iter().product();
    let out_size: usize = graph.nodes[graph.output].shape.iter().product();
    if entry == Entry::U8 && u8_entry(graph).is_none() {
        return Err(format!(
            "model `{}` has no u8 entry point: its input must feed only quantize nodes and its \
             output must be quantized",
            graph.name
        ));
    }
    let elem = if entry == Entry::U8 { 1 } else { 4 };
    let mut e = Emitter::new(b, const_base, scratch_base, dot);
    e.mark = mark;
    e.wide = wide;
    e.x86 = x86;
    e.for_loop_step(batch, TILE as i64, |e, t| {
        let left = e.b.ins().isub(batch, t);
        let tile = e.b.ins().iconst(I64, TILE as i64);
        e.n = e.b.ins().umin(left, tile);
        let in_off = e.b.ins().imul_imm_s(t, (in_size * elem) as i64);
        let in_ptr = e.b.ins().iadd(input, in_off);
        let out_off = e.b.ins().imul_imm_s(t, (out_size * elem) as i64);
        let out_ptr = e.b.ins().iadd(output, out_off);
        e.graph(graph, in_ptr, out_ptr, entry)?;
        // Closes the last node's time (profiled code only).
        e.profile_mark(graph.nodes.len());
        Ok(())
    })?;
    e.b.ins().return_(&[]);
    Ok(e.finish())
}

impl Emitter<'_, '_> {
    pub(super) fn graph(
        &mut self,
        graph: &QGraph,
        input: Value,
        output: Value,
        entry: Entry,
    ) -> Result<(), String> {
        let input_q = match entry {
            Entry::U8 => u8_entry(graph).map(|(q, _)| q),
            Entry::F32 => None,
        };
        let mut values: Vec<Option<Tensor>> = Vec::with_capacity(graph.nodes.len());
        for (index, node) in graph.nodes.iter().enumerate() {
            self.profile_mark(index);
            // Caller memory is read in place only by the f32 quantize (see `Memory`); any other
            // reader gets the tile copied into scratch, once.
            let reads_exactly = matches!(node.op, QOp::Quantize) && entry == Entry::F32;
            for &i in &node.inputs {
                if let Some(x) = values[i].filter(|x| x.memory == Memory::Caller && !reads_exactly)
                {
                    values[i] = Some(self.copy_to_scratch(x));
                }
            }
            let arg = |k: usize| values[node.inputs[k]].expect("inputs come first");
            let in_shape = |k: usize| graph.nodes[node.inputs[k]].shape.as_slice();
            let size: usize = node.shape.iter().product();
            let out_q = node.ty.qparams();
            let t = match &node.op {
                QOp::Input => Tensor {
                    // The caller's samples: f32 values, or the input's codes for the u8 entry.
                    ptr: input,
                    memory: Memory::Caller,
                    size,
                    q: input_q,
                    order: Order::Chw,
                },
                // The u8 entry's input already holds this quantize's codes.
                QOp::Quantize if entry == Entry::U8 && node.inputs[0] == 0 => arg(0),
                QOp::Quantize => {
                    let x = arg(0);
                    let y = self.tensor(size, out_q, Order::Chw);
                    self.quantize(x.ptr, y.ptr, size, out_q.expect("quantize gives u8"));
                    y
                }
                QOp::Dequantize => {
                    let x = self.canonical(arg(0));
                    let y = self.tensor(size, None, Order::Chw);
                    self.dequantize(x.ptr, y.ptr, size, x.q.expect("dequantize takes u8"));
                    y
                }
                QOp::Linear {
                    in_features,
                    out_features,
                    w,
                } => {
                    let x = arg(0);
                    let y = self.tensor(size, out_q, Order::Chw);
                    let k = *in_features;
                    // Column j of the packed matrix reads memory position j of the input.
                    let column: Box<dyn Fn(usize) -> usize> = match x.order {
                        Order::Hwc(c, h, wd) => Box::new(move |j| (j % c) * h * wd + j / c),
                        Order::Chw => Box::new(|j| j),
                    };
                    let rows = self.n;
                    let wt = |o: usize, j: usize| w.weight[o * k + column(j)];
                    let xq = x.q.expect("u8 input");
                    let kernel = self.pack(k, *out_features, &wt, w, xq, out_q.expect("u8 output"));
                    let gemm = Gemm {
                        a: x.ptr,
                        a_stride: k,
                        rows,
                        rows_per_sample: 1,
                        samples: TILE,
                        encoding: Encoding::Codes,
                        out: y.ptr,
                        out_stride: *out_features,
                        o: *out_features,
                    };
                    self.run_gemm(gemm, &kernel);
                    y
                }
                QOp::Conv2d { geom, w } => {
                    let x = self.hwc(arg(0), in_shape(0));
                    let yq = out_q.expect("u8");
                    if super::depthwise::is_depthwise(geom) {
                        self.depthwise(x, in_shape(0), &node.shape, geom, w, yq)
                    } else {
                        self.conv(x, in_shape(0), &node.shape, geom, w, yq)
                    }
                }
                QOp::Clamp { lo, hi } => {
                    let x = arg(0);
                    let y = self.tensor(size, x.q, x.order);
                    self.clamp(x.ptr, y.ptr, size, *lo, *hi);
                    y
                }
                QOp::Pool(Pool::MaxPool2d(pool)) if arg(0).q.is_some() => {
                    let x = self.hwc(arg(0), in_shape(0));
                    self.max_pool_u8(x, in_shape(0), &node.shape, pool)
                }
                QOp::Pool(Pool::MaxPool2d(pool) | Pool::AvgPool2d(pool)) => {
                    let avg = matches!(node.op, QOp::Pool(Pool::AvgPool2d(_)));
                    let x = self.canonical(arg(0));
                    self.pool_scalar(x, in_shape(0), &node.shape, pool, avg)
                }
                QOp::Pool(Pool::GlobalAvgPool) => {
                    let x = self.canonical(arg(0));
                    let (c, h, wd) = chw(in_shape(0));
                    self.global_avg_pool(x, c, h * wd)
                }
                QOp::Flatten => {
                    let x = arg(0);
                    Tensor { size, ..x }
                }
                QOp::Combine(c) => {
                    let shapes: Vec<&[usize]> = (0..node.inputs.len()).map(in_shape).collect();
                    let xs: Vec<Tensor> = (0..node.inputs.len())
                        .map(|k| self.canonical(arg(k)))
                        .collect();
                    self.combine(&c.regions(&shapes, &node.shape), &xs, size, out_q)
                }
                QOp::BatchNorm { scale, shift } | QOp::FloatBatchNorm { scale, shift } => {
                    let x = self.canonical(arg(0));
                    let (c, h, wd) = chw(&node.shape);
                    self.batch_norm(x, c, h * wd, scale, shift, out_q)
                }
                QOp::FloatLinear {
                    in_features,
                    out_features,
                    w,
                } => {
                    let x = arg(0);
                    let geom = ConvGeom {
                        in_channels: *in_features,
                        out_channels: *out_features,
                        kernel: (1, 1),
                        stride: (1, 1),
                        padding: (0, 0),
                        groups: 1,
                    };
                    self.float_conv(x, &[*in_features, 1, 1], &[*out_features, 1, 1], &geom, w)
                }
                QOp::FloatConv2d { geom, w } => {
                    let x = arg(0);
                    self.float_conv(x, in_shape(0), &node.shape, geom, w)
                }
                QOp::FloatAct(a) => {
                    let x = arg(0);
                    let y = self.tensor(size, None, Order::Chw);
                    let total = self.b.ins().imul_imm_s(self.n, size as i64);
                    let program = a.program();
                    self.for_loop(total, |e, i| {
                        let src = e.at(x.ptr, i, 4);
                        let v = e.b.ins().load(F32, flags(), src, 0);
                        let v = e.program(&program, v);
                        let dst = e.at(y.ptr, i, 4);
                        e.b.ins().store(flags(), v, dst, 0);
                    });
                    y
                }
                QOp::Lut { table } => {
                    let x = arg(0);
                    let y = self.tensor(size, out_q, x.order);
                    let table = self.constant(table);
                    let total = self.b.ins().imul_imm_s(self.n, size as i64);
                    self.for_loop(total, |e, i| {
                        let src = e.b.ins().iadd(x.ptr, i);
                        let code = e.b.ins().uload8(I64, flags(), src, 0);
                        let entry = e.b.ins().iadd(table, code);
                        let v = e.b.ins().load(I8, flags(), entry, 0);
                        let dst = e.b.ins().iadd(y.ptr, i);
                        e.b.ins().store(flags(), v, dst, 0);
                    });
                    y
                }
            };
            values.push(Some(t));
        }
        if entry == Entry::U8 {
            let (node, _) = u8_output(graph).expect("checked by lower");
            let out = self.canonical(values[node].expect("the output node exists"));
            self.copy_out(out, output, I8);
            return Ok(());
        }
        let out = self.canonical(values[graph.output].expect("the output node exists"));
        match out.q {
            Some(q) => self.dequantize(out.ptr, output, out.size, q),
            None => self.copy_out(out, output, F32),
        }
        Ok(())
    }

    /// Transposes each sample's `[rows][cols]` elements to `[cols][rows]`.
    pub(super) fn transpose(
        &mut self,
        x: Tensor,
        rows: usize,
        cols: usize,
        order: Order,
    ) -> Tensor {
        let y = self.tensor(x.size, x.q, order);
        let eb = x.elem_bytes();
        let ty = if eb == 1 { I8 } else { F32 };
        self.for_samples(|e, s| {
            let src = e.at(x.ptr, s, x.size * eb);
            let dst = e.at(y.ptr, s, x.size * eb);
            e.for_const(rows, |e, r| {
                e.for_const(cols, |e, c| {
                    let from = e.b.ins().imul_imm_s(r, cols as i64);
                    let from = e.b.ins().iadd(from, c);
                    let from = e.at(src, from, eb);
                    let v = e.b.ins().load(ty, flags(), from, 0);
                    let to = e.b.ins().imul_imm_s(c, rows as i64);
                    let to = e.b.ins().iadd(to, r);
                    let to = e.at(dst, to, eb);
                    e.b.ins().store(flags(), v, to, 0);
                });
            });
        });
        y
    }

    /// The tensor in the interpreter's order.
    pub(super) fn canonical(&mut self, x: Tensor) -> Tensor {
        match x.order {
            Order::Hwc(c, h, w) if c > 1 && h * w > 1 => self.transpose(x, h * w, c, Order::Chw),
            _ => Tensor {
                order: Order::Chw,
                ..x
            },
        }
    }

    /// A 3-D tensor of `shape` in channels-last order.
    pub(super) fn hwc(&mut self, x: Tensor, shape: &[usize]) -> Tensor {
        let (c, h, w) = chw(shape);
        match x.order {
            Order::Chw if c > 1 && h * w > 1 => self.transpose(x, c, h * w, Order::Hwc(c, h, w)),
            _ => Tensor {
                order: Order::Hwc(c, h, w),
                ..x
            },
        }
    }

    /// f32 (interpreter order) to u8 codes, sixteen at a time, the tail one at a time.
    pub(super) fn quantize(&mut self, src: Value, dst: Value, size: usize, q: QParams) {
        let total = self.b.ins().imul_imm_s(self.n, size as i64);
        let chunks = self.b.ins().ushr_imm_s(total, 4);
        let inv = self.splat_f32(1.0 / q.scale);
        let zp = self.splat_f32(q.zero_point as f32);
        self.for_loop(chunks, |e, i| {
            let from = e.at(src, i, 64);
            let v: [Value; 4] = std::array::from_fn(|k| {
                let x = e.b.ins().load(F32X4, flags(), from, (16 * k) as i32);
                e.quantize_vec(x, inv, zp)
            });
            let bytes = e.narrow(v);
            let to = e.at(dst, i, 16);
            e.b.ins().store(flags(), bytes, to, 0);
        });
        let done = self.b.ins().ishl_imm_s(chunks, 4);
        let rest = self.b.ins().isub(total, done);
        self.for_loop(rest, |e, i| {
            let i = e.b.ins().iadd(i, done);
            let from = e.at(src, i, 4);
            let x = e.b.ins().load(F32, flags(), from, 0);
            let c = e.quantize_scalar(x, q);
            let to = e.at(dst, i, 1);
            e.b.ins().istore8(flags(), c, to, 0);
        });
    }

    pub(super) fn dequantize(&mut self, src: Value, dst: Value, size: usize, q: QParams) {
        let total = self.b.ins().imul_imm_s(self.n, size as i64);
        self.for_loop(total, |e, i| {
            let from = e.at(src, i, 1);
            let c = e.b.ins().load(I8, flags(), from, 0);
            let v = e.dequantize_scalar(c, q);
            let to = e.at(dst, i, 4);
            e.b.ins().store(flags(), v, to, 0);
        });
    }

    /// Codes clamped to `[lo, hi]`, sixteen at a time (the last vector runs into the slack).
    pub(super) fn clamp(&mut self, src: Value, dst: Value, size: usize, lo: i32, hi: i32) {
        let total = self.b.ins().imul_imm_s(self.n, size as i64);
        let chunks = self.b.ins().iadd_imm_s(total, 15);
        let chunks = self.b.ins().ushr_imm_s(chunks, 4);
        let lo_v = self.splat_u8(lo);
        let hi_v = self.splat_u8(hi);
        self.for_loop(chunks, |e, i| {
            let from = e.at(src, i, 16);
            let v = e.b.ins().load(I8X16, flags(), from, 0);
            let v = e.b.ins().umax(v, lo_v);
            let v = e.b.ins().umin(v, hi_v);
            let to = e.at(dst, i, 16);
            e.b.ins().store(flags(), v, to, 0);
        });
    }

    /// An elementwise program ([`crate::ops::expr`]) on one f32, instruction for instruction
    /// as [`Program::eval`] computes it.
    pub(super) fn program(&mut self, program: &Program, x: Value) -> Value {
        self.program_args(program, &[x])
    }

    /// A program over several f32 arguments ([`Inst::Arg`]).
    pub(super) fn program_args(&mut self, program: &Program, args: &[Value]) -> Value {
        let mut stack: Vec<Value> = Vec::new();
        let pop = |stack: &mut Vec<Value>| stack.pop().expect("a valid program");
        for inst in &program.0 {
            let v = match *inst {
                Inst::X => args[0],
                Inst::Arg(k) => args[k],
                Inst::Const(c) => self.b.ins().f32const(c),
                Inst::Add | Inst::Sub | Inst::Mul | Inst::Div | Inst::Max | Inst::Min => {
                    let b = pop(&mut stack);
                    let a = pop(&mut stack);
                    match *inst {
                        Inst::Add => self.b.ins().fadd(a, b),
                        Inst::Sub => self.b.ins().fsub(a, b),
                        Inst::Mul => self.b.ins().fmul(a, b),
                        Inst::Div => self.b.ins().fdiv(a, b),
                        Inst::Max => {
                            let gt = self.b.ins().fcmp(FloatCC::GreaterThan, a, b);
                            self.b.ins().select(gt, a, b)
                        }
                        _ => {
                            let lt = self.b.ins().fcmp(FloatCC::LessThan, a, b);
                            self.b.ins().select(lt, a, b)
                        }
                    }
                }
                Inst::IfGt(rhs) | Inst::IfGe(rhs) => {
                    let otherwise = pop(&mut stack);
                    let then = pop(&mut stack);
                    let v = pop(&mut stack);
                    let rhs = self.b.ins().f32const(rhs);
                    let cc = if matches!(inst, Inst::IfGt(_)) {
                        FloatCC::GreaterThan
                    } else {
                        FloatCC::GreaterThanOrEqual
                    };
                    let cond = self.b.ins().fcmp(cc, v, rhs);
                    self.b.ins().select(cond, then, otherwise)
                }
                Inst::Round => {
                    let v = pop(&mut stack);
                    self.b.ins().nearest(v)
                }
                Inst::Pow2 => {
                    // As `expr::pow2`: clamp to -126..=127 (NaN to -126), then build the bits.
                    let n = pop(&mut stack);
                    let hi = self.b.ins().f32const(127.0);
                    let lo = self.b.ins().f32const(-126.0);
                    let over = self.b.ins().fcmp(FloatCC::GreaterThan, n, hi);
                    let inside = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, n, lo);
                    let n = self.b.ins().select(inside, n, lo);
                    let n = self.b.ins().select(over, hi, n);
                    let n = self.b.ins().fcvt_to_sint_sat(I32, n);
                    let e = self.b.ins().iadd_imm_s(n, 127);
                    let bits = self.b.ins().ishl_imm_u(e, 23);
                    self.b.ins().bitcast(F32, MemFlagsData::new(), bits)
                }
            };
            stack.push(v);
        }
        pop(&mut stack)
    }

    /// A float layer's fused activation: its program, as the interpreter evaluates it.
    pub(super) fn act(&mut self, act: Act, v: Value) -> Value {
        match act.activation() {
            Some(a) => self.program(&a.program(), v),
            None => v,
        }
    }

    /// An op combining its inputs ([`crate::ops::combine`]), region by region: each output
    /// value is the region's program over the inputs' values where their sources say,
    /// dequantized when u8, and is quantized when the output is.
    pub(super) fn combine(
        &mut self,
        regions: &[Region],
        xs: &[Tensor],
        size: usize,
        q: Option<QParams>,
    ) -> Tensor {
        let y = self.tensor(size, q, Order::Chw);
        for region in regions {
            let start = region.range.start;
            self.for_samples(|e, s| {
                e.for_const(region.range.len(), |e, t| {
                    let j = e.b.ins().iadd_imm_s(t, start as i64);
                    let args: Vec<Value> = region
                        .inputs
                        .iter()
                        .map(|&(k, source)| {
                            let index = match source {
                                Source::Same => j,
                                Source::PerChannel { plane } => {
                                    e.b.ins().udiv_imm_u(j, plane.max(1) as i64)
                                }
                                Source::Offset { start } => {
                                    e.b.ins().iadd_imm_s(j, -(start as i64))
                                }
                            };
                            let base = e.b.ins().imul_imm_s(s, xs[k].size as i64);
                            let i = e.b.ins().iadd(base, index);
                            e.load_value(&xs[k], i)
                        })
                        .collect();
                    let v = e.program_args(&region.program, &args);
                    let base = e.b.ins().imul_imm_s(s, size as i64);
                    let i = e.b.ins().iadd(base, j);
                    e.store_value(&y, i, v);
                });
            });
        }
        y
    }

    /// Per-channel `x · scale[c] + shift[c]` (dequantized and requantized when u8).
    pub(super) fn batch_norm(
        &mut self,
        x: Tensor,
        c: usize,
        plane: usize,
        scale: &[f32],
        shift: &[f32],
        q: Option<QParams>,
    ) -> Tensor {
        let y = self.tensor(x.size, q, Order::Chw);
        let scales = self.constant(&Self::f32_bytes(scale.iter().copied()));
        let shifts = self.constant(&Self::f32_bytes(shift.iter().copied()));
        self.for_samples(|e, s| {
            e.for_const(c, |e, ch| {
                let sp = e.at(scales, ch, 4);
                let sc = e.b.ins().load(F32, flags(), sp, 0);
                let hp = e.at(shifts, ch, 4);
                let sh = e.b.ins().load(F32, flags(), hp, 0);
                e.for_const(plane, |e, p| {
                    let i = e.b.ins().imul_imm_s(s, x.size as i64);
                    let i2 = e.b.ins().imul_imm_s(ch, plane as i64);
                    let i = e.b.ins().iadd(i, i2);
                    let i = e.b.ins().iadd(i, p);
                    let v = e.load_value(&x, i);
                    let v = e.b.ins().fmul(v, sc);
                    let v = e.b.ins().fadd(v, sh);
                    e.store_value(&y, i, v);
                });
            });
        });
        y
    }

    pub(super) fn global_avg_pool(&mut self, x: Tensor, c: usize, plane: usize) -> Tensor {
        let y = self.tensor(c, x.q, Order::Chw);
        self.for_samples(|e, s| {
            e.for_const(c, |e, ch| {
                let base = e.b.ins().imul_imm_s(s, x.size as i64);
                let off = e.b.ins().imul_imm_s(ch, plane as i64);
                let base = e.b.ins().iadd(base, off);
                let out = e.b.ins().imul_imm_s(s, c as i64);
                let out = e.b.ins().iadd(out, ch);
                match x.q {
                    Some(_) => {
                        let acc = e.b.declare_var(I32);
                        let zero = e.b.ins().iconst(I32, 0);
                        e.b.def_var(acc, zero);
                        e.for_const(plane, |e, p| {
                            let i = e.b.ins().iadd(base, p);
                            let ptr = e.at(x.ptr, i, 1);
                            let v = e.b.ins().uload8(I32, flags(), ptr, 0);
                            let a = e.b.use_var(acc);
                            let a = e.b.ins().iadd(a, v);
                            e.b.def_var(acc, a);
                        });
                        let sum = e.b.use_var(acc);
                        let avg = e.average_codes(sum, plane as i32);
                        let ptr = e.at(y.ptr, out, 1);
                        e.b.ins().istore8(flags(), avg, ptr, 0);
                    }
                    None => {
                        let acc = e.b.declare_var(F32);
                        let zero = e.b.ins().f32const(0.0);
                        e.b.def_var(acc, zero);
                        e.for_const(plane, |e, p| {
                            let i = e.b.ins().iadd(base, p);
                            let ptr = e.at(x.ptr, i, 4);
                            let v = e.b.ins().load(F32, flags(), ptr, 0);
                            let a = e.b.use_var(acc);
                            let a = e.b.ins().fadd(a, v);
                            e.b.def_var(acc, a);
                        });
                        let sum = e.b.use_var(acc);
                        let n = e.b.ins().f32const(plane as f32);
                        let avg = e.b.ins().fdiv(sum, n);
                        let ptr = e.at(y.ptr, out, 4);
                        e.b.ins().store(flags(), avg, ptr, 0);
                    }
                }
            });
        });
        y
    }

    /// The interpreter's `average_codes(sum, n)`: `round_half_even(sum / n)`, clamped to a code.
    pub(super) fn average_codes(&mut self, sum: Value, n: i32) -> Value {
        let f = self.b.ins().fcvt_from_sint(F32, sum);
        let d = self.b.ins().f32const(n as f32);
        let v = self.b.ins().fdiv(f, d);
        let v = self.b.ins().nearest(v);
        let v = self.b.ins().fcvt_to_sint_sat(I32, v);
        let lo = self.b.ins().iconst(I32, 0);
        let hi = self.b.ins().iconst(I32, 255);
        let v = self.b.ins().smax(v, lo);
        self.b.ins().smin(v, hi)
    }

    /// Copies the batch's values of `x` (of type `ty`) to `output`, one value per step.
    pub(super) fn copy_out(&mut self, x: Tensor, output: Value, ty: Type) {
        let size = ty.bytes() as usize;
        let total = self.b.ins().imul_imm_s(self.n, x.size as i64);
        self.for_loop(total, |e, i| {
            let src = e.at(x.ptr, i, size);
            let v = e.b.ins().load(ty, flags(), src, 0);
            let dst = e.at(output, i, size);
            e.b.ins().store(flags(), v, dst, 0);
        });
    }

    pub(super) fn max_pool_u8(
        &mut self,
        x: Tensor,
        in_shape: &[usize],
        out_shape: &[usize],
        pool: &Pool2d,
    ) -> Tensor {
        let (c, h, w) = chw(in_shape);
        let (_, ho, wo) = chw(out_shape);
        // Padding taps take code 0, which never wins a max of codes.
        let (x, _, wp) = self.pad_hwc(x, (c, h, w), pool.padding, 0);
        let y = self.tensor(c * ho * wo, x.q, Order::Hwc(c, ho, wo));
        let (in_size, out_size) = (x.size, y.size);
        self.for_samples(|e, s| {
            let src = e.at(x.ptr, s, in_size);
            let dst = e.at(y.ptr, s, out_size);
            e.for_const(ho, |e, oh| {
                let row = e.b.ins().imul_imm_s(oh, (pool.stride.0 * wp * c) as i64);
                let row = e.b.ins().iadd(src, row);
                e.for_const(wo, |e, ow| {
                    let px = e.at(row, ow, pool.stride.1 * c);
                    let out = e.b.ins().imul_imm_s(oh, wo as i64);
                    let out = e.b.ins().iadd(out, ow);
                    let out = e.at(dst, out, c);
                    // Sixteen channels at a time (a loop over them when there are many):
                    // the window's taps are unrolled, never the channels.
                    e.for_const(c.div_ceil(16), |e, chunk| {
                        let px = e.at(px, chunk, 16);
                        let mut m = None;
                        for i in 0..pool.kernel.0 {
                            for j in 0..pool.kernel.1 {
                                let off = ((i * wp + j) * c) as i32;
                                let v = e.b.ins().load(I8X16, flags(), px, off);
                                m = Some(match m {
                                    None => v,
                                    Some(m) => e.b.ins().umax(m, v),
                                });
                            }
                        }
                        let m = m.expect("pool windows are not empty");
                        let out = e.at(out, chunk, 16);
                        e.b.ins().store(flags(), m, out, 0);
                    });
                });
            });
        });
        y
    }

    /// Max or average pooling one value at a time, in the interpreter's order (CHW). Padding taps
    /// are left out of the window; average pooling divides by the full kernel size and counts a
    /// padding tap as the zero point (a zero value).
    pub(super) fn pool_scalar(
        &mut self,
        x: Tensor,
        in_shape: &[usize],
        out_shape: &[usize],
        pool: &Pool2d,
        avg: bool,
    ) -> Tensor {
        let (c, h, w) = chw(in_shape);
        let (_, ho, wo) = chw(out_shape);
        let y = self.tensor(c * ho * wo, x.q, Order::Chw);
        let n = (pool.kernel.0 * pool.kernel.1) as i32;
        self.for_samples(|e, s| {
            e.for_const(c, |e, ch| {
                let plane = e.b.ins().imul_imm_s(s, x.size as i64);
                let off = e.b.ins().imul_imm_s(ch, (h * w) as i64);
                let plane = e.b.ins().iadd(plane, off);
                let out_plane = e.b.ins().imul_imm_s(s, y.size as i64);
                let off = e.b.ins().imul_imm_s(ch, (ho * wo) as i64);
                let out_plane = e.b.ins().iadd(out_plane, off);
                e.for_const(ho, |e, oh| {
                    e.for_const(wo, |e, ow| {
                        // Taps are known now except for their position; emit each with its
                        // bounds check.
                        let (acc_ty, init) = match (x.q, avg) {
                            (Some(_), _) => (I32, 0.0),
                            (None, true) => (F32, 0.0),
                            (None, false) => (F32, f32::NEG_INFINITY),
                        };
                        let acc = e.b.declare_var(acc_ty);
                        let v0 = if acc_ty == I32 {
                            e.b.ins().iconst(I32, 0)
                        } else {
                            e.b.ins().f32const(init)
                        };
                        e.b.def_var(acc, v0);
                        let cnt = e.b.declare_var(I32);
                        let zero = e.b.ins().iconst(I32, 0);
                        e.b.def_var(cnt, zero);
                        for i in 0..pool.kernel.0 {
                            for j in 0..pool.kernel.1 {
                                let ih = e.b.ins().imul_imm_s(oh, pool.stride.0 as i64);
                                let ih = e.b.ins().iadd_imm_s(ih, i as i64 - pool.padding.0 as i64);
                                let iw = e.b.ins().imul_imm_s(ow, pool.stride.1 as i64);
                                let iw = e.b.ins().iadd_imm_s(iw, j as i64 - pool.padding.1 as i64);
                                let inside = e.inside(ih, h, iw, w);
                                let tap = e.b.create_block();
                                let next = e.b.create_block();
                                e.b.ins().brif(inside, tap, &[], next, &[]);
                                e.b.switch_to_block(tap);
                                let idx = e.b.ins().imul_imm_s(ih, w as i64);
                                let idx = e.b.ins().iadd(idx, iw);
                                let idx = e.b.ins().iadd(idx, plane);
                                let a = e.b.use_var(acc);
                                let a = match (x.q, avg) {
                                    (Some(_), true) => {
                                        let p = e.at(x.ptr, idx, 1);
                                        let v = e.b.ins().uload8(I32, flags(), p, 0);
                                        e.b.ins().iadd(a, v)
                                    }
                                    (Some(_), false) => {
                                        unreachable!("u8 max pooling is vectorized")
                                    }
                                    (None, true) => {
                                        let v = e.load_value(&x, idx);
                                        e.b.ins().fadd(a, v)
                                    }
                                    (None, false) => {
                                        let v = e.load_value(&x, idx);
                                        let gt = e.b.ins().fcmp(FloatCC::GreaterThan, v, a);
                                        e.b.ins().select(gt, v, a)
                                    }
                                };
                                e.b.def_var(acc, a);
                                let k = e.b.use_var(cnt);
                                let k = e.b.ins().iadd_imm_s(k, 1);
                                e.b.def_var(cnt, k);
                                e.b.ins().jump(next, &[]);
                                e.b.switch_to_block(next);
                            }
                        }
                        let a = e.b.use_var(acc);
                        let out = e.b.ins().imul_imm_s(oh, wo as i64);
                        let out = e.b.ins().iadd(out, ow);
                        let out = e.b.ins().iadd(out, out_plane);
                        match (x.q, avg) {
                            (Some(q), _) => {
                                let k = e.b.use_var(cnt);
                                let full = e.b.ins().iconst(I32, n as i64);
                                let missing = e.b.ins().isub(full, k);
                                let pad = e.b.ins().imul_imm_s(missing, q.zero_point as i64);
                                let sum = e.b.ins().iadd(a, pad);
                                let v = e.average_codes(sum, n);
                                let p = e.at(y.ptr, out, 1);
                                e.b.ins().istore8(flags(), v, p, 0);
                            }
                            (None, true) => {
                                let d = e.b.ins().f32const(n as f32);
                                let v = e.b.ins().fdiv(a, d);
                                e.store_value(&y, out, v);
                            }
                            (None, false) => e.store_value(&y, out, a),
                        }
                    });
                });
            });
        });
        y
    }

    /// A float convolution (or Linear as a 1x1 one) exactly as the interpreter sums: from +0.0,
    /// channel, then kernel row, then kernel column, padding taps skipped; then bias and act.
    pub(super) fn float_conv(
        &mut self,
        x: Tensor,
        in_shape: &[usize],
        out_shape: &[usize],
        geom: &ConvGeom,
        w: &FWeights,
    ) -> Tensor {
        let x = self.canonical(x);
        let (_, h, wd) = chw(in_shape);
        let (o_n, ho, wo) = chw(out_shape);
        let y = self.tensor(o_n * ho * wo, None, Order::Chw);
        let (kh, kw) = geom.kernel;
        let cg = geom.in_channels / geom.groups;
        let og = geom.out_channels / geom.groups;
        let kg = cg * kh * kw;
        let weights = self.constant(&Self::f32_bytes(w.weight.iter().copied()));
        let biases = self.constant(&Self::f32_bytes(w.bias.iter().copied()));
        let in_size = x.size;
        self.for_samples(|e, s| {
            let xs = e.at(x.ptr, s, in_size * 4);
            let ys = e.at(y.ptr, s, o_n * ho * wo * 4);
            e.for_const(o_n, |e, o| {
                let g = e.b.ins().udiv_imm_s(o, og as i64);
                let wrow = e.at(weights, o, kg * 4);
                e.for_const(ho, |e, oh| {
                    e.for_const(wo, |e, ow| {
                        let acc = e.b.declare_var(F32);
                        let zero = e.b.ins().f32const(0.0);
                        e.b.def_var(acc, zero);
                        e.for_const(cg, |e, c| {
                            let ch = e.b.ins().imul_imm_s(g, cg as i64);
                            let ch = e.b.ins().iadd(ch, c);
                            let plane = e.at(xs, ch, h * wd * 4);
                            let wc = e.at(wrow, c, kh * kw * 4);
                            for i in 0..kh {
                                for j in 0..kw {
                                    let ih = e.b.ins().imul_imm_s(oh, geom.stride.0 as i64);
                                    let ih =
                                        e.b.ins().iadd_imm_s(ih, i as i64 - geom.padding.0 as i64);
                                    let iw = e.b.ins().imul_imm_s(ow, geom.stride.1 as i64);
                                    let iw =
                                        e.b.ins().iadd_imm_s(iw, j as i64 - geom.padding.1 as i64);
                                    let inside = e.inside(ih, h, iw, wd);
                                    let tap = e.b.create_block();
                                    let next = e.b.create_block();
                                    e.b.ins().brif(inside, tap, &[], next, &[]);
                                    e.b.switch_to_block(tap);
                                    let idx = e.b.ins().imul_imm_s(ih, wd as i64);
                                    let idx = e.b.ins().iadd(idx, iw);
                                    let p = e.at(plane, idx, 4);
                                    let xv = e.b.ins().load(F32, flags(), p, 0);
                                    let wv =
                                        e.b.ins().load(F32, flags(), wc, ((i * kw + j) * 4) as i32);
                                    let prod = e.b.ins().fmul(xv, wv);
                                    let a = e.b.use_var(acc);
                                    let a = e.b.ins().fadd(a, prod);
                                    e.b.def_var(acc, a);
                                    e.b.ins().jump(next, &[]);
                                    e.b.switch_to_block(next);
                                }
                            }
                        });
                        let a = e.b.use_var(acc);
                        let bp = e.at(biases, o, 4);
                        let bias = e.b.ins().load(F32, flags(), bp, 0);
                        let v = e.b.ins().fadd(a, bias);
                        let v = e.act(w.act, v);
                        let out = e.b.ins().imul_imm_s(o, (ho * wo) as i64);
                        let r = e.b.ins().imul_imm_s(oh, wo as i64);
                        let out = e.b.ins().iadd(out, r);
                        let out = e.b.ins().iadd(out, ow);
                        let p = e.at(ys, out, 4);
                        e.b.ins().store(flags(), v, p, 0);
                    });
                });
            });
        });
        y
    }
}
