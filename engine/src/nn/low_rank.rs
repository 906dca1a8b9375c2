//! The LoRA side branch on the CPU, `s·B(A·x)` for each row `x`, from `A` and `Bᵀ` kept in
//! f16 where the adapter's values are f16 values, in bf16 where they are bf16 values (an
//! adapter saved in either loses nothing, and decode reads half the bytes), and in f32
//! otherwise.
//!
//! Decode reads every adapter matrix once per token, so the branch is bound by memory
//! bandwidth like the base weights: both phases are spread over the threads for any row
//! count, and each output is summed in one fixed order, so a row's delta does not depend on
//! how many rows come with it or how they were split.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use half::{bf16, f16};

/// A matrix's values in the narrowest type that holds them exactly.
#[derive(Debug)]
enum Values {
    F16(Vec<f16>),
    /// PEFT saves an adapter in its base model's dtype, often bf16.
    Bf16(Vec<bf16>),
    F32(Vec<f32>),
}

impl Values {
    fn new(values: Vec<f32>) -> Values {
        if let Some(halves) = exactly(&values, f16::from_f32, f16::to_f32) {
            Values::F16(halves)
        } else if let Some(brains) = exactly(&values, bf16::from_f32, bf16::to_f32) {
            Values::Bf16(brains)
        } else {
            Values::F32(values)
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Values::F16(v) => v.len() * 2,
            Values::Bf16(v) => v.len() * 2,
            Values::F32(v) => v.len() * 4,
        }
    }
}

/// `values` converted to `T`, if every one converts back to the same bits.
fn exactly<T>(values: &[f32], from: impl Fn(f32) -> T, to: impl Fn(T) -> f32) -> Option<Vec<T>>
where
    T: Copy,
{
    let mut out = Vec::with_capacity(values.len());
    for &v in values {
        let narrow = from(v);
        if to(narrow).to_bits() != v.to_bits() {
            return None;
        }
        out.push(narrow);
    }
    Some(out)
}

/// Output columns per tile of `Bᵀ`: a tile's `rank × 64` values are stored together, so
/// the second phase reads one contiguous stream instead of `rank` strided ones.
const COLUMN_TILE: usize = 64;

/// One projection's `s·B(A·x)`.
#[derive(Debug)]
pub struct LowRankDelta {
    /// `A`, `[rank, in]` row-major.
    a: Values,
    /// `Bᵀ` without the scale, in tiles of [`COLUMN_TILE`] columns: tile `t` holds columns
    /// `64t..` as `rank × width` row-major at `t · rank · 64`.
    b_tiles: Values,
    scale: f32,
    rank: usize,
    n_in: usize,
    n_out: usize,
}

impl LowRankDelta {
    /// `a` is `A` (`rank × n_in`, row-major), `b_t` is `Bᵀ` (`rank × n_out`, row-major).
    ///
    /// # Errors
    /// If the lengths do not fit that shape.
    pub fn new(
        a: Vec<f32>,
        b_t: Vec<f32>,
        scale: f32,
        rank: usize,
        n_in: usize,
    ) -> crate::Result<Self> {
        if rank == 0 || a.len() != rank * n_in || !b_t.len().is_multiple_of(rank) {
            return Err(crate::Error::InvalidRequest(format!(
                "a LoRA branch of rank {rank} over {n_in} inputs cannot have {} values in A and {} in B",
                a.len(),
                b_t.len()
            )));
        }
        let n_out = b_t.len() / rank;
        let mut b_tiles = Vec::with_capacity(b_t.len());
        for first in (0..n_out).step_by(COLUMN_TILE) {
            let last = (first + COLUMN_TILE).min(n_out);
            for k in 0..rank {
                b_tiles.extend_from_slice(&b_t[k * n_out + first..k * n_out + last]);
            }
        }
        Ok(LowRankDelta {
            a: Values::new(a),
            b_tiles: Values::new(b_tiles),
            scale,
            rank,
            n_in,
            n_out,
        })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.n_in
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.n_out
    }

    /// The type `A` and `Bᵀ` are kept in: `"f16"`, `"bf16"`, `"f32"`, or (each its own)
    /// `"mixed"`.
    pub fn storage(&self) -> &'static str {
        match (&self.a, &self.b_tiles) {
            (Values::F16(_), Values::F16(_)) => "f16",
            (Values::Bf16(_), Values::Bf16(_)) => "bf16",
            (Values::F32(_), Values::F32(_)) => "f32",
            _ => "mixed",
        }
    }

    /// Bytes of weights read per row of decode.
    pub fn bytes(&self) -> usize {
        self.a.bytes() + self.b_tiles.bytes()
    }

    /// The delta of each row of `xs` (`rows × in`, row-major), `rows × out`.
    pub fn apply(&self, xs: &[f32], rows: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * self.n_out];
        self.add_to(xs, rows, &mut out);
        out
    }

    /// Adds the delta of each row of `xs` (`rows × in`, row-major) to `out` (`rows × out`):
    /// each element gets `out + delta` with the delta summed first, the bits of adding
    /// [`LowRankDelta::apply`]'s result.
    ///
    /// With fewer rows than threads (decode), each row's work is cut into one contiguous
    /// span of `A`'s rows and of `Bᵀ`'s tiles per thread, so every thread streams its own
    /// stretch of memory.
    ///
    /// # Panics
    /// If `xs` or `out` is not `rows` rows long.
    pub fn add_to(&self, xs: &[f32], rows: usize, out: &mut [f32]) {
        assert!(xs.len() == rows * self.n_in && out.len() == rows * self.n_out);
        let pool = candle_core::utils::barrier_pool();
        let kernel = Kernel::detect();
        let splits = super::pool_threads().div_ceil(rows.max(1)).max(1);

        let ranks_per_item = self.rank.div_ceil(splits);
        let rank_items = self.rank.div_ceil(ranks_per_item);
        let mut hidden = vec![0f32; rows * self.rank];
        let hidden_ptr = SharedOut(hidden.as_mut_ptr());
        pool.execute_chunked(rows * rank_items, |items| {
            for item in items {
                let row = item / rank_items;
                let first = (item % rank_items) * ranks_per_item;
                let x = &xs[row * self.n_in..(row + 1) * self.n_in];
                for k in first..(first + ranks_per_item).min(self.rank) {
                    let span = k * self.n_in..(k + 1) * self.n_in;
                    let dot = match &self.a {
                        Values::F16(a) => kernel.dot_f16(x, &a[span]),
                        Values::Bf16(a) => kernel.dot_bf16(x, &a[span]),
                        Values::F32(a) => kernel.dot_f32(x, &a[span]),
                    };
                    // SAFETY: each item writes its own elements, and `hidden` outlives the
                    // call.
                    unsafe { *hidden_ptr.at(row * self.rank + k) = dot * self.scale };
                }
            }
        });

        let tiles = self.n_out.div_ceil(COLUMN_TILE);
        let tiles_per_item = tiles.div_ceil(splits);
        let tile_items = tiles.div_ceil(tiles_per_item);
        let out_ptr = SharedOut(out.as_mut_ptr());
        pool.execute_chunked(rows * tile_items, |items| {
            for item in items {
                let row = item / tile_items;
                let h = &hidden[row * self.rank..(row + 1) * self.rank];
                let first = (item % tile_items) * tiles_per_item;
                for tile in first..(first + tiles_per_item).min(tiles) {
                    let start = tile * COLUMN_TILE;
                    let width = COLUMN_TILE.min(self.n_out - start);
                    // SAFETY: each item writes its own columns of its own row, and `out`
                    // outlives the call.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.at(row * self.n_out + start), width)
                    };
                    let span = tile * self.rank * COLUMN_TILE..;
                    match &self.b_tiles {
                        Values::F16(b) => kernel.combine_f16(h, &b[span], dst),
                        Values::Bf16(b) => kernel.combine_bf16(h, &b[span], dst),
                        Values::F32(b) => kernel.combine_f32(h, &b[span], dst),
                    }
                }
            }
        });
    }
}

/// A pointer the pool's threads write disjoint elements through.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    /// Element `i`; a method, so that closures capture the whole `Sync` wrapper.
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}
// SAFETY: the closures that use it write disjoint elements (see each use).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// AVX2 with FMA and F16C, or portable code that gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if super::simd::avx2_fma() {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    fn dot_f16(self, x: &[f32], w: &[f16]) -> f32 {
        match self {
            // SAFETY: `detect` saw AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::dot_f16(x, w) },
            Kernel::Portable => portable::dot(x, w, |v: &f16| v.to_f32()),
        }
    }

    fn dot_bf16(self, x: &[f32], w: &[bf16]) -> f32 {
        match self {
            // SAFETY: `detect` saw AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::dot_bf16(x, w) },
            Kernel::Portable => portable::dot(x, w, |v: &bf16| v.to_f32()),
        }
    }

    fn dot_f32(self, x: &[f32], w: &[f32]) -> f32 {
        match self {
            // SAFETY: `detect` saw AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::dot_f32(x, w) },
            Kernel::Portable => portable::dot(x, w, |v: &f32| *v),
        }
    }

    fn combine_f16(self, h: &[f32], tile: &[f16], out: &mut [f32]) {
        match self {
            // SAFETY: `detect` saw AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::combine_f16(h, tile, out) },
            Kernel::Portable => portable::combine(h, tile, out, |v: &f16| v.to_f32()),
        }
    }

    fn combine_bf16(self, h: &[f32], tile: &[bf16], out: &mut [f32]) {
        match self {
            // SAFETY: `detect` saw AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::combine_bf16(h, tile, out) },
            Kernel::Portable => portable::combine(h, tile, out, |v: &bf16| v.to_f32()),
        }
    }

    fn combine_f32(self, h: &[f32], tile: &[f32], out: &mut [f32]) {
        match self {
            // SAFETY: `detect` saw AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::combine_f32(h, tile, out) },
            Kernel::Portable => portable::combine(h, tile, out, |v: &f32| *v),
        }
    }
}

/// Lanes per accumulator, and accumulators per dot product: sixteen values per step.
const LANES: usize = 8;

/// The AVX2 kernels' arithmetic, one lane at a time: two eight-lane accumulators of fused
/// multiply-adds, added lane by lane, then summed in `lane_sum`'s tree.
mod portable {
    use super::LANES;

    pub(super) fn dot<T>(x: &[f32], w: &[T], to_f32: impl Fn(&T) -> f32) -> f32 {
        let mut acc = [[0f32; LANES]; 2];
        let steps = x.len() / (2 * LANES);
        for step in 0..steps {
            for (half, lanes) in acc.iter_mut().enumerate() {
                let base = step * 2 * LANES + half * LANES;
                for (lane, a) in lanes.iter_mut().enumerate() {
                    *a = x[base + lane].mul_add(to_f32(&w[base + lane]), *a);
                }
            }
        }
        let mut lanes = [0f32; LANES];
        for (lane, sum) in lanes.iter_mut().enumerate() {
            *sum = acc[0][lane] + acc[1][lane];
        }
        let mut total = tree_sum(lanes);
        for i in steps * 2 * LANES..x.len() {
            total = x[i].mul_add(to_f32(&w[i]), total);
        }
        total
    }

    /// `simd::lane_sum`'s order: halves, then pairs, then the last two.
    fn tree_sum(l: [f32; LANES]) -> f32 {
        let s4 = [l[4] + l[0], l[5] + l[1], l[6] + l[2], l[7] + l[3]];
        (s4[0] + s4[2]) + (s4[1] + s4[3])
    }

    /// `out[j] += Σₖ h[k]·tile[k][j]` for a tile of `Bᵀ` (`h.len() × out.len()`,
    /// row-major), the sum one fused multiply-add per `k` in order, added last.
    pub(super) fn combine<T>(h: &[f32], tile: &[T], out: &mut [f32], to_f32: impl Fn(&T) -> f32) {
        let width = out.len();
        for (j, o) in out.iter_mut().enumerate() {
            *o += h.iter().enumerate().fold(0.0, |acc, (k, &h)| {
                h.mul_add(to_f32(&tile[k * width + j]), acc)
            });
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use crate::nn::simd::lane_sum;
    use crate::nn::tiles::prefetch_block;

    /// How far ahead of its reads a kernel asks for weights, in bytes: the hardware
    /// prefetcher is slow to start on the short streams of one projection's branch.
    const AHEAD: usize = 1024;

    macro_rules! dot {
        ($name:ident, $t:ty, $load:expr, $tail:expr) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) fn $name(x: &[f32], w: &[$t]) -> f32 {
                let n = x.len().min(w.len());
                let steps = n / (2 * LANES);
                let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for step in 0..steps {
                    let i = step * 2 * LANES;
                    prefetch_block(w.as_ptr().wrapping_add(i), AHEAD, 1);
                    // SAFETY: `i + 16 <= n`, within both slices.
                    unsafe {
                        let (x0, x1) = (
                            _mm256_loadu_ps(x.as_ptr().add(i)),
                            _mm256_loadu_ps(x.as_ptr().add(i + LANES)),
                        );
                        acc0 = _mm256_fmadd_ps(x0, $load(w.as_ptr().add(i)), acc0);
                        acc1 = _mm256_fmadd_ps(x1, $load(w.as_ptr().add(i + LANES)), acc1);
                    }
                }
                let mut total = lane_sum(_mm256_add_ps(acc0, acc1));
                for i in steps * 2 * LANES..n {
                    total = x[i].mul_add($tail(&w[i]), total);
                }
                total
            }
        };
    }

    /// Columns [`combine`] keeps in registers: eight vectors of eight.
    const BLOCK: usize = 8 * LANES;

    macro_rules! combine {
        ($name:ident, $t:ty, $load:expr, $tail:expr) => {
            /// `portable::combine` (which adds into `out`), eight vectors of columns at a
            /// time in registers.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) fn $name(h: &[f32], tile: &[$t], out: &mut [f32]) {
                let n = out.len();
                assert!(tile.len() >= h.len() * n);
                let mut j = 0;
                while j + BLOCK <= n {
                    let mut acc = [_mm256_setzero_ps(); 8];
                    for (k, &hk) in h.iter().enumerate() {
                        let hs = _mm256_set1_ps(hk);
                        // SAFETY: `k·n + j + BLOCK <= (k + 1)·n` and the assert.
                        let row = unsafe { tile.as_ptr().add(k * n + j) };
                        prefetch_block(row, AHEAD, 1);
                        prefetch_block(row.wrapping_add(BLOCK / 2), AHEAD, 1);
                        for (v, a) in acc.iter_mut().enumerate() {
                            // SAFETY: as above.
                            *a = _mm256_fmadd_ps(hs, unsafe { $load(row.add(v * LANES)) }, *a);
                        }
                    }
                    for (v, a) in acc.iter().enumerate() {
                        // SAFETY: `j + BLOCK <= n`.
                        unsafe {
                            let o = out.as_mut_ptr().add(j + v * LANES);
                            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), *a));
                        }
                    }
                    j += BLOCK;
                }
                while j + LANES <= n {
                    let mut acc = _mm256_setzero_ps();
                    for (k, &hk) in h.iter().enumerate() {
                        // SAFETY: as in the blocks above, for eight columns.
                        let w = unsafe { $load(tile.as_ptr().add(k * n + j)) };
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(hk), w, acc);
                    }
                    // SAFETY: `j + LANES <= n`.
                    unsafe {
                        let o = out.as_mut_ptr().add(j);
                        _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), acc));
                    }
                    j += LANES;
                }
                for (c, o) in out.iter_mut().enumerate().skip(j) {
                    *o += h.iter().enumerate().fold(0.0, |acc, (k, &hk)| {
                        hk.mul_add($tail(&tile[k * n + c]), acc)
                    });
                }
            }
        };
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        // SAFETY: the caller gives eight readable halves.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    /// A bf16 is an f32's upper half: widen to 32 bits and shift into place.
    #[target_feature(enable = "avx2")]
    unsafe fn load_bf16(p: *const bf16) -> __m256 {
        // SAFETY: the caller gives eight readable bf16s.
        let halves = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
    }

    #[target_feature(enable = "avx2")]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        // SAFETY: the caller gives eight readable floats.
        unsafe { _mm256_loadu_ps(p) }
    }

    dot!(dot_f16, f16, load_f16, |v: &f16| v.to_f32());
    dot!(dot_bf16, bf16, load_bf16, |v: &bf16| v.to_f32());
    dot!(dot_f32, f32, load_f32, |v: &f32| *v);
    combine!(combine_f16, f16, load_f16, |v: &f16| v.to_f32());
    combine!(combine_bf16, bf16, load_bf16, |v: &bf16| v.to_f32());
    combine!(combine_f32, f32, load_f32, |v: &f32| *v);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the test values are rounded to.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Round {
        F16,
        Bf16,
        None,
    }

    fn values(n: usize, seed: u32, round: Round) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let v = (state >> 8) as f32 / (1 << 24) as f32 - 0.5;
                match round {
                    Round::F16 => f16::from_f32(v).to_f32(),
                    // Small enough that f16 cannot hold them all.
                    Round::Bf16 => bf16::from_f32(v * 1e-6).to_f32(),
                    Round::None => v,
                }
            })
            .collect()
    }

    /// `s·B(A·x)` in f64, the plain way.
    fn reference(a: &[f32], b_t: &[f32], scale: f32, rank: usize, x: &[f32]) -> Vec<f64> {
        let n_in = x.len();
        let n_out = b_t.len() / rank;
        let hidden: Vec<f64> = (0..rank)
            .map(|k| {
                (0..n_in)
                    .map(|i| x[i] as f64 * a[k * n_in + i] as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        (0..n_out)
            .map(|j| {
                (0..rank)
                    .map(|k| hidden[k] * b_t[k * n_out + j] as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn f16_and_bf16_values_are_kept_in_two_bytes_and_others_in_f32() {
        let (rank, n_in, n_out) = (4, 40, 24);
        let make = |a: Round, b: Round| {
            LowRankDelta::new(
                values(rank * n_in, 1, a),
                values(rank * n_out, 2, b),
                2.0,
                rank,
                n_in,
            )
            .expect("shape")
        };
        let halves = make(Round::F16, Round::F16);
        assert_eq!(halves.storage(), "f16");
        assert_eq!(halves.bytes(), (rank * n_in + rank * n_out) * 2);
        let brains = make(Round::Bf16, Round::Bf16);
        assert_eq!(brains.storage(), "bf16");
        assert_eq!(brains.bytes(), (rank * n_in + rank * n_out) * 2);
        let floats = make(Round::None, Round::F16);
        assert_eq!(floats.storage(), "mixed");
        assert_eq!(make(Round::None, Round::None).storage(), "f32");
        let wrong = LowRankDelta::new(vec![0.0; 7], vec![0.0; 8], 1.0, 2, 4);
        assert!(wrong.is_err_and(|e| e.to_string().contains("7 values in A")));
    }

    #[test]
    fn every_row_gets_the_exact_low_rank_delta_alone_or_in_a_batch() {
        // 200 inputs: twelve 16-value steps and an 8-value tail; 300 outputs: two full
        // column tiles and a ragged one.
        let (rank, n_in, n_out, rows) = (6, 200, 300, 37);
        for round in [Round::F16, Round::Bf16, Round::None] {
            let a = values(rank * n_in, 3, round);
            let b_t = values(rank * n_out, 4, round);
            let delta = LowRankDelta::new(a.clone(), b_t.clone(), 1.5, rank, n_in).expect("shape");
            let expected = match round {
                Round::F16 => "f16",
                Round::Bf16 => "bf16",
                Round::None => "f32",
            };
            assert_eq!(delta.storage(), expected);
            let xs = values(rows * n_in, 5, Round::None);
            let batch = delta.apply(&xs, rows);
            // Added into a projection's output: the bits of adding the delta.
            let ys = values(rows * n_out, 6, Round::None);
            let mut summed = ys.clone();
            delta.add_to(&xs, rows, &mut summed);
            let added: Vec<f32> = ys.iter().zip(&batch).map(|(y, d)| y + d).collect();
            assert_eq!(bits(&summed), bits(&added), "{round:?}: add_to");
            for row in 0..rows {
                let x = &xs[row * n_in..(row + 1) * n_in];
                let alone = delta.apply(x, 1);
                let got = &batch[row * n_out..(row + 1) * n_out];
                assert_eq!(
                    bits(&alone),
                    bits(got),
                    "row {row} alone and in a batch of {rows}"
                );
                for (j, (&g, want)) in got
                    .iter()
                    .zip(reference(&a, &b_t, 1.5, rank, x))
                    .enumerate()
                {
                    // bf16 test values are a millionth of the others, and so is the delta.
                    let tolerance = if round == Round::Bf16 { 1e-16 } else { 1e-4 };
                    assert!(
                        (g as f64 - want).abs() < tolerance,
                        "{round:?} row {row} col {j}: {g} vs {want}"
                    );
                }
            }
        }
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn the_portable_kernel_gives_the_avx2_bits() {
        if Kernel::detect() == Kernel::Portable {
            return;
        }
        for n in [8, 16, 75, 200, 896, 901] {
            let x = values(n, 7, Round::None);
            let w32 = values(n, 8, Round::None);
            let w16: Vec<f16> = values(n, 9, Round::F16)
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect();
            let wb: Vec<bf16> = values(n, 12, Round::Bf16)
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect();
            let kernel = Kernel::detect();
            assert_eq!(
                kernel.dot_f32(&x, &w32).to_bits(),
                Kernel::Portable.dot_f32(&x, &w32).to_bits(),
                "f32 dot of {n}"
            );
            assert_eq!(
                kernel.dot_f16(&x, &w16).to_bits(),
                Kernel::Portable.dot_f16(&x, &w16).to_bits(),
                "f16 dot of {n}"
            );
            assert_eq!(
                kernel.dot_bf16(&x, &wb).to_bits(),
                Kernel::Portable.dot_bf16(&x, &wb).to_bits(),
                "bf16 dot of {n}"
            );
            // A tile of Bᵀ of rank 3 and `n` columns.
            let h = [0.37, -1.25, 2.5];
            let b16: Vec<f16> = values(3 * n, 10, Round::F16)
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect();
            let bb: Vec<bf16> = values(3 * n, 13, Round::Bf16)
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect();
            let b32 = values(3 * n, 11, Round::None);
            // The kernels add into what `out` holds.
            let start = values(n, 14, Round::None);
            let (mut fast, mut portable) = (start.clone(), start.clone());
            kernel.combine_f16(&h, &b16, &mut fast);
            Kernel::Portable.combine_f16(&h, &b16, &mut portable);
            assert_eq!(bits(&fast), bits(&portable), "f16 combine of {n}");
            (fast, portable) = (start.clone(), start.clone());
            kernel.combine_bf16(&h, &bb, &mut fast);
            Kernel::Portable.combine_bf16(&h, &bb, &mut portable);
            assert_eq!(bits(&fast), bits(&portable), "bf16 combine of {n}");
            (fast, portable) = (start.clone(), start.clone());
            kernel.combine_f32(&h, &b32, &mut fast);
            Kernel::Portable.combine_f32(&h, &b32, &mut portable);
            assert_eq!(bits(&fast), bits(&portable), "f32 combine of {n}");
        }
    }
}
