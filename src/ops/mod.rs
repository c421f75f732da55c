//! Definitions shared by every stage, written once: elementwise float functions as programs
//! ([`expr`]) and the activations built from them ([`activation`]). Each stage dispatches
//! over these through exhaustive matches and methods, so a new activation is one place.

pub mod activation;
pub mod combine;
pub mod expr;
pub mod norm;
