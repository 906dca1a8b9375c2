use candle_core::Module;
use candle_core::quantized::QMatMul;

use super::*;
use crate::nn::test_util::{assert_close_to_exact, kernels, max_abs, random};
use crate::nn::tiles::ROW_TILE;

const TYPES: [GgmlDType; 2] = [GgmlDType::Q4K, GgmlDType::Q6K];

fn matrix(q: &QTensor, isa: Isa) -> KQuantMatrix {
    KQuantMatrix::from_qtensor(q)
        .expect("layout")
        .expect("k-quant type")
        .with_isa(isa)
        .expect("supported")
}

#[test]
fn dequantize_gives_exactly_candles_values() {
    // 19 rows: a partial last tile; 512 columns: two super-blocks.
    let w = Tensor::from_vec(random(19 * 512, 3), (19, 512), &Device::Cpu).expect("w");
    for dtype in TYPES {
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let ours = KQuantMatrix::from_qtensor(&q)
            .expect("layout")
            .expect("k-quant type")
            .dequantize(&Device::Cpu)
            .expect("dequantize");
        let theirs = q.dequantize(&Device::Cpu).expect("candle");
        assert_eq!(
            ours.to_vec2::<f32>().expect("vec"),
            theirs.to_vec2::<f32>().expect("vec"),
            "{dtype:?}"
        );
    }
}

/// Against the exact product of the stored weights, our error is that of 8-bit activations;
/// candle quantizes the activations to Q8_K (one scale per 256 values), so ours is as close.
#[test]
fn matches_the_exact_product_of_the_stored_weights() {
    for isa in kernels() {
        for dtype in TYPES {
            for &(m, k, n) in &[
                (1, 256, 3),
                (2, 512, 5),
                (20, 256, 17),
                (4, 768, 16),
                (5, 256, 33),
                (70, 512, 40),
            ] {
                let w =
                    Tensor::from_vec(random(n * k, 1 + n as u32), (n, k), &Device::Cpu).expect("w");
                let x =
                    Tensor::from_vec(random(m * k, 7 + m as u32), (m, k), &Device::Cpu).expect("x");
                let q = QTensor::quantize(&w, dtype).expect("quantize");
                let exact = x
                    .matmul(&q.dequantize(&Device::Cpu).expect("deq").t().expect("t"))
                    .expect("exact");
                let ours = matrix(&q, isa).matmul(&x).expect("ours");
                let candle = QMatMul::from_qtensor(q)
                    .expect("qmatmul")
                    .forward(&x)
                    .expect("candle");
                let what = format!("{isa:?} {dtype:?} m={m} k={k} n={n}");
                assert_close_to_exact(&what, &ours, Some(&candle), &exact);
            }
        }
    }
}

/// Each kernel gives a row the same bits alone as in a prefill chunk of more than one tile of
/// activation rows, with a partial last weight tile.
#[test]
fn each_kernel_gives_a_row_the_same_result_alone_and_in_a_chunk() {
    for isa in kernels() {
        for dtype in TYPES {
            let (m, k, n) = (ROW_TILE + 5, 512, 19);
            let w = Tensor::from_vec(random(n * k, 2), (n, k), &Device::Cpu).expect("w");
            let x = Tensor::from_vec(random(m * k, 4), (m, k), &Device::Cpu).expect("x");
            let matrix = matrix(&QTensor::quantize(&w, dtype).expect("q"), isa);
            let all = matrix
                .matmul(&x)
                .expect("all")
                .to_vec2::<f32>()
                .expect("vec");
            for row in [0, 7, m - 1] {
                let alone = matrix
                    .matmul(&x.narrow(0, row, 1).expect("row"))
                    .expect("alone")
                    .to_vec2::<f32>()
                    .expect("vec");
                assert!(alone[0] == all[row], "{isa:?} {dtype:?}: row {row}");
            }
        }
    }
}

#[test]
fn other_types_are_not_taken() {
    let w = Tensor::from_vec(random(4 * 256, 3), (4, 256), &Device::Cpu).expect("w");
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q5K] {
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        assert!(
            KQuantMatrix::from_qtensor(&q).expect("layout").is_none(),
            "{dtype:?}"
        );
    }
}

/// The AVX2 and AVX-512 kernels give the same bits: the same exact integer sums, scaled and
/// added in the same order.
#[test]
fn both_kernels_give_the_same_bits() {
    let isas = kernels();
    if isas.len() < 2 {
        return;
    }
    for dtype in TYPES {
        let (m, k, n) = (7, 768, 35);
        let w = Tensor::from_vec(random(n * k, 5), (n, k), &Device::Cpu).expect("w");
        let x = Tensor::from_vec(random(m * k, 6), (m, k), &Device::Cpu).expect("x");
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let products: Vec<Vec<Vec<f32>>> = isas
            .iter()
            .map(|&isa| {
                matrix(&q, isa)
                    .matmul(&x)
                    .expect("product")
                    .to_vec2()
                    .expect("vec")
            })
            .collect();
        assert!(products.windows(2).all(|p| p[0] == p[1]), "{dtype:?}");
    }
}

/// Every nibble, high bit pair and per-block scale lands where the kernels read it: against
/// one-hot activations (one exact activation value), each product is the stored weight.
#[test]
fn every_quant_position_reads_back() {
    for isa in kernels() {
        for dtype in TYPES {
            let (k, n) = (512, 17);
            // Magnitudes that change every 16 values, so that neighbouring block scales differ.
            let values: Vec<f32> = (0..n * k)
                .map(|i| (((i * 7) % 31) as f32 - 15.0) * (1.0 + (i / 16 % 5) as f32))
                .collect();
            let w = Tensor::from_vec(values, (n, k), &Device::Cpu).expect("w");
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let stored = q
                .dequantize(&Device::Cpu)
                .expect("deq")
                .to_vec2::<f32>()
                .expect("vec");
            let matrix = matrix(&q, isa);
            for column in (0..k).step_by(5).chain([15, 16, 31, 32, 255, 256, 511]) {
                let mut one_hot = vec![0f32; k];
                one_hot[column] = 1.0;
                let x = Tensor::from_vec(one_hot, (1, k), &Device::Cpu).expect("x");
                let out = matrix
                    .matmul(&x)
                    .expect("product")
                    .to_vec2::<f32>()
                    .expect("vec");
                for (row, stored) in stored.iter().enumerate() {
                    let expected = stored[column];
                    // The one-hot activation's scale is 1/127, rounded: a few roundings apart
                    // (a misplaced bit is a quant step, a hundredth of the row's scale).
                    let row_scale = stored.iter().fold(0f32, |a, v| a.max(v.abs()));
                    assert!(
                        (out[0][row] - expected).abs() <= row_scale * 1e-5,
                        "{isa:?} {dtype:?} row {row} column {column}: {} vs {expected}",
                        out[0][row]
                    );
                }
            }
        }
    }
}

/// The test above would see a misplaced bit: flipping one high bit pair changes the values.
#[test]
fn a_layout_error_would_be_seen() {
    let w = Tensor::from_vec(random(16 * 256, 8), (16, 256), &Device::Cpu).expect("w");
    let q = QTensor::quantize(&w, GgmlDType::Q6K).expect("quantize");
    let mut matrix = KQuantMatrix::from_qtensor(&q)
        .expect("layout")
        .expect("q6k");
    let before = matrix.dequantize(&Device::Cpu).expect("deq");
    matrix.high_bits[0] ^= 0b11;
    let after = matrix.dequantize(&Device::Cpu).expect("deq");
    assert!(max_abs(&(before - after).expect("sub")) > 0.0);
}
