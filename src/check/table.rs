//! The model table `qatc check` prints: layer, op, inputs, output shape, parameters, MACs per
//! sample and effective qconfig, as a PyTorch user would expect from a model summary.

use std::fmt::Write;

use super::{shape_text, CheckedModel, Source};
use crate::quant::qconfig::QConfig;

pub fn model_table(m: &CheckedModel) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "layer".into(),
        "op".into(),
        "input".into(),
        "output".into(),
        "params".into(),
        "MACs".into(),
        "qconfig".into(),
    ]];
    rows.push([
        "input".into(),
        "Input".into(),
        String::new(),
        shape_text(&m.input),
        String::new(),
        String::new(),
        if m.backend.is_some() {
            "quant stub".into()
        } else {
            "float".into()
        },
    ]);
    let hosts = m.fusion_hosts();
    for (i, layer) in m.layers.iter().enumerate() {
        let inputs = layer
            .inputs
            .iter()
            .map(|s| match s {
                Source::Input => "input".to_string(),
                Source::Layer(j) => m.layers[*j].name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        rows.push([
            layer.name.clone(),
            layer.kind.describe(),
            inputs,
            shape_text(&layer.out_shape),
            if layer.params == 0 {
                String::new()
            } else {
                thousands(layer.params as u128)
            },
            if layer.macs == 0 {
                String::new()
            } else {
                si(layer.macs as u128)
            },
            match hosts[i] {
                // Quantized (or kept float) with the layer it fuses into.
                Some(h) => format!("fused into {}", m.layers[h].name),
                None => layer
                    .qconfig
                    .as_ref()
                    .map_or("float".to_string(), |q| q.name.clone()),
            },
        ]);
    }
    // Each layer's counts are bounded (`crate::limits`), their sums over many layers are not.
    let total_params: u128 = m.layers.iter().map(|l| l.params as u128).sum();
    let total_macs: u128 = m.layers.iter().map(|l| l.macs as u128).sum();
    rows.push([
        "total".into(),
        String::new(),
        String::new(),
        String::new(),
        thousands(total_params),
        si(total_macs),
        String::new(),
    ]);

    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let backend = m
        .backend
        .map_or("none (float)".to_string(), |b| b.name().to_string());
    let _ = writeln!(
        out,
        "model {}: input {}, backend {backend}\n",
        m.name,
        shape_text(&m.input)
    );
    let n_rows = rows.len();
    for (r, row) in rows.iter().enumerate() {
        if r == n_rows - 1 || r == 1 {
            let _ = writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 2 * 6));
        }
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            // Numbers right-aligned, text left-aligned.
            // (Padding by hand: a format width above 65535 panics, and names may be longer.)
            let pad = " ".repeat(widths[c] - cell.len());
            if c == 4 || c == 5 {
                let _ = write!(line, "{pad}{cell}  ");
            } else {
                let _ = write!(line, "{cell}{pad}  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(
        out,
        "\nMACs per sample: {} ({})",
        thousands(total_macs),
        si(total_macs)
    );

    // What each qconfig named in the table means.
    let mut seen: Vec<&QConfig> = Vec::new();
    for q in m.layers.iter().filter_map(|l| l.qconfig.as_ref()) {
        if !seen.iter().any(|s| s.name == q.name) {
            seen.push(q);
        }
    }
    if !seen.is_empty() {
        out.push_str("\nqconfigs:\n");
        for q in seen {
            let _ = writeln!(out, "  {}:", q.name);
            let _ = writeln!(out, "    activation  {}", q.activation.describe());
            let _ = writeln!(out, "    weight      {}", q.weight.describe());
        }
    }
    if let Some(t) = &m.train {
        let _ = writeln!(
            out,
            "\ntrain: {} epoch{}{}, batch {}, {}, seed {}",
            t.epochs,
            if t.epochs == 1 { "" } else { "s" },
            if t.pretrain_epochs > 0 {
                format!(" ({} float)", t.pretrain_epochs)
            } else {
                String::new()
            },
            t.batch,
            t.optimizer,
            t.seed
        );
    }
    out
}

/// The model table as one JSON object (`qatc check --json`): the model, its input and backend,
/// one object per layer (name, op, inputs, output shape, parameters, MACs, qconfig), the
/// totals, each qconfig's meaning and the training settings.
pub fn model_json(m: &CheckedModel) -> serde_json::Value {
    use serde_json::json;
    let hosts = m.fusion_hosts();
    let layers: Vec<serde_json::Value> = m
        .layers
        .iter()
        .zip(&hosts)
        .map(|(layer, host)| {
            let inputs: Vec<String> = layer
                .inputs
                .iter()
                .map(|s| match s {
                    Source::Input => "input".to_string(),
                    Source::Layer(j) => m.layers[*j].name.clone(),
                })
                .collect();
            json!({
                "name": layer.name,
                "op": layer.kind.describe(),
                "inputs": inputs,
                "output": layer.out_shape,
                "params": layer.params,
                "macs": layer.macs,
                "qconfig": layer.qconfig.as_ref().map(|q| q.name.clone()),
                "fused_into": host.map(|h| m.layers[h].name.clone()),
            })
        })
        .collect();
    let mut qconfigs = serde_json::Map::new();
    for q in m.layers.iter().filter_map(|l| l.qconfig.as_ref()) {
        qconfigs.insert(
            q.name.clone(),
            json!({"activation": q.activation.describe(), "weight": q.weight.describe()}),
        );
    }
    let train = m.train.as_ref().map(|t| {
        json!({
            "epochs": t.epochs,
            "pretrain_epochs": t.pretrain_epochs,
            "batch": t.batch,
            "optimizer": t.optimizer.to_string(),
            "seed": t.seed,
        })
    });
    json!({
        "model": m.name,
        "input": m.input,
        "backend": m.backend.map(|b| b.name()),
        "layers": layers,
        "params": m.layers.iter().map(|l| l.params as u128).sum::<u128>(),
        "macs": m.layers.iter().map(|l| l.macs as u128).sum::<u128>(),
        "qconfigs": qconfigs,
        "train": train,
    })
}

pub use crate::limits::thousands;

/// `1121960` -> `1.12M`, `230400` -> `230.4K`.
pub fn si(n: u128) -> String {
    match n {
        0..=999 => n.to_string(),
        1_000..=999_999 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}M", n as f64 / 1e6),
        _ => format!("{:.2}G", n as f64 / 1e9),
    }
}
