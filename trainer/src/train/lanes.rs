//! The training ops' vector loops (dot products, `y += a·x`), compiled once for AVX2 and
//! once for any CPU, chosen from CPUID. Sixteen lanes in both, so that the sums do not depend
//! on which one runs.

use hexacoder_engine::nn::Isa;

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut half = [0f32; 8];
    for l in 0..8 {
        half[l] = acc[l] + acc[l + 8];
    }
    half.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_generic(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

#[inline(always)]
fn mul_add_generic(y: &mut [f32], x: &[f32], m: &[f32]) {
    for ((y, x), m) in y.iter_mut().zip(x).zip(m) {
        *y += x * m;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn axpy_avx2(y: &mut [f32], alpha: f32, x: &[f32]) {
    axpy_generic(y, alpha, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn mul_add_avx2(y: &mut [f32], x: &[f32], m: &[f32]) {
    mul_add_generic(y, x, m)
}

/// Which build of the loops runs.
#[derive(Clone, Copy)]
pub(super) struct Lanes {
    avx2: bool,
}

impl Lanes {
    /// The AVX2 build where CPUID reports AVX2 and FMA (and `HEXACODER_MAX_ISA` allows it).
    pub(super) fn detect() -> Self {
        Lanes {
            avx2: Isa::best().is_some() && cfg!(target_arch = "x86_64"),
        }
    }

    /// `Σ a·b`.
    pub(super) fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is set only when CPUID reported AVX2 and FMA (`Isa::best`).
            return unsafe { dot_avx2(a, b) };
        }
        dot_generic(a, b)
    }

    /// `y += alpha · x`.
    pub(super) fn axpy(self, y: &mut [f32], alpha: f32, x: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: as in `dot`.
            return unsafe { axpy_avx2(y, alpha, x) };
        }
        axpy_generic(y, alpha, x)
    }

    /// `y += x ⊙ m`.
    pub(super) fn mul_add(self, y: &mut [f32], x: &[f32], m: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: as in `dot`.
            return unsafe { mul_add_avx2(y, x, m) };
        }
        mul_add_generic(y, x, m)
    }
}
