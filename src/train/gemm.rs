//! Matrix products for training: `c = a · b + beta · c` (beta 0 or 1) on ndarray views.
//!
//! Rows of `a` by columns of `b` are summed in registers from copies of the operands packed
//! into this thread's scratch space, so a product allocates nothing: with AVX-512, tiles of 12
//! rows by 32 columns (24 of its 32 vector registers of 16 lanes; each term loads two vectors
//! of `b` and broadcasts twelve values of `a` for 24 multiply-adds); with AVX2 or on aarch64, 6
//! rows by 16 columns (12 of their 16 or 32 registers, as two or four vectors a row). Each value is one
//! fused multiply-add chain from zero per block of [`KC`] terms, blocks added in order: the
//! arithmetic of `matrixmultiply`, so the two give the same values bit for bit. Only x86 CPUs
//! without FMA hand their products to `matrixmultiply`, which allocates its packing buffers at
//! every call.

use multiversion::multiversion;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, ArrayView2, ArrayViewMut2};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::buffers::scratch;

/// Terms summed in one chain: `matrixmultiply`'s `kc` for f32.
pub const KC: usize = 256;

/// Columns of `b` in a tile: one vector's lanes (with AVX-512; two or four vectors else).
pub const LANES: usize = 16;

/// A tile's `b` at one term, or one row of its sums.
pub type Lanes = [f32; LANES];

/// `c = a · b + beta · c`, with `a: [m, k]`, `b: [k, n]`, `c: [m, n]` (any strides; beta 0 or 1).
pub fn gemm(a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ArrayViewMut2<f32>) {
    match tiles() {
        // Rows of c are written as slices.
        Some(tiles) if c.strides()[1] == 1 || c.ncols() <= 1 => product(tiles, a, b, beta, c),
        _ => {
            LIBRARY_PRODUCTS.fetch_add(1, Ordering::Relaxed);
            general_mat_mul(1.0, a, b, beta, c);
        }
    }
}

/// The tiles a product is computed in.
#[derive(Clone, Copy, Debug)]
enum Tiles {
    /// 12 rows by 32 columns (AVX-512).
    Rows12,
    /// 6 rows (AVX2 with FMA, aarch64).
    Rows6,
}

/// This CPU's tiles; none without fused multiply-add.
fn tiles() -> Option<Tiles> {
    if avx512() {
        Some(Tiles::Rows12)
    } else if fma() {
        Some(Tiles::Rows6)
    } else {
        None
    }
}

/// [`gemm`] in `tiles`.
fn product(
    tiles: Tiles,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    assert!(
        beta == 0.0 || beta == 1.0,
        "gemm adds to c or overwrites it"
    );
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == 0.0 {
            c.fill(0.0);
        }
        return;
    }
    let panels = n.div_ceil(LANES);
    let kc = k.min(KC);
    // Packed b (one block of terms, all its column panels) and packed a (one row panel), each
    // starting on a cache line (runs of 16 are 64 bytes: a run never straddles two lines).
    scratch(kc * LANES * (panels + 1) + LANES, |space: &mut [f32]| {
        let skip = space.as_ptr().align_offset(64).min(LANES);
        let (b_pack, a_pack) = space[skip..].split_at_mut(kc * panels * LANES);
        let b_pack = b_pack.as_chunks_mut().0;
        match tiles {
            Tiles::Rows12 => blocks12((a, b, beta, c), (b_pack, a_pack.as_chunks_mut().0)),
            Tiles::Rows6 => blocks6((a, b, beta, c), (b_pack, a_pack.as_chunks_mut().0)),
        }
    });
}

/// The operands and result of a product.
type Product<'p, 'a, 'b, 'c> = (
    &'p ArrayView2<'a, f32>,
    &'p ArrayView2<'b, f32>,
    f32,
    &'p mut ArrayViewMut2<'c, f32>,
);

/// [`blocks`] in tiles of 12 rows, compiled for AVX-512.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
fn blocks12<'p, 'a, 'b, 'c>(
    p: Product<'p, 'a, 'b, 'c>,
    (b_pack, a_pack): (&mut [Lanes], &mut [[f32; 12]]),
) {
    blocks::<12, Rows12>(p, (b_pack, a_pack));
}

/// [`blocks`] in tiles of 6 rows, compiled for AVX2 with FMA.
#[multiversion(targets("x86_64+avx2+fma"))]
fn blocks6<'p, 'a, 'b, 'c>(
    p: Product<'p, 'a, 'b, 'c>,
    (b_pack, a_pack): (&mut [Lanes], &mut [[f32; 6]]),
) {
    blocks::<6, Rows6>(p, (b_pack, a_pack));
}

/// [`gemm`]'s loops: for each block of terms, `b` packed, then each panel of `R` rows of `a`
/// packed and multiplied by every column panel, one tile at a time (two panels at a time with
/// wide tiles).
#[inline(always)]
fn blocks<const R: usize, T: Tile<R>>(
    (a, b, beta, c): Product<'_, '_, '_, '_>,
    (b_pack, a_pack): (&mut [Lanes], &mut [[f32; R]]),
) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let panels = n.div_ceil(LANES);
    let (a, b) = (Operand::of(a), Operand::of(b));
    for (block, k0) in (0..k).step_by(KC).enumerate() {
        let kb = KC.min(k - k0);
        let b_pack = &mut b_pack[..kb * panels];
        pack_b(&b, (k0, kb), b_pack);
        let add = block > 0 || beta == 1.0;
        for i0 in (0..m).step_by(R) {
            let rows = R.min(m - i0);
            let a_pack = &mut a_pack[..kb];
            pack_a(&a, (i0, rows), (k0, kb), a_pack);
            let mut c_rows = c.slice_mut(s![i0..i0 + rows, ..]);
            let mut c_rows = c_rows.rows_mut().into_iter();
            let mut out: [&mut [f32]; R] = std::array::from_fn(|_| match c_rows.next() {
                Some(row) => row.into_slice().expect("unit stride"),
                None => &mut [],
            });
            let (mut j0, mut rest) = (0, &b_pack[..]);
            while !rest.is_empty() {
                if T::WIDE && rest.len() >= 2 * kb {
                    let (left, right) = T::sums2(a_pack, &rest[..kb], &rest[kb..2 * kb]);
                    put(&left, (&mut out, rows, j0, n), add);
                    put(&right, (&mut out, rows, j0 + LANES, n), add);
                    (j0, rest) = (j0 + 2 * LANES, &rest[2 * kb..]);
                } else {
                    put(&T::sums(a_pack, &rest[..kb]), (&mut out, rows, j0, n), add);
                    (j0, rest) = (j0 + LANES, &rest[kb..]);
                }
            }
        }
    }
}

/// Products handed to `matrixmultiply`: each allocates its packing buffers.
static LIBRARY_PRODUCTS: AtomicUsize = AtomicUsize::new(0);

/// How many products have gone to `matrixmultiply` so far (none on CPUs with FMA), each of
/// which allocated one packing buffer: what tests/allocations.rs allows for.
pub fn library_products() -> usize {
    LIBRARY_PRODUCTS.load(Ordering::Relaxed)
}

/// Whether the CPU runs the AVX-512 build of the kernels (with fused multiply-add). Setting
/// `QATC_NO_AVX512` (to anything) says no, to measure the other CPUs' paths on this one.
pub fn avx512() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| std::env::var_os("QATC_NO_AVX512").is_none() && cpu_has_avx512())
}

fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has fused multiply-add in vectors: AVX2 and FMA on x86, always on aarch64.
pub fn fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A product's operand: one slice when its values are one contiguous run, row by row or column
/// by column (then packing reads runs straight from it), else a view.
enum Operand<'a> {
    /// Element `(i, j)` at `i * row + j * col` (one of the two is 1).
    Dense {
        values: &'a [f32],
        row: usize,
        col: usize,
    },
    View(ArrayView2<'a, f32>),
}

impl<'a> Operand<'a> {
    /// Its number of columns.
    fn ncols(&self) -> usize {
        match self {
            // Row by row (a single column counts as that).
            Operand::Dense { row, col: 1, .. } => *row,
            Operand::Dense { values, col, .. } => values.len() / col,
            Operand::View(v) => v.ncols(),
        }
    }

    fn of(v: &ArrayView2<'a, f32>) -> Operand<'a> {
        if let Some(values) = v.to_slice() {
            return Operand::Dense {
                values,
                row: v.ncols(),
                col: 1,
            };
        }
        match (*v).reversed_axes().to_slice() {
            Some(values) => Operand::Dense {
                values,
                row: 1,
                col: v.nrows(),
            },
            None => Operand::View(*v),
        }
    }
}

/// Terms `k0..k0 + kb` of `b` as panels of 16 columns, each `kb` runs of 16 (zeros past the
/// last column).
#[inline(always)]
fn pack_b(b: &Operand, (k0, kb): (usize, usize), out: &mut [Lanes]) {
    let n = b.ncols();
    if !n.is_multiple_of(LANES) {
        // The last panel's missing columns stay zero.
        out[(n / LANES) * kb..].fill([0.0; LANES]);
    }
    match b {
        Operand::Dense {
            values,
            row,
            col: 1,
        } => rows_to_panels((0..kb).map(|t| &values[(k0 + t) * row..][..n]), kb, out),
        Operand::Dense { values, col, .. } => {
            columns_to_panels(|j| &values[j * col + k0..][..kb], n, out)
        }
        Operand::View(b) => {
            let b = b.slice(s![k0..k0 + kb, ..]);
            if b.strides()[1] == 1 || n == 1 {
                let rows = b.rows().into_iter();
                rows_to_panels(
                    rows.map(|row| row.to_slice().expect("unit stride")),
                    kb,
                    out,
                );
            } else if b.strides()[0] == 1 {
                columns_to_panels(|j| b.column(j).to_slice().expect("unit stride"), n, out);
            } else {
                for ((k, j), &v) in b.indexed_iter() {
                    out[j / LANES * kb + k][j % LANES] = v;
                }
            }
        }
    }
}

/// [`pack_b`] from `b`'s rows, one per term: each cut into runs of 16, one per panel.
#[inline(always)]
fn rows_to_panels<'a>(rows: impl Iterator<Item = &'a [f32]>, kb: usize, out: &mut [Lanes]) {
    for (t, row) in rows.enumerate() {
        for (p, run) in row.chunks(LANES).enumerate() {
            copy_run(run, &mut out[p * kb + t]);
        }
    }
}

/// [`pack_b`] from `b`'s `n` columns (`column(j)`, `kb` terms each), 16 to a panel.
#[inline(always)]
fn columns_to_panels<'a>(column: impl Fn(usize) -> &'a [f32], n: usize, out: &mut [Lanes]) {
    let kb = out.len() / n.div_ceil(LANES);
    for (p, panel) in out.chunks_exact_mut(kb).enumerate() {
        let mut columns: [&[f32]; LANES] = [&[]; LANES];
        for (slot, j) in columns.iter_mut().zip(p * LANES..n.min((p + 1) * LANES)) {
            *slot = column(j);
        }
        transpose(&columns, panel);
    }
}

/// Rows `i0..i0 + rows` (at most `R`), terms `k0..k0 + kb` of `a` as `kb` runs of `R`, one
/// per term (zeros past the last row).
#[inline(always)]
fn pack_a<const R: usize>(
    a: &Operand,
    (i0, rows): (usize, usize),
    (k0, kb): (usize, usize),
    out: &mut [[f32; R]],
) {
    if rows < R {
        out.fill([0.0; R]);
    }
    match a {
        Operand::Dense {
            values,
            row: 1,
            col,
        } => {
            for (t, slot) in out.iter_mut().enumerate() {
                copy_run(&values[(k0 + t) * col + i0..][..rows], slot);
            }
        }
        Operand::Dense { values, row, .. } => {
            let mut lanes: [&[f32]; R] = [&[]; R];
            for (r, lane) in lanes.iter_mut().enumerate().take(rows) {
                *lane = &values[(i0 + r) * row + k0..][..kb];
            }
            transpose(&lanes, out);
        }
        Operand::View(a) => {
            let a = a.slice(s![i0..i0 + rows, k0..k0 + kb]);
            if a.strides()[0] == 1 || rows == 1 {
                for (slot, column) in out.iter_mut().zip(a.columns()) {
                    copy_run(column.to_slice().expect("unit stride"), slot);
                }
            } else if a.strides()[1] == 1 {
                let mut lanes: [&[f32]; R] = [&[]; R];
                for (slot, row) in lanes.iter_mut().zip(a.rows()) {
                    *slot = row.to_slice().expect("unit stride");
                }
                transpose(&lanes, out);
            } else {
                for ((r, k), &v) in a.indexed_iter() {
                    out[k][r] = v;
                }
            }
        }
    }
}

/// A run of at most `W` values to the start of `slot`: a whole run as one copy of fixed size.
#[inline(always)]
fn copy_run<const W: usize>(run: &[f32], slot: &mut [f32; W]) {
    match <&[f32; W]>::try_from(run) {
        Ok(whole) => *slot = *whole,
        Err(_) => slot[..run.len()].copy_from_slice(run),
    }
}

/// `out[t][l] = lanes[l][t]`, 16 terms at a time through a `W x 16` tile (lanes with no values,
/// past the matrix's edge, give zeros).
#[inline(always)]
pub fn transpose<const W: usize>(lanes: &[&[f32]; W], out: &mut [[f32; W]]) {
    for (t0, block) in (0..out.len()).step_by(LANES).zip(out.chunks_mut(LANES)) {
        let mut tile = [[0.0; LANES]; W];
        for (row, lane) in tile.iter_mut().zip(lanes) {
            if let Some(run) = lane.get(t0..t0 + block.len()) {
                copy_run(run, row);
            }
        }
        for (t, slot) in block.iter_mut().enumerate() {
            for (l, v) in slot.iter_mut().enumerate() {
                *v = tile[l][t];
            }
        }
    }
}

/// Writes (or with `add`, adds) a tile's sums into columns `j0..j0 + 16` of the first `rows`
/// rows in `out` (`n` columns): through [`store_whole`] where the tile is whole.
#[inline(always)]
fn put<const R: usize>(
    sums: &[Lanes; R],
    (out, rows, j0, n): (&mut [&mut [f32]; R], usize, usize, usize),
    add: bool,
) {
    if rows == R && j0 + LANES <= n {
        store_whole(sums, (out, j0), add);
    } else {
        store(sums, (out, j0), add);
    }
}

/// Writes (or with `add`, adds) a whole tile's sums into columns `j0..j0 + 16` of the rows in
/// `out`: the common case, with no edge to test for (which would cost the tile's registers).
#[inline(always)]
fn store_whole<const R: usize>(
    sums: &[Lanes; R],
    (out, j0): (&mut [&mut [f32]; R], usize),
    add: bool,
) {
    for (row, sums) in out.iter_mut().zip(sums) {
        let run: &mut Lanes = (&mut row[j0..j0 + LANES]).try_into().expect("a whole run");
        if add {
            run.iter_mut().zip(sums).for_each(|(c, s)| *c += s);
        } else {
            *run = *sums;
        }
    }
}

/// Writes (or with `add`, adds) a tile's sums into columns `j0..` of the rows in `out`, as far
/// as they go (fewer rows at the bottom edge, fewer columns at the right).
#[inline(always)]
fn store<const R: usize>(sums: &[Lanes; R], (out, j0): (&mut [&mut [f32]; R], usize), add: bool) {
    for (row, sums) in out.iter_mut().zip(sums) {
        let Some(run) = row.get_mut(j0..) else {
            continue;
        };
        let width = LANES.min(run.len());
        match (<&mut Lanes>::try_from(&mut run[..width]), add) {
            // A whole run: one fixed-size store (a copy of unknown length would call memcpy).
            (Ok(whole), false) => *whole = *sums,
            (Ok(whole), true) => whole.iter_mut().zip(sums).for_each(|(c, s)| *c += s),
            (Err(_), false) => run[..width].copy_from_slice(&sums[..width]),
            (Err(_), true) => run.iter_mut().zip(sums).for_each(|(c, s)| *c += s),
        }
    }
}

/// A tile of `R` rows: `Σ_t a[t][r] · b[t]` for each row, one fused multiply-add chain each from
/// zero, terms in order.
trait Tile<const R: usize> {
    /// Whether [`Tile::sums2`] is the tile to use: two panels of columns at once.
    const WIDE: bool;

    fn sums(a: &[[f32; R]], b: &[Lanes]) -> [Lanes; R];

    /// [`Tile::sums`] for two panels of columns, `b0` and `b1`.
    fn sums2(a: &[[f32; R]], b0: &[Lanes], b1: &[Lanes]) -> ([Lanes; R], [Lanes; R]) {
        (Self::sums(a, b0), Self::sums(a, b1))
    }
}

/// Tiles of 12 rows by two panels.
struct Rows12;

/// Tiles of 6 rows by one panel.
struct Rows6;

/// `fma_row(&mut c_r, a[r], b)` for each named accumulator `c_r`: separate variables, so that
/// they live in registers (an array of them is kept in memory).
macro_rules! fma_rows {
    ($a:expr, $b:expr; $($c:ident: $r:literal),*) => {
        $(fma_row(&mut $c, $a[$r], $b);)*
    };
    ($a:expr, $b:expr, $b2:expr; $($c:ident $d:ident: $r:literal),*) => {
        $(fma_row(&mut $c, $a[$r], $b); fma_row(&mut $d, $a[$r], $b2);)*
    };
}
pub(crate) use fma_rows;

impl Tile<12> for Rows12 {
    const WIDE: bool = true;

    #[inline(always)]
    fn sums(a: &[[f32; 12]], b: &[Lanes]) -> [Lanes; 12] {
        let zero = [0.0; LANES];
        let (mut c0, mut c1, mut c2, mut c3) = (zero, zero, zero, zero);
        let (mut c4, mut c5, mut c6, mut c7) = (zero, zero, zero, zero);
        let (mut c8, mut c9, mut c10, mut c11) = (zero, zero, zero, zero);
        for (av, bv) in a.iter().zip(b) {
            fma_rows!(av, bv; c0: 0, c1: 1, c2: 2, c3: 3, c4: 4, c5: 5, c6: 6, c7: 7, c8: 8,
                c9: 9, c10: 10, c11: 11);
        }
        [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11]
    }

    #[inline(always)]
    fn sums2(a: &[[f32; 12]], b0: &[Lanes], b1: &[Lanes]) -> ([Lanes; 12], [Lanes; 12]) {
        let zero = [0.0; LANES];
        let (mut c0, mut c1, mut c2, mut c3) = (zero, zero, zero, zero);
        let (mut c4, mut c5, mut c6, mut c7) = (zero, zero, zero, zero);
        let (mut c8, mut c9, mut c10, mut c11) = (zero, zero, zero, zero);
        let (mut d0, mut d1, mut d2, mut d3) = (zero, zero, zero, zero);
        let (mut d4, mut d5, mut d6, mut d7) = (zero, zero, zero, zero);
        let (mut d8, mut d9, mut d10, mut d11) = (zero, zero, zero, zero);
        for ((av, bv), bw) in a.iter().zip(b0).zip(b1) {
            // Row by row, both panels: one broadcast value live at a time.
            fma_rows!(av, bv, bw; c0 d0: 0, c1 d1: 1, c2 d2: 2, c3 d3: 3, c4 d4: 4, c5 d5: 5,
                c6 d6: 6, c7 d7: 7, c8 d8: 8, c9 d9: 9, c10 d10: 10, c11 d11: 11);
        }
        (
            [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11],
            [d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11],
        )
    }
}

impl Tile<6> for Rows6 {
    const WIDE: bool = false;

    #[inline(always)]
    fn sums(a: &[[f32; 6]], b: &[Lanes]) -> [Lanes; 6] {
        let zero = [0.0; LANES];
        let (mut c0, mut c1, mut c2) = (zero, zero, zero);
        let (mut c3, mut c4, mut c5) = (zero, zero, zero);
        for (av, bv) in a.iter().zip(b) {
            fma_rows!(av, bv; c0: 0, c1: 1, c2: 2, c3: 3, c4: 4, c5: 5);
        }
        [c0, c1, c2, c3, c4, c5]
    }
}

/// `acc += a * b`, lane by lane, fused: one vector instruction per vector of lanes.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed: the form the vectorizer turns into FMAs
pub fn fma_row<const N: usize>(acc: &mut [f32; N], a: f32, b: &[f32; N]) {
    for l in 0..N {
        acc[l] = a.mul_add(b[l], acc[l]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn matrix(rows: usize, cols: usize, seed: usize) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            (((i * 31 + j * 7 + seed) * 7919 % 2003) as f32 / 1001.0) - 1.0
        })
    }

    #[test]
    fn products_equal_matrixmultiplys_bit_for_bit() {
        // Edges in every dimension, more than one block of terms, operands row by row, column
        // by column and cut out of larger matrices, in both kinds of tile (each runs on any
        // CPU: without the instructions it was built for, in a plain build).
        for (m, k, n) in [
            (1, 1, 1),
            (17, 300, 33),
            (64, 512, 120),
            (5, 32, 200),
            (40, 7, 16),
        ] {
            let (a, b) = (matrix(m, k, 1), matrix(k, n, 2));
            let (at, bt) = (matrix(k, m, 3), matrix(n, k, 4));
            let (a_big, b_big) = (matrix(m + 3, k + 5, 6), matrix(k + 2, n + 4, 7));
            let layouts = [
                (a.view(), b.view()),
                (at.t(), bt.t()),
                (
                    a_big.slice(s![2..m + 2, 1..k + 1]),
                    b_big.slice(s![1..k + 1, 3..n + 3]),
                ),
            ];
            for ((a, b), beta, tiles) in cases(&layouts) {
                let start = matrix(m, n, 5);
                let (mut ours, mut theirs) = (start.clone(), start.clone());
                product(tiles, a, b, beta, &mut ours.view_mut());
                general_mat_mul(1.0, a, b, beta, &mut theirs);
                let bits = |x: &Array2<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                // matrixmultiply fuses its multiply-adds only where the CPU has FMA.
                if fma() {
                    assert!(
                        bits(&ours) == bits(&theirs),
                        "{m}x{k}x{n} beta {beta} {tiles:?}"
                    );
                }
                // And both are the product.
                for ((i, j), &got) in ours.indexed_iter() {
                    let want: f64 = (0..k)
                        .map(|t| f64::from(a[[i, t]]) * f64::from(b[[t, j]]))
                        .sum::<f64>()
                        + f64::from(beta) * f64::from(start[[i, j]]);
                    assert!(
                        (f64::from(got) - want).abs() < 1e-5 * k as f64,
                        "{m}x{k}x{n} [{i},{j}] {tiles:?}"
                    );
                }
            }
        }
    }

    /// Every layout with both betas and both kinds of tile.
    fn cases<'l, 'a>(
        layouts: &'l [(ArrayView2<'a, f32>, ArrayView2<'a, f32>)],
    ) -> impl Iterator<Item = (&'l (ArrayView2<'a, f32>, ArrayView2<'a, f32>), f32, Tiles)> {
        layouts.iter().flat_map(|pair| {
            [0.0, 1.0].into_iter().flat_map(move |beta| {
                [Tiles::Rows12, Tiles::Rows6]
                    .into_iter()
                    .map(move |tiles| (pair, beta, tiles))
            })
        })
    }

    #[test]
    fn a_column_block_of_a_larger_matrix_is_written_alone() {
        let (a, b) = (matrix(20, 40, 1), matrix(40, 50, 2));
        let mut c = Array2::from_elem((20, 90), f32::NAN);
        let mut block = c.slice_mut(s![.., 30..80]);
        gemm(&a.view(), &b.view(), 0.0, &mut block);
        assert!(c.slice(s![.., 30..80]).iter().all(|v| v.is_finite()));
        assert!(c
            .slice(s![.., ..30])
            .iter()
            .chain(c.slice(s![.., 80..]))
            .all(|v| v.is_nan()));
    }
}
