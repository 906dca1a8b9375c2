//! `C = A · B` in f32 for a frozen `B` packed once, at load, for the whole run.
//!
//! candle's CPU matmul (the `gemm` crate) copies both operands into its own panel layout on
//! every call; for the frozen weights that copy is the same work on every step, 11-13% of
//! a training step in the profiles (`benches/RESULTS.md`, issue 16). Here each projection is
//! packed twice at load, as `Wᵀ` for the forward pass and as `W` for the input's gradient,
//! in panels of `NR` columns (`k` rows of `NR` contiguous values each), and `A` (the
//! activations, or their gradient) is read in place: the kernel broadcasts one value of
//! each of its `MR` rows per step and multiplies it by the panel's two vectors.
//!
//! Each output adds its products one after another in `k` order, split by nothing but `KC`,
//! so the result does not depend on the thread count.

use hexacoder_engine::nn::Isa;

/// Steps of `k` per kernel call: a 32-column panel's slice is 64 KB (L2), the `MR` rows of
/// `A` 28 KB (L1).
const KC: usize = 512;

/// Which kernel a packed matrix was laid out for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// 14 rows × 32 columns: 28 of the 32 zmm registers accumulate.
    Avx512,
    /// 6 rows × 16 columns: 12 of the 16 ymm registers accumulate.
    Avx2,
    /// Any CPU: plain loops over the AVX2 shape.
    Portable,
}

impl Kernel {
    fn detect() -> Kernel {
        match Isa::best() {
            Some(Isa::Avx512Vnni) => Kernel::Avx512,
            Some(Isa::Avx2) => Kernel::Avx2,
            None => Kernel::Portable,
        }
    }

    /// Rows of `A` per kernel call.
    fn mr(self) -> usize {
        match self {
            Kernel::Avx512 => 14,
            Kernel::Avx2 | Kernel::Portable => 6,
        }
    }

    /// Columns per panel.
    fn nr(self) -> usize {
        match self {
            Kernel::Avx512 => 32,
            Kernel::Avx2 | Kernel::Portable => 16,
        }
    }
}

/// A `[k, n]` right-hand side in panels of `NR` columns (the last one zero-padded).
#[derive(Debug)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    kernel: Kernel,
    data: Vec<f32>,
}

impl PackedMatrix {
    /// `B = Wᵀ` for `w` of `[rows, cols]` (row-major): `k = cols`, `n = rows`. What
    /// `x · Wᵀ` (a forward projection) multiplies by.
    pub fn transposed(w: &[f32], rows: usize, cols: usize) -> Self {
        Self::pack(cols, rows, |kk, j| w[j * cols + kk])
    }

    /// `B = W` for `w` of `[rows, cols]` (row-major): `k = rows`, `n = cols`. What
    /// `dy · W` (the input's gradient) multiplies by.
    pub fn plain(w: &[f32], rows: usize, cols: usize) -> Self {
        Self::pack(rows, cols, |kk, j| w[kk * cols + j])
    }

    fn pack(k: usize, n: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        let kernel = Kernel::detect();
        let nr = kernel.nr();
        let panels = n.div_ceil(nr);
        let mut data = vec![0f32; panels * k * nr];
        let ptr = data.as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(panels, |range| {
            for p in range {
                // SAFETY: panel `p`'s `k * nr` values are written by this work item alone,
                // and `data` outlives the pool's call.
                let panel = unsafe {
                    std::slice::from_raw_parts_mut((ptr as *mut f32).add(p * k * nr), k * nr)
                };
                let columns = (p * nr..n.min((p + 1) * nr)).enumerate();
                for (kk, row) in panel.chunks_exact_mut(nr).enumerate() {
                    for (c, j) in columns.clone() {
                        row[c] = at(kk, j);
                    }
                }
            }
        });
        PackedMatrix { k, n, kernel, data }
    }

    /// `(k, n)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }

    /// `a · B` for `a` of `[m, k]` (row-major): `[m, n]`, the panels shared among candle's
    /// threads.
    ///
    /// # Panics
    /// If `a.len()` is not a multiple of `k` (the callers check the shapes).
    pub fn left_multiply(&self, a: &[f32]) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        assert!(
            k > 0 && a.len().is_multiple_of(k),
            "left operand of {} values against k = {k}",
            a.len()
        );
        let m = a.len() / k;
        // Not zeroed first: the first slice of `k` writes every value (a memset here was 2% of
        // a training step).
        let mut c: Vec<f32> = Vec::with_capacity(m * n);
        if m == 0 || n == 0 {
            return c;
        }
        let nr = self.kernel.nr();
        let out = c.as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(nr), |panels| {
            for p in panels {
                // SAFETY: columns `p * nr..` of `c`'s `m * n` values are written by this work
                // item alone, and `c` outlives the pool's call.
                unsafe { self.panel_product(a, m, p, out as *mut f32) };
            }
        });
        // SAFETY: every panel wrote all `m` rows of its columns, so all `m * n` values are
        // initialized.
        unsafe { c.set_len(m * n) };
        c
    }

    /// Columns `p * NR..` of `C = a · B` into `c` (`[m, n]`), every value of them written
    /// (the first slice of `k` stores without reading).
    ///
    /// # Safety
    /// `c` has room for `m * n` values, and nothing else writes these columns meanwhile.
    unsafe fn panel_product(&self, a: &[f32], m: usize, p: usize, c: *mut f32) {
        let (k, n, kernel) = (self.k, self.n, self.kernel);
        let (mr, nr) = (kernel.mr(), kernel.nr());
        let panel = &self.data[p * k * nr..(p + 1) * k * nr];
        let width = nr.min(n - p * nr);
        // Edge panels and edge rows go through a full tile of their own.
        let mut tile = [0f32; 14 * 32];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let b = &panel[k0 * nr..(k0 + kc) * nr];
            let accumulate = k0 > 0;
            for i0 in (0..m).step_by(mr) {
                let rows = mr.min(m - i0);
                let a_rows = &a[i0 * k + k0..];
                // SAFETY: row `i0 + r` of `c` starts at `(i0 + r) * n`; columns
                // `p * nr..p * nr + width` are inside it.
                let c_at = unsafe { c.add(i0 * n + p * nr) };
                if width == nr {
                    unsafe { kernel.run(rows, kc, a_rows, k, b, c_at, n, accumulate) };
                } else {
                    for r in 0..rows {
                        for j in 0..width {
                            tile[r * nr + j] = if accumulate {
                                unsafe { *c_at.add(r * n + j) }
                            } else {
                                0.0
                            };
                        }
                    }
                    unsafe { kernel.run(rows, kc, a_rows, k, b, tile.as_mut_ptr(), nr, true) };
                    for r in 0..rows {
                        for j in 0..width {
                            unsafe { *c_at.add(r * n + j) = tile[r * nr + j] };
                        }
                    }
                }
            }
        }
    }
}

impl Kernel {
    /// `C[rows × NR] (+)= A[rows × kc] · B[kc × NR]`, `A` with row stride `lda`, `C` with `ldc`.
    ///
    /// # Safety
    /// `rows <= MR`; `a` holds `(rows - 1) * lda + kc` values; `b` holds `kc * NR`; `c` has
    /// `NR` writable values at each of `rows` rows; the CPU runs this kernel.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        self,
        rows: usize,
        kc: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        debug_assert!(rows <= self.mr() && b.len() >= kc * self.nr());
        debug_assert!(a.len() >= (rows - 1) * lda + kc);
        macro_rules! by_rows {
            ($f:ident, $($r:literal)*) => {
                match rows {
                    $($r => unsafe { $f::<$r>(kc, a.as_ptr(), lda, b.as_ptr(), c, ldc, accumulate) },)*
                    _ => unreachable!("{rows} rows for a kernel of {}", self.mr()),
                }
            };
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => by_rows!(kernel_avx512, 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => by_rows!(kernel_avx2, 1 2 3 4 5 6),
            // SAFETY: passed on from the caller.
            _ => unsafe { kernel_portable(rows, kc, a, lda, b, c, ldc, accumulate, self.nr()) },
        }
    }
}

/// # Safety
/// As for [`Kernel::run`], with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn kernel_avx512<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for kk in 0..kc {
        // SAFETY (all loads): step `kk < kc` of the panel and of each of the `R` rows.
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_ps(b.add(kk * 32)),
                _mm512_loadu_ps(b.add(kk * 32 + 16)),
            )
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(unsafe { *a.add(r * lda + kk) });
            acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row `r < R` of `c` has 32 values.
        unsafe {
            let row = c.add(r * ldc);
            let (mut c0, mut c1) = (acc[0], acc[1]);
            if accumulate {
                c0 = _mm512_add_ps(_mm512_loadu_ps(row), c0);
                c1 = _mm512_add_ps(_mm512_loadu_ps(row.add(16)), c1);
            }
            _mm512_storeu_ps(row, c0);
            _mm512_storeu_ps(row.add(16), c1);
        }
    }
}

/// # Safety
/// As for [`Kernel::run`], with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for kk in 0..kc {
        // SAFETY (all loads): as in `kernel_avx512`.
        let (b0, b1) = unsafe {
            (
                _mm256_loadu_ps(b.add(kk * 16)),
                _mm256_loadu_ps(b.add(kk * 16 + 8)),
            )
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_set1_ps(unsafe { *a.add(r * lda + kk) });
            acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row `r < R` of `c` has 16 values.
        unsafe {
            let row = c.add(r * ldc);
            let (mut c0, mut c1) = (acc[0], acc[1]);
            if accumulate {
                c0 = _mm256_add_ps(_mm256_loadu_ps(row), c0);
                c1 = _mm256_add_ps(_mm256_loadu_ps(row.add(8)), c1);
            }
            _mm256_storeu_ps(row, c0);
            _mm256_storeu_ps(row.add(8), c1);
        }
    }
}

/// The same sums in plain loops, for CPUs without AVX2.
///
/// # Safety
/// As for [`Kernel::run`].
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_portable(
    rows: usize,
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    nr: usize,
) {
    for r in 0..rows {
        let mut acc = [0f32; 32];
        for kk in 0..kc {
            let x = a[r * lda + kk];
            for (acc, &b) in acc.iter_mut().zip(&b[kk * nr..(kk + 1) * nr]) {
                *acc = x.mul_add(b, *acc);
            }
        }
        for (j, acc) in acc.iter().take(nr).enumerate() {
            // SAFETY: row `r` of `c` has `nr` values.
            unsafe {
                let at = c.add(r * ldc + j);
                *at = if accumulate { *at + acc } else { *acc };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], w: &[f32], m: usize, k: usize, n: usize, transposed: bool) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|kk| {
                        let b = if transposed {
                            w[j * k + kk]
                        } else {
                            w[kk * n + j]
                        };
                        a[i * k + kk] as f64 * b as f64
                    })
                    .sum();
            }
        }
        out
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Every kernel this CPU runs, on edge rows, edge panels and `k` across `KC`, against
    /// sums in f64, in both packings.
    #[test]
    fn products_match_sums_in_f64() {
        let kernels = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable];
        for kernel in kernels {
            if kernel == Kernel::Avx512 && Kernel::detect() != Kernel::Avx512 {
                continue;
            }
            if kernel == Kernel::Avx2 && Kernel::detect() == Kernel::Portable {
                continue;
            }
            for (m, k, n) in [
                (1, 1, 1),
                (15, 33, 40),
                (29, KC + 7, 64),
                (6, 2 * KC, 17),
                (28, 100, 96),
            ] {
                let a = values(m * k, 1);
                // `w` as `[n, k]` for the forward packing, `[k, n]` for the gradient's.
                let w = values(n * k, 2);
                for transposed in [true, false] {
                    let mut packed = if transposed {
                        PackedMatrix::transposed(&w, n, k)
                    } else {
                        PackedMatrix::plain(&w, k, n)
                    };
                    if packed.kernel != kernel {
                        // Lay out again for the kernel under test.
                        let nr = kernel.nr();
                        let mut data = vec![0f32; n.div_ceil(nr) * k * nr];
                        for kk in 0..k {
                            for j in 0..n {
                                data[(j / nr) * k * nr + kk * nr + j % nr] = if transposed {
                                    w[j * k + kk]
                                } else {
                                    w[kk * n + j]
                                };
                            }
                        }
                        packed = PackedMatrix { k, n, kernel, data };
                    }
                    assert_eq!(packed.dims(), (k, n));
                    let got = packed.left_multiply(&a);
                    let want = naive(&a, &w, m, k, n, transposed);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()) * (k as f64).sqrt(),
                            "{kernel:?} m={m} k={k} n={n} transposed={transposed} at {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// Each output's sum runs in `k` order whatever the threads: the same bits on one thread
    /// as on several (the pool is candle's, sized once per process, so this compares one
    /// call against rows computed one at a time, which share no work item).
    #[test]
    fn a_row_alone_gives_the_bits_it_gives_in_a_batch() {
        let (m, k, n) = (20, 700, 72);
        let a = values(m * k, 3);
        let w = values(n * k, 4);
        let packed = PackedMatrix::transposed(&w, n, k);
        let all = packed.left_multiply(&a);
        for i in 0..m {
            let alone = packed.left_multiply(&a[i * k..(i + 1) * k]);
            assert_eq!(alone, all[i * n..(i + 1) * n], "row {i}");
        }
    }
}
