use ndarray::Array2;
use std::time::Instant;
fn main() {
    for (m, k, n) in [(32usize, 400usize, 4096usize), (16, 25, 36864), (4096, 400, 32), (36864, 25, 16), (64, 784, 256)] {
        let a = Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.1);
        let b = Array2::<f32>::from_shape_fn((k, n), |(i, j)| ((i * 3 + j) % 11) as f32 * 0.1);
        let mut c = Array2::<f32>::zeros((m, n));
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            ndarray::linalg::general_mat_mul(1.0, &a, &b, 0.0, &mut c);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{m}x{k}x{n}: {:.3} ms, {:.1} GFLOP/s", s * 1e3, 2.0 * (m * k * n) as f64 / s / 1e9);
    }
}
