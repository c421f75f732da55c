//! A trainable tensor: what the optimizer updates. Layers' weights, BatchNorm's affine
//! parameters and learnable fake quants' scales own one each.

/// A trainable tensor and its gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Vec<f32>,
    pub grad: Vec<f32>,
}

impl Param {
    pub fn new(name: String, shape: Vec<usize>, value: Vec<f32>) -> Param {
        let grad = vec![0.0; value.len()];
        Param {
            name,
            shape,
            value,
            grad,
        }
    }
}
