//! Where training time goes (`qatc bench-train --profile`): each node's forward and backward
//! time with its floating-point work, and the loop's other phases (batching the data, the loss,
//! the optimizer, evaluation). The engine and the loop add to it only when a [`Profile`] is
//! attached to the network, so an ordinary run pays nothing.

use std::time::Instant;

use serde::Serialize;

use super::peak::Peak;
use crate::ir::Graph;

/// Times, in seconds, summed over every batch of the profiled epochs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Profile {
    pub nodes: Vec<NodeTimes>,
    /// Building each batch from the data set (normalizing, laying out).
    pub data_s: f64,
    /// Softmax cross-entropy and its gradient.
    pub loss_s: f64,
    pub optimizer_s: f64,
    /// The test-set pass after each epoch (not part of the images/s).
    pub evaluation_s: f64,
    /// Observing and fake-quantizing weights (inside the Linear and Conv2d nodes' forward time).
    pub weight_fake_quant_s: f64,
    /// Training images seen.
    pub images: usize,
    /// This CPU's fp32 peak on the training threads, if measured: the "% peak" columns' 100 %.
    pub peak: Option<Peak>,
    pub epochs: usize,
}

/// One node's share.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeTimes {
    pub name: String,
    pub op: String,
    pub forward_s: f64,
    pub backward_s: f64,
    /// Floating-point operations per image, forward and backward (the GEMM layers'; 0 else).
    pub flops_forward: f64,
    pub flops_backward: f64,
}

impl Profile {
    /// An empty profile for `graph`'s nodes.
    pub fn new(graph: &Graph) -> Profile {
        let nodes = graph
            .nodes
            .iter()
            .map(|node| {
                // Multiply-adds per image: the GEMM layers' work.
                let macs = node.macs() as f64;
                NodeTimes {
                    name: node.name.clone(),
                    op: node.op.mnemonic().to_string(),
                    forward_s: 0.0,
                    backward_s: 0.0,
                    flops_forward: 2.0 * macs,
                    // The weight gradient and the input gradient: two products of the same size
                    // (the engine drops the second where the input needs no gradient).
                    flops_backward: 4.0 * macs,
                }
            })
            .collect();
        Profile {
            nodes,
            ..Profile::default()
        }
    }

    /// Seconds of training (every node's forward and backward time, batching, the loss and the
    /// optimizer), evaluation excluded.
    pub fn training_s(&self) -> f64 {
        self.nodes
            .iter()
            .map(|n| n.forward_s + n.backward_s)
            .sum::<f64>()
            + self.data_s
            + self.loss_s
            + self.optimizer_s
    }

    /// The profile as a table: per node, milliseconds per epoch forward and backward, its share
    /// of training time and its GFLOP/s; then the other phases.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let epochs = self.epochs.max(1) as f64;
        let total = self.training_s().max(1e-12);
        let ms = |s: f64| s * 1e3 / epochs;
        let share = |s: f64| 100.0 * s / total;
        let mut out = format!(
            "{:<18} {:<12} {:>10} {:>11} {:>7} {:>9} {:>9} {:>7} {:>7}\n",
            "node",
            "op",
            "fwd ms/ep",
            "bwd ms/ep",
            "share",
            "fwd GF/s",
            "bwd GF/s",
            "fwd %pk",
            "bwd %pk"
        );
        let gflops = |flops: f64, s: f64| {
            (flops > 0.0 && s > 0.0).then(|| flops * self.images as f64 / s / 1e9)
        };
        let rate =
            |flops: f64, s: f64| gflops(flops, s).map_or(String::new(), |g| format!("{g:.1}"));
        let of_peak = |flops: f64, s: f64| match (gflops(flops, s), self.peak) {
            (Some(g), Some(peak)) => format!("{:.0}%", 100.0 * g / peak.gflops),
            _ => String::new(),
        };
        for n in &self.nodes {
            if n.forward_s + n.backward_s == 0.0 {
                continue;
            }
            let _ = writeln!(
                out,
                "{:<18} {:<12} {:>10.1} {:>11.1} {:>6.1}% {:>9} {:>9} {:>7} {:>7}",
                n.name,
                n.op,
                ms(n.forward_s),
                ms(n.backward_s),
                share(n.forward_s + n.backward_s),
                rate(n.flops_forward, n.forward_s),
                rate(n.flops_backward, n.backward_s),
                of_peak(n.flops_forward, n.forward_s),
                of_peak(n.flops_backward, n.backward_s),
            );
        }
        let phase = |out: &mut String, what: &str, s: f64| {
            let _ = writeln!(
                out,
                "{what:<31} {:>10.1} {:>11} {:>6.1}%",
                ms(s),
                "",
                share(s)
            );
        };
        phase(&mut out, "batching the data", self.data_s);
        phase(&mut out, "loss (softmax cross-entropy)", self.loss_s);
        phase(&mut out, "optimizer step", self.optimizer_s);
        let fq: f64 = self
            .nodes
            .iter()
            .filter(|n| n.op == "fake_quant")
            .map(|n| n.forward_s + n.backward_s)
            .sum();
        let gemm: f64 = self
            .nodes
            .iter()
            .filter(|n| n.flops_forward > 0.0)
            .map(|n| n.forward_s + n.backward_s)
            .sum();
        let _ = writeln!(
            out,
            "\ntraining {:.1} ms per epoch: GEMM layers {:.1}% (their weights' observers and fake \
             quant {:.1}%), activation fake quant {:.1}%; evaluation {:.1} ms per epoch besides",
            ms(total),
            share(gemm),
            share(self.weight_fake_quant_s),
            share(fq),
            ms(self.evaluation_s)
        );
        if let Some(peak) = self.peak {
            let _ = writeln!(
                out,
                "% peak: of this CPU's fp32 peak with {}-bit fused multiply-adds on {} threads, \
                 measured before training: {:.1} GFLOP/s",
                peak.bits, peak.threads, peak.gflops
            );
        }
        out
    }
}

/// Adds the time since `started` to `slot`, when profiling.
pub fn add(slot: Option<&mut f64>, started: Option<Instant>) {
    if let (Some(slot), Some(t)) = (slot, started) {
        *slot += t.elapsed().as_secs_f64();
    }
}
