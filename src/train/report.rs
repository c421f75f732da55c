//! What a run leaves in its folder besides the checkpoint: `metrics.csv` (one row per epoch)
//! and `curves.svg`, a plot of loss and accuracy per epoch.

use std::fmt::Write;

#[cfg(feature = "plot")]
use plotters::prelude::*;

use super::EpochStats;

/// The columns of `metrics.csv`. Speed is not among them: every file of a run is the same
/// for the same seed (the speed is printed, and is in `--json`).
pub const METRICS_HEADER: &str = "epoch,phase,lr,train_loss,train_acc,test_acc";

pub fn metrics_csv(epochs: &[EpochStats]) -> String {
    // With a validation set, the last column is its accuracy.
    let mut out = if epochs.iter().any(|e| e.on_validation) {
        METRICS_HEADER.replace("test_acc", "val_acc") + "\n"
    } else {
        format!("{METRICS_HEADER}\n")
    };
    for e in epochs {
        let _ = writeln!(
            out,
            "{},{},{},{:.6},{:.2},{:.2}",
            e.epoch,
            e.phase.name(),
            e.lr,
            e.train_loss,
            e.train_acc,
            e.test_acc,
        );
    }
    out
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
