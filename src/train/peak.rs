//! The ceiling for training's matrix products: this CPU's fp32 peak with its widest fused
//! multiply-add (the one [`super::gemm`] uses: 512-bit with AVX-512, 256-bit with AVX2, 128-bit
//! on aarch64), measured on every thread of the current pool at once, so a profile can say
//! what share of it each layer reaches.

use multiversion::multiversion;
use serde::Serialize;
use std::hint::black_box;
use std::time::Instant;

// An accumulator is one of the products' rows of 16 lanes (one AVX-512 vector; two AVX2
// vectors, four NEON ones).
use super::gemm::{avx512, fma, fma_row, fma_rows, LANES};

/// Rounds of the loop per timed run: about 10 ms (12 multiply-adds a round), long enough to
/// outlast the timer's noise.
const ROUNDS: usize = 1 << 22;

/// A measured fp32 peak.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Peak {
    /// GFLOP/s, a multiply-add counting as two.
    pub gflops: f64,
    /// Threads it ran on at once.
    pub threads: usize,
    /// The multiply-add's vector width: 512, 256 or 128 bits.
    pub bits: usize,
}

/// This CPU's fp32 peak on all of the current pool's threads at once: the fastest of five runs
/// of independent multiply-add chains, as many as hide the instruction's latency (on a shared
/// machine, other work only ever slows a run down).
pub fn fp32_peak() -> Peak {
    let run = || {
        let started = Instant::now();
        let flops: f64 = rayon::broadcast(|_| chains(ROUNDS)).iter().sum();
        flops / started.elapsed().as_secs_f64().max(1e-12) / 1e9
    };
    run(); // warm-up: threads started, clocks up
    let fastest = (0..5).map(|_| run()).fold(0.0, f64::max);
    Peak {
        gflops: fastest,
        threads: rayon::current_num_threads(),
        bits: if avx512() {
            512
        } else if cfg!(target_arch = "x86_64") && fma() {
            256
        } else {
            128
        },
    }
}

/// Runs `rounds` rounds of multiply-add chains on this thread; returns the flops done.
fn chains(rounds: usize) -> f64 {
    if avx512() {
        chains12(rounds)
    } else {
        chains6(rounds)
    }
}

/// Twelve chains of 16 lanes: 12 of AVX-512's 32 vector registers (latency 4 x 2 per cycle = 8
/// needed).
#[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
fn chains12(rounds: usize) -> f64 {
    // One multiplier (1) in a register, tiny increments that stay normal numbers.
    let (a, b) = ([black_box(1.0f32); 12], black_box([1e-9f32; LANES]));
    let z = [0.0f32; LANES];
    let (mut c0, mut c1, mut c2, mut c3, mut c4, mut c5) = (z, z, z, z, z, z);
    let (mut c6, mut c7, mut c8, mut c9, mut c10, mut c11) = (z, z, z, z, z, z);
    for _ in 0..rounds {
        fma_rows!(a, &b; c0: 0, c1: 1, c2: 2, c3: 3, c4: 4, c5: 5, c6: 6, c7: 7, c8: 8, c9: 9,
            c10: 10, c11: 11);
    }
    black_box([c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11]);
    (rounds * 12 * LANES * 2) as f64
}

/// Six chains of 16 lanes: 12 of AVX2's 16 vector registers (24 of aarch64's 32).
#[multiversion(targets("x86_64+avx2+fma"))]
fn chains6(rounds: usize) -> f64 {
    // One multiplier (1) in a register, tiny increments that stay normal numbers.
    let (a, b) = ([black_box(1.0f32); 12], black_box([1e-9f32; LANES]));
    let z = [0.0f32; LANES];
    let (mut c0, mut c1, mut c2, mut c3, mut c4, mut c5) = (z, z, z, z, z, z);
    for _ in 0..rounds {
        fma_rows!(a, &b; c0: 0, c1: 1, c2: 2, c3: 3, c4: 4, c5: 5);
    }
    black_box([c0, c1, c2, c3, c4, c5]);
    (rounds * 6 * LANES * 2) as f64
}
