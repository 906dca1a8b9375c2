//! Small x86-64 helpers the CPU kernels share.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The sum of a vector's eight lanes, always added in the same tree, so that a dot product's
/// result depends only on its inputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn lane_sum(v: __m256) -> f32 {
    let sum4 = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
    _mm_cvtss_f32(_mm_add_ss(sum2, _mm_shuffle_ps(sum2, sum2, 1)))
}

/// Whether this CPU has AVX2 and FMA, which every kernel of ours needs.
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `Σ a[i] · b[i]` in one fixed order: eight lanes with FMA over the multiple of 8, the lanes
/// summed by [`lane_sum`], then the remaining products in order.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `b` is at least as long as `a`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n8 = a.len() - a.len() % 8;
    let mut acc = _mm256_setzero_ps();
    for i in (0..n8).step_by(8) {
        // SAFETY: `i + 8 <= n8 <= a.len() <= b.len()`.
        let (x, y) = unsafe {
            (
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
            )
        };
        acc = _mm256_fmadd_ps(x, y, acc);
    }
    (n8..a.len()).fold(lane_sum(acc), |s, i| s + a[i] * b[i])
}
