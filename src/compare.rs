//! Per-layer error between the fake-quant graph and the int8 graph on the same inputs: the
//! first thing to look at when int8 accuracy drops. Each int8 node is matched to the fake-quant
//! node holding the same value (a quantized layer to the fake quant after it).

use crate::int8::QGraph;
use crate::interp::{self, Value};
use crate::quant::numerics::dequantize;
use crate::train::engine::{Mode, Net};
use crate::train::rng::Rng;

/// One int8 node's agreement with the fake-quant graph.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerError {
    pub name: String,
    pub op: &'static str,
    pub shape: Vec<usize>,
    /// Signal-to-quantization-noise ratio in dB (infinite when identical).
    pub sqnr_db: f64,
}

/// SQNR per int8 node over `batch` samples of `x` (NCHW f32, one sample after another).
pub fn layer_errors(net: &mut Net, graph: &QGraph, x: &[f32], batch: usize) -> Vec<LayerError> {
    let tape = net.forward(x, batch, Mode::eval(true), &mut Rng::new(0));
    let size = x.len() / batch.max(1);
    let samples: Vec<Vec<Value>> = x
        .chunks(size.max(1))
        .take(batch)
        .map(|s| interp::run_all(graph, s))
        .collect();
    let mut out = Vec::new();
    for (k, node) in graph.nodes.iter().enumerate() {
        let Some(reference) = net.graph.observed_output(&node.name) else {
            continue;
        };
        if net.graph.nodes[reference].shape != node.shape || k == 0 {
            continue;
        }
        let (mut signal, mut noise) = (0f64, 0f64);
        for (b, sample) in samples.iter().enumerate() {
            let got: Vec<f32> = match &sample[k] {
                Value::F32(v) => v.clone(),
                Value::U8(v) => {
                    let q = node.ty.qparams().expect("u8 values have parameters");
                    v.iter().map(|&c| dequantize(c as i32, q)).collect()
                }
            };
            let want = tape.sample(reference, &node.shape, b);
            for (w, g) in want.iter().zip(&got) {
                signal += (*w as f64).powi(2);
                noise += ((w - g) as f64).powi(2);
            }
        }
        let sqnr_db = if noise == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (signal / noise).log10()
        };
        out.push(LayerError {
            name: node.name.clone(),
            op: node.op.mnemonic(),
            shape: node.shape.clone(),
            sqnr_db,
        });
    }
    out
}
