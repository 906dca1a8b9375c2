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
