//! Embedding a compiled model in a host program: load a `.qmodel`, compile it once, and classify
//! images from an IDX file, from several threads sharing the one compiled model.
//!
//! ```text
//! cargo run --release -- train specs/lenet_mnist.qspec          # writes runs/lenet/model.qmodel
//! cargo run --release -p embed -- runs/lenet/model.qmodel \
//!     data/mnist10k/t10k-images-idx3-ubyte.gz data/mnist10k/t10k-labels-idx1-ubyte.gz
//! ```

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, images, labels] = args.as_slice() else {
        eprintln!("usage: embed MODEL.qmodel IMAGES.idx[.gz] LABELS.idx[.gz]");
        return ExitCode::from(2);
    };
    match classify(Path::new(model), Path::new(images), Path::new(labels)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn classify(model: &Path, images: &Path, labels: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let model = qatc::Model::load(model)?;
    let compiled = model.compile()?; // Send + Sync: one copy for every thread
    let data = qatc::data::load_idx_pair(images, labels)?;
    let input = model.normalize(&data.images)?;
    let (size, classes) = (compiled.input_size(), compiled.output_size());

    // Four threads, each classifying its share of the images with the same compiled model.
    let chunk = data.len().div_ceil(4) * size;
    let predictions: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = input
            .chunks(chunk)
            .map(|part| {
                let compiled = &compiled;
                s.spawn(move || -> Result<Vec<usize>, qatc::jit::Error> {
                    let logits = compiled.run(part)?;
                    Ok(logits.chunks(classes).map(argmax).collect())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a worker panicked"))
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| parts.concat())
    })?;

    let correct = predictions
        .iter()
        .zip(&data.labels)
        .filter(|(p, l)| **p == **l as usize)
        .count();
    println!(
        "first predictions: {:?}",
        &predictions[..predictions.len().min(12)]
    );
    println!(
        "labels:            {:?}",
        &data.labels[..data.labels.len().min(12)]
    );
    println!(
        "int8 accuracy on {} images: {:.2} % (compiled in {:.1} ms)",
        data.len(),
        100.0 * correct as f64 / data.len() as f64,
        compiled.compile_time().as_secs_f64() * 1e3
    );
    Ok(())
}

/// The first index of the largest logit (int8 logits often tie).
fn argmax(row: &[f32]) -> usize {
    (1..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}
