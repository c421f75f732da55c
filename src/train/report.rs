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

/// What a run's plot marks besides its curves: where fake quantization started, when BatchNorm
/// statistics and observers froze (as epoch counts, as the spec gives them), and the final int8
/// accuracy.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlotMarks {
    pub qat_from: Option<usize>,
    pub freeze_bn_after: Option<usize>,
    pub freeze_observers_after: Option<usize>,
    pub int8_acc: Option<f64>,
}

/// An SVG with two panels, per epoch: the training loss, and the accuracies (train; test, or
/// validation, split where fake quantization starts; the final int8 accuracy), with the QAT
/// schedule's events as vertical lines and a legend in each panel.
#[cfg(feature = "plot")]
pub fn curves_svg(title: &str, epochs: &[EpochStats], marks: PlotMarks) -> Result<String, String> {
    let n = epochs.len().max(1);
    let points = |f: &dyn Fn(&EpochStats) -> Option<f32>| {
        epochs
            .iter()
            .filter_map(|e| f(e).map(|y| (e.epoch as f32, y)))
            .collect::<Vec<_>>()
    };
    let max_loss = epochs
        .iter()
        .map(|e| e.train_loss)
        .fold(0.0f32, f32::max)
        .max(1e-3)
        * 1.15;
    let lowest_acc = epochs
        .iter()
        .flat_map(|e| [e.train_acc, e.test_acc])
        .chain(marks.int8_acc.map(|a| a as f32))
        .fold(100.0f32, f32::min);
    let measured = if epochs.iter().any(|e| e.on_validation) {
        "validation"
    } else {
        "test"
    };
    // The schedule's events, each between two epochs: after epoch `k` is x = k + 0.5.
    let events: Vec<(f32, &str)> = [
        (marks.qat_from.filter(|&k| k > 0), "fake quant on"),
        (marks.freeze_bn_after, "BN frozen"),
        (marks.freeze_observers_after, "observers frozen"),
    ]
    .into_iter()
    .filter_map(|(k, what)| k.filter(|&k| k < n).map(|k| (k as f32 + 0.5, what)))
    .collect();
    let float_test = points(&|e| (e.phase == super::Phase::Float).then_some(e.test_acc));
    let qat_test = points(&|e| (e.phase == super::Phase::Qat).then_some(e.test_acc));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(480);
        let loss = [Series {
            label: "train loss (cross-entropy)".into(),
            points: points(&|e| Some(e.train_loss)),
            color: RED,
        }];
        panel(&left, "loss", n, 0.0..max_loss, &loss, &events, None)?;
        let mut accuracy = vec![Series {
            label: "train".into(),
            points: points(&|e| Some(e.train_acc)),
            color: RED,
        }];
        if !float_test.is_empty() {
            accuracy.push(Series {
                label: format!("{measured}, float"),
                points: float_test,
                color: RGBColor(120, 120, 120),
            });
        }
        if !qat_test.is_empty() {
            accuracy.push(Series {
                label: format!("{measured}, fake quant"),
                points: qat_test,
                color: BLUE,
            });
        }
        let int8 = marks.int8_acc.map(|a| (n as f32, a as f32));
        let y_range = (lowest_acc - 3.0).clamp(0.0, 97.0)..100.5;
        panel(&right, "accuracy (%)", n, y_range, &accuracy, &events, int8)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// One curve of a panel.
#[cfg(feature = "plot")]
struct Series {
    label: String,
    points: Vec<(f32, f32)>,
    color: RGBColor,
}

/// One chart: epochs 1..=n on x (whole epochs only), `y_range` on y, each series as a line with
/// a marker per epoch (so a one-epoch run shows its point), the events as dashed vertical lines
/// with their names, an optional final int8 point, and a legend.
#[cfg(feature = "plot")]
fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    caption: &str,
    n: usize,
    y_range: std::ops::Range<f32>,
    series: &[Series],
    events: &[(f32, &str)],
    int8: Option<(f32, f32)>,
) -> Result<(), String> {
    let err = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
    let x_range = 0.5f32..n as f32 + 0.7;
    let (y_lo, y_hi) = (y_range.start, y_range.end);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(14)
        .x_label_area_size(38)
        .y_label_area_size(50)
        .build_cartesian_2d(x_range, y_range)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(n.min(12) + 1)
        .x_label_formatter(&|x| {
            // Whole epochs only.
            if (x - x.round()).abs() < 1e-3 && *x >= 1.0 {
                format!("{}", x.round() as i64)
            } else {
                String::new()
            }
        })
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, (x, what)) in events.iter().enumerate() {
        let dashes = (0..40).map(|i| {
            let t = i as f32 / 40.0;
            let (a, b) = (
                y_lo + (y_hi - y_lo) * t,
                y_lo + (y_hi - y_lo) * (t + 0.0125),
            );
            PathElement::new(vec![(*x, a), (*x, b)], BLACK.mix(0.55))
        });
        chart.draw_series(dashes).map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                what.to_string(),
                // Beside the line, each name on its own row.
                (*x + 0.04, y_hi - (y_hi - y_lo) * (0.02 + 0.06 * i as f32)),
                ("sans-serif", 12).into_font().color(&BLACK.mix(0.7)),
            )))
            .map_err(err)?;
    }
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    if let Some((x, y)) = int8.map(|(x, y)| (x + 0.25, y)) {
        let green = RGBColor(0, 140, 60);
        chart
            .draw_series(std::iter::once(TriangleMarker::new(
                (x, y),
                6,
                green.filled(),
            )))
            .map_err(err)?
            .label(format!("int8, final: {y:.2} %"))
            .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 5, green.filled()));
    }
    // Out of the curves' way: losses fall, accuracies rise.
    let corner = if int8.is_some() || caption.starts_with("accuracy") {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    };
    chart
        .configure_series_labels()
        .position(corner)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(all(test, feature = "plot"))]
mod tests {
    use super::*;
    use crate::train::Phase;

    fn epoch(epoch: usize, phase: Phase, test_acc: f32) -> EpochStats {
        EpochStats {
            epoch,
            phase,
            lr: 0.01,
            train_loss: 1.0 / epoch as f32,
            train_acc: 90.0,
            test_acc,
            on_validation: false,
            images_per_s: 0.0,
        }
    }

    /// #16 item 17: whole-epoch ticks, a marker per point (a one-epoch run shows its point), a
    /// legend that names float and fake-quant accuracy apart, the schedule's events, and the
    /// final int8 accuracy.
    #[test]
    fn the_plot_marks_what_a_report_needs() {
        let one = curves_svg("m", &[epoch(1, Phase::Qat, 91.0)], PlotMarks::default()).unwrap();
        assert!(one.contains("<circle"), "no markers for one epoch");

        let run = [
            epoch(1, Phase::Float, 95.0),
            epoch(2, Phase::Qat, 96.0),
            epoch(3, Phase::Qat, 96.5),
            epoch(4, Phase::Qat, 97.0),
        ];
        let marks = PlotMarks {
            qat_from: Some(1),
            freeze_bn_after: Some(2),
            freeze_observers_after: Some(3),
            int8_acc: Some(96.9),
        };
        let svg = curves_svg("m", &run, marks).unwrap();
        for text in [
            "test, float",
            "test, fake quant",
            "int8, final: 96.90 %",
            "fake quant on",
            "BN frozen",
            "observers frozen",
            "train loss (cross-entropy)",
        ] {
            assert!(svg.contains(text), "missing `{text}`");
        }
        for fractional in [">1.5<", ">2.5<", ">0.5<"] {
            assert!(
                !svg.contains(fractional),
                "a fractional epoch tick {fractional}"
            );
        }
    }
}
