//! Forward and backward over a prepared graph. A [`Net`] is the graph with its [`State`] (the
//! parameters, BatchNorm statistics and observers of every node, keyed by node); [`Net::forward`] returns a [`Tape`] with what the
//! backward pass needs, and [`Net::backward`] fills every parameter's gradient.
//!
//! All gradients are in one `match` over the op ([`Net::backward`]); each op's gradient is
//! checked against finite differences in tests/gradients.rs.

use rayon::prelude::*;

use std::time::Instant;

use super::buffers::Buffers;
use super::direct;
use super::kernels::{self, ConvDims};
use super::profile::{self, Profile};
use super::rng::Rng;
use super::torch_rng::{bias_bound, kaiming_uniform_bound, TorchGenerator};
use crate::ir::{Act, BnAttrs, Graph, Node, Op};
use crate::ops::combine;
use crate::ops::expr::Program;
use crate::quant::lsq;
use crate::quant::numerics::{
    fake_quant_pass_range, fake_quantize, fake_quantize_in_place, QParams,
};
use crate::quant::observer::{min_max, Learned, Observer};
use crate::quant::qconfig::{FakeQuantConfig, QuantMode};
pub use crate::state::{BnState, NodeState, Param, State};

/// Elements per parallel task in elementwise loops.
const CHUNK: usize = 1 << 13;

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// Training: batch statistics in BatchNorm (unless frozen), dropout on.
    pub training: bool,
    /// Fake quantization on (off during float pretraining).
    pub fake_quant: bool,
    /// Observers update their ranges (with or without fake quantization: calibration observes
    /// only).
    pub observe: bool,
    /// BatchNorm uses and keeps its running statistics even while training.
    pub bn_frozen: bool,
    /// Learnable fake quants observe and take their observers' parameters (torch's
    /// `static_enabled`); otherwise their parameters are left to the optimizer.
    pub static_qparams: bool,
}

impl Mode {
    /// Evaluation: no updates of any kind; fake quantization as given.
    pub fn eval(fake_quant: bool) -> Mode {
        Mode {
            training: false,
            fake_quant,
            observe: false,
            bn_frozen: true,
            static_qparams: false,
        }
    }

    /// Calibration: observers (and learnable fake quants' parameters) follow the data; nothing
    /// is fake-quantized or trained.
    pub fn calibrate() -> Mode {
        Mode {
            observe: true,
            static_qparams: true,
            ..Mode::eval(false)
        }
    }
}

/// What the forward pass keeps for the backward pass. Its buffers come from the network's
/// and go back to them with [`Net::recycle`].
#[derive(Default)]
pub struct Tape {
    pub outputs: Vec<Vec<f32>>,
    aux: Vec<Aux>,
    batch: usize,
    /// Fake quants whose output was not written: the max pool reading it pooled their input
    /// through them ([`Net::fake_quant_into_pool`]).
    fused: Vec<bool>,
}

impl Tape {
    /// The graph output (logits).
    pub fn output(&self, graph: &Graph) -> &[f32] {
        &self.outputs[graph.output]
    }

    /// Sample `b`'s values of node `node` (of one-sample shape `shape`) in the order of the
    /// int8 IR: C, H, W. (The engine keeps images channel-major, `[C, N, H·W]`.)
    pub fn sample(&self, node: usize, shape: &[usize], b: usize) -> Vec<f32> {
        let values = &self.outputs[node];
        match shape {
            [c, h, w] if *c > 0 => {
                let p = h * w;
                (0..c * p)
                    .map(|i| values[(i / p * self.batch + b) * p + i % p])
                    .collect()
            }
            _ => {
                let per_sample: usize = shape.iter().product();
                values[b * per_sample..(b + 1) * per_sample].to_vec()
            }
        }
    }
}

#[derive(Default)]
enum Aux {
    #[default]
    None,
    /// Fake quant of an activation: the parameters it used (the gradient mask is recomputed
    /// from the input in the backward pass).
    FakeQuant(QParams, i32, i32),
    Dropout(Vec<f32>),
    /// A pool: each output's route, for the max pools that record one (`Pool::forward_routed`).
    Pool(Option<Vec<u8>>),
    Linear {
        weight: WeightTape,
        bn: Option<BnTape>,
    },
    Conv {
        weight: WeightTape,
        bn: Option<BnTape>,
    },
    Bn(BnTape),
}

impl Aux {
    /// Gives its buffers back.
    fn recycle(self, buffers: &mut Buffers) {
        match self {
            Aux::None | Aux::FakeQuant(..) | Aux::Pool(None) => {}
            Aux::Dropout(mask) => buffers.f32.give(mask),
            Aux::Pool(Some(route)) => buffers.u8.give(route),
            Aux::Linear { weight, bn } | Aux::Conv { weight, bn } => {
                let WeightTape {
                    used,
                    mask,
                    before_fq,
                    fold,
                } = weight;
                buffers.f32.give(used);
                if let Some(mask) = mask {
                    buffers.bool.give(mask);
                }
                for b in [before_fq, fold].into_iter().flatten() {
                    buffers.f32.give(b);
                }
                if let Some(t) = bn {
                    t.recycle(buffers);
                }
            }
            Aux::Bn(t) => t.recycle(buffers),
        }
    }
}

/// The weight actually used (folded, fake-quantized) and the gradient mask of its fake quant.
struct WeightTape {
    used: Vec<f32>,
    mask: Option<Vec<bool>>,
    /// The weight before its fake quant, when that is learnable (its scale's gradient reads it).
    before_fq: Option<Vec<f32>>,
    /// Per output channel BN folding factor `gamma / sqrt(running_var + eps)` (fused Conv+BN).
    fold: Option<Vec<f32>>,
}

struct BnTape {
    /// Normalized input.
    xhat: Vec<f32>,
    /// 1 / sqrt(var + eps), per channel, of the statistics used.
    inv_std: Vec<f32>,
    /// Whether batch statistics were used (their gradient then flows through mean and var).
    batch_stats: bool,
    /// The convolution's raw output before unfolding (fused Conv+BN only).
    z: Vec<f32>,
}

impl BnTape {
    fn recycle(self, buffers: &mut Buffers) {
        for b in [self.xhat, self.inv_std, self.z] {
            buffers.f32.give(b);
        }
    }
}

/// A graph with its state.
pub struct Net {
    pub graph: Graph,
    /// Every node's parameters, statistics and observers.
    pub state: State,
    /// The random stream the parameters were drawn from, left where the initialisation left
    /// it: training takes each epoch's batch order from it, as a PyTorch script seeded once
    /// draws its model and then its `randperm`s from one generator.
    pub generator: TorchGenerator,
    /// Where the time goes, when asked for (`qatc bench-train --profile`).
    pub profile: Option<Profile>,
    /// Buffers reused from batch to batch: tensors, and the lists of the last tape and
    /// backward pass (emptied).
    buffers: Buffers,
    spare_tape: Option<Tape>,
    lists: Lists,
}

/// The backward pass's per-node lists, kept between batches (their lengths vary; their
/// allocations stay).
#[derive(Default)]
struct Lists {
    grads: Vec<Option<Vec<f32>>>,
    needs_grad: Vec<bool>,
    act_applied: Vec<bool>,
    dxs: Vec<Option<Vec<f32>>>,
}

impl Net {
    /// A network with PyTorch's default initialisation, drawn as `torch.manual_seed(seed)`
    /// followed by building the layers in graph order would draw it: kaiming-uniform weights
    /// and uniform biases (bound 1/sqrt(fan_in)), weight before bias; BatchNorm gamma 1, beta 0.
    /// Then the stream moves on as `prepare_qat` moves it: each QAT Linear and Conv2d is rebuilt
    /// as its QAT module, whose constructor draws a throw-away initialisation.
    pub fn new(graph: Graph, seed: u64) -> Net {
        let mut generator = TorchGenerator::new(seed);
        let state = State {
            nodes: graph
                .nodes
                .iter()
                .map(|node| init_state(node, &mut generator))
                .collect(),
        };
        for node in &graph.nodes {
            generator.discard(qat_swap_draws(node));
        }
        Net {
            graph,
            state,
            generator,
            profile: None,
            buffers: Buffers::default(),
            spare_tape: None,
            lists: Lists::default(),
        }
    }

    /// Gives a tape's buffers back to the network, for its next passes: a loop that recycles
    /// each tape once its backward pass has run allocates nothing after its first batch.
    pub fn recycle(&mut self, mut tape: Tape) {
        for y in tape.outputs.drain(..) {
            self.buffers.f32.give(y);
        }
        for a in tape.aux.drain(..) {
            a.recycle(&mut self.buffers);
        }
        tape.fused.clear();
        self.spare_tape = Some(tape);
    }

    /// Every parameter, in a fixed order.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.state.params_mut()
    }

    /// Runs the graph on `batch` samples.
    pub fn forward(&mut self, x: &[f32], batch: usize, mode: Mode, rng: &mut Rng) -> Tape {
        let n = self.graph.nodes.len();
        let Tape {
            mut outputs,
            mut aux,
            mut fused,
            ..
        } = self.spare_tape.take().unwrap_or_default();
        // Only while training: evaluation keeps every output (`compare` reads them).
        for i in 0..n {
            fused.push(mode.training && self.fake_quant_into_pool(i));
        }
        let buffers = &mut self.buffers;
        for i in 0..n {
            let started = self.profile.is_some().then(Instant::now);
            let node = &self.graph.nodes[i];
            let input = |k: usize| -> &[f32] { &outputs[node.inputs[k]] };
            let in_shape = |k: usize| self.graph.nodes[node.inputs[k]].shape.as_slice();
            let out_len = batch * node.shape.iter().product::<usize>();
            let (y, a) = match (&node.op, &mut self.state.nodes[i]) {
                // Samples one after another, each C, H, W, into the engine's channel-major
                // layout.
                (Op::Input, _) => {
                    let mut y = buffers.f32.take(x.len());
                    copy_from_samples(x, &node.shape, batch, &mut y);
                    (y, Aux::None)
                }
                (
                    Op::Linear {
                        in_features,
                        out_features,
                        act,
                        weight_fq,
                        ..
                    },
                    NodeState::Linear {
                        weight,
                        bias,
                        bn,
                        weight_obs,
                    },
                ) => {
                    let o = *out_features;
                    let fold = bn.as_ref().map(|bn| bn_fold(bn, buffers));
                    let t = self.profile.is_some().then(Instant::now);
                    let wt = weight_tape(
                        (&weight.value, fold, o),
                        weight_fq.is_some(),
                        weight_obs,
                        (node, mode),
                        buffers,
                    );
                    profile::add(self.profile.as_mut().map(|p| &mut p.weight_fake_quant_s), t);
                    let mut y = buffers.f32.take(out_len);
                    let bn_tape = match (bn, &wt.fold) {
                        (Some(bn), Some(fold)) => {
                            // LinearBn1d QAT, on the output's channel-major transpose [O, N].
                            kernels::linear_forward(
                                input(0),
                                &wt.used,
                                None,
                                batch,
                                *in_features,
                                o,
                                &mut y,
                            );
                            let mut zt = buffers.f32.take(out_len);
                            kernels::transpose_batch_channels(&y, (batch, o, 1), true, &mut zt);
                            let bias = bias.as_ref();
                            let (yt, t) = fused_bn_forward(
                                zt,
                                (o, fold, bias),
                                bn,
                                (mode, Act::None),
                                buffers,
                            );
                            kernels::transpose_batch_channels(&yt, (batch, o, 1), false, &mut y);
                            buffers.f32.give(yt);
                            Some(t)
                        }
                        _ => {
                            kernels::linear_forward(
                                input(0),
                                &wt.used,
                                bias.as_ref().map(|b| b.value.as_slice()),
                                batch,
                                *in_features,
                                o,
                                &mut y,
                            );
                            None
                        }
                    };
                    kernels::act_forward(*act, &mut y);
                    (
                        y,
                        Aux::Linear {
                            weight: wt,
                            bn: bn_tape,
                        },
                    )
                }
                (
                    Op::Conv2d {
                        geom,
                        act,
                        weight_fq,
                        ..
                    },
                    NodeState::Conv {
                        weight,
                        bias,
                        bn,
                        weight_obs,
                    },
                ) => {
                    let d = ConvDims::new(geom, in_shape(0), &node.shape);
                    let fold = bn.as_ref().map(|bn| bn_fold(bn, buffers));
                    let t = self.profile.is_some().then(Instant::now);
                    let wt = weight_tape(
                        (&weight.value, fold, geom.out_channels),
                        weight_fq.is_some(),
                        weight_obs,
                        (node, mode),
                        buffers,
                    );
                    profile::add(self.profile.as_mut().map(|p| &mut p.weight_fake_quant_s), t);
                    let mut y = buffers.f32.take(out_len);
                    direct::conv_forward(input(0), &wt.used, geom, &d, batch, &mut y);
                    let o = geom.out_channels;
                    // BatchNorm applies the activation in its last pass; otherwise one pass
                    // adds the bias and applies it.
                    let bn_tape = match (bn, &wt.fold) {
                        (Some(bn), Some(fold)) => {
                            let bias = bias.as_ref();
                            let (out, t) =
                                fused_bn_forward(y, (o, fold, bias), bn, (mode, *act), buffers);
                            y = out;
                            Some(t)
                        }
                        _ => {
                            let bias = bias.as_ref().map(|b| b.value.as_slice());
                            kernels::channel_bias_act(&mut y, o, bias, *act);
                            None
                        }
                    };
                    (
                        y,
                        Aux::Conv {
                            weight: wt,
                            bn: bn_tape,
                        },
                    )
                }
                (Op::BatchNorm(_), NodeState::Bn(bn)) => match in_shape(0) {
                    // Vectors are [N, F]: normalized on their transpose [F, N].
                    [f] => {
                        let mut xt = buffers.f32.take(out_len);
                        kernels::transpose_batch_channels(input(0), (batch, *f, 1), true, &mut xt);
                        let (yt, t) = batch_norm_forward(&xt, None, bn, (mode, Act::None), buffers);
                        kernels::transpose_batch_channels(&yt, (batch, *f, 1), false, &mut xt);
                        buffers.f32.give(yt);
                        (xt, Aux::Bn(t))
                    }
                    _ => {
                        let (y, t) =
                            batch_norm_forward(input(0), None, bn, (mode, Act::None), buffers);
                        (y, Aux::Bn(t))
                    }
                },
                (Op::Activation(a), _) => {
                    let x = input(0);
                    let mut y = buffers.f32.take(x.len());
                    eval_parallel(&a.program(), x, &mut y);
                    (y, Aux::None)
                }
                (Op::Pool(pool), _) if fused[node.inputs[0]] => {
                    // The fake quant before this pool left its input and parameters: pool
                    // the fake-quantized values without writing them out.
                    let fq = node.inputs[0];
                    let x = &outputs[self.graph.nodes[fq].inputs[0]];
                    let (mut y, mut route) = (buffers.f32.take(out_len), buffers.u8.take(out_len));
                    let shapes = (in_shape(0), node.shape.as_slice());
                    let out = (&mut y[..], &mut route[..]);
                    match aux[fq] {
                        Aux::FakeQuant(q, lo, hi) => {
                            let inv = 1.0 / q.scale;
                            let f = |v| fake_quantize(v, q, inv, lo, hi);
                            pool.forward_routed_of(x, f, shapes, out)
                        }
                        _ => pool.forward_routed_of(x, |v| v, shapes, out),
                    };
                    (y, Aux::Pool(Some(route)))
                }
                (Op::Pool(pool), _) => {
                    let mut y = buffers.f32.take(out_len);
                    let mut route = pool.is_routed().then(|| buffers.u8.take(out_len));
                    let shapes = (in_shape(0), node.shape.as_slice());
                    pool.forward_routed(input(0), shapes, &mut y, route.as_deref_mut());
                    (y, Aux::Pool(route))
                }
                // Images leave the engine's channel-major layout.
                (Op::Flatten, _) => {
                    let mut y = buffers.f32.take(out_len);
                    to_samples(input(0), in_shape(0), batch, &mut y);
                    (y, Aux::None)
                }
                (Op::DeQuantStub, _) => (buffers.f32.copy_of(input(0)), Aux::None),
                (Op::Dropout { p }, _) => {
                    if mode.training && *p > 0.0 {
                        let keep = 1.0 / (1.0 - *p as f32);
                        let mut mask = buffers.f32.take(out_len);
                        for m in mask.iter_mut() {
                            *m = if rng.next_f32() < *p as f32 {
                                0.0
                            } else {
                                keep
                            };
                        }
                        let mut y = buffers.f32.take(out_len);
                        for ((y, a), m) in y.iter_mut().zip(input(0)).zip(&mask) {
                            *y = a * m;
                        }
                        (y, Aux::Dropout(mask))
                    } else {
                        (buffers.f32.copy_of(input(0)), Aux::None)
                    }
                }
                (Op::Combine(c), _) => {
                    let shapes: Vec<&[usize]> = (0..node.inputs.len()).map(in_shape).collect();
                    let regions = c.regions(&shapes, &node.shape);
                    let mut y = buffers.f32.zeroed(out_len);
                    if elementwise(&regions, &shapes, &node.shape) {
                        // Every tensor has the output's shape, so its layout: none moves.
                        let refs: Vec<&[f32]> = (0..node.inputs.len()).map(input).collect();
                        combine::eval_batch(&regions, &refs, batch, &mut y);
                        (y, Aux::None)
                    } else {
                        let xs: Vec<Vec<f32>> = (0..node.inputs.len())
                            .map(|k| {
                                let mut xk = buffers.f32.take(input(k).len());
                                to_samples(input(k), shapes[k], batch, &mut xk);
                                xk
                            })
                            .collect();
                        let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
                        combine::eval_batch(&regions, &refs, batch, &mut y);
                        let mut out = buffers.f32.take(out_len);
                        copy_from_samples(&y, &node.shape, batch, &mut out);
                        for b in xs.into_iter().chain([y]) {
                            buffers.f32.give(b);
                        }
                        (out, Aux::None)
                    }
                }
                (Op::FakeQuant(cfg), NodeState::FakeQuant { obs }) => {
                    let x = input(0);
                    let qat = node
                        .qconfig
                        .as_ref()
                        .is_none_or(|q| q.mode == QuantMode::Qat);
                    update(obs, mode, |obs| observe_parallel(obs, x));
                    if mode.fake_quant && qat {
                        let q = obs.fake_quant_qparams_at(0);
                        let (lo, hi, inv) = (cfg.quant_min, cfg.quant_max, 1.0 / q.scale);
                        let y = if fused[i] {
                            Vec::new()
                        } else {
                            let mut y = buffers.f32.take(x.len());
                            kernels::map(x, |v| fake_quantize(v, q, inv, lo, hi), &mut y);
                            y
                        };
                        (y, Aux::FakeQuant(q, lo, hi))
                    } else if fused[i] {
                        (Vec::new(), Aux::None)
                    } else {
                        (buffers.f32.copy_of(x), Aux::None)
                    }
                }
                // `init_state` gives each of these ops its state; no other pairing is made.
                (
                    op @ (Op::Linear { .. }
                    | Op::Conv2d { .. }
                    | Op::BatchNorm(_)
                    | Op::FakeQuant(_)),
                    _,
                ) => unreachable!(
                    "node {} ({}) has no state for its op",
                    node.name,
                    op.mnemonic()
                ),
            };
            outputs.push(y);
            aux.push(a);
            profile::add(
                self.profile.as_mut().map(|p| &mut p.nodes[i].forward_s),
                started,
            );
        }
        Tape {
            outputs,
            aux,
            batch,
            fused,
        }
    }

    /// Back-propagates `d_output` (the gradient of the loss w.r.t. the graph output) and sets
    /// every parameter's gradient.
    pub fn backward(&mut self, tape: &Tape, d_output: &[f32]) {
        let n = self.graph.nodes.len();
        let batch = tape.batch;
        let Lists {
            mut grads,
            mut needs_grad,
            mut act_applied,
            mut dxs,
        } = std::mem::take(&mut self.lists);
        self.needs_grad(&mut needs_grad);
        for l in self.state.learned_mut() {
            l.scale.grad.iter_mut().for_each(|g| *g = 0.0);
            l.zero_point.grad.iter_mut().for_each(|g| *g = 0.0);
        }
        grads.clear();
        grads.resize(n, None);
        grads[self.graph.output] = Some(self.buffers.f32.copy_of(d_output));
        // Layers whose activation's gradient mask the fake quant after them applied already.
        act_applied.clear();
        act_applied.resize(n, false);
        for i in (1..n).rev() {
            let Some(mut dy) = grads[i].take() else {
                continue;
            };
            let started = self.profile.is_some().then(Instant::now);
            let act_before = self.act_before_fake_quant(i);
            let node = &self.graph.nodes[i];
            let want_dx = node.inputs.iter().any(|&j| needs_grad[j]);
            let input = |k: usize| -> &[f32] { &tape.outputs[node.inputs[k]] };
            let in_shape = |k: usize| self.graph.nodes[node.inputs[k]].shape.as_slice();
            let y = &tape.outputs[i];
            let buffers = &mut self.buffers;
            dxs.clear();
            match (&node.op, &mut self.state.nodes[i], &tape.aux[i]) {
                (
                    Op::Linear {
                        in_features,
                        out_features,
                        act,
                        ..
                    },
                    NodeState::Linear {
                        weight,
                        bias,
                        bn,
                        weight_obs,
                    },
                    Aux::Linear {
                        weight: wt,
                        bn: bn_tape,
                    },
                ) => {
                    if !act_applied[i] {
                        kernels::act_backward(*act, y, &mut dy);
                    }
                    let o = *out_features;
                    let mut d_fold = None;
                    if let (Some(bn), Some(t), Some(fold)) = (bn.as_mut(), bn_tape, &wt.fold) {
                        let mut dyt = buffers.f32.take(dy.len());
                        kernels::transpose_batch_channels(&dy, (batch, o, 1), true, &mut dyt);
                        let (fold, bias) = (fold.as_slice(), bias.as_mut());
                        d_fold = Some(fused_bn_backward(&mut dyt, (fold, bias), bn, t, buffers));
                        kernels::transpose_batch_channels(&dyt, (batch, o, 1), false, &mut dy);
                        buffers.f32.give(dyt);
                    }
                    let dims = (batch, *in_features, o);
                    let bias_grad = match d_fold {
                        Some(_) => None,
                        None => bias.as_mut().map(|b| b.grad.as_mut_slice()),
                    };
                    let mut dx = want_dx.then(|| buffers.f32.take(input(0).len()));
                    kernels::linear_backward(
                        input(0),
                        &wt.used,
                        &dy,
                        dims,
                        &mut weight.grad,
                        bias_grad,
                        dx.as_deref_mut(),
                    );
                    weight_fq_backward(&mut weight.grad, wt, weight_obs.as_mut());
                    if let (Some(fold), Some(bn), Some(d_fold)) = (&wt.fold, bn.as_mut(), d_fold) {
                        unfold_weight_gradient(weight, fold, bn, &d_fold);
                        buffers.f32.give(d_fold);
                    }
                    buffers.f32.give(dy);
                    dxs.push(dx);
                }
                (
                    Op::Conv2d { geom, act, .. },
                    NodeState::Conv {
                        weight,
                        bias,
                        bn,
                        weight_obs,
                    },
                    Aux::Conv {
                        weight: wt,
                        bn: bn_tape,
                    },
                ) => {
                    if !act_applied[i] {
                        kernels::act_backward(*act, y, &mut dy);
                    }
                    let d = ConvDims::new(geom, in_shape(0), &node.shape);
                    // d(fold) per channel, for the fused BatchNorm's gamma.
                    let mut d_fold: Option<Vec<f32>> = None;
                    if let (Some(bn), Some(t), Some(fold)) = (bn.as_mut(), bn_tape, &wt.fold) {
                        let (fold, bias) = (fold.as_slice(), bias.as_mut());
                        d_fold = Some(fused_bn_backward(&mut dy, (fold, bias), bn, t, buffers));
                    } else if let Some(b) = bias.as_mut() {
                        kernels::channel_sums(&dy, &mut b.grad);
                    }
                    let mut dx = want_dx.then(|| buffers.f32.take(input(0).len()));
                    direct::conv_backward(
                        input(0),
                        &dy,
                        &wt.used,
                        geom,
                        &d,
                        batch,
                        (&mut weight.grad, dx.as_deref_mut()),
                        &mut buffers.f32,
                    );
                    // weight.grad is d(used weight); undo the fake quant, then the folding.
                    weight_fq_backward(&mut weight.grad, wt, weight_obs.as_mut());
                    if let (Some(fold), Some(bn), Some(d_fold)) = (&wt.fold, bn.as_mut(), d_fold) {
                        unfold_weight_gradient(weight, fold, bn, &d_fold);
                        buffers.f32.give(d_fold);
                    }
                    buffers.f32.give(dy);
                    dxs.push(dx);
                }
                (Op::BatchNorm(_), NodeState::Bn(bn), Aux::Bn(t)) => {
                    if let [f] = in_shape(0) {
                        let mut dyt = buffers.f32.take(dy.len());
                        kernels::transpose_batch_channels(&dy, (batch, *f, 1), true, &mut dyt);
                        batch_norm_backward(&mut dyt, bn, t);
                        kernels::transpose_batch_channels(&dyt, (batch, *f, 1), false, &mut dy);
                        buffers.f32.give(dyt);
                    } else {
                        batch_norm_backward(&mut dy, bn, t);
                    }
                    dxs.push(Some(dy));
                }
                (Op::Activation(a), _, _) => {
                    // dx = dy · f'(x).
                    let x = input(0);
                    let mut slope = buffers.f32.take(x.len());
                    eval_parallel(&a.derivative(), x, &mut slope);
                    dy.par_chunks_mut(CHUNK)
                        .zip(slope.par_chunks(CHUNK))
                        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d *= s));
                    buffers.f32.give(slope);
                    dxs.push(Some(dy));
                }
                (Op::Pool(pool), _, Aux::Pool(route)) => {
                    // A fused fake quant wrote no output; its input has the same length,
                    // which is all a routed pool's backward reads of it.
                    let j = node.inputs[0];
                    let x = if tape.fused[j] {
                        &tape.outputs[self.graph.nodes[j].inputs[0]]
                    } else {
                        input(0)
                    };
                    let mut dx = buffers.f32.take(x.len());
                    let shapes = (in_shape(0), node.shape.as_slice());
                    pool.backward((x, y, route.as_deref()), &dy, shapes, &mut dx);
                    buffers.f32.give(dy);
                    dxs.push(Some(dx));
                }
                (Op::Flatten, _, _) => {
                    let mut dx = buffers.f32.take(dy.len());
                    copy_from_samples(&dy, in_shape(0), batch, &mut dx);
                    buffers.f32.give(dy);
                    dxs.push(Some(dx));
                }
                (Op::Dropout { .. }, _, Aux::Dropout(mask)) => {
                    dy.iter_mut().zip(mask).for_each(|(g, m)| *g *= m);
                    dxs.push(Some(dy));
                }
                (
                    Op::FakeQuant(_),
                    NodeState::FakeQuant {
                        obs:
                            Observer {
                                learned: Some(l), ..
                            },
                    },
                    Aux::FakeQuant(_, lo, hi),
                ) => {
                    learned_backward(input(0), &mut dy, l, (*lo, *hi), buffers);
                    dxs.push(Some(dy));
                }
                (Op::FakeQuant(_), _, Aux::FakeQuant(q, lo, hi)) => {
                    let inv = 1.0 / q.scale;
                    let (pass_lo, pass_hi) = fake_quant_pass_range(*q, *lo, *hi);
                    // With the activation of the layer before it (whose output is this
                    // input) in the same pass: both masks test the same value.
                    let (act_lo, act_hi) = match act_before {
                        Some((j, act)) => {
                            act_applied[j] = true;
                            kernels::act_bounds(act)
                        }
                        None => (f32::NEG_INFINITY, f32::INFINITY),
                    };
                    dy.par_chunks_mut(CHUNK)
                        .zip(input(0).par_chunks(CHUNK))
                        .for_each(|(gs, xs)| {
                            for (g, &x) in gs.iter_mut().zip(xs) {
                                // `&`, not `&&`: no branch, so the loop vectorizes.
                                let t = x * inv;
                                let pass =
                                    (t >= pass_lo) & (t <= pass_hi) & (x > act_lo) & (x < act_hi);
                                *g = if pass { *g } else { 0.0 };
                            }
                        });
                    dxs.push(Some(dy));
                }
                (Op::Combine(c), _, _) => {
                    let shapes: Vec<&[usize]> = (0..node.inputs.len()).map(in_shape).collect();
                    let regions = c.regions(&shapes, &node.shape);
                    let xs: Vec<Vec<f32>> = (0..node.inputs.len())
                        .map(|k| {
                            let mut xk = buffers.f32.take(input(k).len());
                            to_samples(input(k), shapes[k], batch, &mut xk);
                            xk
                        })
                        .collect();
                    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
                    let mut dy_samples = buffers.f32.take(dy.len());
                    to_samples(&dy, &node.shape, batch, &mut dy_samples);
                    let mut dx: Vec<Vec<f32>> =
                        xs.iter().map(|x| buffers.f32.zeroed(x.len())).collect();
                    combine::backward_batch(&regions, &refs, batch, &dy_samples, &mut dx);
                    for (d, s) in dx.into_iter().zip(&shapes) {
                        let mut dk = buffers.f32.take(d.len());
                        copy_from_samples(&d, s, batch, &mut dk);
                        buffers.f32.give(d);
                        dxs.push(Some(dk));
                    }
                    for b in xs.into_iter().chain([dy, dy_samples]) {
                        buffers.f32.give(b);
                    }
                }
                // Identities: dequant, and dropout and fake quant when they did not run (no mask,
                // fake quantization off).
                (Op::DeQuantStub | Op::Dropout { .. } | Op::FakeQuant(_), _, _) => {
                    dxs.push(Some(dy));
                }
                // The input is never back-propagated (`i >= 1`); the forward pass pairs every
                // op with its own state and tape.
                (
                    op @ (Op::Input
                    | Op::Linear { .. }
                    | Op::Conv2d { .. }
                    | Op::BatchNorm(_)
                    | Op::Pool(_)),
                    _,
                    _,
                ) => unreachable!(
                    "node {} ({}): state or tape of another op",
                    node.name,
                    op.mnemonic()
                ),
            }
            for (k, dx) in dxs.drain(..).enumerate() {
                let j = node.inputs[k];
                let Some(dx) = dx else {
                    continue;
                };
                match &mut grads[j] {
                    _ if !needs_grad[j] => buffers.f32.give(dx),
                    Some(acc) => {
                        acc.iter_mut().zip(&dx).for_each(|(a, b)| *a += b);
                        buffers.f32.give(dx);
                    }
                    slot => *slot = Some(dx),
                }
            }
            if let Some(times) = self.profile.as_mut().map(|p| &mut p.nodes[i]) {
                // The weight gradient's product, and the input gradient's where the input needs
                // one (a network's first layer's does not): each as large as the forward's.
                times.flops_backward = times.flops_forward * if want_dx { 2.0 } else { 1.0 };
            }
            profile::add(
                self.profile.as_mut().map(|p| &mut p.nodes[i].backward_s),
                started,
            );
        }
        self.lists = Lists {
            grads,
            needs_grad,
            act_applied,
            dxs,
        };
    }

    /// When node `i` is a fake quant whose input is the output of a Conv2d or Linear with an
    /// activation, read by nothing else: that layer and its activation. The fake quant's
    /// backward then applies the activation's gradient mask too (the same values: both test the
    /// layer's output), and the layer's backward skips its own pass.
    fn act_before_fake_quant(&self, i: usize) -> Option<(usize, Act)> {
        let node = &self.graph.nodes[i];
        let Op::FakeQuant(_) = node.op else {
            return None;
        };
        let j = *node.inputs.first()?;
        let act = match self.graph.nodes[j].op {
            Op::Conv2d { act, .. } | Op::Linear { act, .. } if act != Act::None => act,
            _ => return None,
        };
        (self.only_reader(j).is_some() && self.graph.output != j).then_some((j, act))
    }

    /// The one node that reads node `j`'s output, if exactly one does.
    fn only_reader(&self, j: usize) -> Option<&Node> {
        let mut readers = self.graph.nodes.iter().filter(|n| n.inputs.contains(&j));
        match (readers.next(), readers.next()) {
            (Some(reader), None) => Some(reader),
            _ => None,
        }
    }

    /// Whether node `i` is a fake quant read only by a routed max pool (and not the graph's
    /// output): its output then need not be written, as max pooling the fake-quantized values
    /// can apply the fake quant on the fly (the same values and routes).
    fn fake_quant_into_pool(&self, i: usize) -> bool {
        let Op::FakeQuant(_) = self.graph.nodes[i].op else {
            return false;
        };
        self.only_reader(i).is_some_and(|reader| {
            matches!(&reader.op, Op::Pool(pool) if pool.is_routed())
                && reader.inputs.len() == 1
                && self.graph.output != i
        })
    }

    /// Whether each node's output depends on a parameter (only those need a gradient), into
    /// `needs`.
    fn needs_grad(&self, needs: &mut Vec<bool>) {
        needs.clear();
        needs.resize(self.graph.nodes.len(), false);
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let own = match &self.state.nodes[i] {
                NodeState::Linear { .. } | NodeState::Conv { .. } | NodeState::Bn(_) => true,
                NodeState::FakeQuant { obs } => obs.learned.is_some(),
                NodeState::None => false,
            };
            needs[i] = own || node.inputs.iter().any(|&j| needs[j]);
        }
    }
}

/// How many draws `prepare_qat` takes for `node`: it swaps each QAT Linear and Conv2d (fused or
/// not) for its QAT module, whose constructor draws a fresh initialisation that `from_float` then
/// overwrites with the float module's. A fused Conv+BN (`ConvBn2d`) draws its weight, then
/// BatchNorm's gamma, then its bias.
fn qat_swap_draws(node: &Node) -> usize {
    let qat = node
        .qconfig
        .as_ref()
        .is_some_and(|q| q.mode == QuantMode::Qat);
    match &node.op {
        Op::Linear {
            in_features,
            out_features,
            bias,
            bn,
            weight_fq: Some(_),
            ..
        } if qat => out_features * (in_features + usize::from(*bias) + usize::from(bn.is_some())),
        Op::Conv2d {
            geom,
            bias,
            bn,
            weight_fq: Some(_),
            ..
        } if qat => {
            let fan_in = geom.fan_in();
            let o = geom.out_channels;
            o * (fan_in + usize::from(*bias) + usize::from(bn.is_some()))
        }
        // Float or PTQ layers are not swapped; the other ops have no parameters.
        Op::Linear { .. }
        | Op::Conv2d { .. }
        | Op::Input
        | Op::BatchNorm(_)
        | Op::Activation(_)
        | Op::Pool(_)
        | Op::Flatten
        | Op::Dropout { .. }
        | Op::Combine(_)
        | Op::FakeQuant(_)
        | Op::DeQuantStub => 0,
    }
}

fn init_state(node: &Node, rng: &mut TorchGenerator) -> NodeState {
    let uniform = |rng: &mut TorchGenerator, n: usize, bound: f64| {
        (0..n)
            .map(|_| rng.uniform(-bound, bound))
            .collect::<Vec<f32>>()
    };
    let weight_obs = |fq: &Option<FakeQuantConfig>, channels: usize| {
        fq.map(|c| Observer::for_node(c, &format!("{}.weight_fake_quant", node.name), channels))
    };
    match &node.op {
        Op::Linear {
            in_features,
            out_features,
            bias,
            bn,
            weight_fq,
            ..
        } => {
            let w = uniform(
                rng,
                in_features * out_features,
                kaiming_uniform_bound(*in_features),
            );
            let b = bias.then(|| {
                Param::new(
                    format!("{}.bias", node.name),
                    vec![*out_features],
                    uniform(rng, *out_features, bias_bound(*in_features)),
                )
            });
            NodeState::Linear {
                weight: Param::new(
                    format!("{}.weight", node.name),
                    vec![*out_features, *in_features],
                    w,
                ),
                bias: b,
                bn: bn
                    .as_ref()
                    .map(|attrs| Box::new(bn_state(attrs, *out_features))),
                weight_obs: weight_obs(weight_fq, *out_features),
            }
        }
        Op::Conv2d {
            geom,
            bias,
            bn,
            weight_fq,
            ..
        } => {
            let fan_in = geom.fan_in();
            let o = geom.out_channels;
            let w = uniform(rng, o * fan_in, kaiming_uniform_bound(fan_in));
            let b = bias.then(|| {
                Param::new(
                    format!("{}.bias", node.name),
                    vec![o],
                    uniform(rng, o, bias_bound(fan_in)),
                )
            });
            NodeState::Conv {
                weight: Param::new(
                    format!("{}.weight", node.name),
                    vec![
                        o,
                        geom.in_channels / geom.groups,
                        geom.kernel.0,
                        geom.kernel.1,
                    ],
                    w,
                ),
                bias: b,
                bn: bn.as_ref().map(|attrs| Box::new(bn_state(attrs, o))),
                weight_obs: weight_obs(weight_fq, o),
            }
        }
        Op::BatchNorm(attrs) => NodeState::Bn(bn_state(attrs, node.shape[0])),
        Op::FakeQuant(cfg) => NodeState::FakeQuant {
            obs: Observer::for_node(*cfg, &format!("{}.activation_post_process", node.name), 1),
        },
        Op::Input
        | Op::Activation(_)
        | Op::Pool(_)
        | Op::Flatten
        | Op::Dropout { .. }
        | Op::Combine(_)
        | Op::DeQuantStub => NodeState::None,
    }
}

fn bn_state(attrs: &BnAttrs, channels: usize) -> BnState {
    BnState {
        attrs: attrs.clone(),
        gamma: Param::new(
            format!("{}.weight", attrs.name),
            vec![channels],
            vec![1.0; channels],
        ),
        beta: Param::new(
            format!("{}.bias", attrs.name),
            vec![channels],
            vec![0.0; channels],
        ),
        running_mean: vec![0.0; channels],
        running_var: vec![1.0; channels],
    }
}

/// A BatchNorm's folding factors ([`BnState::fold_scale`]) in a buffer of `buffers`.
fn bn_fold(bn: &BnState, buffers: &mut Buffers) -> Vec<f32> {
    let mut fold = buffers.f32.take(bn.gamma.value.len());
    bn.fold_scale_into(&mut fold);
    fold
}

/// The weight a layer computes with: folded by `fold` (per output channel) when given, then
/// observed and fake-quantized when the node has a weight fake-quant and the mode asks for it.
fn weight_tape(
    (weight, fold, out_channels): (&[f32], Option<Vec<f32>>, usize),
    has_fq: bool,
    obs: &mut Option<Observer>,
    (node, mode): (&Node, Mode),
    buffers: &mut Buffers,
) -> WeightTape {
    let mut used = buffers.f32.copy_of(weight);
    let k = weight.len() / out_channels;
    if let Some(fold) = &fold {
        for (row, s) in used.chunks_exact_mut(k).zip(fold) {
            row.iter_mut().for_each(|v| *v *= s);
        }
    }
    let qat = node
        .qconfig
        .as_ref()
        .is_none_or(|q| q.mode == QuantMode::Qat);
    let (mut mask, mut before_fq) = (None, None);
    if let (true, Some(obs)) = (has_fq, obs.as_mut()) {
        update(obs, mode, |obs| obs.observe(&used, out_channels));
        if qat && mode.fake_quant {
            if obs.learned.is_some() {
                before_fq = Some(buffers.f32.copy_of(&used));
            }
            let obs = &*obs;
            let cfg = obs.config;
            let mut m = buffers.bool.take(used.len());
            let per_row = obs.qparams_len() == out_channels && out_channels > 1;
            let rows = used.par_chunks_mut(k).zip(m.par_chunks_mut(k)).enumerate();
            // Rows are short (a conv's fan-in): a few thousand values per task.
            let rows = rows.with_min_len((CHUNK / k.max(1)).max(1));
            rows.for_each(|(r, (row, mrow))| {
                let q = obs.fake_quant_qparams_at(if per_row { r } else { 0 });
                fake_quantize_in_place(row, mrow, q, cfg.quant_min, cfg.quant_max);
            });
            mask = Some(m);
        }
    }
    WeightTape {
        used,
        mask,
        before_fq,
        fold,
    }
}

/// Updates a fake quant's observer as `mode` asks ([`Observer::updates`]); a learnable one then
/// takes its observer's parameters, or else keeps its learned scale positive.
fn update(obs: &mut Observer, mode: Mode, observe: impl FnOnce(&mut Observer)) {
    if obs.updates(mode.observe, mode.static_qparams) {
        observe(obs);
        obs.set_learned_from_range();
    } else {
        obs.clamp_learned_scale();
    }
}

/// The backward of a weight's fake quant: `grad` (of the weight used) becomes the gradient of
/// the weight before it, and a learnable fake quant's scale and zero point get theirs.
fn weight_fq_backward(grad: &mut [f32], wt: &WeightTape, obs: Option<&mut Observer>) {
    let learned = obs.and_then(|o| {
        let range = (o.config.quant_min, o.config.quant_max);
        o.learned.as_mut().map(|l| (l, range))
    });
    match (&wt.before_fq, learned) {
        (Some(x), Some((l, range))) => {
            let g = lsq::default_grad_factor(x.len(), range.1);
            if l.scale.value.len() == 1 {
                let (s, z) = (l.scale.value[0], l.zero_point.value[0]);
                (l.scale.grad[0], l.zero_point.grad[0]) = lsq::backward(x, grad, s, z, range, g);
            } else {
                let params = (&l.scale.value[..], &l.zero_point.value[..]);
                let sums = (&mut l.scale.grad[..], &mut l.zero_point.grad[..]);
                lsq::backward_per_channel((x, grad), params, range, g, sums);
            }
        }
        _ => {
            if let Some(mask) = &wt.mask {
                mask_gradient(grad, mask);
            }
        }
    }
}

/// The backward of a learnable activation fake quant (one scale): `grad` becomes x's, in
/// parallel chunks whose sums are added in a fixed order.
fn learned_backward(
    x: &[f32],
    grad: &mut [f32],
    l: &mut Learned,
    range: (i32, i32),
    buffers: &mut Buffers,
) {
    let g = lsq::default_grad_factor(x.len(), range.1);
    let (s, z) = (l.scale.value[0], l.zero_point.value[0]);
    // Each chunk's two sums, side by side.
    let mut sums = buffers.f32.take(2 * x.len().div_ceil(CHUNK));
    sums.par_chunks_mut(2)
        .zip(grad.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)))
        .for_each(|(out, (gs, xs))| (out[0], out[1]) = lsq::backward(xs, gs, s, z, range, g));
    let (ds, dz) = sums.chunks_exact(2).fold((0f64, 0f64), |(a, b), pair| {
        (a + pair[0] as f64, b + pair[1] as f64)
    });
    buffers.f32.give(sums);
    l.scale.grad[0] = ds as f32;
    l.zero_point.grad[0] = dz as f32;
}

/// A tensor in the engine's layout (`[C, N, H·W]` for images, `[N, F]` else) as samples one
/// after another, each C, H, W (the layout of [`combine`] and of the int8 IR), into `out`.
fn to_samples(x: &[f32], shape: &[usize], batch: usize, out: &mut [f32]) {
    match shape {
        [c, h, w] => kernels::transpose_batch_channels(x, (batch, *c, h * w), false, out),
        _ => kernels::copy(x, out),
    }
}

/// Whether every region reads every input at the output's own index and every input has the
/// output's shape: then the engine's layout serves as it is.
fn elementwise(regions: &[combine::Region], shapes: &[&[usize]], out: &[usize]) -> bool {
    shapes.iter().all(|s| *s == out)
        && regions
            .iter()
            .all(|r| r.inputs.iter().all(|(_, s)| *s == combine::Source::Same))
}

/// The inverse of [`to_samples`]: one pass, copying or transposing.
fn copy_from_samples(x: &[f32], shape: &[usize], batch: usize, out: &mut [f32]) {
    match shape {
        [c, h, w] => kernels::transpose_batch_channels(x, (batch, *c, h * w), true, out),
        _ => kernels::copy(x, out),
    }
}

/// ConvBn2d and LinearBn1d QAT after the layer's raw output `z` (channel-major, `[O, N·P]`,
/// computed with the folded weight): undo the folding, add the bias, then BatchNorm and the
/// activation. Returns the output; the tape keeps `z`.
fn fused_bn_forward(
    z: Vec<f32>,
    (o, fold, bias): (usize, &[f32], Option<&Param>),
    bn: &mut BnState,
    (mode, act): (Mode, Act),
    buffers: &mut Buffers,
) -> (Vec<f32>, BnTape) {
    let mut unfold = buffers.f32.take(o);
    unfold.iter_mut().zip(fold).for_each(|(u, s)| *u = 1.0 / s);
    let shift = match bias {
        Some(b) => buffers.f32.copy_of(&b.value),
        None => buffers.f32.zeroed(o),
    };
    let (y, mut t) = batch_norm_forward(&z, Some((&unfold, &shift)), bn, (mode, act), buffers);
    t.z = z;
    buffers.f32.give(unfold);
    buffers.f32.give(shift);
    (y, t)
}

/// The backward of [`fused_bn_forward`]: turns `dy` into the gradient of the raw output, sets
/// the bias's gradient, and returns the gradient of each channel's folding factor.
fn fused_bn_backward(
    dy: &mut [f32],
    (fold, bias): (&[f32], Option<&mut Param>),
    bn: &mut BnState,
    t: &BnTape,
    buffers: &mut Buffers,
) -> Vec<f32> {
    let o = fold.len();
    batch_norm_backward(dy, bn, t);
    // dy is now d(u), u = z / fold + bias.
    if let Some(b) = bias {
        kernels::channel_sums(dy, &mut b.grad);
    }
    let mut d_fold = buffers.f32.take(o);
    kernels::channel_dot(dy, &t.z, &mut d_fold);
    // d(u)/d(fold) = -z / fold²; d(u)/d(z) = 1 / fold.
    d_fold
        .iter_mut()
        .zip(fold)
        .for_each(|(g, s)| *g = -*g / (s * s));
    let n = dy.len() / o;
    dy.par_chunks_mut(n).zip(fold).for_each(|(row, s)| {
        let unfold = 1.0 / s;
        row.iter_mut().for_each(|v| *v = *v * unfold + 0.0);
    });
    d_fold
}

/// With a fused BatchNorm, `weight.grad` is the gradient of the folded weight: turns it into
/// the weight's, and adds the folding factor's share to gamma's gradient.
fn unfold_weight_gradient(weight: &mut Param, fold: &[f32], bn: &mut BnState, d_fold: &[f32]) {
    let o = fold.len();
    let k = weight.value.len() / o.max(1);
    let eps = bn.attrs.eps as f32;
    for c in 0..o {
        let rows = c * k..(c + 1) * k;
        let g = &mut weight.grad[rows.clone()];
        let d = d_fold[c]
            + g.iter()
                .zip(&weight.value[rows])
                .map(|(a, b)| a * b)
                .sum::<f32>();
        g.iter_mut().for_each(|v| *v *= fold[c]);
        bn.gamma.grad[c] += d / (bn.running_var[c] + eps).sqrt();
    }
}

/// `out = program(x)`, in parallel chunks.
fn eval_parallel(program: &Program, x: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| program.eval(x, o));
}

fn mask_gradient(grad: &mut [f32], mask: &[bool]) {
    grad.par_chunks_mut(CHUNK)
        .zip(mask.par_chunks(CHUNK))
        .for_each(|(g, m)| {
            g.iter_mut()
                .zip(m)
                .for_each(|(g, &m)| *g = if m { *g } else { 0.0 })
        });
}

/// Observes a large activation tensor: min/max reduced in parallel, then one update.
fn observe_parallel(obs: &mut Observer, x: &[f32]) {
    let (lo, hi) = x.par_chunks(1 << 14).map(min_max).reduce(
        || (f32::INFINITY, f32::NEG_INFINITY),
        |a, b| (a.0.min(b.0), a.1.max(b.1)),
    );
    obs.observe(&[lo, hi], 1);
}

/// BatchNorm over a CNHW `[C, B*P]` tensor, then `act`: returns the output. Batch statistics
/// when training and not frozen (and the running statistics updated as torch does, with the
/// unbiased variance); running ones otherwise. `pre`, a per-channel `(scale, shift)`, is applied
/// to `x` first, on the fly (ConvBn's unfolding and bias), so that no pass writes it out.
fn batch_norm_forward(
    x: &[f32],
    pre: Option<(&[f32], &[f32])>,
    bn: &mut BnState,
    (mode, act): (Mode, Act),
    buffers: &mut Buffers,
) -> (Vec<f32>, BnTape) {
    let c = bn.gamma.value.len();
    let eps = bn.attrs.eps as f32;
    let batch_stats = mode.training && !mode.bn_frozen;
    // Per channel: the affine before (identity when none), then the mean and variance used.
    let mut stats = buffers.f32.take(4 * c);
    let (identity, moments) = stats.split_at_mut(2 * c);
    let (ones, zeros) = identity.split_at_mut(c);
    let (mean, var) = moments.split_at_mut(c);
    ones.fill(1.0);
    zeros.fill(0.0);
    let (pre_scale, pre_shift) = pre.unwrap_or((ones, zeros));
    if batch_stats {
        let n = (x.len() / c) as f32;
        let row_len = x.len() / c;
        mean.par_iter_mut()
            .zip(x.par_chunks(row_len))
            .enumerate()
            .for_each(|(ch, (m, row))| {
                let (a, b) = (pre_scale[ch], pre_shift[ch]);
                *m = kernels::sum_of(row, |v| v * a + b) / n;
            });
        let mean = &*mean;
        var.par_iter_mut()
            .zip(x.par_chunks(row_len))
            .enumerate()
            .for_each(|(ch, (s, row))| {
                let (a, b, m) = (pre_scale[ch], pre_shift[ch], mean[ch]);
                *s = kernels::sum_of(row, |v| {
                    let u = v * a + b;
                    (u - m) * (u - m)
                }) / n;
            });
        let momentum = bn.attrs.momentum as f32;
        let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        for ch in 0..c {
            bn.running_mean[ch] = (1.0 - momentum) * bn.running_mean[ch] + momentum * mean[ch];
            bn.running_var[ch] =
                (1.0 - momentum) * bn.running_var[ch] + momentum * var[ch] * unbias;
        }
    } else {
        mean.copy_from_slice(&bn.running_mean);
        var.copy_from_slice(&bn.running_var);
    }
    let mut inv_std = buffers.f32.take(c);
    inv_std
        .iter_mut()
        .zip(&*var)
        .for_each(|(s, v)| *s = 1.0 / (v + eps).sqrt());
    // The normalization's shift, in place of the variance.
    let shift = var;
    shift
        .iter_mut()
        .zip(&*mean)
        .zip(&inv_std)
        .for_each(|((t, m), s)| *t = -m * s);
    // One pass: x̂ = (x - mean) / std, kept for the backward, and y = act(gamma x̂ + beta).
    let (mut y, mut xhat) = (buffers.f32.take(x.len()), buffers.f32.take(x.len()));
    kernels::channel_normalize(
        x,
        (&mut y, &mut xhat),
        c,
        [
            (pre_scale, pre_shift),
            (&inv_std, shift),
            (&bn.gamma.value, &bn.beta.value),
        ],
        act,
    );
    buffers.f32.give(stats);
    let tape = BnTape {
        xhat,
        inv_std,
        batch_stats,
        z: Vec::new(),
    };
    (y, tape)
}

/// Turns `dy` (w.r.t. the BatchNorm output) into the gradient w.r.t. its input, in place, and
/// sets gamma's and beta's gradients.
fn batch_norm_backward(dy: &mut [f32], bn: &mut BnState, t: &BnTape) {
    let c = bn.gamma.value.len();
    let n = dy.len() / c;
    kernels::channel_sums(dy, &mut bn.beta.grad);
    kernels::channel_dot(dy, &t.xhat, &mut bn.gamma.grad);
    let (sum_dy, sum_dy_xhat) = (&bn.beta.grad, &bn.gamma.grad);
    let gamma = &bn.gamma.value;
    dy.par_chunks_mut(n)
        .zip(t.xhat.par_chunks(n))
        .enumerate()
        .for_each(|(ch, (row, xh))| {
            let k = gamma[ch] * t.inv_std[ch];
            if t.batch_stats {
                let (m1, m2) = (sum_dy[ch] / n as f32, sum_dy_xhat[ch] / n as f32);
                row.iter_mut()
                    .zip(xh)
                    .for_each(|(g, x)| *g = k * (*g - m1 - x * m2));
            } else {
                row.iter_mut().for_each(|g| *g *= k);
            }
        });
}
