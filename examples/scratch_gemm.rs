#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use qatc::ir::ConvGeom;
use qatc::train::kernels::*;
use std::time::Instant;
fn main() {
    let threads: usize = std::env::args().nth(1).map_or(2, |s| s.parse().unwrap());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    for (c, h, o) in [(16usize, 12usize, 32usize), (1, 28, 16)] {
        let b = 64;
        let geom = ConvGeom {
            in_channels: c,
            out_channels: o,
            kernel: (5, 5),
            stride: (1, 1),
            padding: (0, 0),
            groups: 1,
        };
        let d = ConvDims::new(&geom, &[c, h, h], &[o, h - 4, h - 4]);
        let x: Vec<f32> = (0..b * c * h * h)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 3.0)
            .collect();
        let w: Vec<f32> = (0..o * d.kg)
            .map(|i| ((i * 31) % 100) as f32 * 0.01)
            .collect();
        for _ in 0..3 {
            let t = Instant::now();
            let cols = im2col(&x, &geom, &d, b, 0);
            let s1 = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let (y, cols2) = conv_forward(&x, &w, &geom, &d, b);
            let s2 = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut dw = vec![0.0; w.len()];
            let dx = conv_backward(&y, &w, &cols2, &geom, &d, b, &mut dw, true);
            let s3 = t.elapsed().as_secs_f64();
            println!(
                "c={c}: im2col {:.3} ms, conv fwd {:.3} ms, bwd {:.3} ms {} {}",
                s1 * 1e3,
                s2 * 1e3,
                s3 * 1e3,
                cols[5],
                dx.unwrap()[3]
            );
        }
    }
}
