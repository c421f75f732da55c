//! Timing for `qatc bench`, `qatc train` and `cargo bench`: medians of repeated runs, so that
//! one slow run on a shared machine does not move the figure.

use std::time::{Duration, Instant};

use crate::jit::Compiled;

/// The median of `runs` timings of `f`, after `warmup` untimed calls.
pub fn median_time(warmup: usize, runs: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Deterministic inputs in [-1, 1] (what normalized images look like).
pub fn inputs(len: usize) -> Vec<f32> {
    let mut rng = crate::train::rng::Rng::new(7);
    (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// Median batch-1 latency of compiled code, in microseconds, on the calling thread.
pub fn latency_us(model: &Compiled, runs: usize) -> f64 {
    let x = inputs(model.input_size());
    let mut y = vec![0.0; model.output_size()];
    let t = median_time(runs.clamp(10, 1000) / 10, runs.max(1000), || {
        model.run_into(&x, &mut y).expect("lengths match");
    });
    t.as_secs_f64() * 1e6
}

/// Median images per second of `run` on batches of `batch` inputs.
pub fn throughput(
    input_size: usize,
    batch: usize,
    runs: usize,
    mut run: impl FnMut(&[f32]),
) -> f64 {
    let x = inputs(input_size * batch);
    let t = median_time(2, runs, || run(&x));
    batch as f64 / t.as_secs_f64().max(1e-12)
}
