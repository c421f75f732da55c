//! PyTorch's CPU random generator, draw for draw: a run seeded with `seed: N` starts from the
//! same weights and visits the batches in the same order as a PyTorch script that calls
//! `torch.manual_seed(N)`, builds the same layers in the same order (default initialisation) and
//! takes `torch.randperm(n)` each epoch.
//!
//! torch's default CPU generator is MT19937 seeded with the low 32 bits of the seed.
//! `uniform_(from, to)` on an f32 tensor takes one 32-bit draw per element and computes
//! `(draw & (2^24 - 1)) · 2^-24 · (to - from) + from` in f64 (with `to - from` in f32), rounded
//! once to f32; `randperm(n)` swaps element `i` with element `i + draw % (n - i)`.

const N: usize = 624;
const M: usize = 397;

/// MT19937 with torch's seeding and its `uniform_` and `randperm` on top.
#[derive(Clone, Debug)]
pub struct TorchGenerator {
    state: Box<[u32; N]>,
    next: usize,
}

impl TorchGenerator {
    /// `torch.manual_seed(seed)`.
    pub fn new(seed: u64) -> TorchGenerator {
        let mut state = Box::new([0u32; N]);
        state[0] = seed as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        TorchGenerator { state, next: N }
    }

    /// Its state (the 624 words and the position in them), to resume a run.
    pub fn save(&self) -> (Vec<u32>, usize) {
        (self.state.to_vec(), self.next)
    }

    /// A generator in a state [`TorchGenerator::save`] gave, or `None` for one it cannot have.
    pub fn restore(state: &[u32], next: usize) -> Option<TorchGenerator> {
        let state: Box<[u32; N]> = state.to_vec().into_boxed_slice().try_into().ok()?;
        (next <= N).then_some(TorchGenerator { state, next })
    }

    /// One 32-bit draw (`generator->random()`).
    pub fn random(&mut self) -> u32 {
        if self.next >= N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        let s = &mut self.state;
        for k in 0..N {
            let y = (s[k] & 0x8000_0000) | (s[(k + 1) % N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            s[k] = s[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    /// Skips `n` draws, as a tensor whose values are thrown away would take them.
    pub fn discard(&mut self, n: usize) {
        for _ in 0..n {
            self.random();
        }
    }

    /// One element of `tensor.uniform_(from, to)` on an f32 tensor; the bounds are torch's
    /// f64 arguments.
    pub fn uniform(&mut self, from: f64, to: f64) -> f32 {
        let (from, to) = (from as f32, to as f32);
        let x = f64::from(self.random() & 0x00ff_ffff) / f64::from(1u32 << 24);
        (x * f64::from(to - from) + f64::from(from)) as f32
    }

    /// `torch.randperm(n)`.
    pub fn randperm(&mut self, n: usize) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..n).collect();
        if (n as u64) < u64::from(u32::MAX / 20) {
            for i in 0..n.saturating_sub(1) {
                let z = self.random() as usize % (n - i);
                perm.swap(i, i + z);
            }
        } else {
            // torch's branch for very large n: the inside-out shuffle with 64-bit draws.
            for i in 0..n {
                let hi = u64::from(self.random());
                let lo = u64::from(self.random());
                let z = ((hi << 32 | lo) % (i as u64 + 1)) as usize;
                perm[i] = perm[z];
                perm[z] = i;
            }
        }
        perm
    }
}

/// The bound of `torch.nn.init.kaiming_uniform_(w, a=sqrt(5))`, which Linear and Conv2d use
/// for their weights: `sqrt(3) · gain / sqrt(fan_in)` with `gain = sqrt(2 / (1 + a²))`, in f64
/// as Python computes it (close to, but not always exactly, `1 / sqrt(fan_in)`).
pub fn kaiming_uniform_bound(fan_in: usize) -> f64 {
    let a = 5f64.sqrt();
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    3f64.sqrt() * (gain / (fan_in as f64).sqrt())
}

/// The bound of Linear's and Conv2d's default bias initialisation: `1 / sqrt(fan_in)`.
pub fn bias_bound(fan_in: usize) -> f64 {
    1.0 / (fan_in as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_sequence() {
        // The C++ standard's check for std::mt19937 (default seed 5489): the 10000th output.
        let mut g = TorchGenerator::new(5489);
        let tenth_thousandth = (0..10_000).map(|_| g.random()).last();
        assert_eq!(tenth_thousandth, Some(4_123_659_995));
    }

    /// Golden values printed by torch 2.9.1.
    #[test]
    fn uniform_and_randperm_match_torch() {
        // torch.manual_seed(0); torch.empty(7).uniform_(-0.2, 0.2)
        let mut g = TorchGenerator::new(0);
        let got: Vec<f32> = (0..7).map(|_| g.uniform(-0.2, 0.2)).collect();
        let want: [f64; 7] = [
            -0.0014973640209063888,
            0.10728871822357178,
            -0.16460902988910675,
            -0.14718781411647797,
            -0.07703087478876114,
            0.05363147333264351,
            -0.0039626359939575195,
        ];
        assert_eq!(got, want.map(|v| v as f32));
        // torch.manual_seed(5); torch.randperm(20)
        let mut g = TorchGenerator::new(5);
        let want = [
            11, 0, 9, 10, 3, 15, 14, 18, 8, 2, 19, 6, 5, 12, 1, 7, 4, 17, 16, 13,
        ];
        assert_eq!(g.randperm(20), want);
        assert_eq!(g.randperm(0), Vec::<usize>::new());
        assert_eq!(g.randperm(1), vec![0]);
    }

    #[test]
    fn kaiming_bound_is_computed_as_python_does() {
        // math.sqrt(3.0) * (math.sqrt(2.0 / (1 + math.sqrt(5) ** 2)) / math.sqrt(512))
        assert_eq!(kaiming_uniform_bound(512), 0.04419417382415921);
        assert_eq!(bias_bound(512), 0.044194173824159216);
    }
}
