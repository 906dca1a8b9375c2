use candle_core::Module;
use candle_core::quantized::QMatMul;

use super::*;
use crate::nn::test_util::{assert_close_to_exact, kernels, max_abs, random};
use crate::nn::tiles::ROW_TILE;

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
    for isa in kernels() {
        matches_the_exact_product_with(isa);
    }
}

fn matches_the_exact_product_with(isa: Isa) {
    for dtype in TYPES {
        for &(m, k, n) in &[
            (1, 32, 3),
            (2, 160, 5),
            (20, 160, 5),
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
                .with_isa(isa)
                .expect("supported")
                .matmul(&x)
                .expect("ours");
            // candle's Q4_1/Q5_1 kernels need an even number of blocks (they panic otherwise).
            let candle = (k / 32).is_multiple_of(2).then(|| {
                QMatMul::from_qtensor(q)
                    .expect("qmatmul")
                    .forward(&x)
                    .expect("candle")
            });
            let what = format!("{isa:?} {dtype:?} m={m} k={k} n={n}");
            assert_close_to_exact(&what, &ours, candle.as_ref(), &exact);
        }
    }
}

/// Each kernel gives a row the same bits alone as in a prefill chunk of more than one tile of
/// activation rows, for odd and even block counts and a partial last weight tile.
#[test]
fn each_kernel_gives_a_row_the_same_result_alone_and_in_a_chunk() {
    for isa in kernels() {
        for dtype in TYPES {
            for k in [160, 256] {
                let (m, n) = (ROW_TILE + 5, 19);
                let w = Tensor::from_vec(random(n * k, 2), (n, k), &Device::Cpu).expect("w");
                let x = Tensor::from_vec(random(m * k, 4), (m, k), &Device::Cpu).expect("x");
                let matrix = LegacyMatrix::from_qtensor(&QTensor::quantize(&w, dtype).expect("q"))
                    .expect("layout")
                    .expect("legacy")
                    .with_isa(isa)
                    .expect("supported");
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
                    assert!(alone[0] == all[row], "{isa:?} {dtype:?} k={k}: row {row}");
                }
            }
        }
    }
}

#[test]
fn other_types_are_not_taken() {
    let w = Tensor::from_vec(random(4 * 32, 3), (4, 32), &Device::Cpu).expect("w");
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize");
    assert!(LegacyMatrix::from_qtensor(&q).expect("layout").is_none());
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
        let (m, k, n) = (7, 192, 35);
        let w = Tensor::from_vec(random(n * k, 5), (n, k), &Device::Cpu).expect("w");
        let x = Tensor::from_vec(random(m * k, 6), (m, k), &Device::Cpu).expect("x");
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let products: Vec<Vec<Vec<f32>>> = isas
            .iter()
            .map(|&isa| {
                LegacyMatrix::from_qtensor(&q)
                    .expect("layout")
                    .expect("legacy")
                    .with_isa(isa)
                    .expect("supported")
                    .matmul(&x)
                    .expect("product")
                    .to_vec2()
                    .expect("vec")
            })
            .collect();
        assert!(products.windows(2).all(|p| p[0] == p[1]), "{dtype:?}");
    }
}

/// Every fifth bit and every nibble lands where the kernels read it: weights of each single
/// quant value in turn, against one-hot activations, give back that value.
#[test]
fn every_quant_position_reads_back() {
    for isa in kernels() {
        for dtype in [GgmlDType::Q5_0, GgmlDType::Q4_0] {
            let (k, n) = (64, 17);
            // A weight whose entries are distinct multiples of one step, per row.
            let values: Vec<f32> = (0..n * k).map(|i| ((i * 7) % 31) as f32 - 15.0).collect();
            let w = Tensor::from_vec(values, (n, k), &Device::Cpu).expect("w");
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let stored = q
                .dequantize(&Device::Cpu)
                .expect("deq")
                .to_vec2::<f32>()
                .expect("vec");
            let matrix = LegacyMatrix::from_qtensor(&q)
                .expect("layout")
                .expect("legacy")
                .with_isa(isa)
                .expect("supported");
            for column in [0, 1, 4, 15, 16, 19, 31, 32, 63] {
                let mut one_hot = vec![0f32; k];
                one_hot[column] = 1.0;
                let x = Tensor::from_vec(one_hot, (1, k), &Device::Cpu).expect("x");
                let out = matrix
                    .matmul(&x)
                    .expect("product")
                    .to_vec2::<f32>()
                    .expect("vec");
                for row in 0..n {
                    assert_eq!(
                        out[0][row], stored[row][column],
                        "{isa:?} {dtype:?} row {row} column {column}"
                    );
                }
            }
        }
    }
}

/// The fifth bits' gathering at load, against the bit-by-bit definition: every single bit,
/// and pseudo-random words.
#[test]
fn every_fourth_bit_gathers_bits_0_4_8_to_28() {
    let naive = |bits: u32| (0..8).fold(0u8, |byte, g| byte | (((bits >> (4 * g)) & 1) as u8) << g);
    let mut state = 0x9E37_79B9u32;
    let words = (0..32).map(|bit| 1u32 << bit).chain((0..10_000).map(|_| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    }));
    for bits in words.chain([0, u32::MAX]) {
        assert_eq!(every_fourth_bit(bits), naive(bits), "{bits:#010x}");
    }
}
