//! qatc: a compiler for quantization-aware training.
//!
//! ```text
//!  .qspec / .yaml text
//!        | syntax::parse_source        (pest grammar -> generic entries -> typed AST)
//!        v
//!  syntax::Spec (AST, spans)            <- `qatc fmt`, the YAML form
//!        | check::check                 (names -> DAG, shapes, defaults, qconfigs)
//!        v
//!  check::CheckedModel                  <- `qatc check` prints its table
//!        | check::lower                 (one node per layer, behind an input node)
//!        v
//!  ir::Graph (float)
//!        | passes::QAT_PIPELINE         (fuse, prepare_qat; verified after each)
//!        v
//!  ir::Graph (fake-quant)               <- train::train: forward/backward, optimizers, loop
//!        | convert::convert             (observers -> qparams, int8 weights, int32 biases)
//!        v
//!  int8::QGraph                         <- interp::run: the reference interpreter
//! ```
//!
//! Each stage returns its result or every error it found as [`diag::Diag`]s; only the CLI prints.

pub mod bench;
pub mod check;
pub mod compare;
pub mod convert;
pub mod data;
pub mod diag;
pub mod int8;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod limits;
pub mod ops;
pub mod passes;
pub mod pipeline;
pub mod qmodel;
pub mod quant;
pub mod state;
pub mod syntax;
pub mod train;

pub use jit::{Compiled, Model};

pub use check::{front_end, Checked};
