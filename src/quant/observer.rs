//! Observers: they track the range of a tensor (per tensor, or per channel on axis 0) and turn
//! it into quantization parameters. Same update rules as torch's observers.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::numerics::{
    qparams_for_fake_quant, qparams_from_range, round_half_even, QParams, QRange,
};
use super::qconfig::{FakeQuantConfig, Scheme};
use crate::param::Param;

/// The running range of one fake-quant node, and a learnable fake quant's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observer {
    pub config: FakeQuantConfig,
    /// Per channel (length = channels) or per tensor (length 1). Empty until the first batch.
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    /// A learnable fake quant's trained scale and zero point.
    #[serde(skip)]
    pub learned: Option<Learned>,
}

/// The parameters of a learnable fake quant (torch's `_LearnableFakeQuantize`): float scale and
/// zero point, one per channel or one, trained by the optimizer. While the observer sets them
/// ([`Observer::set_learned_from_range`]) they follow its range; after that only the optimizer
/// moves them. A symmetric scheme keeps the zero point at 0, as torch zeroes it on every forward
/// pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Learned {
    pub scale: Param,
    pub zero_point: Param,
}

impl Observer {
    pub fn new(config: FakeQuantConfig) -> Observer {
        Observer {
            config,
            min: Vec::new(),
            max: Vec::new(),
            learned: None,
        }
    }

    /// The observer of a fake-quant node whose tensor has `channels` channels on axis 0 (for
    /// per-channel observers): named `prefix` (`fc1.weight_fake_quant`), its learnable
    /// parameters named `{prefix}.scale` and `{prefix}.zero_point` as in torch's state dict, and
    /// starting, as torch's do, at scale 1 and zero point 0.
    pub fn for_node(config: FakeQuantConfig, prefix: &str, channels: usize) -> Observer {
        let n = if config.observer.is_per_channel() {
            channels.max(1)
        } else {
            1
        };
        let param =
            |name: &str, v: f32| Param::new(format!("{prefix}.{name}"), vec![n], vec![v; n]);
        Observer {
            learned: config.learnable.then(|| Learned {
                scale: param("scale", 1.0),
                zero_point: param("zero_point", 0.0),
            }),
            ..Observer::new(config)
        }
    }

    /// Whether this fake quant updates its range in a pass where observers run (`observe`) and
    /// learnable fake quants take their parameters from their observers (`static_qparams`,
    /// torch's `static_enabled`): a learnable one observes only then.
    pub fn updates(&self, observe: bool, static_qparams: bool) -> bool {
        if self.learned.is_some() {
            static_qparams
        } else {
            observe
        }
    }

    /// After an update, a learnable fake quant's parameters become its observer's (its
    /// `calculate_qparams`; a symmetric scheme's zero point 0). Without an update torch keeps
    /// the learned scale at least `f32::EPSILON`: [`Observer::clamp_learned_scale`].
    pub fn set_learned_from_range(&mut self) {
        let symmetric = self.config.scheme == Scheme::Symmetric;
        let learned = self.learned.as_ref().map_or(0, |l| l.scale.value.len());
        for c in 0..learned.min(self.ranges()) {
            let q = self.qparams_with(qparams_from_range, c);
            if let Some(l) = &mut self.learned {
                l.scale.value[c] = q.scale;
                l.zero_point.value[c] = if symmetric { 0.0 } else { q.zero_point as f32 };
            }
        }
    }

    /// Keeps a learned scale positive (torch's `scale.data.clamp_(min=eps)`), and a symmetric
    /// scheme's zero point at 0.
    pub fn clamp_learned_scale(&mut self) {
        let symmetric = self.config.scheme == Scheme::Symmetric;
        if let Some(l) = &mut self.learned {
            l.scale
                .value
                .iter_mut()
                .for_each(|s| *s = s.max(f32::EPSILON));
            if symmetric {
                l.zero_point.value.iter_mut().for_each(|z| *z = 0.0);
            }
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
        // The first range is the data's; later ones move towards it or widen.
        let first = self.min.len() != n;
        if first {
            self.min = vec![0.0; n];
            self.max = vec![0.0; n];
        }
        let (moving, c) = (
            self.config.observer.is_moving_average(),
            self.config.averaging,
        );
        // Tasks of at least 16k values: a weight's rows are short (a layer's fan-in).
        self.min
            .par_iter_mut()
            .zip(self.max.par_iter_mut())
            .enumerate()
            .with_min_len(((1 << 14) / row.max(1)).max(1))
            .for_each(|(i, (lo, hi))| {
                let (seen_lo, seen_hi) = min_max(&x[i * row..(i + 1) * row]);
                if first {
                    (*lo, *hi) = (seen_lo, seen_hi);
                } else if moving {
                    *lo += c * (seen_lo - *lo);
                    *hi += c * (seen_hi - *hi);
                } else {
                    *lo = lo.min(seen_lo);
                    *hi = hi.max(seen_hi);
                }
            });
    }

    /// Quantization parameters per channel (or one). An observer that saw nothing gives torch's
    /// defaults for an empty observer: scale 1, zero point 0.
    /// This is the observer's `calculate_qparams`, which torch's convert uses.
    /// A learnable fake quant gives its learned parameters (scale at least `f32::EPSILON`, zero
    /// point rounded half to even into the range), as its `calculate_qparams` does.
    pub fn qparams(&self) -> Vec<QParams> {
        (0..self.qparams_len())
            .map(|c| self.qparams_at(c))
            .collect()
    }

    /// How many parameter sets [`Observer::qparams`] gives: one per channel, or one.
    pub fn qparams_len(&self) -> usize {
        match &self.learned {
            Some(l) if self.is_initialized() => l.scale.value.len(),
            _ => self.ranges(),
        }
    }

    /// Channel `c`'s entry of [`Observer::qparams`].
    pub fn qparams_at(&self, c: usize) -> QParams {
        match &self.learned {
            Some(l) if self.is_initialized() => {
                let (lo, hi) = (self.config.quant_min as f32, self.config.quant_max as f32);
                let symmetric = self.config.scheme == Scheme::Symmetric;
                QParams {
                    scale: l.scale.value[c].max(f32::EPSILON),
                    zero_point: if symmetric {
                        0
                    } else {
                        round_half_even(l.zero_point.value[c]).clamp(lo, hi) as i32
                    },
                }
            }
            _ => self.qparams_with(qparams_from_range, c),
        }
    }

    /// Channel `c`'s quantization parameters for fake quantization during QAT (as many as
    /// [`Observer::qparams_len`]). Moving-average observers compute them as torch's fused
    /// observer + fake-quant module does (fbgemm's `ChooseQuantizationParams`, see
    /// [`qparams_for_fake_quant`]); min/max observers as torch's `FakeQuantize` does, with
    /// [`Observer::qparams`].
    pub fn fake_quant_qparams_at(&self, c: usize) -> QParams {
        if self.config.observer.is_moving_average() && self.learned.is_none() {
            self.qparams_with(qparams_for_fake_quant, c)
        } else {
            self.qparams_at(c)
        }
    }

    /// How many ranges the observer gives parameters for: one per channel seen, or one.
    fn ranges(&self) -> usize {
        if self.config.fixed.is_some() || !self.is_initialized() {
            1
        } else {
            self.min.len()
        }
    }

    /// Range `c`'s parameters by `rule`; fixed ones, or torch's defaults before any data.
    fn qparams_with(&self, rule: fn(f32, f32, &QRange) -> QParams, c: usize) -> QParams {
        if let Some(q) = self.config.fixed {
            return q;
        }
        if !self.is_initialized() {
            return QParams {
                scale: 1.0,
                zero_point: 0,
            };
        }
        rule(self.min[c], self.max[c], &self.range())
    }
}

/// The least and greatest value of `x` (NaNs ignored, as by `f32::min` and `f32::max`), over 16
/// independent lanes: a single running minimum waits on its previous step, while lanes
/// vectorize. Minima and maxima do not depend on the order they are taken in, so this is the
/// value a plain fold gives.
pub fn min_max(x: &[f32]) -> (f32, f32) {
    const LANES: usize = 16;
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let groups = x.chunks_exact(LANES);
    let rest = groups.remainder();
    for group in groups {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(group) {
            *l = l.min(v);
            *h = h.max(v);
        }
    }
    let lo = lo.iter().chain(rest).fold(f32::INFINITY, |a, &v| a.min(v));
    let hi = hi
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    (lo, hi)
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

    /// Golden values from torch 2.9.1 with qint8 activations, two batches: the scale and zero
    /// point after each batch, the outputs and the gradient of their sum. Min/max observers as
    /// `FakeQuantize` runs them, moving-average ones as `FusedMovingAvgObsFakeQuantize` (what
    /// torch's QAT qconfigs use). The first case is the tutorial's custom QConfig
    /// (`default_observer.with_args(dtype=torch.qint8)`: min/max, affine, 0..127).
    #[test]
    #[allow(clippy::excessive_precision)] // the f32 values as torch printed them
    #[rustfmt::skip]
    fn qint8_activations_fake_quantize_as_torch_does() {
        use crate::quant::numerics::{fake_quant_passes, fake_quantize};
        use crate::quant::qconfig::{DType, FakeQuantConfig, ObserverKind, Scheme};
        let x = [
            [-1.7f32, -0.51, -0.0049, 0.0, 0.3337, 0.9, 1.2345, 2.6, -0.2, 1.9999],
            [-3.1, 0.7, 2.2, -0.05, 5.0, 1.0, -1.0, 0.123, 4.4, -2.9],
        ];
        type Batch<'a> = (f64, i32, &'a [f64], &'a [f64]);
        let cases: &[(&str, &str, i32, i32, [Batch; 2])] = &[
            ("minmax", "affine", 0, 127, [
                (0.033858269453048706, 50, &[-1.69291353225708, -0.5078740119934082, 0.0, 0.0, 0.33858269453048706, 0.9141732454299927, 1.2188977003097534, 2.607086658477783, -0.20314961671829224, 1.9976378679275513], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
                (0.06377953290939331, 49, &[-3.125197172164917, 0.7015748620033264, 2.168504238128662, -0.06377953290939331, 4.974803447723389, 1.020472526550293, -1.020472526550293, 0.12755906581878662, 4.400787830352783, -2.8700790405273438], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
            ]),
            ("minmax", "affine", -128, 127, [
                (0.016862746328115463, -27, &[-1.7031373977661133, -0.5058823823928833, 0.0, 0.0, 0.33725494146347046, 0.893725574016571, 1.2309805154800415, 2.596863031387329, -0.20235295593738556, 2.006666898727417], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
                (0.03176470845937729, -30, &[-3.1129415035247803, 0.6988235712051392, 2.1917648315429688, -0.06352941691875458, 4.987059116363525, 0.9847059845924377, -0.9847059845924377, 0.12705883383750916, 4.415294647216797, -2.8905885219573975], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
            ]),
            ("moving_average_minmax", "symmetric", -128, 127, [
                (0.020472440868616104, 0, &[-1.6992125511169434, -0.5118110179901123, 0.0, 0.0, 0.32755905389785767, 0.9007874131202698, 1.2283464670181274, 2.5999999046325684, -0.20472440123558044, 2.0062992572784424], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
                (0.02066141553223133, 0, &[-2.6446611881256104, 0.702488124370575, 2.190109968185425, -0.04132283106446266, 2.623999834060669, 0.9917479753494263, -0.9917479753494263, 0.12396849691867828, 2.623999834060669, -2.6446611881256104], &[0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
            ]),
            ("minmax", "affine", -8, 7, [
                (0.2866666913032532, -2, &[-1.720000147819519, -0.5733333826065063, 0.0, 0.0, 0.2866666913032532, 0.8600000739097595, 1.1466667652130127, 2.580000162124634, -0.2866666913032532, 2.006666898727417], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
                (0.5400000214576721, -2, &[-3.2400002479553223, 0.5400000214576721, 2.1600000858306885, 0.0, 4.860000133514404, 1.0800000429153442, -1.0800000429153442, 0.0, 4.320000171661377, -2.700000047683716], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
            ]),
        ];
        for &(observer, scheme, quant_min, quant_max, ref batches) in cases {
            let mut obs = Observer::new(FakeQuantConfig {
                observer: match observer {
                    "minmax" => ObserverKind::Minmax,
                    _ => ObserverKind::MovingAverageMinmax,
                },
                dtype: DType::Qint8,
                scheme: if scheme == "affine" { Scheme::Affine } else { Scheme::Symmetric },
                quant_min,
                quant_max,
                averaging: 0.01,
                fixed: None,
                learnable: false,
            });
            for (x, &(scale, zero_point, y, grad)) in x.iter().zip(batches) {
                obs.observe(x, 1);
                let q = obs.fake_quant_qparams_at(0);
                let case = format!("{observer} {scheme} {quant_min}..{quant_max}");
                assert_eq!((q.scale, q.zero_point), (scale as f32, zero_point), "{case}");
                let inv = 1.0 / q.scale;
                for (i, &v) in x.iter().enumerate() {
                    let got = fake_quantize(v, q, inv, quant_min, quant_max);
                    assert_eq!(got, y[i] as f32, "{case}: x = {v}");
                    let passes = fake_quant_passes(v, q, inv, quant_min, quant_max);
                    assert_eq!(passes, grad[i] == 1.0, "{case}: gradient at x = {v}");
                }
            }
        }
    }
}
