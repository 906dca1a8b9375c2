use candle_core::Module;
use candle_core::quantized::QMatMul;

use super::*;
use crate::nn::test_util::{assert_close_to_exact, max_abs, random};

const TYPES: [GgmlDType; 4] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
];

#[test]
fn dequantize_gives_exactly_candles_values() {
    let w = Tensor::from_vec(random(6 * 96, 3), (6, 96), &Device::Cpu).expect("w");
    for dtype in TYPES {
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let ours = LegacyMatrix::from_qtensor(&q)
            .expect("layout")
            .expect("legacy type")
            .dequantize(&Device::Cpu)
            .expect("dequantize");
        let theirs = q.dequantize(&Device::Cpu).expect("candle");
        assert_eq!(max_abs(&(ours - theirs).expect("sub")), 0.0, "{dtype:?}");
    }
}

/// Against the exact product of the stored weights, our error is that of 8-bit activations,
/// as is candle's, which quantizes the activations the same way.
#[test]
fn matches_the_exact_product_of_the_stored_weights() {
    if !LegacyMatrix::supported() {
        eprintln!("skipping: no AVX2/FMA");
        return;
    }
    for dtype in TYPES {
        for &(m, k, n) in &[
            (1, 32, 3),
            (3, 96, 33),
            (4, 256, 16),
            (5, 128, 17),
            (70, 64, 40),
        ] {
            let w = Tensor::from_vec(random(n * k, 1 + n as u32), (n, k), &Device::Cpu).expect("w");
            let x = Tensor::from_vec(random(m * k, 7 + m as u32), (m, k), &Device::Cpu).expect("x");
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let exact = x
                .matmul(&q.dequantize(&Device::Cpu).expect("deq").t().expect("t"))
                .expect("exact");
            let ours = LegacyMatrix::from_qtensor(&q)
                .expect("layout")
                .expect("legacy")
                .matmul(&x)
                .expect("ours");
            // candle's Q4_1/Q5_1 kernels need an even number of blocks (they panic otherwise).
            let candle = (k / 32).is_multiple_of(2).then(|| {
                QMatMul::from_qtensor(q)
                    .expect("qmatmul")
                    .forward(&x)
                    .expect("candle")
            });
            let what = format!("{dtype:?} m={m} k={k} n={n}");
            assert_close_to_exact(&what, &ours, candle.as_ref(), &exact);
        }
    }
}

#[test]
fn other_types_are_not_taken() {
    let w = Tensor::from_vec(random(4 * 32, 3), (4, 32), &Device::Cpu).expect("w");
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize");
    assert!(LegacyMatrix::from_qtensor(&q).expect("layout").is_none());
}
