//! Graph passes, one per file, each entered by one function. [`run`] applies a named pipeline
//! and runs the IR verifier after every pass, naming the pass that broke an invariant.

pub mod fold_bn;
pub mod fuse;
pub mod prepare_qat;

use crate::ir::{self, Graph};

/// A pass: graph in, graph out.
pub type Pass = fn(&Graph) -> Graph;

/// The passes that turn a checked model's float IR into the graph QAT trains.
pub const QAT_PIPELINE: &[(&str, Pass)] = &[
    ("fuse", fuse::fuse),
    ("prepare_qat", prepare_qat::prepare_qat),
];

/// Applies `passes` in order; returns the graph after each, or the first verifier failure.
pub fn run(graph: &Graph, passes: &[(&str, Pass)]) -> Result<Vec<(String, Graph)>, String> {
    ir::verify(graph).map_err(|e| format!("invalid IR before any pass:\n  {}", e.join("\n  ")))?;
    let mut stages = Vec::new();
    let mut current = graph.clone();
    for (name, pass) in passes {
        current = pass(&current);
        ir::verify(&current)
            .map_err(|e| format!("invalid IR after pass `{name}`:\n  {}", e.join("\n  ")))?;
        stages.push((name.to_string(), current.clone()));
    }
    Ok(stages)
}
