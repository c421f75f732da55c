//! Defines a model's code in a Cranelift module: its constants and its entry functions, for the
//! JIT ([`super::Model::compile`]) and for objects ([`super::target::object`]) alike. Also the
//! error type and which dot-product form suits a target.

use std::fmt;

use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, InstBuilder, UserFuncName};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, Linkage};

use super::builder::{self, DotProduct};
use super::lower::{self, Entry};
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

/// What a compilation can show besides the code.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// The Cranelift IR of the entry function.
    pub clif: String,
    /// The machine code, as Cranelift's disassembly.
    pub asm: String,
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

/// The most scratch memory a compiled model may need per call (per thread).
pub const MAX_SCRATCH: usize = 1 << 31;

/// A model's defined entry functions.
pub struct Defined {
    pub func: cranelift_module::FuncId,
    /// The u8-in/u8-out entry, for models that have one ([`lower::u8_entry`]).
    pub func_u8: Option<cranelift_module::FuncId>,
    pub scratch_bytes: usize,
}

/// Declares and defines the model's constants and its entry function `name` in `module` (a JIT
/// or an object module).
pub fn define(
    module: &mut impl cranelift_module::Module,
    graph: &QGraph,
    name: &str,
    dot: DotProduct,
    with_u8: bool,
    imports: Imports,
    listing: Option<&mut Listing>,
) -> Result<Defined, Error> {
    let err = |e: cranelift_module::ModuleError| Error(format!("Cranelift: {e:?}"));
    let ptr = module.target_config().pointer_type();
    if ptr != I64 {
        return Err(Error("qatc generates code for 64-bit targets only".into()));
    }
    let data = module
        .declare_data(&format!("{name}_consts"), Linkage::Local, false, false)
        .map_err(err)?;
    let code = Code { dot, imports };
    let (func, lowered) = define_entry(module, graph, name, Entry::F32, data, code, listing)?;
    // The u8 entry packs the same constants in the same order: it shares the data object.
    let func_u8 = match lower::u8_entry(graph).filter(|_| with_u8) {
        Some(_) => {
            let (f, l) = define_entry(
                module,
                graph,
                &format!("{name}_u8"),
                Entry::U8,
                data,
                code,
                None,
            )?;
            if l.consts != lowered.consts {
                return Err(Error(
                    "internal error: the two entries' constants differ".into(),
                ));
            }
            Some((f, l.scratch_bytes))
        }
        None => None,
    };
    let scratch_bytes = lowered.scratch_bytes.max(func_u8.map_or(0, |f| f.1));
    if scratch_bytes > MAX_SCRATCH {
        return Err(Error(format!(
            "model `{}` needs {scratch_bytes} bytes of scratch memory per call (tiles of {} \
             samples); more than {MAX_SCRATCH} is refused",
            graph.name,
            builder::TILE
        )));
    }
    let mut desc = DataDescription::new();
    let mut consts = lowered.consts;
    consts.resize(consts.len().max(16), 0);
    desc.define(consts.into_boxed_slice());
    desc.set_align(16);
    module.define_data(data, &desc).map_err(err)?;
    Ok(Defined {
        func,
        func_u8: func_u8.map(|f| f.0),
        scratch_bytes,
    })
}

/// How an entry's code is made: its GEMM form and the host functions it calls.
#[derive(Clone, Copy)]
struct Code {
    dot: DotProduct,
    imports: Imports,
}

/// The host functions JIT code may call (objects call none).
#[derive(Clone, Copy, Default)]
pub struct Imports {
    /// Time each node (`jit::profile`).
    pub profiled: bool,
    /// Hand GEMMs to the 256-bit kernel (`jit::wide`).
    pub wide: bool,
}

/// Declares and defines one entry function of the model.
fn define_entry(
    module: &mut impl cranelift_module::Module,
    graph: &QGraph,
    name: &str,
    entry: Entry,
    data: cranelift_module::DataId,
    Code { dot, imports }: Code,
    listing: Option<&mut Listing>,
) -> Result<(cranelift_module::FuncId, builder::Lowered), Error> {
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.extend([AbiParam::new(ptr); 4]);
    let func = module
        .declare_function(name, Linkage::Export, &sig)
        .map_err(|e| Error(format!("Cranelift: {e:?}")))?;
    let mut ctx = Context::new();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, func.as_u32());
    // Both imports take one i64 (a node index, a pointer to the GEMM's arguments).
    let mut import = |wanted: bool, symbol: &str| -> Result<_, Error> {
        if !wanted {
            return Ok(None);
        }
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(I64));
        let f = module
            .declare_function(symbol, Linkage::Import, &sig)
            .map_err(|e| Error(format!("Cranelift: {e:?}")))?;
        Ok(Some(f))
    };
    let mark = import(imports.profiled, super::profile::SYMBOL)?;
    let wide = import(imports.wide && dot == DotProduct::Vnni, super::wide::SYMBOL)?;
    let mut fctx = FunctionBuilderContext::new();
    let lowered = {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let p = b.block_params(block).to_vec();
        let gv = module.declare_data_in_func(data, b.func);
        let base = b.ins().symbol_value(ptr, gv);
        let params = [p[0], p[1], p[2], p[3]];
        let mark = mark.map(|f| module.declare_func_in_func(f, b.func));
        let wide = wide.map(|f| module.declare_func_in_func(f, b.func));
        let how = lower::How {
            dot,
            entry,
            mark,
            wide,
            x86: module.isa().name() == "x64",
        };
        let lowered = lower::lower(&mut b, graph, params, base, how).map_err(Error)?;
        b.seal_all_blocks();
        b.finalize(module.target_config());
        lowered
    };
    let clif = listing.as_ref().map(|_| ctx.func.display().to_string());
    ctx.set_disasm(listing.is_some());
    module
        .define_function(func, &mut ctx)
        .map_err(|e| Error(format!("Cranelift could not compile the model: {e:?}")))?;
    if let Some(l) = listing {
        l.clif = clif.unwrap_or_default();
        l.asm = ctx
            .compiled_code()
            .and_then(|c| c.vcode.clone())
            .unwrap_or_default();
    }
    Ok((func, lowered))
}
