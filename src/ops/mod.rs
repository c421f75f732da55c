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
