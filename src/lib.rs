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
//!  ir::Graph (fake-quant) + state::State  <- train::train: forward/backward, optimizers, loop
//!        | passes::fold_bn, convert::convert  (BatchNorm folded; observers -> qparams, int8
//!        v                                     weights, int32 biases)
//!  int8::QGraph                         <- interp::run: the reference interpreter
//!        | jit (Cranelift)               <- .qmodel (qmodel), objects and C headers (jit::target)
//!        v
//!  jit::Compiled                        native code, bit-exact with the interpreter
//! ```
//!
//! What every stage needs to know about an op that is not a plain layer is written once in
//! [`ops`]: activations, ops that combine tensors, normalizations. Each stage returns its result
//! or every error it found; [`pipeline`] runs the stages as the commands do, and only the CLI
//! (`src/bin/qatc/`) prints. Modules import only from layers below them (README, Layout;
//! `tests/architecture.rs`).

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
pub mod onnx;
pub mod ops;
pub mod param;
pub mod passes;
pub mod pipeline;
pub mod qmodel;
pub mod quant;
pub mod state;
pub mod syntax;
pub mod train;

pub use jit::{Compiled, Model};

pub use check::{front_end, Checked};
