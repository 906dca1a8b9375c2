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
