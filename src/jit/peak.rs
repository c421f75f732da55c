//! The roofline's ceiling: the peak rate of a dot-product form on this CPU. A JIT-compiled loop
//! keeps [`ACCUMULATORS`] independent accumulators busy with the form's instructions on register
//! operands only (no loads, no stores), so it runs at the instruction's throughput, not its
//! latency. `qatc bench` times it and reports each model's GMAC/s as a share of it.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{I32, I32X4, I64, I8X16};
use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module};

use super::builder::DotProduct;
use super::module::{best_dot_product, Error};
use super::target;

/// Independent accumulators: more than latency x throughput (about 5 x 2 for `vpdpbusd`), few
/// enough for x86's 16 vector registers with the two operands.
pub const ACCUMULATORS: usize = 12;

type PeakFn = unsafe extern "C" fn(i64, i64) -> i32;

/// A compiled peak loop of one dot-product form.
pub struct PeakLoop {
    entry: PeakFn,
    module: Option<JITModule>,
    dot: DotProduct,
}

impl PeakLoop {
    /// Compiles the loop for `dot` (default: this CPU's best form).
    pub fn compile(dot: Option<DotProduct>) -> Result<PeakLoop, Error> {
        let isa = target::host_isa()?;
        let dot = dot.unwrap_or_else(|| best_dot_product(&*isa));
        let mut module = JITModule::new(JITBuilder::with_isa(
            isa,
            cranelift_module::default_libcall_names(),
        ));
        let cranelift = |e: &dyn std::fmt::Display| Error(format!("Cranelift: {e}"));
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(I64));
        sig.params.push(AbiParam::new(I64));
        sig.returns.push(AbiParam::new(I32));
        let func = module
            .declare_function("qatc_peak", Linkage::Local, &sig)
            .map_err(|e| cranelift(&e))?;
        let mut ctx = module.make_context();
        ctx.func.signature = sig;
        let mut fctx = FunctionBuilderContext::new();
        let config = module.target_config();
        emit(FunctionBuilder::new(&mut ctx.func, &mut fctx), dot, config);
        module
            .define_function(func, &mut ctx)
            .map_err(|e| cranelift(&e))?;
        module.finalize_definitions().map_err(|e| cranelift(&e))?;
        let code = module.get_finalized_function(func);
        // SAFETY: `code` is the finalized function `emit` built with exactly this signature
        // (two i64 parameters, one i32 result, the system calling convention). It stays valid
        // until `module` is freed, which `PeakLoop` owns and frees only on drop.
        let entry = unsafe { std::mem::transmute::<*const u8, PeakFn>(code) };
        Ok(PeakLoop {
            entry,
            module: Some(module),
            dot,
        })
    }

    pub fn dot_product(&self) -> DotProduct {
        self.dot
    }

    /// Products `run(iterations)` computes.
    pub fn macs(&self, iterations: u64) -> f64 {
        iterations as f64 * (ACCUMULATORS * self.dot.macs_per_step()) as f64
    }

    /// Runs `iterations` rounds of the loop; returns a checksum so that the work is used.
    pub fn run(&self, iterations: u64) -> i32 {
        let iterations = i64::try_from(iterations).unwrap_or(i64::MAX);
        // SAFETY: the function only computes on registers and returns; any argument values are
        // valid (a non-positive count runs no round).
        unsafe { (self.entry)(iterations, 0x5a5a_1234) }
    }
}

impl Drop for PeakLoop {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: `entry` points into this module and is not called after drop.
            unsafe { module.free_memory() };
        }
    }
}

/// `fn(iterations, seed) -> checksum`: operands from the seed (so nothing folds), then
/// `iterations` rounds of one dot step on each accumulator, then their lanes summed.
fn emit(
    mut b: FunctionBuilder,
    dot: DotProduct,
    config: cranelift_codegen::isa::TargetFrontendConfig,
) {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let (iterations, seed) = (b.block_params(entry)[0], b.block_params(entry)[1]);
    let little = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    let seed = b.ins().ireduce(I32, seed);
    let w = b.ins().splat(I32X4, seed);
    let w = b.ins().bitcast(I8X16, little, w);
    let a = b.ins().bnot(w);
    let zero = b.ins().iconst(I32, 0);
    let zero = b.ins().splat(I32X4, zero);

    let header = b.create_block();
    let body = b.create_block();
    let exit = b.create_block();
    b.append_block_param(header, I64);
    for _ in 0..ACCUMULATORS {
        b.append_block_param(header, I32X4);
    }
    let i0 = b.ins().iconst(I64, 0);
    let args: Vec<_> = std::iter::once(i0)
        .chain(std::iter::repeat_n(zero, ACCUMULATORS))
        .map(Into::into)
        .collect();
    b.ins().jump(header, &args);

    b.switch_to_block(header);
    let params = b.block_params(header).to_vec();
    let (i, accs) = (params[0], &params[1..]);
    let more = b.ins().icmp(IntCC::SignedLessThan, i, iterations);
    b.ins().brif(more, body, &[], exit, &[]);

    b.switch_to_block(body);
    let next: Vec<_> = accs
        .iter()
        .map(|&acc| dot.emit(&mut b, w, a, acc))
        .collect();
    let i = b.ins().iadd_imm_s(i, 1);
    let args: Vec<_> = std::iter::once(i).chain(next).map(Into::into).collect();
    b.ins().jump(header, &args);

    b.switch_to_block(exit);
    let mut sum = accs[0];
    for &acc in &accs[1..] {
        sum = b.ins().iadd(sum, acc);
    }
    let mut total = b.ins().extractlane(sum, 0);
    for lane in 1..4 {
        let v = b.ins().extractlane(sum, lane);
        total = b.ins().iadd(total, v);
    }
    b.ins().return_(&[total]);
    b.seal_all_blocks();
    b.finalize(config);
}
