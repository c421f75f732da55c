//! 256-bit GEMM accumulation for the in-process JIT on x86 CPUs with AVX512-VNNI and VL
//! (Ice Lake and later, Zen 4 and later). Cranelift's vectors are 128 bits; `vpdpbusd` on 256
//! bits does twice the work per instruction at the same rate (measured on Zen 4: 117 GMAC/s per
//! core on 128 bits, 235 on 256 and on 512). The JIT calls [`accumulate`] for a GEMM's integer
//! part and requantizes its result in its own code, so the numerics stay written once: the sums
//! are exact i32 (wrapping, as the 128-bit kernels), whatever the order. Objects never use this:
//! they stay dependency-free Cranelift code.
//!
//! The weights are the JIT's own packing (see `gemm.rs`): per block of eight output channels
//! and per group of four columns, 32 bytes, channel-major, so one block's step is exactly one
//! 256-bit vector.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The symbol JIT code calls.
pub(super) const SYMBOL: &str = "qatc_gemm_wide";

/// Rows and blocks of a register tile: twelve 256-bit accumulators.
const ROWS: usize = 6;
const BLOCKS: usize = 2;

/// Whether this CPU runs [`accumulate`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A GEMM's operands, as the JIT passes them (one pointer, so the call has one argument).
#[repr(C)]
pub(super) struct Args {
    /// `rows` rows of codes, `a_stride` bytes apart; each row readable for `4 · k4` bytes.
    pub a: *const u8,
    pub a_stride: i64,
    pub rows: i64,
    /// Packed weights: `blocks` blocks of `k4` steps of 32 bytes.
    pub w: *const u8,
    pub k4: i64,
    pub blocks: i64,
    /// `8 · blocks` i32 biases (the zero point folded in).
    pub bias: *const i32,
    /// `rows` rows of `8 · blocks` i32 sums, written.
    pub out: *mut i32,
}

/// Byte offsets of [`Args`]' fields, for the JIT code that fills it.
pub(super) const ARGS_BYTES: usize = 64;

/// `out[r][o] = bias[o] + Σ_t a[r][t] · w(o, t)` for every row and channel.
///
/// # Safety
/// Called only by JIT code (the JIT boundary), on a CPU where [`available`] holds, with `args`
/// pointing to an [`Args`] whose pointers cover what its fields say: the GEMM's own buffers,
/// which the lowering sized (rows read past their `k4 · 4` bytes meet zero weights and the
/// buffers' slack).
pub(super) unsafe extern "C" fn accumulate(args: *const Args) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract above; `available` was checked before the JIT linked it.
    unsafe {
        let args = &*args;
        accumulate_avx512(args)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = args;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512vnni,avx512vl,avx512f,avx2,avx")]
unsafe fn accumulate_avx512(args: &Args) {
    let (rows, blocks) = (args.rows as usize, args.blocks as usize);
    let mut r0 = 0;
    while r0 < rows {
        let nr = (rows - r0).min(ROWS);
        let mut b0 = 0;
        while b0 < blocks {
            let nb = (blocks - b0).min(BLOCKS);
            // SAFETY: the tile lies inside the GEMM (`accumulate`'s contract).
            unsafe {
                match (nr, nb) {
                    (6, 2) => tile::<6, 2>(args, r0, b0),
                    (6, _) => tile::<6, 1>(args, r0, b0),
                    (5, 2) => tile::<5, 2>(args, r0, b0),
                    (5, _) => tile::<5, 1>(args, r0, b0),
                    (4, 2) => tile::<4, 2>(args, r0, b0),
                    (4, _) => tile::<4, 1>(args, r0, b0),
                    (3, 2) => tile::<3, 2>(args, r0, b0),
                    (3, _) => tile::<3, 1>(args, r0, b0),
                    (2, 2) => tile::<2, 2>(args, r0, b0),
                    (2, _) => tile::<2, 1>(args, r0, b0),
                    (_, 2) => tile::<1, 2>(args, r0, b0),
                    _ => tile::<1, 1>(args, r0, b0),
                }
            }
            b0 += nb;
        }
        r0 += nr;
    }
}

/// Rows `r0..r0 + R` times blocks `b0..b0 + B`: `R · B` accumulators, each step one weight
/// load per block and one 4-byte broadcast per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512vnni,avx512vl,avx512f,avx2,avx")]
unsafe fn tile<const R: usize, const B: usize>(args: &Args, r0: usize, b0: usize) {
    let (k4, blocks) = (args.k4 as usize, args.blocks as usize);
    let stride = args.a_stride as usize;
    // SAFETY (the whole body): every pointer stays inside the buffers `accumulate`'s contract
    // describes: rows r0..r0+R < rows, blocks b0..b0+B < blocks, steps < k4.
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); B]; R];
        for (b, bias) in (0..B).map(|b| (b, args.bias.add((b0 + b) * 8))) {
            let v = _mm256_loadu_si256(bias as *const __m256i);
            for row in acc.iter_mut() {
                row[b] = v;
            }
        }
        let a = args.a.add(r0 * stride);
        let w: [*const u8; B] = std::array::from_fn(|b| args.w.add((b0 + b) * k4 * 32));
        for kk in 0..k4 {
            let wv: [__m256i; B] =
                std::array::from_fn(|b| _mm256_loadu_si256(w[b].add(kk * 32) as *const __m256i));
            for (r, row) in acc.iter_mut().enumerate() {
                let four = (a.add(r * stride + 4 * kk) as *const i32).read_unaligned();
                let av = _mm256_set1_epi32(four);
                for (b, x) in row.iter_mut().enumerate() {
                    *x = _mm256_dpbusd_epi32(*x, av, wv[b]);
                }
            }
        }
        let width = blocks * 8;
        for (r, row) in acc.iter().enumerate() {
            for (b, x) in row.iter().enumerate() {
                let to = args.out.add((r0 + r) * width + (b0 + b) * 8);
                _mm256_storeu_si256(to as *mut __m256i, *x);
            }
        }
    }
}
