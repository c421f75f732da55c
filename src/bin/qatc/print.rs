//! How the commands' reports look on a terminal.

use qatc::pipeline;

pub fn eval(r: &pipeline::EvalReport) {
    println!(
        "model {} ({} backend), {} test images: int8 accuracy {:.2} %",
        r.model, r.backend, r.test_images, r.accuracy
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
        "{}: compiled in {:.2} ms (median of 5, {} dot products); {} threads",
        r.model, r.compile_ms, r.dot, r.threads
    );
    println!(
        "{:<8} {:>16} {:>16} {:>9}",
        "batch", "jit", "reference", "speedup"
    );
    for row in &r.rows {
        let (jit, reference, speedup) = if row.batch == 1 {
            let text = |v: f64| format!("{v:.2} µs");
            (text(row.jit), text(row.reference), row.reference / row.jit)
        } else {
            let text = |v: f64| format!("{v:.0} img/s");
            (text(row.jit), text(row.reference), row.jit / row.reference)
        };
        println!("{:<8} {jit:>16} {reference:>16} {speedup:>8.1}x", row.batch);
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
