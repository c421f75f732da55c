//! The numerics of quantization, written once: qconfigs and presets, scale/zero-point, rounding,
//! fake quantization and observers. Pure functions over plain data.

pub mod lsq;
pub mod numerics;
pub mod observer;
pub mod qconfig;
