use candle_core::quantized::GgmlDType;

use super::*;
use crate::nn::test_util::random;

/// Every weight type a catalogue GGUF brings, through both Q8_0 kernels: row `i` of a
/// projection is the same to the bit whether it is multiplied alone (a decode step), with a
/// few other rows (a batch of decode steps) or in a long prefill chunk.
#[test]
fn a_rows_projection_does_not_depend_on_the_other_rows() {
    let check = |name: &str, linear: &Linear, k: usize| {
        let m = 80;
        let xs = Tensor::from_vec(random(m * k, 9 + k as u32), (m, k), &Device::Cpu).expect("xs");
        let all = linear
            .forward(&xs)
            .expect("all")
            .to_vec2::<f32>()
            .expect("vec");
        for (start, len) in [(0, 1), (5, 1), (79, 1), (3, 2), (10, 7), (0, 33), (40, 40)] {
            let part = linear
                .forward(&xs.narrow(0, start, len).expect("rows"))
                .expect("part")
                .to_vec2::<f32>()
                .expect("vec");
            for (i, row) in part.iter().enumerate() {
                assert!(
                    row == &all[start + i],
                    "{name}: row {} alone among {len} differs from the {m}-row product",
                    start + i
                );
            }
        }
    };
    for (k, n) in [
        (36, 20),
        (64, 128),
        (128, 64),
        (256, 512),
        (512, 256),
        (1024, 1536),
    ] {
        let w = Tensor::from_vec(random(n * k, 3), (n, k), &Device::Cpu).expect("w");
        check("f32", &Linear::dense(w.clone(), None).expect("dense"), k);
        for dtype in [
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
        ] {
            if !k.is_multiple_of(dtype.block_size()) {
                continue;
            }
            let q = Arc::new(QTensor::quantize(&w, dtype).expect("quantize"));
            for kernel in [Q8Kernel::Fastest, Q8Kernel::Candle] {
                let linear = Linear::quantized(q.clone(), None, kernel).expect("linear");
                check(&format!("{dtype:?} ({kernel:?})"), &linear, k);
            }
        }
    }
}

/// The kernels add several byte products in 16 bits before widening them (as many as cannot
/// overflow for each type): at the largest quants against the largest activations of either
/// sign, for every row count a kernel is built for, each type and kernel still gives the
/// exact product (the activations, all ±1, quantize exactly).
#[test]
fn the_largest_quants_against_the_largest_activations_do_not_overflow() {
    use crate::nn::test_util::{kernels, max_abs};
    let (k, n) = (512, 19);
    // One value of -1 per 32 makes the scale 1/16 (Q5_0), and +1 then the largest quant.
    let w: Vec<f32> = (0..n * k)
        .map(|i| if i % 32 == 7 { -1.0 } else { 1.0 })
        .collect();
    let w = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("w");
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q8_0,
    ] {
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let stored = q.dequantize(&Device::Cpu).expect("dequantize");
        for isa in kernels() {
            let product = |xs: &Tensor| -> Tensor {
                let ours = match dtype {
                    GgmlDType::Q8_0 => Q8Matrix::from_qtensor(&q)
                        .expect("layout")
                        .and_then(|m| m.with_isa(isa))
                        .map(|m| m.matmul(xs)),
                    GgmlDType::Q4K | GgmlDType::Q6K => KQuantMatrix::from_qtensor(&q)
                        .expect("layout")
                        .and_then(|m| m.with_isa(isa))
                        .map(|m| m.matmul(xs)),
                    _ => LegacyMatrix::from_qtensor(&q)
                        .expect("layout")
                        .and_then(|m| m.with_isa(isa))
                        .map(|m| m.matmul(xs)),
                };
                ours.expect("our kernel takes the type").expect("product")
            };
            for m in [1, 4, 5, 8, 9, 16] {
                for sign in [1.0f32, -1.0] {
                    let xs = Tensor::full(sign, (m, k), &Device::Cpu).expect("xs");
                    let exact = xs.matmul(&stored.t().expect("t")).expect("exact");
                    let err = max_abs(&(product(&xs) - &exact).expect("sub"));
                    assert!(
                        err <= 1e-5 * max_abs(&exact),
                        "{dtype:?} ({isa:?}), {m} rows of {sign}: off by {err}"
                    );
                }
            }
        }
    }
}

/// A layer's projections of one input in one call on the pool (`forward_each`) give each
/// projection's own product to the bit, whatever the mix of weight types, widths that end
/// mid-tile, biases, row counts across a row tile, or a weight that falls back to candle.
#[test]
fn projections_in_one_call_equal_each_alone() {
    let k = 512;
    let linear = |n: usize, dtype: GgmlDType, seed: u32, bias: bool, kernel: Q8Kernel| {
        let w = Tensor::from_vec(random(n * k, seed), (n, k), &Device::Cpu).expect("w");
        let bias = bias.then(|| Tensor::from_vec(random(n, seed + 1), n, &Device::Cpu).expect("b"));
        let q = Arc::new(QTensor::quantize(&w, dtype).expect("quantize"));
        Linear::quantized(q, bias, kernel).expect("linear")
    };
    let tiled = [
        linear(96, GgmlDType::Q5_0, 1, true, Q8Kernel::Fastest),
        linear(20, GgmlDType::Q8_0, 2, true, Q8Kernel::Fastest),
        linear(64, GgmlDType::Q4K, 3, false, Q8Kernel::Fastest),
        linear(40, GgmlDType::Q6K, 4, false, Q8Kernel::Fastest),
        linear(16, GgmlDType::Q4_1, 5, false, Q8Kernel::Fastest),
    ];
    let with_candle = [
        linear(96, GgmlDType::Q5_0, 1, true, Q8Kernel::Fastest),
        linear(32, GgmlDType::Q8_0, 6, false, Q8Kernel::Candle),
    ];
    for set in [&tiled[..], &with_candle[..], &tiled[..1]] {
        let refs: Vec<&Linear> = set.iter().collect();
        for m in [1, 9, 70] {
            let xs =
                Tensor::from_vec(random(m * k, 7 + m as u32), (m, k), &Device::Cpu).expect("xs");
            let together = Linear::forward_each(&refs, &xs).expect("together");
            assert_eq!(together.len(), set.len());
            for (i, (linear, ys)) in set.iter().zip(&together).enumerate() {
                let alone = linear.forward(&xs).expect("alone");
                assert_eq!(ys.dims(), alone.dims(), "projection {i}, {m} rows");
                assert!(
                    ys.to_vec2::<f32>().expect("vec") == alone.to_vec2::<f32>().expect("vec"),
                    "projection {i} of {}, {m} rows: differs from its product alone",
                    set.len()
                );
            }
        }
    }
    // Inputs of another width are an error naming the shapes, as for one projection.
    let xs = Tensor::zeros((2, k + 32), candle_core::DType::F32, &Device::Cpu).expect("xs");
    let refs: Vec<&Linear> = tiled.iter().collect();
    assert!(Linear::forward_each(&refs, &xs).is_err());
}

/// A tied model keeps one copy of its table: where the head's kernel lays the table out in
/// tiles, lookups read the tiles, and give the same bits as the file's layout did; the head
/// is the same product; an id past the vocabulary is an error, not a panic.
#[test]
fn a_tied_embedding_reads_the_heads_tiles_to_the_bit() {
    let rows = 45;
    let ids = [0u32, 44, 15, 16, 17, 31, 32, 7, 7];
    for (dtype, cols) in [
        (GgmlDType::Q8_0, 96),
        (GgmlDType::Q4_0, 96),
        (GgmlDType::Q4_1, 96),
        (GgmlDType::Q5_0, 96),
        (GgmlDType::Q5_1, 96),
        (GgmlDType::Q4K, 256),
        (GgmlDType::Q6K, 256),
    ] {
        let w = Tensor::from_vec(random(rows * cols, 17), (rows, cols), &Device::Cpu).expect("w");
        let xs = Tensor::from_vec(random(3 * cols, 5), (3, cols), &Device::Cpu).expect("xs");
        let table = Embedding::Quantized(Arc::new(QTensor::quantize(&w, dtype).expect("q")));
        let file_rows = table.forward(&ids, &Device::Cpu).expect("lookup");
        let file_head = table.as_linear(Q8Kernel::Fastest).expect("head");
        let (tied, head) = table
            .clone()
            .tied_with_head(Q8Kernel::Fastest)
            .expect("tied");
        let tiled = matches!(
            tied,
            Embedding::Q8(_) | Embedding::Legacy(_) | Embedding::KQuant(_)
        );
        let expect_tiles = match dtype {
            GgmlDType::Q8_0 => Q8Matrix::supported(),
            GgmlDType::Q4K | GgmlDType::Q6K => KQuantMatrix::supported(),
            _ => LegacyMatrix::supported(),
        };
        assert_eq!(tiled, expect_tiles, "{dtype:?}: tiled {tiled}");
        let tied_rows = tied.forward(&ids, &Device::Cpu).expect("lookup");
        assert_eq!(
            file_rows.to_vec2::<f32>().expect("vec"),
            tied_rows.to_vec2::<f32>().expect("vec"),
            "{dtype:?}: lookups differ"
        );
        assert_eq!(
            file_head
                .forward(&xs)
                .expect("head")
                .to_vec2::<f32>()
                .expect("vec"),
            head.forward(&xs)
                .expect("head")
                .to_vec2::<f32>()
                .expect("vec"),
            "{dtype:?}: heads differ"
        );
        assert_eq!(
            table
                .dequantized()
                .expect("deq")
                .to_vec2::<f32>()
                .expect("vec"),
            tied.dequantized()
                .expect("deq")
                .to_vec2::<f32>()
                .expect("vec"),
            "{dtype:?}: dequantized tables differ"
        );
        assert_eq!(tied.dims().expect("dims"), (rows, cols));
        if tiled {
            let err = tied
                .forward(&[3, rows as u32], &Device::Cpu)
                .expect_err("an id past the vocabulary");
            assert!(err.to_string().contains("outside the vocabulary"), "{err}");
        }
    }
}

/// A table built from a file's bytes looks rows up to the bit as candle's copy of it does,
/// for every type a catalogue GGUF brings it in, tiled or not.
#[test]
fn a_table_from_file_bytes_looks_up_what_candles_copy_does() {
    let (rows, cols) = (37, 256);
    let ids = [0u32, 36, 15, 16, 17, 5];
    let w = Tensor::from_vec(random(rows * cols, 23), (rows, cols), &Device::Cpu).expect("w");
    for dtype in [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::Q8_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q5K,
    ] {
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let expected =
            Embedding::Quantized(Arc::new(QTensor::quantize(&w, dtype).expect("quantize")))
                .forward(&ids, &Device::Cpu)
                .expect("lookup")
                .to_vec2::<f32>()
                .expect("vec");
        for kernel in [Q8Kernel::Fastest, Q8Kernel::Candle] {
            let table = Embedding::quantized_from_file_bytes(
                dtype,
                (rows, cols),
                &q.data().expect("bytes"),
                kernel,
            )
            .expect("table");
            assert_eq!(table.dims().expect("dims"), (rows, cols));
            let rows_found = table
                .forward(&ids, &Device::Cpu)
                .expect("lookup")
                .to_vec2::<f32>()
                .expect("vec");
            assert_eq!(rows_found, expected, "{dtype:?} ({kernel:?})");
        }
    }
}

/// Bytes at an odd address (a file whose tensor offsets are not aligned, memory-mapped) give
/// the same table and projection as aligned ones, through candle's types and ours.
#[test]
fn unaligned_file_bytes_are_read_as_aligned_ones() {
    let (rows, cols) = (5, 256);
    let w = Tensor::from_vec(random(rows * cols, 31), (rows, cols), &Device::Cpu).expect("w");
    let xs = Tensor::from_vec(random(2 * cols, 3), (2, cols), &Device::Cpu).expect("xs");
    for dtype in [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::Q8_0,
        GgmlDType::Q5K,
    ] {
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let bytes = q.data().expect("bytes");
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        for kernel in [Q8Kernel::Fastest, Q8Kernel::Candle] {
            let product = |data: &[u8]| {
                Linear::quantized_from_file_bytes(dtype, (rows, cols), data, None, kernel)
                    .expect("linear")
                    .forward(&xs)
                    .expect("forward")
                    .to_vec2::<f32>()
                    .expect("vec")
            };
            assert_eq!(
                product(&bytes),
                product(&shifted[1..]),
                "{dtype:?} ({kernel:?})"
            );
            let lookup = |data: &[u8]| {
                Embedding::quantized_from_file_bytes(dtype, (rows, cols), data, kernel)
                    .expect("table")
                    .forward(&[4, 0, 2], &Device::Cpu)
                    .expect("lookup")
                    .to_vec2::<f32>()
                    .expect("vec")
            };
            assert_eq!(
                lookup(&bytes),
                lookup(&shifted[1..]),
                "{dtype:?} ({kernel:?})"
            );
        }
    }
}
