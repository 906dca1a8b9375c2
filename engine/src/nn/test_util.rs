//! Helpers the CPU kernels' unit tests share.

use candle_core::Tensor;

/// `n` deterministic values in [-1, 1), every 97th scaled by 8, so that block scales vary.
pub(crate) fn random(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let v = (state as f32 / u32::MAX as f32) * 2.0 - 1.0;
            if i % 97 == 0 { v * 8.0 } else { v }
        })
        .collect()
}

/// A tensor's values as bits, for comparisons that must be exact.
pub(crate) fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("values")
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// The largest absolute value of `t`.
pub(crate) fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max")
}

/// Checks a quantized product against the exact product of the stored weights: only the
/// activations are quantized (to 8 bits), so ours must be about as close as candle's, which
/// quantizes them the same way (where candle can multiply the shape at all), and within 3%
/// of the product's scale.
pub(crate) fn assert_close_to_exact(
    what: &str,
    ours: &Tensor,
    candle: Option<&Tensor>,
    exact: &Tensor,
) {
    let ours_err = max_abs(&(ours - exact).expect("sub"));
    let scale = max_abs(exact);
    if let Some(candle) = candle {
        let candle_err = max_abs(&(candle - exact).expect("sub"));
        assert!(
            ours_err <= 1.25 * candle_err + 1e-5 * scale,
            "{what}: ours {ours_err}, candle {candle_err}"
        );
    }
    assert!(
        ours_err <= 3e-2 * scale,
        "{what}: ours {ours_err} of {scale}"
    );
}

/// The kernels this CPU runs (the test names the ones it skips).
pub(crate) fn kernels() -> Vec<super::Isa> {
    super::Isa::ALL
        .into_iter()
        .filter(|isa| {
            let runs = isa.supported();
            if !runs {
                eprintln!("skipping the {isa:?} kernel: this CPU lacks it");
            }
            runs
        })
        .collect()
}
