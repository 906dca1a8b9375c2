use candle_core::{Device, IndexOp, Tensor};

use super::*;
use crate::nn::test_util::bits;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor")
}

/// Keys or values as the KV cache hands them over: the first `len` positions of a larger
/// buffer, so rows are contiguous but heads are not.
fn cache_view(kv_heads: usize, len: usize, head_dim: usize, seed: u64) -> Tensor {
    random(&[kv_heads, len + 13, head_dim], seed)
        .narrow(1, 0, len)
        .expect("narrow")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::nn::test_util::max_abs(&(a - b).expect("sub"))
}

#[test]
fn matches_masked_matmul_attention() {
    // (heads, kv_heads, head_dim, past, n): grouped and plain, decode and chunks, and a head
    // size (36) that is not a multiple of 8, which takes the portable kernel.
    for &(heads, kv_heads, head_dim, past, n) in &[
        (4, 2, 16, 0, 1),
        (4, 2, 16, 0, 9),
        (9, 3, 64, 5, 1),
        (9, 3, 64, 17, 12),
        (14, 2, 64, 40, 30),
        (4, 4, 128, 3, 5),
        (6, 2, 36, 7, 6),
    ] {
        let total = past + n;
        let q = random(&[heads, n, head_dim], 1);
        let k = cache_view(kv_heads, total, head_dim, 2);
        let v = cache_view(kv_heads, total, head_dim, 3);
        let ours = attend(&q, &k, &v).expect("attend");
        let mask = causal_mask(n, past, &Device::Cpu).expect("mask");
        let reference = attend_masked(&q, &k, &v, mask.as_ref()).expect("reference");
        assert_eq!(ours.dims(), &[n, heads * head_dim]);
        let diff = max_diff(&ours, &reference);
        assert!(
            diff < 1e-5,
            "{heads}/{kv_heads} heads of {head_dim}, {past}+{n}: {diff}"
        );
    }
}

/// A query's output is the same to the bit whether its prompt came in one chunk, in several,
/// or one token at a time: what makes a greedy request repeat after a prefix-cache hit.
#[test]
fn a_querys_result_does_not_depend_on_how_the_prompt_was_split() {
    for &(heads, kv_heads, head_dim) in &[(14, 2, 64), (9, 3, 64), (6, 2, 36), (8, 8, 128)] {
        let total = 75;
        let q = random(&[heads, total, head_dim], 11);
        let k = cache_view(kv_heads, total, head_dim, 12);
        let v = cache_view(kv_heads, total, head_dim, 13);
        let whole = attend(&q, &k, &v).expect("whole");
        for chunks in [&[1usize; 75][..], &[40, 35], &[7, 1, 60, 7], &[74, 1]] {
            let mut start = 0;
            let mut rows = Vec::new();
            for &len in chunks {
                let end = start + len;
                let part = attend(
                    &q.narrow(1, start, len).expect("q"),
                    &k.narrow(1, 0, end).expect("k"),
                    &v.narrow(1, 0, end).expect("v"),
                )
                .expect("part");
                rows.push(part);
                start = end;
            }
            let split = Tensor::cat(&rows, 0).expect("cat");
            let same = whole
                .eq(&split)
                .and_then(|e| e.to_dtype(candle_core::DType::F32))
                .and_then(|e| e.min_all())
                .and_then(|e| e.to_scalar::<f32>())
                .expect("eq");
            assert_eq!(
                same,
                1.0,
                "{heads}/{kv_heads} heads of {head_dim}, chunks {:?}: max diff {}",
                &chunks[..chunks.len().min(4)],
                max_diff(&whole, &split)
            );
        }
    }
}

/// Keys and values in parts (a shared prefix, then a sequence's own positions) give the bits
/// of the same keys and values as one tensor, wherever the parts split, with every kernel
/// this CPU runs: what lets a prefix-cache hit read the cached positions in place.
#[test]
fn keys_in_parts_give_the_bits_of_one_tensor() {
    let kernels = kernels_here();
    for &(heads, kv_heads, head_dim) in &[(14, 2, 64), (9, 3, 64), (8, 8, 128), (6, 2, 36)] {
        let (past, n) = (70, 9);
        let total = past + n;
        let q = random(&[heads, n, head_dim], 21);
        let k = cache_view(kv_heads, total, head_dim, 22);
        let v = cache_view(kv_heads, total, head_dim, 23);
        for &kernel in &kernels {
            if head_dim % 8 != 0 && kernel != cpu::Kernel::Portable {
                continue;
            }
            let whole = cpu::attend_with(kernel, &q, &[(k.clone(), v.clone())]).expect("whole");
            // Splits inside the shared keys, at their end, one key long, and three parts.
            for splits in [&[33usize][..], &[70], &[1], &[69], &[5, 40]] {
                let mut parts = Vec::new();
                let mut start = 0;
                for &end in splits.iter().chain([&total]) {
                    let len = end - start;
                    parts.push((
                        k.narrow(1, start, len).expect("k"),
                        v.narrow(1, start, len).expect("v"),
                    ));
                    start = end;
                }
                let split = cpu::attend_with(kernel, &q, &parts).expect("parts");
                assert!(
                    whole.to_vec2::<f32>().expect("vec") == split.to_vec2::<f32>().expect("vec"),
                    "{kernel:?}, {heads}/{kv_heads} heads of {head_dim}, split at {splits:?}: \
                     max diff {}",
                    max_diff(&whole, &split)
                );
            }
        }
    }
    // The new positions must all be in the last part.
    let (q, k) = (random(&[4, 3, 16], 1), random(&[2, 10, 16], 2));
    let parts = [
        (k.narrow(1, 0, 8).expect("k"), k.narrow(1, 0, 8).expect("k")),
        (k.narrow(1, 8, 2).expect("k"), k.narrow(1, 8, 2).expect("k")),
    ];
    assert!(attend_parts(&q, &parts).is_err());
}

/// Every kernel this CPU runs, the portable one first.
fn kernels_here() -> Vec<cpu::Kernel> {
    let mut kernels = vec![cpu::Kernel::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        use crate::nn::simd::Isa;
        if Isa::Avx2.supported() {
            kernels.push(cpu::Kernel::Avx2);
        }
        if Isa::Avx512Vnni.supported() {
            kernels.push(cpu::Kernel::Avx512);
        }
    }
    kernels
}

/// Keys and values kept in f16 (the KV cache's default) give, with every kernel, the bits
/// that their f32 values give: each is widened exactly as it is loaded, and every sum runs
/// in f32 in the order it runs for f32 keys. So the invariance above holds for f16 caches
/// too, and the only difference f16 makes is the rounding as values are stored.
#[test]
fn f16_keys_and_values_give_the_bits_of_their_f32_values() {
    use candle_core::DType;

    for &(heads, kv_heads, head_dim, past, n) in &[
        (14, 2, 64, 0, 1),
        (14, 2, 64, 2047, 1),
        (14, 2, 64, 61, 17),
        (9, 3, 48, 10, 5),
        (12, 2, 128, 33, 16),
        (4, 2, 16, 3, 9),
        (6, 2, 36, 7, 6),
    ] {
        let total = past + n;
        let q = random(&[heads, n, head_dim], 31);
        let k = cache_view(kv_heads, total, head_dim, 32);
        let v = cache_view(kv_heads, total, head_dim, 33);
        let (k16, v16) = (
            k.to_dtype(DType::F16).expect("k"),
            v.to_dtype(DType::F16).expect("v"),
        );
        let (k32, v32) = (
            k16.to_dtype(DType::F32).expect("k"),
            v16.to_dtype(DType::F32).expect("v"),
        );
        // A shared prefix and a sequence's own positions, as a prefix-cache hit reads them.
        let split = past / 2;
        let parts = |k: &Tensor, v: &Tensor| {
            vec![
                (
                    k.narrow(1, 0, split).expect("k"),
                    v.narrow(1, 0, split).expect("v"),
                ),
                (
                    k.narrow(1, split, total - split).expect("k"),
                    v.narrow(1, split, total - split).expect("v"),
                ),
            ]
        };
        for kernel in kernels_here() {
            if head_dim % 8 != 0 && kernel != cpu::Kernel::Portable {
                continue;
            }
            let wide = cpu::attend_with(kernel, &q, &[(k32.clone(), v32.clone())]).expect("f32");
            let half = cpu::attend_with(kernel, &q, &[(k16.clone(), v16.clone())]).expect("f16");
            let half_parts = cpu::attend_with(kernel, &q, &parts(&k16, &v16)).expect("parts");
            let case = format!("{kernel:?}, {heads}/{kv_heads} heads of {head_dim}, {past}+{n}");
            assert!(
                bits(&wide) == bits(&half),
                "{case}: {}",
                max_diff(&wide, &half)
            );
            assert!(bits(&wide) == bits(&half_parts), "{case}, in parts");
        }
        // Through the public entry, which picks the kernel and takes f16 parts as they come.
        let ours = attend_parts(&q, &parts(&k16, &v16)).expect("f16 parts");
        let reference = attend(&q, &k32, &v32).expect("f32");
        assert!(
            bits(&ours) == bits(&reference),
            "{heads}/{kv_heads} of {head_dim}"
        );
    }
    // Parts of two types are an error, not a misread.
    let (q, k) = (random(&[4, 3, 16], 1), random(&[2, 10, 16], 2));
    let k16 = k.to_dtype(DType::F16).expect("k");
    let mixed = [
        (
            k16.narrow(1, 0, 5).expect("k"),
            k16.narrow(1, 0, 5).expect("v"),
        ),
        (k.narrow(1, 5, 5).expect("k"), k.narrow(1, 5, 5).expect("v")),
    ];
    assert!(attend_parts(&q, &mixed).is_err());
}

#[test]
fn a_query_never_sees_a_later_position() {
    // The first position's value is 1, every later one a million: the first query must
    // come out as exactly 1, whatever its scores.
    let (heads, head_dim, total) = (2, 8, 6);
    let q = random(&[heads, total, head_dim], 5);
    let k = random(&[1, total, head_dim], 6);
    let mut values = vec![1e6f32; total * head_dim];
    values[..head_dim].fill(1.0);
    let v = Tensor::from_vec(values, (1, total, head_dim), &Device::Cpu).expect("v");
    let first = attend(&q, &k, &v).expect("attend").i(0).expect("row");
    assert_eq!(
        first.to_vec1::<f32>().expect("vec"),
        vec![1.0; heads * head_dim]
    );
}

#[test]
fn mismatched_shapes_are_an_error() {
    let q = random(&[4, 2, 16], 1);
    let k = random(&[3, 2, 16], 2);
    assert!(attend(&q, &k, &k).is_err(), "4 heads over 3 kv heads");
    let k = random(&[2, 1, 16], 2);
    assert!(attend(&q, &k, &k).is_err(), "2 queries over 1 key");
}

/// The 512-bit kernels take two queries at a time and must give the bits the AVX2 ones give
/// each alone: a model's output may not depend on the CPU, nor on where a query falls in a
/// pair.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx512_kernels_give_the_avx2_kernels_bits() {
    use crate::nn::simd::Isa;

    if !Isa::Avx512Vnni.supported() {
        eprintln!("skipped: this CPU has no AVX-512");
        return;
    }
    // Head sizes 16 to 128; odd and even query counts; key counts around multiples of 8;
    // groups of four queries within one position's heads and across up to four positions
    // (one head per KV head), whose later members add up to three keys of their own.
    for &(heads, kv_heads, head_dim, past, n) in &[
        (4, 4, 64, 5, 9),
        (6, 6, 32, 0, 7),
        (9, 3, 48, 10, 5),
        (14, 2, 64, 2047, 1),
        (4, 2, 16, 0, 1),
        (4, 2, 16, 3, 9),
        (14, 2, 64, 0, 17),
        (14, 2, 64, 61, 2),
        (9, 3, 64, 100, 12),
        (4, 4, 128, 7, 5),
        (12, 2, 128, 33, 16),
    ] {
        let total = past + n;
        let q = random(&[heads, n, head_dim], 21);
        let k = cache_view(kv_heads, total, head_dim, 22);
        let v = cache_view(kv_heads, total, head_dim, 23);
        let parts = [(k.clone(), v.clone())];
        let narrow = cpu::attend_with(cpu::Kernel::Avx2, &q, &parts).expect("avx2");
        let wide = cpu::attend_with(cpu::Kernel::Avx512, &q, &parts).expect("avx512");
        assert!(
            bits(&narrow) == bits(&wide),
            "{heads}/{kv_heads} heads of {head_dim}, {past}+{n}: max diff {}",
            max_diff(&narrow, &wide)
        );
    }
    assert_eq!(cpu::Kernel::detect(64), cpu::Kernel::Avx512);
    assert_eq!(
        cpu::Kernel::detect(8),
        cpu::Kernel::Avx2,
        "a head of 8 has no 512-bit kernel"
    );
}

/// Softmax's numerators and their sum, vector kernels against the portable one: the same
/// maximum, the same `exp`, the same additions in the same order, for lengths with and
/// without a tail, and a NaN passed over by the maximum as `f32::max` passes it over.
#[test]
fn every_kernel_gives_softmax_the_same_bits() {
    let kernels: Vec<cpu::Kernel> = [cpu::Kernel::detect(64), cpu::Kernel::detect(8)]
        .into_iter()
        .filter(|&k| k != cpu::Kernel::Portable)
        .collect();
    for len in (1..=41).chain([2048, 2053]) {
        let scores: Vec<f32> = (0..len)
            .map(|i| ((i * 7919 + 13) % 1009) as f32 * 0.031 - 12.5)
            .collect();
        let mut with_nan = scores.clone();
        with_nan[len / 2] = f32::NAN;
        for scores in [scores, with_nan] {
            let mut expected = scores.clone();
            let expected_sum = cpu::Kernel::Portable.softmax_numerators(&mut expected);
            for &kernel in &kernels {
                let mut ours = scores.clone();
                let sum = kernel.softmax_numerators(&mut ours);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&ours), bits(&expected), "{kernel:?}, {len} scores");
                assert_eq!(
                    sum.to_bits(),
                    expected_sum.to_bits(),
                    "{kernel:?}, {len} scores"
                );
            }
        }
    }
}

/// A query's output with each kernel is the one it gets alone (one head, one key head, one
/// position), whatever group of queries shares its key and value loads: the grouped kernels
/// (four or eight queries at once) run each query's chains exactly as the single ones do.
#[test]
fn grouped_queries_give_the_bits_of_each_query_alone() {
    for kernel in kernels_here() {
        // Head sizes of 8 (AVX2's quad with one vector per slice), 24, 64 and 128; groups of
        // 7, 3 and 1 heads per key head; key counts around multiples of 8.
        for &(heads, kv_heads, head_dim, past, n) in &[
            (14, 2, 64, 61, 10),
            (9, 3, 64, 7, 6),
            (4, 2, 8, 13, 5),
            (6, 2, 24, 0, 9),
            (8, 8, 128, 30, 4),
        ] {
            // Only where `detect` could pick the kernel: AVX2 takes heads of a multiple of 8,
            // AVX-512 of 16 up to 128.
            let wide = head_dim % 16 == 0 && head_dim <= 128;
            let runs = match kernel {
                cpu::Kernel::Portable => true,
                #[cfg(target_arch = "x86_64")]
                cpu::Kernel::Avx2 => head_dim % 8 == 0,
                #[cfg(target_arch = "x86_64")]
                cpu::Kernel::Avx512 => wide,
            };
            if !runs {
                continue;
            }
            let total = past + n;
            let q = random(&[heads, n, head_dim], 31);
            let k = cache_view(kv_heads, total, head_dim, 32).to_dtype(candle_core::DType::F16);
            let v = cache_view(kv_heads, total, head_dim, 33).to_dtype(candle_core::DType::F16);
            let (k, v) = (k.expect("k"), v.expect("v"));
            // In two parts, so that each weighted sum runs on from the first into the second.
            let split = past / 2;
            let part =
                |t: &Tensor, start: usize, len: usize| t.narrow(1, start, len).expect("part");
            let parts = [
                (part(&k, 0, split), part(&v, 0, split)),
                (
                    part(&k, split, total - split),
                    part(&v, split, total - split),
                ),
            ];
            let together = cpu::attend_with(kernel, &q, &parts)
                .expect("together")
                .to_vec2::<f32>()
                .expect("vec");
            let group = heads / kv_heads;
            for head in 0..heads {
                for (i, together) in together.iter().enumerate() {
                    let seen = past + i + 1;
                    let one = |t: &Tensor| {
                        t.narrow(0, head / group, 1)
                            .and_then(|t| t.narrow(1, 0, seen))
                    };
                    let alone = cpu::attend_with(
                        kernel,
                        &q.narrow(0, head, 1)
                            .and_then(|q| q.narrow(1, i, 1))
                            .expect("q"),
                        &[(one(&k).expect("k"), one(&v).expect("v"))],
                    )
                    .expect("alone")
                    .to_vec2::<f32>()
                    .expect("vec");
                    let row = &together[head * head_dim..(head + 1) * head_dim];
                    assert!(
                        row.iter()
                            .map(|x| x.to_bits())
                            .eq(alone[0].iter().map(|x| x.to_bits())),
                        "{kernel:?}, {heads}/{kv_heads} heads of {head_dim}, {past}+{n}: \
                         head {head}, query {i} differs alone"
                    );
                }
            }
        }
    }
}
