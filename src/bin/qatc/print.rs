//! How the commands' reports look on a terminal.

use qatc::pipeline;

pub fn eval(r: &pipeline::EvalReport) {
    println!(
        "model {} ({} backend), {}: int8 accuracy {:.2} %",
        r.model,
        r.backend,
        qatc::diag::count(r.test_images, "test image"),
        r.accuracy
    );
    println!("\nconfusion matrix (rows: label, columns: prediction)");
    print!("      ");
    for c in 0..r.confusion.len() {
        print!("{c:>6}");
    }
    println!();
    for (label, row) in r.confusion.iter().enumerate() {
        print!("{label:>6}");
        for n in row {
            print!("{n:>6}");
        }
        println!();
    }
}

pub fn bench(r: &pipeline::BenchReport, json: bool) {
    if json {
        println!("{}", r.to_json());
        return;
    }
    println!(
        "{}: {} MACs per sample; compiled in {:.2} ms (median of 5); {} threads",
        r.model, r.macs, r.compile_ms, r.threads
    );
    println!(
        "peak of 128-bit {} on one core of this CPU: {:.1} GMAC/s\n",
        r.dot, r.peak_gmacs
    );
    println!(
        "{:<8} {:>14} {:>16} {:>8} {:>16}",
        "batch", "jit", "GMAC/s", "% peak", "reference"
    );
    for row in &r.rows {
        let text = |v: f64| {
            if row.batch == 1 {
                format!("{v:.2} µs")
            } else {
                format!("{v:.0} img/s")
            }
        };
        let per = if row.batch == 1 { "" } else { "/core" };
        let reference = row.reference.map_or("-".to_string(), text);
        println!(
            "{:<8} {:>14} {:>16} {:>7.1}% {reference:>16}",
            row.batch,
            text(row.jit),
            format!("{:.1}{per}", row.gmacs),
            row.peak_pct
        );
    }
    if !r.layers.is_empty() {
        println!("\nper layer at batch 1:");
        println!(
            "{:<16} {:<16} {:>10} {:>9} {:>8}",
            "layer", "op", "MACs", "µs", "GMAC/s"
        );
        for l in &r.layers {
            println!(
                "{:<16} {:<16} {:>10} {:>9.2} {:>8.1}",
                l.name, l.op, l.macs, l.us, l.gmacs
            );
        }
    }
}

/// One line per sample: its best output and that output's value; or one JSON object.
pub fn run(r: &pipeline::RunOutput, json: bool) {
    let predictions = r.predictions();
    if json {
        let value = serde_json::json!({
            "model": r.model,
            "engine": r.engine,
            "samples": r.samples,
            "output_size": r.output_size,
            "predictions": predictions,
        });
        println!("{value}");
        return;
    }
    println!("{:>8} {:>6} {:>12}", "sample", "class", "score");
    for (i, p) in predictions.iter().enumerate() {
        println!("{i:>8} {:>6} {:>12.6}", p.class, p.score);
    }
}

/// The results of `qatc train`: each accuracy says what it measures and after how much
/// training, so a float figure after pretraining is not read against fake quant after more
/// epochs as if quantizing had helped.
pub fn train(r: &pipeline::TrainReport) {
    use qatc::diag::count;
    let float_epochs = r
        .per_epoch
        .iter()
        .filter(|e| e.phase == qatc::train::Phase::Float)
        .count();
    let qat_epochs = r.per_epoch.len() - float_epochs;
    println!("\ntest accuracy on {}:", count(r.test_images, "image"));
    let mut rows: Vec<(String, f64, String)> = Vec::new();
    if let Some(acc) = r.float_acc {
        rows.push((
            format!(
                "float, after {} of pretraining",
                count(float_epochs, "epoch")
            ),
            acc,
            String::new(),
        ));
    }
    if r.quantized {
        let after = if float_epochs > 0 {
            format!(
                "fake quant, after {} ({} with fake quant)",
                count(r.epochs, "epoch"),
                qat_epochs
            )
        } else {
            format!("fake quant, after {}", count(r.epochs, "epoch"))
        };
        rows.push((after, r.test_acc, String::new()));
    } else {
        rows.push((
            format!("float, after {}", count(r.epochs, "epoch")),
            r.test_acc,
            String::new(),
        ));
    }
    if let Some(q) = &r.int8 {
        rows.push((
            "int8, reference interpreter".into(),
            q.int8_acc,
            String::new(),
        ));
        rows.push((
            "int8, native code (JIT)".into(),
            q.jit_int8_acc,
            format!("   batch-1 latency {:.1} µs", q.jit_b1_us),
        ));
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (what, acc, note) in rows {
        println!("  {what:<width$}  {acc:6.2} %{note}");
    }
    if let Some(q) = &r.int8 {
        println!(
            "model weights: float {} bytes, int8 {} bytes",
            r.float_weight_bytes, q.int8_weight_bytes
        );
    }
    println!("training throughput: {:.0} images/s", r.train_images_per_s);
    // The file names, wrapped to 80 columns.
    println!("wrote in {}/:", r.dir.display());
    let mut line = String::new();
    for f in &r.files {
        if !line.is_empty() && line.len() + 1 + f.len() > 78 {
            println!("  {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(f);
    }
    println!("  {line}");
}
