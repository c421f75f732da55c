//! What a run leaves in its folder besides the checkpoint: `metrics.csv` (one row per epoch),
//! `summary.json`, and `curves.svg`, a plot of loss and accuracy per epoch.

use std::fmt::Write;

#[cfg(feature = "plot")]
use plotters::prelude::*;

use super::{EpochStats, TrainOutcome};

pub const METRICS_HEADER: &str = "epoch,phase,train_loss,train_acc,test_acc,images_per_s";

pub fn metrics_csv(epochs: &[EpochStats]) -> String {
    let mut out = format!("{METRICS_HEADER}\n");
    for e in epochs {
        let _ = writeln!(
            out,
            "{},{},{:.6},{:.2},{:.2},{:.0}",
            e.epoch,
            e.phase.name(),
            e.train_loss,
            e.train_acc,
            e.test_acc,
            e.images_per_s
        );
    }
    out
}

/// `summary.json`: the run's headline figures. Later stages add keys to the same object.
pub fn summary(
    model: &str,
    outcome: &TrainOutcome,
    quantized: bool,
) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    map.insert("model".into(), model.into());
    map.insert("epochs".into(), outcome.epochs.len().into());
    map.insert("quantized".into(), quantized.into());
    let round2 = |x: f32| ((x as f64) * 100.0).round() / 100.0;
    map.insert("test_acc".into(), round2(outcome.final_acc).into());
    map.insert(
        "fake_quant_acc".into(),
        if quantized {
            round2(outcome.final_acc).into()
        } else {
            serde_json::Value::Null
        },
    );
    map.insert("float_acc".into(), outcome.float_acc.map(round2).into());
    map.insert(
        "train_images_per_s".into(),
        outcome.train_images_per_s.round().into(),
    );
    map.insert(
        "per_epoch".into(),
        serde_json::to_value(&outcome.epochs).unwrap_or_default(),
    );
    map
}

/// An SVG with two panels: training loss, and train/test accuracy, per epoch.
#[cfg(feature = "plot")]
pub fn curves_svg(title: &str, epochs: &[EpochStats]) -> Result<String, String> {
    let points = |f: fn(&EpochStats) -> f32| {
        epochs
            .iter()
            .map(|e| (e.epoch as f32, f(e)))
            .collect::<Vec<_>>()
    };
    let max_loss = epochs
        .iter()
        .map(|e| e.train_loss)
        .fold(0.0f32, f32::max)
        .max(1e-3)
        * 1.1;
    let lowest_acc = epochs
        .iter()
        .flat_map(|e| [e.train_acc, e.test_acc])
        .fold(100.0f32, f32::min);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(450);
        let loss = format!("{title}: train loss");
        panel(
            &left,
            &loss,
            epochs.len(),
            0.0..max_loss,
            &[(points(|e| e.train_loss), RED)],
        )?;
        let accuracy = [
            (points(|e| e.train_acc), RED),
            (points(|e| e.test_acc), BLUE),
        ];
        let y_range = (lowest_acc - 2.0).clamp(0.0, 99.0)..100.0;
        panel(
            &right,
            "accuracy % (train red, test blue)",
            epochs.len(),
            y_range,
            &accuracy,
        )?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// One chart: a caption, epochs 1..=n on x, `y_range` on y, one line per series.
#[cfg(feature = "plot")]
fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    caption: &str,
    n: usize,
    y_range: std::ops::Range<f32>,
    series: &[(Vec<(f32, f32)>, RGBColor)],
) -> Result<(), String> {
    let x_range = 0.5f32..n.max(1) as f32 + 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(|e| e.to_string())?;
    for (points, color) in series {
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
