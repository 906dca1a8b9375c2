use candle_core::Module;
use candle_core::quantized::QMatMul;

use super::*;
use crate::nn::test_util::{assert_close_to_exact, kernels, random};

#[test]
fn matches_candle_q8_0_matmul() {
    for isa in kernels() {
        matches_candle_with(isa);
    }
}

fn matches_candle_with(isa: Isa) {
    // Odd and even block counts: the AVX-512 kernel takes blocks in pairs.
    for &(m, k, n) in &[
        (1, 64, 7),
        (3, 96, 33),
        (4, 256, 16),
        (5, 128, 17),
        (70, 64, 40),
        (130, 32, 3),
        (6, 160, 9),
        (9, 4864, 5),
    ] {
        let w = Tensor::from_vec(random(n * k, 1 + n as u32), (n, k), &Device::Cpu).expect("w");
        let x = Tensor::from_vec(random(m * k, 7 + m as u32), (m, k), &Device::Cpu).expect("x");
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize");
        let exact = x
            .matmul(&q.dequantize(&Device::Cpu).expect("deq").t().expect("t"))
            .expect("exact");
        let ours = Q8Matrix::from_qtensor(&q)
            .expect("layout")
            .expect("q8_0")
            .with_isa(isa)
            .expect("supported")
            .matmul(&x)
            .expect("ours");
        let candle = QMatMul::from_qtensor(q)
            .expect("qmatmul")
            .forward(&x)
            .expect("candle");
        assert_close_to_exact(
            &format!("{isa:?} m={m} k={k} n={n}"),
            &ours,
            Some(&candle),
            &exact,
        );
    }
}

/// The two kernels compute exact integer block products, scale them alike and add them in
/// the same order, so they give the same bits: a model answers alike on both kinds of CPU.
#[test]
fn both_kernels_give_the_same_bits() {
    let isas = kernels();
    if isas.len() < 2 {
        return;
    }
    // Odd row counts and a row count that leaves the last tile part empty.
    for (m, k, n) in [(5, 4864 + 32, 7), (1, 96, 40), (9, 256, 33)] {
        let w = Tensor::from_vec(random(n * k, 8), (n, k), &Device::Cpu).expect("w");
        let x = Tensor::from_vec(random(m * k, 9), (m, k), &Device::Cpu).expect("x");
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize");
        let results: Vec<Vec<f32>> = isas
            .iter()
            .map(|&isa| {
                Q8Matrix::from_qtensor(&q)
                    .expect("layout")
                    .expect("q8_0")
                    .with_isa(isa)
                    .expect("supported")
                    .matmul(&x)
                    .expect("matmul")
                    .flatten_all()
                    .expect("flat")
                    .to_vec1::<f32>()
                    .expect("vec")
            })
            .collect();
        assert!(
            results[0] == results[1],
            "m={m} k={k} n={n}: the kernels differ"
        );
    }
}

#[test]
fn dequantize_round_trips_the_stored_values() {
    let w = Tensor::from_vec(random(4 * 64, 3), (4, 64), &Device::Cpu).expect("w");
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize");
    let ours = Q8Matrix::from_qtensor(&q)
        .expect("layout")
        .expect("q8_0")
        .dequantize(&Device::Cpu)
        .expect("deq");
    let theirs = q.dequantize(&Device::Cpu).expect("deq");
    let diff = (ours - theirs)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max")
        .to_scalar::<f32>()
        .expect("f32");
    assert_eq!(diff, 0.0);
}

#[test]
fn a_rows_result_does_not_depend_on_the_other_rows() {
    // An even and an odd block count: the AVX-512 kernel takes blocks in pairs.
    for isa in kernels() {
        for (m, k, n) in [(37, 192, 40), (11, 4864 + 32, 8)] {
            let w = Tensor::from_vec(random(n * k, 3), (n, k), &Device::Cpu).expect("w");
            let x = Tensor::from_vec(random(m * k, 5), (m, k), &Device::Cpu).expect("x");
            let matrix =
                Q8Matrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q8_0).expect("q"))
                    .expect("layout")
                    .expect("q8_0")
                    .with_isa(isa)
                    .expect("supported");
            let batch = matrix
                .matmul(&x)
                .expect("batch")
                .to_vec2::<f32>()
                .expect("vec");
            for (i, batch_row) in batch.iter().enumerate() {
                let row = x.narrow(0, i, 1).expect("row");
                let single = matrix
                    .matmul(&row)
                    .expect("single")
                    .to_vec2::<f32>()
                    .expect("vec");
                assert_eq!(&single[0], batch_row, "{isa:?} k={k}: row {i}");
            }
        }
    }
}

/// The vector quantizer gives the scalar one's bits, scale and quants, on ordinary values and
/// on the ones that test its rounding, saturation and NaN handling.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx2_activation_quantizer_gives_the_scalar_ones_bits() {
    if !crate::nn::simd::avx2_fma() {
        eprintln!("skipped: this CPU has no AVX2");
        return;
    }
    let specials = [
        0.0,
        -0.0,
        0.5,
        -0.5,
        1.5,
        -2.5,
        126.5,
        -126.5,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        3.0e38,
        -3.0e38,
    ];
    let mut blocks: Vec<Vec<f32>> = (0..2_000u32)
        .map(|seed| {
            let scale = [1e-40f32, 1e-3, 1.0, 127.0, 1e30][seed as usize % 5];
            random(BLOCK, seed).into_iter().map(|v| v * scale).collect()
        })
        .collect();
    // Halves exactly on the rounding boundary: amax 127 makes the scale 1.
    blocks.push(
        (0..BLOCK)
            .map(|i| if i == 0 { 127.0 } else { i as f32 - 16.5 })
            .collect(),
    );
    for (i, &special) in specials.iter().enumerate() {
        let mut block = random(BLOCK, 9_000 + i as u32);
        block[i % BLOCK] = special;
        blocks.push(block);
        blocks.push(vec![special; BLOCK]);
    }
    for block in &blocks {
        let (mut scalar, mut vector) = ([0i8; BLOCK], [0i8; BLOCK]);
        let d_scalar = quantize_block(block, &mut scalar);
        // SAFETY: AVX2 and FMA checked above; both hold `BLOCK` values.
        let d_vector = unsafe { quantize_block_avx2(block, &mut vector) };
        assert_eq!(d_scalar.to_bits(), d_vector.to_bits(), "scale of {block:?}");
        assert_eq!(scalar, vector, "quants of {block:?}");
    }
}
