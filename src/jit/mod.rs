//! Native code for an int8 model: the library API host programs use.
//!
//! ```no_run
//! # fn main() -> Result<(), qatc::jit::Error> {
//! let model = qatc::Model::load("runs/lenet/model.qmodel")?;
//! let compiled = model.compile()?; // once; share it between threads
//! let image = vec![0.0f32; model.input_size()]; // one normalized 1x28x28 image
//! let logits = compiled.run(&image)?; // model.output_size() values per image
//! # Ok(()) }
//! ```
//!
//! [`Model::compile`] lowers the graph with Cranelift ([`emit`]) into one function for the host
//! CPU. [`Compiled`] is `Send + Sync`; its entry point only reads the input and constants and
//! writes the output and a scratch buffer of its own thread, and every call checks the buffer
//! lengths first. The output is bit for bit the reference interpreter's ([`crate::interp`]).

pub mod emit;
pub mod target;

pub use emit::DotProduct;

use std::cell::RefCell;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, InstBuilder, UserFuncName};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{DataDescription, Linkage, Module as _};
use rayon::prelude::*;

use crate::int8::QGraph;

/// An error from loading, compiling or running a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// A converted int8 model (a `.qmodel`), ready to compile.
#[derive(Clone, Debug)]
pub struct Model {
    graph: QGraph,
    /// The spec the model was trained from, when known.
    spec: Option<String>,
}

/// How to compile.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The GEMM formulation; `None` picks the fastest exact one for the CPU. Both give the same
    /// bits; forcing one is for tests and measurements.
    pub dot_product: Option<DotProduct>,
    /// Keep the CLIF and the disassembly.
    pub listing: bool,
}

/// What a compilation can show besides the code.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// The Cranelift IR of the entry function.
    pub clif: String,
    /// The machine code, as Cranelift's disassembly.
    pub asm: String,
}

impl Model {
    /// Reads and validates a `.qmodel` file.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error(format!("cannot read {}: {e}", path.display())))?;
        let (graph, info) = crate::qmodel::from_bytes(&bytes)
            .map_err(|e| Error(format!("{}: {e}", path.display())))?;
        Ok(Model {
            graph,
            spec: Some(info.spec),
        })
    }

    /// A model from a graph; the graph must pass [`crate::int8::verify`].
    pub fn from_graph(graph: QGraph) -> Result<Model, Error> {
        crate::int8::verify(&graph).map_err(|e| Error(e.join("; ")))?;
        Ok(Model { graph, spec: None })
    }

    /// The per-channel input normalization (mean, std) of the model's training data, from the
    /// spec stored in the `.qmodel`.
    pub fn normalization(&self) -> Result<(Vec<f32>, Vec<f32>), Error> {
        let spec = self
            .spec
            .as_deref()
            .ok_or_else(|| Error("the model carries no spec".into()))?;
        let (checked, _) = crate::front_end("the model's spec", spec);
        let train = checked
            .map_err(|_| Error("the model's stored spec does not check".into()))?
            .model
            .train
            .ok_or_else(|| Error("the model's spec has no `train` block".into()))?;
        Ok((train.mean, train.std))
    }

    /// Turns 8-bit images (C, H, W each, one after another) into the model's input, normalized
    /// as in training.
    pub fn normalize(&self, pixels: &[u8]) -> Result<Vec<f32>, Error> {
        let size = self.input_size();
        if pixels.is_empty() || !pixels.len().is_multiple_of(size) {
            return Err(Error(format!(
                "{} pixels are not whole images of {size}",
                pixels.len()
            )));
        }
        let (mean, std) = self.normalization()?;
        let shape = &self.graph.nodes[0].shape;
        let channels = if shape.len() == 3 { shape[0] } else { 1 };
        let mut out = Vec::with_capacity(pixels.len());
        crate::data::normalize(pixels, (channels, size / channels), &mean, &std, &mut out);
        Ok(out)
    }

    pub fn graph(&self) -> &QGraph {
        &self.graph
    }

    /// Values in one input sample (the input shape's product).
    pub fn input_size(&self) -> usize {
        self.graph.nodes[0].shape.iter().product()
    }

    /// Values in one output sample.
    pub fn output_size(&self) -> usize {
        self.graph.nodes[self.graph.output].shape.iter().product()
    }

    /// Compiles the model for this machine's CPU.
    pub fn compile(&self) -> Result<Compiled, Error> {
        Ok(self.compile_with(&Options::default())?.0)
    }

    /// Compiles with options; returns the listing too when asked for.
    pub fn compile_with(&self, options: &Options) -> Result<(Compiled, Option<Listing>), Error> {
        let start = Instant::now();
        let isa = target::host_isa()?;
        let dot = options.dot_product;
        let mut listing = options.listing.then(Listing::default);
        let dot = dot.unwrap_or_else(|| best_dot_product(&*isa));
        let mut module = JITModule::new(JITBuilder::with_isa(
            isa,
            cranelift_module::default_libcall_names(),
        ));
        let def = define(&mut module, &self.graph, "qatc_run", dot, listing.as_mut())?;
        module
            .finalize_definitions()
            .map_err(|e| Error(format!("Cranelift: {e}")))?;
        let code = module.get_finalized_function(def.func);
        // SAFETY: `code` is the finalized entry point `define` built, with exactly this
        // signature (four pointer-sized integers, the system calling convention, no returns).
        // It stays valid until `module` is freed, which `Compiled` owns and frees only on drop.
        let entry = unsafe { std::mem::transmute::<*const u8, EntryFn>(code) };
        let compiled = Compiled {
            entry,
            module: Some(module),
            in_size: self.input_size(),
            out_size: self.output_size(),
            scratch_bytes: def.scratch_bytes,
            compile_time: start.elapsed(),
            dot,
        };
        Ok((compiled, listing))
    }
}

/// The dot product that is fastest on a target: the form that folds into one instruction
/// (`vpdpbusd` on x86 with AVX-VNNI or AVX512-VNNI+VL, `usdot` with FEAT_I8MM, `sdot` with
/// FEAT_DotProd), else `pmaddubsw` pairs with an exact i16 fallback on x86 and the unsigned tree
/// on aarch64.
pub fn best_dot_product(isa: &dyn cranelift_codegen::isa::TargetIsa) -> DotProduct {
    let flags = isa.isa_flags();
    let on = |name: &str| {
        flags
            .iter()
            .any(|f| f.name == name && f.as_bool().unwrap_or(false))
    };
    match isa.name() {
        "x64" => {
            let vnni = (on("has_avx") && on("has_avx_vnni"))
                || (on("has_avx512vl") && on("has_avx512vnni"));
            if vnni {
                DotProduct::Vnni
            } else if on("has_ssse3") {
                DotProduct::Pairs
            } else {
                DotProduct::I16
            }
        }
        _ if on("has_i8mm") => DotProduct::Usdot,
        _ if on("has_dotprod") => DotProduct::Sdot,
        _ => DotProduct::Usdot,
    }
}

type EntryFn = unsafe extern "C" fn(*const f32, *mut f32, i64, *mut u8);

/// The most scratch memory a compiled model may need per call (per thread).
pub const MAX_SCRATCH: usize = 1 << 31;

/// A defined entry function.
pub struct Defined {
    pub func: cranelift_module::FuncId,
    pub scratch_bytes: usize,
}

/// Declares and defines the model's constants and its entry function `name` in `module` (a JIT
/// or an object module).
pub fn define(
    module: &mut impl cranelift_module::Module,
    graph: &QGraph,
    name: &str,
    dot: DotProduct,
    listing: Option<&mut Listing>,
) -> Result<Defined, Error> {
    let err = |e: cranelift_module::ModuleError| Error(format!("Cranelift: {e:?}"));
    let ptr = module.target_config().pointer_type();
    if ptr != I64 {
        return Err(Error("qatc generates code for 64-bit targets only".into()));
    }
    let consts_name = format!("{name}_consts");
    let data = module
        .declare_data(&consts_name, Linkage::Local, false, false)
        .map_err(err)?;
    let mut sig = module.make_signature();
    sig.params.extend([AbiParam::new(ptr); 4]);
    let func = module
        .declare_function(name, Linkage::Export, &sig)
        .map_err(err)?;
    let mut ctx = Context::new();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, func.as_u32());
    let mut fctx = FunctionBuilderContext::new();
    let lowered = {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let gv = module.declare_data_in_func(data, b.func);
        let base = b.ins().symbol_value(ptr, gv);
        let lowered =
            emit::lower(&mut b, graph, [p[0], p[1], p[2], p[3]], base, dot).map_err(Error)?;
        b.seal_all_blocks();
        b.finalize(module.target_config());
        lowered
    };
    if lowered.scratch_bytes > MAX_SCRATCH {
        return Err(Error(format!(
            "model `{}` needs {} bytes of scratch memory per call (tiles of {} samples); \
             more than {MAX_SCRATCH} is refused",
            graph.name,
            lowered.scratch_bytes,
            emit::TILE
        )));
    }
    let want = listing.is_some();
    if want {
        ctx.set_disasm(true);
    }
    let clif = if want {
        ctx.func.display().to_string()
    } else {
        String::new()
    };
    module
        .define_function(func, &mut ctx)
        .map_err(|e| Error(format!("Cranelift could not compile the model: {e:?}")))?;
    if let Some(l) = listing {
        l.clif = clif;
        l.asm = ctx
            .compiled_code()
            .and_then(|c| c.vcode.clone())
            .unwrap_or_default();
    }
    let mut desc = DataDescription::new();
    let mut consts = lowered.consts;
    consts.resize(consts.len().max(16), 0);
    desc.define(consts.into_boxed_slice());
    desc.set_align(16);
    module.define_data(data, &desc).map_err(err)?;
    Ok(Defined {
        func,
        scratch_bytes: lowered.scratch_bytes,
    })
}

/// A compiled model. Cheap to call, safe to share between threads.
pub struct Compiled {
    entry: EntryFn,
    module: Option<JITModule>,
    in_size: usize,
    out_size: usize,
    scratch_bytes: usize,
    compile_time: Duration,
    dot: DotProduct,
}

// SAFETY: after `finalize_definitions` the module's code and constants are never written again
// (code pages are read+execute, constants read-only), and the entry function keeps no state
// between calls: all it writes is the output and scratch buffers its caller passes. So calling it
// from several threads at once, or from another thread than the compiling one, is sound.
unsafe impl Send for Compiled {}
// SAFETY: see `Send`; `&Compiled` only gives calls of the entry function.
unsafe impl Sync for Compiled {}

impl Drop for Compiled {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: `entry` points into this module; it is not called after drop because
            // `Compiled` owns the only copy and is being dropped.
            unsafe { module.free_memory() };
        }
    }
}

thread_local! {
    /// Each thread's scratch memory for the entry function, reused across calls.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Compiled {
    pub fn input_size(&self) -> usize {
        self.in_size
    }

    pub fn output_size(&self) -> usize {
        self.out_size
    }

    /// Bytes of scratch memory each calling thread keeps for the entry function.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch_bytes
    }

    /// The GEMM formulation the code uses.
    pub fn dot_product(&self) -> DotProduct {
        self.dot
    }

    /// How long compiling took.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Runs a batch (samples one after another, each `input_size()` values in the model's input
    /// shape, CHW) and returns `output_size()` values per sample.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, Error> {
        let batch = self.batch_of(input)?;
        let mut out = vec![0.0; batch * self.out_size];
        self.run_into(input, &mut out)?;
        Ok(out)
    }

    fn batch_of(&self, input: &[f32]) -> Result<usize, Error> {
        if input.is_empty() || !input.len().is_multiple_of(self.in_size) {
            return Err(Error(format!(
                "input has {} values, not a positive multiple of the model's input size {}",
                input.len(),
                self.in_size
            )));
        }
        Ok(input.len() / self.in_size)
    }

    /// Runs a batch into `output`, which must hold `output_size()` values per input sample.
    /// Batches of more than one tile are split over the current rayon pool's threads.
    pub fn run_into(&self, input: &[f32], output: &mut [f32]) -> Result<(), Error> {
        let batch = self.batch_of(input)?;
        if output.len() != batch * self.out_size {
            return Err(Error(format!(
                "output has room for {} values; {batch} samples need {}",
                output.len(),
                batch * self.out_size
            )));
        }
        let threads = rayon::current_num_threads().max(1);
        let per = batch.div_ceil(threads).next_multiple_of(emit::TILE);
        if threads == 1 || batch <= emit::TILE {
            self.call(input, output);
        } else {
            input
                .par_chunks(per * self.in_size)
                .zip(output.par_chunks_mut(per * self.out_size))
                .for_each(|(i, o)| self.call(i, o));
        }
        Ok(())
    }

    /// Runs the entry function on whole samples; lengths are checked by the callers.
    fn call(&self, input: &[f32], output: &mut [f32]) {
        let batch = input.len() / self.in_size;
        assert!(input.len() == batch * self.in_size && output.len() == batch * self.out_size);
        SCRATCH.with(|s| {
            let mut scratch = s.borrow_mut();
            if scratch.len() < self.scratch_bytes {
                scratch.resize(self.scratch_bytes, 0);
            }
            // SAFETY: the function reads `batch · in_size` f32 from `input` and writes
            // `batch · out_size` f32 to `output` (both checked just above) and at most
            // `scratch_bytes` bytes of `scratch` (its length, checked above); it reads its
            // constants from its own data object and nothing else. It was built for this
            // signature and this CPU by `compile`.
            unsafe {
                (self.entry)(
                    input.as_ptr(),
                    output.as_mut_ptr(),
                    batch as i64,
                    scratch.as_mut_ptr(),
                )
            }
        });
    }
}
