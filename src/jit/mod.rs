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
//! [`Model::compile`] lowers the graph with Cranelift ([`lower`]) into one function for the host
//! CPU. [`Compiled`] is `Send + Sync`; its entry point only reads the input and constants and
//! writes the output and a scratch buffer of its own thread, and every call checks the buffer
//! lengths first. The output is bit for bit the reference interpreter's ([`crate::interp`]).

mod builder;
mod depthwise;
mod gemm;
pub mod lower;
mod module;
pub mod peak;
pub mod profile;
pub mod target;
pub mod wide;

pub use builder::{DotProduct, TILE};
pub use module::{best_dot_product, define, Defined, Error, Imports, Listing, MAX_SCRATCH};

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use cranelift_jit::{JITBuilder, JITModule};
use rayon::prelude::*;

use crate::data::Normalization;
use crate::int8::QGraph;
use crate::quant::numerics::QParams;

/// A converted int8 model (a `.qmodel`), ready to compile.
#[derive(Clone, Debug)]
pub struct Model {
    graph: QGraph,
    /// How images become the model's input, when known.
    normalization: Option<Normalization>,
}

/// How to compile.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The GEMM formulation; `None` picks the fastest exact one for the CPU. Both give the same
    /// bits; forcing one is for tests and measurements.
    pub dot_product: Option<DotProduct>,
    /// Keep the CLIF and the disassembly.
    pub listing: bool,
    /// Also compile the u8-in/u8-out entry ([`Compiled::run_u8`]), which doubles the compile
    /// time; objects always have it.
    pub u8_entry: bool,
    /// Keep every GEMM in Cranelift's 128-bit code, even on a CPU where [`wide`]'s 256-bit
    /// kernel runs (the same bits; for tests and measurements).
    pub narrow: bool,
}

impl Model {
    /// Reads and validates a `.qmodel` file.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error(format!("cannot read {}: {e}", path.display())))?;
        Model::from_bytes(&bytes).map_err(|e| Error(format!("{}: {e}", path.display())))
    }

    /// Reads and validates the bytes of a `.qmodel` file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, Error> {
        let (graph, info) = crate::qmodel::from_bytes(bytes).map_err(Error)?;
        Ok(Model {
            graph,
            normalization: info.normalization,
        })
    }

    /// A model from a graph; the graph must pass [`crate::int8::verify`].
    pub fn from_graph(graph: QGraph) -> Result<Model, Error> {
        crate::int8::verify(&graph).map_err(|e| Error(e.join("; ")))?;
        Ok(Model {
            graph,
            normalization: None,
        })
    }

    /// How images become the model's input (per-channel mean and std of the training data), as
    /// stored in the `.qmodel`.
    pub fn normalization(&self) -> Result<&Normalization, Error> {
        self.normalization.as_ref().ok_or_else(|| {
            Error("the model carries no input normalization (it was saved without one)".into())
        })
    }

    /// Sets the normalization [`Model::normalize`] applies (for models built from a graph).
    pub fn with_normalization(mut self, normalization: Normalization) -> Model {
        self.normalization = Some(normalization);
        self
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
        let norm = self.normalization()?;
        let shape = &self.graph.nodes[0].shape;
        let channels = if shape.len() == 3 { shape[0] } else { 1 };
        let mut out = Vec::with_capacity(pixels.len());
        norm.apply(pixels, (channels, size / channels), &mut out);
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
        self.compile_inner(options, false)
    }

    /// Compiles code that times each node on the calling thread ([`profile`]): for
    /// `qatc bench --layers`, slower than [`Model::compile`]'s by a clock read per node.
    pub fn compile_profiled(&self, options: &Options) -> Result<Compiled, Error> {
        Ok(self.compile_inner(options, true)?.0)
    }

    fn compile_inner(
        &self,
        options: &Options,
        profiled: bool,
    ) -> Result<(Compiled, Option<Listing>), Error> {
        let start = Instant::now();
        let isa = target::host_isa()?;
        let dot = options.dot_product;
        let mut listing = options.listing.then(Listing::default);
        let dot = dot.unwrap_or_else(|| best_dot_product(&*isa));
        let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        if profiled {
            builder.symbol(profile::SYMBOL, profile::mark as *const u8);
        }
        let wide_gemm = !options.narrow && dot == DotProduct::Vnni && wide::available();
        if wide_gemm {
            builder.symbol(wide::SYMBOL, wide::accumulate as *const u8);
        }
        let mut module = JITModule::new(builder);
        let def = define(
            &mut module,
            &self.graph,
            "qatc_run",
            dot,
            options.u8_entry,
            Imports {
                profiled,
                wide: wide_gemm,
            },
            listing.as_mut(),
        )?;
        module
            .finalize_definitions()
            .map_err(|e| Error(format!("Cranelift: {e}")))?;
        let code = module.get_finalized_function(def.func);
        // SAFETY: `code` is the finalized entry point `define` built, with exactly this
        // signature (four pointer-sized integers, the system calling convention, no returns).
        // It stays valid until `module` is freed, which `Compiled` owns and frees only on drop.
        let entry = unsafe { std::mem::transmute::<*const u8, EntryFn>(code) };
        let entry_u8 = def.func_u8.map(|f| {
            let code = module.get_finalized_function(f);
            // SAFETY: as above, for the u8 entry `define` built with this signature.
            unsafe { std::mem::transmute::<*const u8, EntryU8Fn>(code) }
        });
        let compiled = Compiled {
            entry,
            entry_u8,
            qparams_u8: lower::u8_entry(&self.graph).filter(|_| options.u8_entry),
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

/// An entry point: input, output, batch size, scratch (see [`lower`]).
type EntryFn = unsafe extern "C" fn(*const f32, *mut f32, i64, *mut u8);
type EntryU8Fn = unsafe extern "C" fn(*const u8, *mut u8, i64, *mut u8);

/// A compiled model. Cheap to call, safe to share between threads.
pub struct Compiled {
    entry: EntryFn,
    entry_u8: Option<EntryU8Fn>,
    qparams_u8: Option<(QParams, QParams)>,
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
        let batch = self.batch_of_len(input.len())?;
        let mut out = vec![0.0; batch * self.out_size];
        self.run_into(input, &mut out)?;
        Ok(out)
    }

    /// Runs a batch into `output`, which must hold `output_size()` values per input sample.
    /// Batches of more than one tile are split over the current rayon pool's threads.
    pub fn run_into(&self, input: &[f32], output: &mut [f32]) -> Result<(), Error> {
        self.split(input, output, "values", |i, o| {
            self.with_scratch(|scratch| self.call(self.entry, i, o, scratch))
        })
    }

    /// The quantization of the u8 entry's input and output codes, when it was compiled
    /// (`Options::u8_entry`) and the model has one (the input feeds only a quantize, the output is
    /// quantized).
    pub fn u8_qparams(&self) -> Option<(QParams, QParams)> {
        self.qparams_u8
    }

    /// Runs a batch of input codes (already quantized with the input's parameters, see
    /// [`Compiled::u8_qparams`]) and returns the output codes, before any dequantize. Models
    /// without a u8 entry give an error.
    pub fn run_u8(&self, input: &[u8]) -> Result<Vec<u8>, Error> {
        let batch = self.batch_of_len(input.len())?;
        let mut out = vec![0; batch * self.out_size];
        self.run_u8_into(input, &mut out)?;
        Ok(out)
    }

    /// [`Compiled::run_u8`] into `output`, which must hold `output_size()` codes per sample.
    pub fn run_u8_into(&self, input: &[u8], output: &mut [u8]) -> Result<(), Error> {
        let entry = self.u8_entry_fn()?;
        self.split(input, output, "codes", |i, o| {
            self.with_scratch(|scratch| self.call(entry, i, o, scratch))
        })
    }

    /// [`Compiled::run_into`] on the calling thread with scratch memory of the caller's, at
    /// least [`Compiled::scratch_bytes`] long (no alignment needed): for hosts that manage their
    /// own memory. A buffer of the wrong length is an error.
    pub fn run_with_scratch(
        &self,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut [u8],
    ) -> Result<(), Error> {
        self.check_lengths(input.len(), output.len(), scratch.len(), "values")?;
        self.call(self.entry, input, output, scratch.as_mut_ptr());
        Ok(())
    }

    /// [`Compiled::run_u8_into`] on the calling thread with the caller's scratch memory, as
    /// [`Compiled::run_with_scratch`].
    pub fn run_u8_with_scratch(
        &self,
        input: &[u8],
        output: &mut [u8],
        scratch: &mut [u8],
    ) -> Result<(), Error> {
        let entry = self.u8_entry_fn()?;
        self.check_lengths(input.len(), output.len(), scratch.len(), "codes")?;
        self.call(entry, input, output, scratch.as_mut_ptr());
        Ok(())
    }

    fn u8_entry_fn(&self) -> Result<EntryU8Fn, Error> {
        self.entry_u8.ok_or_else(|| {
            Error(
                "no u8 entry: compile with `Options { u8_entry: true, .. }` (models whose input \
                 or output is not quantized have none)"
                    .into(),
            )
        })
    }

    /// Checks an input length (whole samples), the output's (`output_size()` per sample) and
    /// the scratch's (at least `scratch_bytes()`).
    fn check_lengths(
        &self,
        input: usize,
        output: usize,
        scratch: usize,
        what: &str,
    ) -> Result<usize, Error> {
        let batch = self.batch_of_len(input)?;
        if output != batch * self.out_size {
            return Err(Error(format!(
                "output has room for {output} {what}; {batch} samples need {}",
                batch * self.out_size
            )));
        }
        if scratch < self.scratch_bytes {
            return Err(Error(format!(
                "scratch has {scratch} bytes; the model needs {}",
                self.scratch_bytes
            )));
        }
        Ok(batch)
    }

    /// Checks that `output` holds `output_size()` `what` per input sample, then runs `call` on
    /// whole samples: once, or, for batches of more than one tile, on one part per thread of the
    /// current rayon pool.
    fn split<I: Sync, O: Send>(
        &self,
        input: &[I],
        output: &mut [O],
        what: &str,
        call: impl Fn(&[I], &mut [O]) + Sync,
    ) -> Result<(), Error> {
        let batch = self.check_lengths(input.len(), output.len(), usize::MAX, what)?;
        let threads = rayon::current_num_threads().max(1);
        let per = batch.div_ceil(threads).next_multiple_of(TILE);
        if threads == 1 || batch <= TILE {
            call(input, output);
        } else {
            input
                .par_chunks(per * self.in_size)
                .zip(output.par_chunks_mut(per * self.out_size))
                .for_each(|(i, o)| call(i, o));
        }
        Ok(())
    }

    fn batch_of_len(&self, len: usize) -> Result<usize, Error> {
        if len == 0 || !len.is_multiple_of(self.in_size) {
            return Err(Error(format!(
                "input has {len} values, not a positive multiple of the model's input size {}",
                self.in_size
            )));
        }
        Ok(len / self.in_size)
    }

    /// Calls `f` with this thread's scratch memory, at least `scratch_bytes` long.
    fn with_scratch(&self, f: impl FnOnce(*mut u8)) {
        SCRATCH.with(|s| {
            let mut scratch = s.borrow_mut();
            if scratch.len() < self.scratch_bytes {
                scratch.resize(self.scratch_bytes, 0);
            }
            f(scratch.as_mut_ptr())
        })
    }

    /// Runs an entry function on whole samples.
    ///
    /// Panics unless `input` holds whole samples and `output` room for exactly their outputs
    /// (the public callers check and return errors first); `scratch` must point to at least
    /// `scratch_bytes` writable bytes no other thread uses during the call.
    fn call<T>(
        &self,
        entry: unsafe extern "C" fn(*const T, *mut T, i64, *mut u8),
        input: &[T],
        output: &mut [T],
        scratch: *mut u8,
    ) {
        let batch = input.len() / self.in_size;
        assert!(input.len() == batch * self.in_size && output.len() == batch * self.out_size);
        // SAFETY: the function reads exactly `batch · in_size` elements from `input` and writes
        // exactly `batch · out_size` to `output`, both checked just above: caller memory is read
        // and written element-exactly by construction (`builder::Memory`), and tests put both
        // against guard pages. It writes at most `scratch_bytes` bytes of `scratch` (the
        // callers give at least that, for this thread alone), reads its constants from its own
        // data object and nothing else, and was built with this signature for this CPU by
        // `compile`.
        unsafe { entry(input.as_ptr(), output.as_mut_ptr(), batch as i64, scratch) }
    }
}
