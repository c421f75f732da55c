//! Optimizers (SGD with momentum, weight decay and Nesterov; Adam) and learning-rate schedules,
//! with PyTorch's update rules.

use rayon::prelude::*;

use super::engine::Param;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;
use crate::check::OptimizerConfig;
use crate::syntax::ast::Schedule;

/// Per-parameter optimizer state, in the order of `Net::params_mut`.
pub struct Optimizer {
    config: OptimizerConfig,
    /// SGD: momentum buffers. Adam: first moments.
    m: Vec<Vec<f32>>,
    /// Adam: second moments.
    v: Vec<Vec<f32>>,
    step: u32,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig) -> Optimizer {
        Optimizer {
            config,
            m: Vec::new(),
            v: Vec::new(),
            step: 0,
        }
    }

    /// Its state: the first and second moment buffers (momentum buffers for SGD; empty before
    /// the first step) and the number of steps taken.
    pub fn save(&self) -> (&[Vec<f32>], &[Vec<f32>], u32) {
        (&self.m, &self.v, self.step)
    }

    /// Continues from a saved state; the buffers must fit `params`, one each.
    pub fn restore(
        &mut self,
        m: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
        step: u32,
        params: &[&mut Param],
    ) -> Result<(), String> {
        let fits = |b: &[Vec<f32>]| {
            b.is_empty()
                || (b.len() == params.len()
                    && b.iter().zip(params).all(|(b, p)| b.len() == p.value.len()))
        };
        if !(fits(&m) && fits(&v) && m.len() == v.len()) {
            return Err("the optimizer state does not fit the model's parameters".into());
        }
        (self.m, self.v, self.step) = (m, v, step);
        Ok(())
    }

    pub fn base_lr(&self) -> f64 {
        match self.config {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => lr,
        }
    }

    /// One update of every parameter from its gradient, at learning rate `lr`. The parameters
    /// come in the same order at every step (`State::each_param_mut`).
    pub fn step<'a>(&mut self, params: impl IntoIterator<Item = &'a mut Param>, lr: f32) {
        self.step += 1;
        let step = self.step;
        for (i, p) in params.into_iter().enumerate() {
            // Buffers start at zero, at the first step.
            if self.m.len() == i {
                self.m.push(vec![0.0; p.value.len()]);
                self.v.push(vec![0.0; p.value.len()]);
            }
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            match self.config {
                OptimizerConfig::Sgd {
                    momentum,
                    weight_decay,
                    nesterov,
                    ..
                } => {
                    let (mu, wd) = (momentum as f32, weight_decay as f32);
                    let first = step == 1;
                    // `move`: the flags are the closure's own copies, not references the
                    // compiler must reload after every store, so the loop vectorizes.
                    let update = move |((value, grad), buf): ((&mut [f32], &[f32]), &mut [f32])| {
                        for ((w, &g), b) in value.iter_mut().zip(grad).zip(buf.iter_mut()) {
                            let d = g + wd * *w;
                            let update = if mu != 0.0 {
                                // torch initialises the buffer with the first gradient.
                                *b = if first { d } else { mu * *b + d };
                                if nesterov {
                                    d + mu * *b
                                } else {
                                    *b
                                }
                            } else {
                                d
                            };
                            *w -= lr * update;
                        }
                    };
                    // Most parameters are small: only large ones are worth waking the
                    // pool's threads for.
                    if p.value.len() < 2 * CHUNK {
                        update(((&mut p.value, &p.grad), m));
                    } else {
                        p.value
                            .par_chunks_mut(CHUNK)
                            .zip(p.grad.par_chunks(CHUNK))
                            .zip(m.par_chunks_mut(CHUNK))
                            .for_each(update);
                    }
                }
                OptimizerConfig::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => {
                    let (b1, b2, eps, wd) =
                        (beta1 as f32, beta2 as f32, eps as f32, weight_decay as f32);
                    let c1 = 1.0 - b1.powi(step as i32);
                    let c2 = 1.0 - b2.powi(step as i32);
                    for (((w, &g), m), v) in p
                        .value
                        .iter_mut()
                        .zip(&p.grad)
                        .zip(m.iter_mut())
                        .zip(v.iter_mut())
                    {
                        let g = g + wd * *w;
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        let denom = (*v / c2).sqrt() + eps;
                        *w -= lr * (*m / c1) / denom;
                    }
                }
            }
        }
    }
}

/// The learning rate for epoch `epoch` (0-based) of `epochs`: constant, torch's StepLR, or
/// CosineAnnealingLR with T_max = epochs and eta_min = 0.
pub fn learning_rate(base: f64, schedule: Option<&Schedule>, epoch: usize, epochs: usize) -> f64 {
    match schedule {
        None => base,
        Some(Schedule::Step { step_size, gamma }) => {
            base * gamma.unwrap_or(0.1).powi((epoch / step_size) as i32)
        }
        Some(Schedule::Cosine) => {
            base * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos()) / 2.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(value: f32, grad: f32) -> Param {
        Param {
            name: "p".into(),
            shape: vec![1],
            value: vec![value],
            grad: vec![grad],
        }
    }

    #[test]
    fn sgd_momentum_matches_torch() {
        // torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01), grad 1 twice, p = 1:
        // step 1: d = 1.01, buf = 1.01, p = 1 - 0.101 = 0.899
        // step 2: d = 1 + 0.00899 = 1.00899, buf = 0.909 + 1.00899 = 1.91799, p = 0.899 - 0.191799
        let cfg = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: false,
        };
        let mut opt = Optimizer::new(cfg);
        let mut p = param(1.0, 1.0);
        opt.step([&mut p], 0.1);
        assert!((p.value[0] - 0.899).abs() < 1e-6);
        opt.step([&mut p], 0.1);
        assert!(
            (p.value[0] - (0.899 - 0.191_799)).abs() < 1e-6,
            "{}",
            p.value[0]
        );
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let cfg = OptimizerConfig::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = Optimizer::new(cfg);
        let mut p = param(1.0, 0.5);
        opt.step([&mut p], 0.01);
        assert!((p.value[0] - 0.99).abs() < 1e-6);
    }

    #[test]
    fn schedules() {
        assert_eq!(learning_rate(0.1, None, 3, 5), 0.1);
        let step = Schedule::Step {
            step_size: 2,
            gamma: Some(0.5),
        };
        assert_eq!(learning_rate(0.1, Some(&step), 3, 5), 0.05);
        assert_eq!(learning_rate(0.1, Some(&Schedule::Cosine), 0, 4), 0.1);
        assert!((learning_rate(0.1, Some(&Schedule::Cosine), 2, 4) - 0.05).abs() < 1e-12);
    }
}
