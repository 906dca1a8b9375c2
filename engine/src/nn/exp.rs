//! `exp` over a slice of `f32`, eight (AVX2) or sixteen (AVX-512) at a time, with the bits of
//! glibc's `expf`.
//!
//! Softmax took one libm call per attention weight: after the attention kernels took two
//! queries at a time, that call was most of a long prefill's attention. The vector version
//! here runs the algorithm glibc's `expf` has used since 2.27 (a 32-entry table of `2^(i/32)`
//! and a cubic, in double precision), with the fused multiply-adds where glibc's FMA build
//! has them, so it returns what `f32::exp` returned before, to the bit: model output does not
//! change, and neither does it depend on whether a weight fell in the vector body or the tail.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `values[i] = exp(values[i])` for every `i`.
pub fn exp_in_place(values: &mut [f32]) {
    // `x - 0.0` is `x`, bit for bit, for every float.
    exp_shifted_in_place(values, 0.0)
}

/// `values[i] = exp(values[i] - shift)` for every `i` (the difference rounded to f32 first),
/// in one pass: softmax's numerators.
pub fn exp_shifted_in_place(values: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    match crate::nn::simd::Isa::best() {
        // SAFETY: `Isa::best` saw AVX-512 F (with VNNI, which implies it), AVX2 and FMA.
        Some(crate::nn::simd::Isa::Avx512Vnni) => return unsafe { exp_avx512(values, shift) },
        // SAFETY: `Isa::best` saw AVX2 and FMA.
        Some(crate::nn::simd::Isa::Avx2) => return unsafe { exp_avx2(values, shift) },
        None => {}
    }
    for v in values.iter_mut() {
        *v = (*v - shift).exp();
    }
}

/// `2^(i/32)`'s bits, less `i << 47`: adding `k << 47` for `k ≡ i (mod 32)` then gives
/// `2^(k/32)` (the exponent field takes `k / 32`).
const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// `32 / ln 2`.
const INV_LN2_N: u64 = 0x40471547652b82fe;
/// `1.5 · 2^52`: adding it rounds to an integer and leaves that integer in the low bits.
const SHIFT: u64 = 0x4338000000000000;
/// The cubic's coefficients for `2^(r/32)`, highest degree first (the constant term is 1).
const POLY: [u64; 3] = [0x3ebc6af84b912394, 0x3f2ebfce50fac4f3, 0x3f962e42ff0c52d6];
/// Below this `exp` is 0 (`ln 2^-150`).
const UNDERFLOW: f32 = f32::from_bits(0xc2cff1b4); // -0x1.9fe368p6
/// Below this (and not below [`UNDERFLOW`]) glibc returns the smallest subnormal.
const MAY_UNDERFLOW: f32 = f32::from_bits(0xc2ce8ecf); // -0x1.9d1d9ep6
/// Above this `exp` overflows to infinity (`ln 2^128`).
const OVERFLOW: f32 = f32::from_bits(0x42b17217); // 0x1.62e42ep6

/// # Safety
/// AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(values: &mut [f32], shift: f32) {
    let shift_v = _mm256_set1_ps(shift);
    let mut chunks = values.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // SAFETY: the chunk holds eight values.
        unsafe {
            let x = _mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), shift_v);
            _mm256_storeu_ps(chunk.as_mut_ptr(), exp8(x));
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        // The tail through the same instructions, padded.
        let mut padded = [0f32; 8];
        padded[..tail.len()].copy_from_slice(tail);
        // SAFETY: `padded` holds eight values.
        unsafe {
            let x = _mm256_sub_ps(_mm256_loadu_ps(padded.as_ptr()), shift_v);
            _mm256_storeu_ps(padded.as_mut_ptr(), exp8(x));
        }
        tail.copy_from_slice(&padded[..tail.len()]);
    }
}

/// [`exp_avx2`] sixteen at a time: the same operations on eight doubles per instruction
/// instead of four, so the same bits.
///
/// # Safety
/// AVX-512 F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_avx512(values: &mut [f32], shift: f32) {
    // The table in four registers: two two-source permutes and a blend look an entry up
    // faster than a gather's eight loads.
    // SAFETY: the table holds 32 values, four vectors of eight.
    let table: [__m512i; 4] =
        std::array::from_fn(|i| unsafe { _mm512_loadu_si512(TABLE.as_ptr().add(8 * i).cast()) });
    let shift_v = _mm512_set1_ps(shift);
    let mut chunks = values.chunks_exact_mut(16);
    for chunk in &mut chunks {
        // SAFETY: the chunk holds sixteen values.
        unsafe {
            let x = _mm512_sub_ps(_mm512_loadu_ps(chunk.as_ptr()), shift_v);
            _mm512_storeu_ps(chunk.as_mut_ptr(), exp16(x, &table));
        }
    }
    // Up to fifteen left: the eight-wide kernel gives them the same bits.
    // SAFETY: AVX2 and FMA are part of this function's features.
    unsafe { exp_avx2(chunks.into_remainder(), shift) };
}

/// `exp` of sixteen values, as [`exp8`] takes eight.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn exp16(x: __m512, table: &[__m512i; 4]) -> __m512 {
    let low = exp8_pd(_mm512_castps512_ps256(x), table);
    let high = exp8_pd(
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))),
        table,
    );
    let y = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castpd256_pd512(_mm256_castps_pd(low)),
        _mm256_castps_pd(high),
    ));
    let tiny = _mm512_castsi512_ps(_mm512_set1_epi32(1));
    let y = _mm512_mask_blend_ps(
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(MAY_UNDERFLOW)),
        y,
        tiny,
    );
    let y = _mm512_mask_blend_ps(
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(UNDERFLOW)),
        y,
        _mm512_setzero_ps(),
    );
    _mm512_mask_blend_ps(
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(OVERFLOW)),
        y,
        _mm512_set1_ps(f32::INFINITY),
    )
}

/// [`exp4`]'s body on eight values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn exp8_pd(x: __m256, table: &[__m512i; 4]) -> __m256 {
    let constant = |bits: u64| _mm512_set1_pd(f64::from_bits(bits));
    let xd = _mm512_cvtps_pd(x);
    let inv_ln2_n = constant(INV_LN2_N);
    let shift = constant(SHIFT);
    let kd_shifted = _mm512_fmadd_pd(inv_ln2_n, xd, shift);
    let ki = _mm512_castpd_si512(kd_shifted);
    let kd = _mm512_sub_pd(kd_shifted, shift);
    let r = _mm512_fmsub_pd(inv_ln2_n, xd, kd);
    // Entry `ki mod 32`: bits 0-3 pick one of sixteen in each half, bit 4 the half.
    let first_half = _mm512_permutex2var_epi64(table[0], ki, table[1]);
    let second_half = _mm512_permutex2var_epi64(table[2], ki, table[3]);
    let in_second = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
    let entry = _mm512_mask_blend_epi64(in_second, first_half, second_half);
    let s = _mm512_castsi512_pd(_mm512_add_epi64(entry, _mm512_slli_epi64::<47>(ki)));
    let z = _mm512_fmadd_pd(r, constant(POLY[0]), constant(POLY[1]));
    let r2 = _mm512_mul_pd(r, r);
    let y = _mm512_fmadd_pd(r, constant(POLY[2]), _mm512_set1_pd(1.0));
    let y = _mm512_fmadd_pd(z, r2, y);
    _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
}

/// `exp` of eight values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let low = exp4(_mm256_castps256_ps128(x));
    let high = exp4(_mm256_extractf128_ps::<1>(x));
    let y = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(low), high);
    // glibc's cases for |x| ≥ 88: NaN stays NaN (the body gives NaN too), +∞ and overflow
    // give +∞, -∞ and underflow give 0, and just above the underflow the smallest subnormal.
    let tiny = _mm256_castsi256_ps(_mm256_set1_epi32(1));
    let y = _mm256_blendv_ps(
        y,
        tiny,
        _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(MAY_UNDERFLOW)),
    );
    let y = _mm256_blendv_ps(
        y,
        _mm256_setzero_ps(),
        _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(UNDERFLOW)),
    );
    _mm256_blendv_ps(
        y,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(OVERFLOW)),
    )
}

/// glibc's `expf` body on four values, in the order its FMA build takes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp4(x: __m128) -> __m128 {
    let constant = |bits: u64| _mm256_set1_pd(f64::from_bits(bits));
    let xd = _mm256_cvtps_pd(x);
    let inv_ln2_n = constant(INV_LN2_N);
    let shift = constant(SHIFT);
    // `z = x · 32 / ln 2 = k + r`, `k` an integer rounded to nearest, `|r| ≤ 1/2`.
    let kd_shifted = _mm256_fmadd_pd(inv_ln2_n, xd, shift);
    let ki = _mm256_castpd_si256(kd_shifted);
    let kd = _mm256_sub_pd(kd_shifted, shift);
    let r = _mm256_fmsub_pd(inv_ln2_n, xd, kd);
    // `s = 2^(k/32)`.
    let index = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
    // SAFETY: every index is below 32, the table's length.
    let table = unsafe { _mm256_i64gather_epi64::<8>(TABLE.as_ptr().cast(), index) };
    let s = _mm256_castsi256_pd(_mm256_add_epi64(table, _mm256_slli_epi64::<47>(ki)));
    // `2^(r/32) ≈ C0·r³ + C1·r² + C2·r + 1`.
    let z = _mm256_fmadd_pd(r, constant(POLY[0]), constant(POLY[1]));
    let r2 = _mm256_mul_pd(r, r);
    let y = _mm256_fmadd_pd(r, constant(POLY[2]), _mm256_set1_pd(1.0));
    let y = _mm256_fmadd_pd(z, r2, y);
    _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
}

#[cfg(test)]
mod tests {
    use super::{exp_in_place, exp_shifted_in_place};

    /// Every kernel this CPU runs, and the one `exp_in_place` picks, against libm.
    fn assert_same_as_libm(inputs: &[f32]) {
        assert_shifted_same_as_libm(inputs, 0.0);
        let mut picked = inputs.to_vec();
        exp_in_place(&mut picked);
        for (&x, &y) in inputs.iter().zip(&picked) {
            let expected = x.exp();
            assert!(
                y.to_bits() == expected.to_bits() || (y.is_nan() && expected.is_nan()),
                "exp_in_place: exp({x:e}) = {y:e}, libm says {expected:e}"
            );
        }
    }

    /// Every kernel this CPU runs, and the one `exp_shifted_in_place` picks, against libm's
    /// `exp(x - shift)`.
    fn assert_shifted_same_as_libm(inputs: &[f32], shift: f32) {
        let mut results = vec![("exp_shifted_in_place", inputs.to_vec())];
        exp_shifted_in_place(&mut results[0].1, shift);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::nn::simd::Isa;
            if Isa::Avx2.supported() {
                let mut ours = inputs.to_vec();
                // SAFETY: AVX2 and FMA checked just above.
                unsafe { super::exp_avx2(&mut ours, shift) };
                results.push(("avx2", ours));
            }
            if Isa::Avx512Vnni.supported() {
                let mut ours = inputs.to_vec();
                // SAFETY: AVX-512 F, AVX2 and FMA checked just above.
                unsafe { super::exp_avx512(&mut ours, shift) };
                results.push(("avx512", ours));
            }
        }
        for (kernel, ours) in results {
            for (&x, &y) in inputs.iter().zip(&ours) {
                let expected = (x - shift).exp();
                assert!(
                    y.to_bits() == expected.to_bits() || (y.is_nan() && expected.is_nan()),
                    "{kernel}: exp({x:e} - {shift:e}) = {y:e}, libm says {expected:e}"
                );
            }
        }
    }

    /// Scores and their maximum as softmax takes them: the difference is rounded to f32,
    /// then its `exp` has libm's bits, in the vector body and the tail alike.
    #[test]
    fn a_shifted_exp_is_the_exp_of_the_rounded_difference() {
        if !crate::nn::simd::avx2_fma() {
            return;
        }
        let scores: Vec<f32> = (0..1013)
            .map(|i| ((i * 7919) % 2003) as f32 * 0.0173 - 17.0)
            .collect();
        for shift in [0.0, -0.0, 17.65, -3.25, 1e-7, f32::INFINITY] {
            assert_shifted_same_as_libm(&scores, shift);
        }
    }

    /// Every 61st float from 0 down to below the underflow (a softmax's numerators are
    /// `exp(score - max) ≤ 1`), the positive side more sparsely, and the edges.
    #[test]
    fn gives_the_bits_of_libms_expf() {
        if !crate::nn::simd::avx2_fma() {
            // Without FMA, glibc takes another `expf` and so do we: both are libm's.
            return;
        }
        let negative: Vec<f32> = (0..=(-110f32).to_bits() - (-0f32).to_bits())
            .step_by(61)
            .map(|i| f32::from_bits((-0f32).to_bits() + i))
            .collect();
        assert_same_as_libm(&negative);
        let positive: Vec<f32> = (0..=90f32.to_bits())
            .step_by(997)
            .map(f32::from_bits)
            .collect();
        assert_same_as_libm(&positive);
        let mut edges = vec![
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ];
        for edge in [
            super::UNDERFLOW,
            super::MAY_UNDERFLOW,
            super::OVERFLOW,
            -88.0,
            88.0,
        ] {
            for step in -3i32..=3 {
                edges.push(f32::from_bits(edge.to_bits().wrapping_add_signed(step)));
            }
        }
        // Lengths that leave every size of tail.
        for len in 0..edges.len() {
            assert_same_as_libm(&edges[..len]);
        }
    }

    /// All 2^32 inputs (about a minute optimized):
    /// `cargo test --release -p hexacoder-engine --lib every_float -- --ignored`.
    #[test]
    #[ignore = "a minute of CPU; run by hand after touching the kernel"]
    fn gives_the_bits_of_libms_expf_for_every_float() {
        if !crate::nn::simd::avx2_fma() {
            return;
        }
        let mut inputs = Vec::with_capacity(1 << 24);
        for high in 0..=u8::MAX as u32 {
            inputs.clear();
            inputs.extend((0..1u32 << 24).map(|low| f32::from_bits(high << 24 | low)));
            assert_same_as_libm(&inputs);
        }
    }
}
