//! Definitions shared by every stage, written once, by family: elementwise float functions as
//! programs ([`expr`]) and the activations built from them ([`activation`]), ops combining
//! inputs ([`combine`]), normalizations ([`norm`]), pools ([`pool`]), and the plain layers'
//! geometry and shape rules ([`shape`]). Each stage dispatches over these through exhaustive
//! matches and methods, so a new member of a family is one place.

pub mod activation;
pub mod combine;
pub mod expr;
pub mod norm;
pub mod pool;
pub mod shape;

use rayon::prelude::*;

/// Buffers below this many values are zeroed by one thread.
const PAR_ZERO_MIN: usize = 1 << 14;

/// A zeroed buffer of `n` floats; large ones are zeroed by all threads (one thread's memset of
/// megabytes is a measurable, and serial, part of a training step).
pub fn zeros(n: usize) -> Vec<f32> {
    if n < PAR_ZERO_MIN {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0.0f32, n));
    v
}
