//! Code generation targets: the host (for the JIT) or a named architecture with CPU features
//! (for listings and ahead-of-time objects).

use std::str::FromStr;

use cranelift_codegen::isa::{self, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_object::{ObjectBuilder, ObjectModule};

use super::builder::DotProduct;
use super::lower::u8_entry;
use super::module::{best_dot_product, define, Error, Imports, Listing};
use crate::data::Normalization;
use crate::int8::QGraph;

/// An architecture qatc generates code for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl std::fmt::Display for Arch {
    /// The name `--target` takes: `x86_64`, `aarch64`.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Arch, Error> {
        match s {
            "x86_64" | "x86-64" | "x64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => Err(Error(format!(
                "unknown target `{s}` (targets are x86_64 and aarch64)"
            ))),
        }
    }
}

/// CPU features a target can be given, with the Cranelift settings each enables.
const FEATURES: &[(Arch, &str, &[&str])] = &[
    (Arch::X86_64, "avx", &["has_avx"]),
    (Arch::X86_64, "avx2", &["has_avx", "has_avx2"]),
    (
        Arch::X86_64,
        "avx512vnni",
        &[
            "has_avx",
            "has_avx2",
            "has_avx512f",
            "has_avx512vl",
            "has_avx512vnni",
        ],
    ),
    (
        Arch::X86_64,
        "avxvnni",
        &["has_avx", "has_avx2", "has_avx_vnni"],
    ),
    (Arch::Aarch64, "dotprod", &["has_dotprod"]),
    (Arch::Aarch64, "i8mm", &["has_dotprod", "has_i8mm"]),
];

/// Settings for every target; objects are position-independent so that they link into
/// position-independent executables.
fn shared_flags(pic: bool) -> Result<settings::Flags, Error> {
    let mut flags = settings::builder();
    // Cranelift's IR verifier runs in debug builds (and so in tests); release builds skip it.
    let verify = if cfg!(debug_assertions) {
        "true"
    } else {
        "false"
    };
    for (k, v) in [
        ("enable_verifier", verify),
        ("opt_level", "speed"),
        ("use_colocated_libcalls", "false"),
        ("is_pic", if pic { "true" } else { "false" }),
    ] {
        flags
            .set(k, v)
            .map_err(|e| Error(format!("Cranelift setting {k}: {e}")))?;
    }
    Ok(settings::Flags::new(flags))
}

/// The ISA of this machine, with every feature it has.
pub fn host_isa() -> Result<OwnedTargetIsa, Error> {
    cranelift_native::builder()
        .map_err(|e| Error(format!("this CPU is not supported by Cranelift: {e}")))?
        .finish(shared_flags(false)?)
        .map_err(|e| Error(format!("Cranelift: {e}")))
}

/// The host's architecture.
pub fn host_arch() -> Result<Arch, Error> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(Arch::X86_64),
        "aarch64" => Ok(Arch::Aarch64),
        other => Err(Error(format!("qatc does not generate code for {other}"))),
    }
}

/// The ISA of `arch` on Linux with the named `features` (x86_64 always has SSE4.2, the
/// x86-64-v2 baseline, which rounding needs).
pub fn isa(arch: Arch, features: &[String]) -> Result<OwnedTargetIsa, Error> {
    let triple = match arch {
        Arch::X86_64 => "x86_64-unknown-linux-gnu",
        Arch::Aarch64 => "aarch64-unknown-linux-gnu",
    };
    let mut builder = isa::lookup_by_name(triple)
        .map_err(|e| Error(format!("Cranelift cannot target {arch}: {e}")))?;
    let mut enable = |name: &str| {
        builder
            .enable(name)
            .map_err(|e| Error(format!("Cranelift setting {name}: {e}")))
    };
    if arch == Arch::X86_64 {
        for base in [
            "has_sse3",
            "has_ssse3",
            "has_sse41",
            "has_sse42",
            "has_popcnt",
        ] {
            enable(base)?;
        }
    }
    for feature in features {
        let known = FEATURES
            .iter()
            .find(|(a, name, _)| *a == arch && name == feature)
            .ok_or_else(|| {
                let names: Vec<&str> = FEATURES
                    .iter()
                    .filter(|(a, ..)| *a == arch)
                    .map(|(_, n, _)| *n)
                    .collect();
                Error(format!(
                    "unknown {arch} feature `{feature}` (known: {})",
                    names.join(", ")
                ))
            })?;
        for setting in known.2 {
            enable(setting)?;
        }
    }
    builder
        .finish(shared_flags(true)?)
        .map_err(|e| Error(format!("Cranelift: {e}")))
}

/// A relocatable object for `isa` holding the model's entry point `name` and its constants.
pub struct Object {
    pub bytes: Vec<u8>,
    pub scratch_bytes: usize,
    pub listing: Listing,
    pub dot: DotProduct,
}

/// A model name as a C identifier (other characters become `_`).
pub fn c_identifier(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The C header declaring an object's entry point `name`, its sizes and, when known, the input
/// normalization (mean, std per channel). Besides the model's own names (`QATC_<MODEL>_...`) it
/// defines generic aliases (`QATC_MODEL_...`) for programs built around one model; define
/// `QATC_NO_GENERIC_NAMES` to leave them out when linking several.
pub fn c_header(
    graph: &QGraph,
    name: &str,
    scratch_bytes: usize,
    normalization: Option<&Normalization>,
) -> String {
    let upper = format!("QATC_{}", c_identifier(&graph.name).to_uppercase());
    let size = |n: usize| -> usize { graph.nodes[n].shape.iter().product() };
    let shape = |n: usize| format!("{:?}", graph.nodes[n].shape);
    let floats = |v: &[f32]| {
        v.iter()
            .map(|x| format!("{x:?}f"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut h = format!(
        "/* Generated by qatc {} from model `{}`. Link with the object `qatc compile --emit obj`\n\
         * wrote; nothing else is needed at run time. */\n\
         #ifndef {upper}_H\n#define {upper}_H\n\n#include <stdint.h>\n\n\
         #ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n\
         /* Floats in one input sample, shape {} (C, H, W; normalized as in training). */\n\
         #define {upper}_INPUT_SIZE {}\n\
         /* Floats in one output sample (logits), shape {}. */\n\
         #define {upper}_OUTPUT_SIZE {}\n\
         /* Bytes of scratch memory one call needs, whatever the batch. */\n\
         #define {upper}_SCRATCH_BYTES {scratch_bytes}\n\n\
         /* Runs `batch` (at least 1) samples: reads exactly batch * INPUT_SIZE floats from\n\
         * `input` and writes exactly batch * OUTPUT_SIZE floats to `output`, nothing before or\n\
         * after them; uses at most SCRATCH_BYTES bytes at `scratch` (one buffer per thread\n\
         * calling at the same time). No buffer needs any alignment. Bit-exact with qatc's\n\
         * reference interpreter. */\n\
         void {name}(const float *input, float *output, int64_t batch, uint8_t *scratch);\n",
        env!("CARGO_PKG_VERSION"),
        graph.name,
        shape(0),
        size(0),
        shape(graph.output),
        size(graph.output),
    );
    if let Some(Normalization { mean, std }) = normalization {
        h.push_str(&format!(
            "\n/* Training normalized pixel p of channel c as (p / 255 - MEAN[c]) / STD[c]; a single\n\
             * value serves every channel. */\n\
             #define {upper}_NORM_CHANNELS {}\n\
             static const float {upper}_MEAN[] = {{{}}};\n\
             static const float {upper}_STD[] = {{{}}};\n",
            mean.len().max(std.len()),
            floats(mean),
            floats(std)
        ));
    }
    if let Some((iq, oq)) = u8_entry(graph) {
        h.push_str(&format!(
            "\n/* The same model on quint8 codes: `input` holds batch * INPUT_SIZE codes quantized\n\
             * as round(x / INPUT_SCALE) + INPUT_ZERO_POINT (clamped to 0..255); `output` receives\n\
             * batch * OUTPUT_SIZE codes, value = (code - OUTPUT_ZERO_POINT) * OUTPUT_SCALE. The\n\
             * buffer contract is the float entry's: exact lengths, no alignment. */\n\
             #define {upper}_INPUT_SCALE {:?}f\n\
             #define {upper}_INPUT_ZERO_POINT {}\n\
             #define {upper}_OUTPUT_SCALE {:?}f\n\
             #define {upper}_OUTPUT_ZERO_POINT {}\n\
             void {name}_u8(const uint8_t *input, uint8_t *output, int64_t batch, uint8_t *scratch);\n",
            iq.scale, iq.zero_point, oq.scale, oq.zero_point
        ));
    }
    h.push_str(&format!(
        "\n#ifndef QATC_NO_GENERIC_NAMES\n\
         #define QATC_MODEL_RUN {name}\n\
         #define QATC_MODEL_INPUT_SIZE {upper}_INPUT_SIZE\n\
         #define QATC_MODEL_OUTPUT_SIZE {upper}_OUTPUT_SIZE\n\
         #define QATC_MODEL_SCRATCH_BYTES {upper}_SCRATCH_BYTES\n"
    ));
    if u8_entry(graph).is_some() {
        h.push_str(&format!("#define QATC_MODEL_RUN_U8 {name}_u8\n"));
    }
    if normalization.is_some() {
        h.push_str(&format!(
            "#define QATC_MODEL_NORM_CHANNELS {upper}_NORM_CHANNELS\n\
             #define QATC_MODEL_MEAN {upper}_MEAN\n\
             #define QATC_MODEL_STD {upper}_STD\n"
        ));
    }
    h.push_str("#endif\n\n#ifdef __cplusplus\n}\n#endif\n\n#endif\n");
    h
}

/// Compiles `graph` into a relocatable object (ELF) for `isa`.
pub fn object(graph: &QGraph, isa: OwnedTargetIsa, name: &str) -> Result<Object, Error> {
    let dot = best_dot_product(&*isa);
    let builder = ObjectBuilder::new(isa, name, cranelift_module::default_libcall_names())
        .map_err(|e| Error(format!("Cranelift: {e}")))?;
    let mut module = ObjectModule::new(builder);
    let mut listing = Listing::default();
    let def = define(
        &mut module,
        graph,
        name,
        dot,
        true,
        Imports::default(),
        Some(&mut listing),
    )?;
    let bytes = module
        .finish()
        .emit()
        .map_err(|e| Error(format!("writing the object: {e}")))?;
    Ok(Object {
        bytes,
        scratch_bytes: def.scratch_bytes,
        listing,
        dot,
    })
}
