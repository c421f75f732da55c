//! Elementwise float functions as small straight-line programs over one input `x`.
//!
//! An activation states its function (and its derivative) once, as a [`Program`]; training and
//! the reference interpreter evaluate it with [`Program::eval`], and the JIT emits the same
//! instructions in the same order (`jit/lower.rs`), so compiled float layers are bit-exact with
//! the interpreter. Every instruction is one IEEE operation or a comparison and a select, so
//! NaN and signed zeros have one defined result; `exp` is a polynomial built from them
//! ([`exp`]), not the platform's libm.

/// One instruction of a stack program.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inst {
    /// Pushes the input (the first argument).
    X,
    /// Pushes argument `k` (of a program over several inputs; `Arg(0)` is `X`).
    Arg(usize),
    /// Pushes a constant.
    Const(f32),
    /// Pops `b`, then `a`; pushes `a + b` (likewise `Sub`, `Mul`, `Div`).
    Add,
    Sub,
    Mul,
    Div,
    /// Pops `b`, then `a`; pushes `if a > b { a } else { b }`.
    Max,
    /// Pops `b`, then `a`; pushes `if a < b { a } else { b }`.
    Min,
    /// Pops `otherwise`, then `then`, then `v`; pushes `if v > rhs { then } else { otherwise }`
    /// (`Ge`: `v >= rhs`).
    IfGt(f32),
    IfGe(f32),
    /// Rounds to the nearest integer, ties to even.
    Round,
    /// `2^n` for an integral `n` in -126..=127: the float whose exponent field is `n + 127`.
    Pow2,
}

/// A straight-line program: its result is the one value left on the stack.
#[derive(Clone, Debug, PartialEq)]
pub struct Program(pub Vec<Inst>);

impl Program {
    /// The program's value at every `x`, written to `out` (same length).
    pub fn eval(&self, x: &[f32], out: &mut [f32]) {
        self.eval_args(&[x], out);
    }

    /// The program's value at every index of its arguments (all as long as `out`).
    pub fn eval_args(&self, args: &[&[f32]], out: &mut [f32]) {
        const CHUNK: usize = 256;
        let mut stack: Vec<[f32; CHUNK]> = Vec::with_capacity(8);
        for (c, ys) in out.chunks_mut(CHUNK).enumerate() {
            let n = ys.len();
            let at = c * CHUNK;
            stack.clear();
            for inst in &self.0 {
                let mut top = [0f32; CHUNK];
                match *inst {
                    Inst::X | Inst::Arg(_) => {
                        let k = if let Inst::Arg(k) = *inst { k } else { 0 };
                        match args.get(k) {
                            Some(arg) => top[..n].copy_from_slice(&arg[at..at + n]),
                            None => top[..n].fill(f32::NAN),
                        }
                    }
                    Inst::Const(c) => top[..n].fill(c),
                    Inst::Round => {
                        top = pop(&mut stack);
                        top[..n].iter_mut().for_each(|v| *v = v.round_ties_even());
                    }
                    Inst::Pow2 => {
                        top = pop(&mut stack);
                        top[..n].iter_mut().for_each(|v| *v = pow2(*v));
                    }
                    Inst::IfGt(rhs) | Inst::IfGe(rhs) => {
                        let otherwise = pop(&mut stack);
                        let then = pop(&mut stack);
                        let v = pop(&mut stack);
                        let gt = matches!(inst, Inst::IfGt(_));
                        for i in 0..n {
                            let cond = if gt { v[i] > rhs } else { v[i] >= rhs };
                            top[i] = if cond { then[i] } else { otherwise[i] };
                        }
                    }
                    Inst::Add | Inst::Sub | Inst::Mul | Inst::Div | Inst::Max | Inst::Min => {
                        let b = pop(&mut stack);
                        let a = pop(&mut stack);
                        for i in 0..n {
                            top[i] = binary(*inst, a[i], b[i]);
                        }
                    }
                }
                stack.push(top);
            }
            ys.copy_from_slice(&pop(&mut stack)[..n]);
        }
    }

    /// The program's value at one `x`.
    pub fn eval_one(&self, x: f32) -> f32 {
        let mut y = [0.0];
        self.eval(&[x], &mut y);
        y[0]
    }

    /// Whether the program is well formed: every instruction finds its operands and one value
    /// is left.
    pub fn is_valid(&self) -> bool {
        let mut depth: usize = 0;
        for inst in &self.0 {
            let (pops, pushes) = match inst {
                Inst::X | Inst::Arg(_) | Inst::Const(_) => (0, 1),
                Inst::Round | Inst::Pow2 => (1, 1),
                Inst::Add | Inst::Sub | Inst::Mul | Inst::Div | Inst::Max | Inst::Min => (2, 1),
                Inst::IfGt(_) | Inst::IfGe(_) => (3, 1),
            };
            if depth < pops {
                return false;
            }
            depth = depth - pops + pushes;
        }
        depth == 1
    }
}

/// `a op b` for a two-operand instruction.
pub fn binary(inst: Inst, a: f32, b: f32) -> f32 {
    match inst {
        Inst::Add => a + b,
        Inst::Sub => a - b,
        Inst::Mul => a * b,
        Inst::Div => a / b,
        Inst::Max => {
            if a > b {
                a
            } else {
                b
            }
        }
        Inst::Min => {
            if a < b {
                a
            } else {
                b
            }
        }
        Inst::X
        | Inst::Arg(_)
        | Inst::Const(_)
        | Inst::Round
        | Inst::Pow2
        | Inst::IfGt(_)
        | Inst::IfGe(_) => f32::NAN,
    }
}

/// `2^n` for integral `n`, clamped to -126..=127 (NaN gives 2^-126).
pub fn pow2(n: f32) -> f32 {
    let n = if n > 127.0 {
        127.0
    } else if n >= -126.0 {
        n
    } else {
        -126.0
    };
    f32::from_bits(((n as i32 + 127) as u32) << 23)
}

fn pop<const N: usize>(stack: &mut Vec<[f32; N]>) -> [f32; N] {
    // `is_valid` programs never underflow; a malformed one reads zeros.
    stack.pop().unwrap_or([0.0; N])
}

macro_rules! arithmetic {
    ($($trait:ident $method:ident $inst:ident),*) => {$(
        impl std::ops::$trait for Builder {
            type Output = Builder;
            fn $method(self, other: Builder) -> Builder {
                self.binary(other, Inst::$inst)
            }
        }
    )*};
}

arithmetic!(Add add Add, Sub sub Sub, Mul mul Mul, Div div Div);

/// Builds programs by composition: `x() * (x() + c(3.0))`.
#[derive(Clone, Debug, Default)]
pub struct Builder(pub Vec<Inst>);

impl Builder {
    pub fn x() -> Builder {
        Builder(vec![Inst::X])
    }

    /// Argument `k` of a program over several inputs.
    pub fn arg(k: usize) -> Builder {
        Builder(vec![Inst::Arg(k)])
    }

    pub fn constant(c: f32) -> Builder {
        Builder(vec![Inst::Const(c)])
    }

    fn binary(mut self, other: Builder, inst: Inst) -> Builder {
        self.0.extend(other.0);
        self.0.push(inst);
        self
    }

    pub fn max(self, other: Builder) -> Builder {
        self.binary(other, Inst::Max)
    }

    pub fn min(self, other: Builder) -> Builder {
        self.binary(other, Inst::Min)
    }

    /// `if self > rhs { then } else { otherwise }`.
    pub fn if_gt(mut self, rhs: f32, then: Builder, otherwise: Builder) -> Builder {
        self.0.extend(then.0);
        self.0.extend(otherwise.0);
        self.0.push(Inst::IfGt(rhs));
        self
    }

    /// `if self >= rhs { then } else { otherwise }`.
    pub fn if_ge(mut self, rhs: f32, then: Builder, otherwise: Builder) -> Builder {
        self.0.extend(then.0);
        self.0.extend(otherwise.0);
        self.0.push(Inst::IfGe(rhs));
        self
    }

    pub fn round(mut self) -> Builder {
        self.0.push(Inst::Round);
        self
    }

    pub fn pow2(mut self) -> Builder {
        self.0.push(Inst::Pow2);
        self
    }

    pub fn build(self) -> Program {
        Program(self.0)
    }
}

/// `e^v`, to about one part in 10^7 over the whole f32 range: `v` clamped to [-87.3, 88.7],
/// `n = round(v · log2 e)`, `r = v - n · ln 2` (in two parts), a degree-6 polynomial for `e^r`
/// on |r| ≤ ln2/2, scaled by `2^n`. Below the clamp it gives about 1.2e-38 (not 0), above it
/// about 3.4e38 (not infinity).
pub fn exp(v: Builder) -> Builder {
    // ln 2 in two parts (Cephes): `n · LN2_HI` is exact for every `n` here.
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let v = v.max(Builder::constant(-87.3)).min(Builder::constant(88.7));
    let n = (v.clone() * Builder::constant(std::f32::consts::LOG2_E)).round();
    let r = v - n.clone() * Builder::constant(LN2_HI) - n.clone() * Builder::constant(LN2_LO);
    // e^r by Horner: 1 + r(1 + r(1/2 + r(1/6 + r(1/24 + r(1/120 + r/720))))).
    let coefficients = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let mut p = Builder::constant(coefficients[0]);
    for &c in &coefficients[1..] {
        p = p * r.clone() + Builder::constant(c);
    }
    p * n.pow2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_libm_everywhere() {
        let program = exp(Builder::x()).build();
        assert!(program.is_valid());
        let xs: Vec<f32> = (-8000..=8000).map(|i| i as f32 / 100.0).collect();
        let mut ys = vec![0.0; xs.len()];
        program.eval(&xs, &mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = (x as f64).exp();
            let rel = ((y as f64) - want).abs() / want;
            assert!(rel < 4e-7, "exp({x}) = {y}, libm {want}, rel {rel:e}");
        }
        assert!(program.eval_one(-1000.0) < 1e-37);
        assert!(program.eval_one(1000.0).is_finite());
        assert_eq!(program.eval_one(0.0), 1.0);
    }

    #[test]
    fn comparisons_define_nan_and_signed_zero() {
        let relu = Builder::x().max(Builder::constant(0.0)).build();
        assert_eq!(relu.eval_one(-0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(relu.eval_one(f32::NAN).to_bits(), 0.0f32.to_bits());
        assert_eq!(relu.eval_one(2.5), 2.5);
        let step = Builder::x().if_ge(1.0, Builder::constant(1.0), Builder::constant(0.0));
        assert_eq!(step.build().eval_one(1.0), 1.0);
        assert!(!Program(vec![Inst::Add]).is_valid());
    }
}
