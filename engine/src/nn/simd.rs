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

/// [`lane_sum`] of eight vectors at once: lane `i` of the result is `lane_sum(v[i])` to the
/// bit (the same additions, in the same tree), for a fifth of the instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn lane_sums(v: [__m256; 8]) -> __m256 {
    // Each vector's halves added: `[v[a].lo + v[a].hi | v[b].lo + v[b].hi]`.
    let halves = |a: __m256, b: __m256| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    };
    let (t04, t15, t26, t37) = (
        halves(v[0], v[4]),
        halves(v[1], v[5]),
        halves(v[2], v[6]),
        halves(v[3], v[7]),
    );
    // Elements 0 + 2 and 1 + 3 of each four: lanes hold [0, 1 | 4, 5] and [2, 3 | 6, 7].
    let pairs = |a: __m256, b: __m256| {
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm256_shuffle_ps::<0b11_10_11_10>(a, b),
        )
    };
    let (x01, x23) = (pairs(t04, t15), pairs(t26, t37));
    _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(x01, x23),
        _mm256_shuffle_ps::<0b11_01_11_01>(x01, x23),
    )
}

/// The instruction sets our integer dot-product kernels are written for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// AVX2 and FMA: 256-bit vectors, products summed by `vpmaddubsw` then `vpmaddwd`.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI: 512-bit vectors (two Q8_0 blocks per instruction) and
    /// `vpdpbusd`, which multiplies and sums four byte pairs in one instruction.
    Avx512Vnni,
}

impl Isa {
    /// Every kernel family, narrowest first.
    pub const ALL: [Isa; 2] = [Isa::Avx2, Isa::Avx512Vnni];

    /// The widest this CPU runs, read from CPUID once; `None` without AVX2 and FMA.
    ///
    /// `HEXACODER_MAX_ISA=avx2` caps it (as oneDNN's `ONEDNN_MAX_CPU_ISA` does), for CPUs
    /// where 512-bit code lowers the clock, and to compare the kernels in one build.
    pub fn best() -> Option<Isa> {
        static BEST: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let cap = std::env::var("HEXACODER_MAX_ISA").ok().and_then(|value| {
                let cap = Isa::from_name(&value);
                if cap.is_none() {
                    tracing::warn!(
                        "ignoring HEXACODER_MAX_ISA={value:?}: expected one of {}",
                        Isa::ALL.map(Isa::name).join(", ")
                    );
                }
                cap
            });
            Isa::ALL
                .into_iter()
                .rev()
                .filter(|&isa| cap.is_none_or(|cap| isa <= cap))
                .find(|isa| isa.supported())
        })
    }

    /// The name `HEXACODER_MAX_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// The kernel family [`Isa::name`] names, in any letter case.
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU runs the kernels written for `self`.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx2 => avx2_fma(),
                Isa::Avx512Vnni => {
                    avx2_fma()
                        && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }
}

/// Whether this CPU has AVX2, FMA and F16C (f16 scales), which every kernel of ours needs;
/// every CPU with AVX2 we know of has the other two.
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Isa;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lane_sums_adds_each_vector_as_lane_sum_does() {
        use std::arch::x86_64::*;

        if !super::avx2_fma() {
            return;
        }
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..200 {
            let mut values = [[0f32; 8]; 8];
            for lane in values.iter_mut().flatten() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Magnitudes from 2^-20 to 2^20, both signs: the additions round.
                let exponent = (state >> 58) as i32 - 32;
                *lane = ((state >> 32) as u32 as f32 / u32::MAX as f32 - 0.5)
                    * 2f32.powi(exponent.clamp(-20, 20));
            }
            // SAFETY: AVX2 and FMA checked above; each row holds eight values.
            let (sums, expected) = unsafe {
                let v = values.map(|row| _mm256_loadu_ps(row.as_ptr()));
                let mut sums = [0f32; 8];
                _mm256_storeu_ps(sums.as_mut_ptr(), super::lane_sums(v));
                (sums, v.map(|x| super::lane_sum(x)))
            };
            assert_eq!(
                sums.map(f32::to_bits),
                expected.map(f32::to_bits),
                "{values:?}"
            );
        }
    }

    #[test]
    fn isa_names_round_trip_and_unknown_names_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
            assert_eq!(Isa::from_name(&isa.name().to_uppercase()), Some(isa));
        }
        assert_eq!(Isa::from_name("sse4"), None);
        assert_eq!(Isa::from_name(""), None);
    }

    #[test]
    fn the_chosen_kernels_run_on_this_cpu() {
        if let Some(best) = Isa::best() {
            assert!(best.supported());
        }
        assert_eq!(Isa::best().is_some(), Isa::Avx2.supported());
    }
}
