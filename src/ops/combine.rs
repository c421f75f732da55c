//! Ops that combine several tensors into one (`Add`, ...), each defined once: its name, its
//! shape rule, and its value as [`Region`]s of the output, each computed by a program over the
//! inputs that feed it, read where a [`Source`] says. Training, the interpreter and the JIT run
//! regions generically ([`eval_batch`], [`backward_batch`], `jit/lower.rs`); in int8 every input
//! is dequantized, the program runs in f32 and the result is quantized with the output's
//! parameters (torch's quantized ops through `FloatFunctional`).
//!
//! Adding such an op is a variant here and an arm in each `match` below.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::expr::{Builder, Program};

/// An op that combines its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Combine {
    /// The elementwise sum of two or more tensors of one shape.
    Add,
    /// The elementwise product of two tensors of one shape, or of a `[C, H, W]` tensor by a `[C]`
    /// or `[C, 1, 1]` one (broadcast over H and W: squeeze-and-excitation's scaling).
    Mul,
    /// Concatenation along the channels of `[C, H, W]` tensors with equal H and W, or of `[F]`
    /// vectors (torch's `cat` on dim 1).
    Concat,
}

/// Every name users can write.
pub const NAMES: &[&str] = &["Add", "Mul", "Concat"];

/// Where, in one sample of an input (C, H, W order), the value for output element `j` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// At `j`: the input has the output's shape.
    Same,
    /// At `j / plane`: one value per channel, broadcast over the `plane` values of H and W.
    PerChannel { plane: usize },
    /// At `j - start`: the input fills the output from element `start` on.
    Offset { start: usize },
}

impl Source {
    pub fn index(self, j: usize) -> usize {
        match self {
            Source::Same => j,
            Source::PerChannel { plane } => j / plane.max(1),
            Source::Offset { start } => j - start,
        }
    }
}

/// Output elements computed by one program from the inputs that feed them.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    /// Output elements, within one sample.
    pub range: Range<usize>,
    /// The inputs the program reads, in argument order: input index and where its value is.
    pub inputs: Vec<(usize, Source)>,
    pub program: Program,
    /// The program's derivative in each argument, over the same arguments.
    pub partials: Vec<Program>,
}

impl Combine {
    pub fn from_name(name: &str) -> Option<Combine> {
        match name {
            "Add" => Some(Combine::Add),
            "Mul" => Some(Combine::Mul),
            "Concat" => Some(Combine::Concat),
            _ => None,
        }
    }

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            Combine::Add => "Add",
            Combine::Mul => "Mul",
            Combine::Concat => "Concat",
        }
    }

    /// The name in the IR's text form.
    pub fn mnemonic(self) -> &'static str {
        match self {
            Combine::Add => "add",
            Combine::Mul => "mul",
            Combine::Concat => "concat",
        }
    }

    /// How many inputs it takes.
    pub fn inputs(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Combine::Add | Combine::Concat => 2..=usize::MAX,
            Combine::Mul => 2..=2,
        }
    }

    /// How to write it, for help messages.
    pub fn example(self) -> &'static str {
        match self {
            Combine::Add => "Add(a, b)",
            Combine::Mul => "Mul(x, scale)",
            Combine::Concat => "Concat(a, b)",
        }
    }

    /// The shape rule: one sample's output shape from the inputs' shapes, or what is wrong
    /// (calling input `k` what `name(k)` says).
    pub fn output_shape(
        self,
        inputs: &[&[usize]],
        name: impl Fn(usize) -> String,
    ) -> Result<Vec<usize>, String> {
        if inputs.len() < 2 {
            return Err(format!(
                "`{}` needs at least two inputs, this one has {}",
                self.name(),
                inputs.len()
            ));
        }
        match self {
            Combine::Add => {
                if let Some(k) = (1..inputs.len()).find(|&k| inputs[k] != inputs[0]) {
                    return Err(format!(
                        "`Add` of different shapes: {} gives {:?} but {} gives {:?}",
                        name(0),
                        inputs[0],
                        name(k),
                        inputs[k]
                    ));
                }
                Ok(inputs[0].to_vec())
            }
            Combine::Mul => match inputs {
                [a, b] if a == b => Ok(a.to_vec()),
                [a @ [c, _, _], [d] | [d, 1, 1]] if c == d => Ok(a.to_vec()),
                [_, _] => Err(format!(
                    "`Mul` of {} {:?} by {} {:?}: the shapes must be equal, or the first \
                     [C, H, W] and the second [C] or [C, 1, 1]",
                    name(0),
                    inputs[0],
                    name(1),
                    inputs[1]
                )),
                _ => Err(format!(
                    "`Mul` takes two inputs, this one has {}",
                    inputs.len()
                )),
            },
            Combine::Concat => {
                let mismatch = |k: usize| {
                    format!(
                        "`Concat` of {} {:?} and {} {:?}: it joins [C, H, W] tensors of equal H and \
                         W along C, or [F] vectors",
                        name(0),
                        inputs[0],
                        name(k),
                        inputs[k]
                    )
                };
                match inputs[0] {
                    [_, h, w] => {
                        let mut channels = 0;
                        for (k, shape) in inputs.iter().enumerate() {
                            match shape {
                                [c, hk, wk] if hk == h && wk == w => channels += c,
                                _ => return Err(mismatch(k)),
                            }
                        }
                        Ok(vec![channels, *h, *w])
                    }
                    [_] => {
                        let mut features = 0;
                        for (k, shape) in inputs.iter().enumerate() {
                            match shape {
                                [f] => features += f,
                                _ => return Err(mismatch(k)),
                            }
                        }
                        Ok(vec![features])
                    }
                    _ => Err(mismatch(0)),
                }
            }
        }
    }

    /// The regions of the output (whose shape is `out`, from [`Combine::output_shape`]).
    pub fn regions(self, inputs: &[&[usize]], out: &[usize]) -> Vec<Region> {
        let size: usize = out.iter().product();
        match self {
            Combine::Add => {
                // Summed from +0.0 in input order.
                let mut sum = Builder::constant(0.0);
                for k in 0..inputs.len() {
                    sum = sum + Builder::arg(k);
                }
                vec![Region {
                    range: 0..size,
                    inputs: (0..inputs.len()).map(|k| (k, Source::Same)).collect(),
                    program: sum.build(),
                    partials: (0..inputs.len())
                        .map(|_| Builder::constant(1.0).build())
                        .collect(),
                }]
            }
            Combine::Mul => {
                let second = if inputs.get(1) == Some(&out) {
                    Source::Same
                } else {
                    Source::PerChannel {
                        plane: out.iter().skip(1).product(),
                    }
                };
                let (a, b) = (Builder::arg(0), Builder::arg(1));
                vec![Region {
                    range: 0..size,
                    inputs: vec![(0, Source::Same), (1, second)],
                    program: (a.clone() * b.clone()).build(),
                    partials: vec![b.build(), a.build()],
                }]
            }
            // Input k fills the output's elements after those of the inputs before it.
            Combine::Concat => {
                let mut start = 0;
                inputs
                    .iter()
                    .enumerate()
                    .map(|(k, shape)| {
                        let len: usize = shape.iter().product();
                        let region = Region {
                            range: start..start + len,
                            inputs: vec![(k, Source::Offset { start })],
                            program: Builder::arg(0).build(),
                            partials: vec![Builder::constant(1.0).build()],
                        };
                        start += len;
                        region
                    })
                    .collect()
            }
        }
    }
}

/// `n` samples of the output from `n` samples of each input (every tensor C, H, W per sample,
/// one sample after another).
pub fn eval_batch(regions: &[Region], inputs: &[&[f32]], n: usize, out: &mut [f32]) {
    let out_size = out.len() / n.max(1);
    for region in regions {
        let args = gather(region, inputs, n);
        let refs: Vec<&[f32]> = args.iter().map(Vec::as_slice).collect();
        let mut values = vec![0.0; region.range.len() * n];
        region.program.eval_args(&refs, &mut values);
        let len = region.range.len();
        for s in 0..n {
            out[s * out_size + region.range.start..][..len]
                .copy_from_slice(&values[s * len..][..len]);
        }
    }
}

/// Adds `dy`'s contribution to every input's gradient `dx` (same layout as [`eval_batch`]).
pub fn backward_batch(
    regions: &[Region],
    inputs: &[&[f32]],
    n: usize,
    dy: &[f32],
    dx: &mut [Vec<f32>],
) {
    let out_size = dy.len() / n.max(1);
    for region in regions {
        let args = gather(region, inputs, n);
        let refs: Vec<&[f32]> = args.iter().map(Vec::as_slice).collect();
        let len = region.range.len();
        let mut slope = vec![0.0; len * n];
        for (a, &(k, source)) in region.inputs.iter().enumerate() {
            region.partials[a].eval_args(&refs, &mut slope);
            let in_size = inputs[k].len() / n.max(1);
            for s in 0..n {
                for t in 0..len {
                    let j = region.range.start + t;
                    dx[k][s * in_size + source.index(j)] +=
                        dy[s * out_size + j] * slope[s * len + t];
                }
            }
        }
    }
}

/// Each argument's values for the region, sample after sample.
fn gather(region: &Region, inputs: &[&[f32]], n: usize) -> Vec<Vec<f32>> {
    region
        .inputs
        .iter()
        .map(|&(k, source)| {
            let in_size = inputs[k].len() / n.max(1);
            let mut arg = Vec::with_capacity(region.range.len() * n);
            for s in 0..n {
                arg.extend(
                    region
                        .range
                        .clone()
                        .map(|j| inputs[k][s * in_size + source.index(j)]),
                );
            }
            arg
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_joins_channels_or_features() {
        let name = |k: usize| format!("#{k}");
        let (a, b): (&[usize], &[usize]) = (&[1, 1, 2], &[2, 1, 2]);
        assert_eq!(
            Combine::Concat.output_shape(&[a, b], name).unwrap(),
            vec![3, 1, 2]
        );
        assert_eq!(
            Combine::Concat.output_shape(&[&[3], &[2]], name).unwrap(),
            vec![5]
        );
        assert!(Combine::Concat
            .output_shape(&[a, &[2, 2, 1]], name)
            .is_err());
        assert!(Combine::Concat.output_shape(&[a, &[2]], name).is_err());
        let regions = Combine::Concat.regions(&[a, b], &[3, 1, 2]);
        let (x, y) = (
            [1.0, 2.0, 3.0, 4.0],
            [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0],
        );
        // Two samples each.
        let mut out = [0.0; 12];
        eval_batch(&regions, &[&x, &y], 2, &mut out);
        assert_eq!(
            out,
            [1.0, 2.0, 5.0, 6.0, 7.0, 8.0, 3.0, 4.0, 9.0, 10.0, 11.0, 12.0]
        );
        let mut dx = vec![vec![0.0; 4], vec![0.0; 8]];
        let dy: Vec<f32> = (0..12).map(|i| i as f32).collect();
        backward_batch(&regions, &[&x, &y], 2, &dy, &mut dx);
        assert_eq!(dx[0], [0.0, 1.0, 6.0, 7.0]);
        assert_eq!(dx[1], [2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0, 11.0]);
    }

    #[test]
    fn mul_broadcasts_a_channel_vector_and_sums_its_gradient() {
        let (x, s): (&[usize], &[usize]) = (&[2, 1, 2], &[2]);
        let name = |k: usize| format!("#{k}");
        assert_eq!(
            Combine::Mul.output_shape(&[x, s], name).unwrap(),
            vec![2, 1, 2]
        );
        assert_eq!(
            Combine::Mul.output_shape(&[x, &[2, 1, 1]], name).unwrap(),
            vec![2, 1, 2]
        );
        assert!(Combine::Mul.output_shape(&[x, &[3]], name).is_err());
        assert!(Combine::Mul.output_shape(&[x, x, x], name).is_err());
        let regions = Combine::Mul.regions(&[x, s], x);
        let (a, b) = ([1.0, 2.0, 3.0, 4.0], [10.0, 100.0]);
        let mut y = [0.0; 4];
        eval_batch(&regions, &[&a, &b], 1, &mut y);
        assert_eq!(y, [10.0, 20.0, 300.0, 400.0]);
        let mut dx = vec![vec![0.0; 4], vec![0.0; 2]];
        backward_batch(&regions, &[&a, &b], 1, &[1.0; 4], &mut dx);
        assert_eq!(dx[0], [10.0, 10.0, 100.0, 100.0]);
        assert_eq!(dx[1], [3.0, 7.0]);
    }

    #[test]
    fn add_sums_and_passes_gradients_through() {
        let shape: &[usize] = &[2, 1, 2];
        let add = Combine::Add;
        let name = |k: usize| format!("#{k}");
        assert_eq!(
            add.output_shape(&[shape, shape], name).unwrap(),
            vec![2, 1, 2]
        );
        assert!(add.output_shape(&[shape], name).is_err());
        let e = add.output_shape(&[shape, &[4]], name).unwrap_err();
        assert_eq!(
            e,
            "`Add` of different shapes: #0 gives [2, 1, 2] but #1 gives [4]"
        );
        let regions = add.regions(&[shape, shape], shape);
        let (a, b) = ([1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]);
        let mut y = [0.0; 4];
        eval_batch(&regions, &[&a, &b], 1, &mut y);
        assert_eq!(y, [1.5, 2.5, 3.5, 4.5]);
        let mut dx = vec![vec![0.0; 4], vec![0.0; 4]];
        backward_batch(&regions, &[&a, &b], 1, &[1.0, 2.0, 3.0, 4.0], &mut dx);
        assert_eq!(dx[0], [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(dx[1], dx[0]);
    }
}
