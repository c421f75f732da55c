//! Observers: they track the range of a tensor (per tensor, or per channel on axis 0) and turn
//! it into quantization parameters. Same update rules as torch's observers.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::numerics::{qparams_for_fake_quant, qparams_from_range, QParams, QRange};
use super::qconfig::FakeQuantConfig;

/// The running range of one fake-quant node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observer {
    pub config: FakeQuantConfig,
    /// Per channel (length = channels) or per tensor (length 1). Empty until the first batch.
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

impl Observer {
    pub fn new(config: FakeQuantConfig) -> Observer {
        Observer {
            config,
            min: Vec::new(),
            max: Vec::new(),
        }
    }

    pub fn range(&self) -> QRange {
        QRange {
            dtype: self.config.dtype,
            scheme: self.config.scheme,
            quant_min: self.config.quant_min,
            quant_max: self.config.quant_max,
        }
    }

    /// Whether the observer has parameters to give: it saw data, or its parameters are fixed.
    pub fn is_initialized(&self) -> bool {
        !self.min.is_empty() || self.config.fixed.is_some()
    }

    /// Observes a tensor whose leading axis has `channels` rows of equal length (`channels` is
    /// ignored by per-tensor observers).
    pub fn observe(&mut self, x: &[f32], channels: usize) {
        if self.config.fixed.is_some() {
            return;
        }
        let per_channel = self.config.observer.is_per_channel();
        let n = if per_channel { channels.max(1) } else { 1 };
        let row = x.len() / n;
        let (mins, maxs): (Vec<f32>, Vec<f32>) = (0..n)
            .into_par_iter()
            .map(|c| {
                let slice = &x[c * row..(c + 1) * row];
                slice
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                        (lo.min(v), hi.max(v))
                    })
            })
            .unzip();
        if self.min.is_empty() || self.min.len() != n {
            self.min = mins;
            self.max = maxs;
            return;
        }
        let c = self.config.averaging;
        for i in 0..n {
            if self.config.observer.is_moving_average() {
                self.min[i] += c * (mins[i] - self.min[i]);
                self.max[i] += c * (maxs[i] - self.max[i]);
            } else {
                self.min[i] = self.min[i].min(mins[i]);
                self.max[i] = self.max[i].max(maxs[i]);
            }
        }
    }

    /// Quantization parameters per channel (or one). An observer that saw nothing gives torch's
    /// defaults for an empty observer: scale 1, zero point 0.
    /// This is the observer's `calculate_qparams`, which torch's convert uses.
    pub fn qparams(&self) -> Vec<QParams> {
        self.qparams_with(qparams_from_range)
    }

    /// Quantization parameters for fake quantization during QAT. Moving-average observers
    /// compute them as torch's fused observer + fake-quant module does (fbgemm's
    /// `ChooseQuantizationParams`, see [`qparams_for_fake_quant`]); min/max observers as torch's
    /// `FakeQuantize` does, with [`Observer::qparams`].
    pub fn fake_quant_qparams(&self) -> Vec<QParams> {
        if self.config.observer.is_moving_average() {
            self.qparams_with(qparams_for_fake_quant)
        } else {
            self.qparams()
        }
    }

    fn qparams_with(&self, rule: fn(f32, f32, &QRange) -> QParams) -> Vec<QParams> {
        if let Some(q) = self.config.fixed {
            return vec![q];
        }
        if !self.is_initialized() {
            return vec![QParams {
                scale: 1.0,
                zero_point: 0,
            }];
        }
        let range = self.range();
        self.min
            .iter()
            .zip(&self.max)
            .map(|(&lo, &hi)| rule(lo, hi, &range))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::qconfig::Backend;
    use crate::quant::qconfig::{preset, QuantMode};

    #[test]
    fn moving_average_starts_from_the_first_batch() {
        let cfg = preset(Backend::Qnnpack, QuantMode::Qat).activation;
        let mut obs = Observer::new(cfg);
        obs.observe(&[-1.0, 2.0], 1);
        assert_eq!((obs.min[0], obs.max[0]), (-1.0, 2.0));
        obs.observe(&[-3.0, 4.0], 1);
        assert_eq!(
            (obs.min[0], obs.max[0]),
            (-1.0 + 0.01 * -2.0, 2.0 + 0.01 * 2.0)
        );
    }

    #[test]
    fn per_channel_observes_rows() {
        let cfg = preset(Backend::Fbgemm, QuantMode::Qat).weight;
        let mut obs = Observer::new(cfg);
        obs.observe(&[1.0, -2.0, 0.5, 0.25], 2);
        assert_eq!(obs.min, vec![-2.0, 0.25]);
        assert_eq!(obs.max, vec![1.0, 0.5]);
        let q = obs.qparams();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].scale, 2.0 / 127.5);
        assert_eq!(q[1].zero_point, 0);
    }
}
