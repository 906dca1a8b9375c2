//! Run with: `cargo run --release -p hexacoder-benches --bin matmul-bench [REPS] [lora|streamed [MATRICES]]`
//! (`lora`: only the last table; `streamed`: only the fourth, over `MATRICES` weights, 100 unless
//! given)
//!
//! The engine's Q8_0 matmul kernels against candle's (the peer: what the engine would use
//! without them), at the projection shapes of Qwen2.5-Coder-0.5B, for a decode step (1 row),
//! a batch of decode steps (4) and prefill chunks (64, 512). Every kernel this CPU runs is
//! measured in the same run. Prints a markdown table of medians and ratios.
//!
//! A second table compares, for the legacy types of the catalogue's GGUFs (Q5_0 in Qwen,
//! Q4_1 in SmolLM2), our kernels on the file's nibbles against the same weight converted to
//! Q8_0 for our Q8_0 kernels (what the server did before, now `--legacy-quants-to-q8`), on the
//! widest kernels this CPU runs.
//!
//! A third table compares, for the k-quant types of the "Q4_K_M" files (Q4_K and Q6_K: the
//! 0.5B model's `ffn_down`, nearly all of the 1.5B model), our tiles against candle's kernels
//! at the shapes where the catalogue's models have them.
//!
//! A fourth times Q5_0 products on weights streamed from memory rather than from cache, as a
//! model's are, with each kernel this CPU runs: the kernels' prefetching shows there, and at
//! 9-10 rows (a warm editor request's new tokens) how many activation rows one unpacking of
//! the weights serves.
//!
//! A fifth times the LoRA side branch alone (`nn::LowRankDelta`), one decode token's worth:
//! an r=16 branch on each of the 0.5B model's 168 projections, with f16, bf16 and f32 values.

use anyhow::{Context, Result};
use candle_core::Module;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use hexacoder_benches::{cpu_name, median_ms, random_tensor};
use hexacoder_engine::nn::{Isa, KQuantMatrix, LegacyMatrix, Q8Matrix};

fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse().context("REPS must be a whole number"))
        .transpose()?
        .unwrap_or(7);
    if std::env::args().nth(2).as_deref() == Some("lora") {
        println!(
            "CPU: {}, {} threads",
            cpu_name(),
            candle_core::utils::get_num_threads()
        );
        return low_rank_table(reps);
    }
    let kernels: Vec<Isa> = Isa::ALL.into_iter().filter(|isa| isa.supported()).collect();
    if std::env::args().nth(2).as_deref() == Some("streamed") {
        println!(
            "CPU: {}, {} threads",
            cpu_name(),
            candle_core::utils::get_num_threads()
        );
        // A third argument sets how many matrices a pass reads: one (3 MB) stays in cache,
        // which times the kernels' arithmetic alone.
        let matrices = match std::env::args().nth(3) {
            Some(count) => count
                .parse()
                .ok()
                .filter(|&count| count > 0)
                .with_context(|| format!("MATRICES must be a positive count, not {count:?}"))?,
            None => 100,
        };
        return streamed_table(reps, &kernels, matrices);
    }
    println!(
        "CPU: {}, {} threads, median of {reps} (ms per product)\n",
        cpu_name(),
        candle_core::utils::get_num_threads()
    );
    let mut header = "| projection (out × in) | rows | candle |".to_string();
    let mut rule = "|---|---|---|".to_string();
    for isa in &kernels {
        header += &format!(" ours, {isa:?} | candle / ours |");
        rule += "---|---|";
    }
    if kernels.len() == 2 {
        header += " Avx2 / Avx512Vnni |";
        rule += "---|";
    }
    println!("{header}\n{rule}");
    // (name, out, in, row counts); 9 rows: a warm editor request's new tokens.
    let shapes: [(&str, usize, usize, &[usize]); 5] = [
        ("q, o", 896, 896, &[1, 4, 9, 64, 512]),
        ("k, v", 128, 896, &[1, 4, 9, 64, 512]),
        ("gate, up", 4864, 896, &[1, 4, 9, 64, 512]),
        ("down", 896, 4864, &[1, 4, 9, 64, 512]),
        ("LM head", 151_936, 896, &[1, 4, 64]),
    ];
    for (name, out, inp, rows) in shapes {
        let weight = QTensor::quantize(&random_tensor(&[out, inp], 1)?, GgmlDType::Q8_0)?;
        let ours: Vec<Q8Matrix> = kernels
            .iter()
            .map(|&isa| {
                Q8Matrix::from_qtensor(&weight)?
                    .and_then(|m| m.with_isa(isa))
                    .context("the Q8_0 kernels need an x86-64 CPU with AVX2 and FMA")
            })
            .collect::<Result<_>>()?;
        let candle = QMatMul::from_qtensor(weight)?;
        for &m in rows {
            let xs = random_tensor(&[m, inp], 2)?;
            let theirs = median_ms(reps, || Ok(candle.forward(&xs)?))?;
            let mut line = format!("| {name} ({out} × {inp}) | {m} | {theirs:.3} |");
            let mut times = Vec::new();
            for matrix in &ours {
                let t = median_ms(reps, || Ok(matrix.matmul(&xs)?))?;
                line += &format!(" {t:.3} | {:.2}× |", theirs / t);
                times.push(t);
            }
            if let [avx2, avx512] = times[..] {
                line += &format!(" {:.2}× |", avx2 / avx512);
            }
            println!("{line}");
        }
    }
    legacy_table(reps, &shapes[..4])?;
    kquant_table(reps, &kernels)?;
    streamed_table(reps, &kernels, 100)?;
    low_rank_table(reps)
}

/// One decode token's LoRA side branches, r=16 on all seven projections of 24 layers (the
/// adapter `adapter-bench` serves), alone: what the branch costs before the hook's tensors.
fn low_rank_table(reps: usize) -> Result<()> {
    use hexacoder_engine::nn::LowRankDelta;
    const RANK: usize = 16;
    const LAYERS: usize = 24;
    let shapes = [
        (896, 896),
        (896, 128),
        (896, 128),
        (896, 896),
        (896, 4864),
        (896, 4864),
        (4864, 896),
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
    };
    println!(
        "\n| LoRA side branch, r={RANK} on {} projections | values | ms per token (best of {reps}) | median | µs per branch | GB/s |",
        LAYERS * shapes.len()
    );
    println!("|---|---|---|---|---|---|");
    /// A value as an adapter saved in one dtype holds it.
    type Round = fn(f32) -> f32;
    let rounders: [(&str, Round); 3] = [
        ("f16", |v| half::f16::from_f32(v).to_f32()),
        ("bf16", |v| half::bf16::from_f32(v).to_f32()),
        ("f32", |v| v),
    ];
    for (name, round) in rounders {
        let deltas = (0..LAYERS)
            .flat_map(|_| shapes)
            .map(|(n_in, n_out)| {
                let a = (0..RANK * n_in).map(|_| round(next())).collect();
                let b_t = (0..RANK * n_out).map(|_| round(next())).collect();
                LowRankDelta::new(a, b_t, 2.0, RANK, n_in).map_err(anyhow::Error::from)
            })
            .collect::<Result<Vec<_>>>()?;
        let input: Vec<f32> = (0..4864).map(|_| next() * 25.0).collect();
        let bytes: usize = deltas.iter().map(LowRankDelta::bytes).sum();
        let mut times = Vec::with_capacity(reps);
        for _ in 0..=reps {
            let started = std::time::Instant::now();
            for delta in &deltas {
                std::hint::black_box(delta.apply(&input[..delta.in_features()], 1));
            }
            times.push(started.elapsed().as_secs_f64());
        }
        times.remove(0);
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let median = hexacoder_benches::median(times.iter().map(|t| t * 1e3).collect());
        println!(
            "| {:.1} MB | {name} | {:.3} | {median:.3} | {:.1} | {:.1} |",
            bytes as f64 / 1e6,
            best * 1e3,
            best * 1e6 / deltas.len() as f64,
            bytes as f64 / best / 1e9
        );
    }
    Ok(())
}

/// The kernels on weights that come from memory, as a model's do (each weight is read once
/// per forward pass, and a model is larger than the caches): Q5_0 at the 0.5B model's gate
/// shape, enough distinct matrices to pass 300 MB, each pass over all of them timed, best
/// pass of `reps` (the bandwidth is what other tenants leave).
fn streamed_table(reps: usize, kernels: &[Isa], matrices_count: usize) -> Result<()> {
    let (out, inp) = (4864, 896);
    let bytes = (matrices_count * out * inp) as f64 * 5.5 / 8.0;
    println!(
        "\n| Q5_0, streamed from memory | kernel | rows | ms per pass (best of {reps}) | GB/s of weights | GMAC/s |"
    );
    println!("|---|---|---|---|---|---|");
    for &isa in kernels {
        let matrices = (0..matrices_count)
            .map(|seed| {
                let weight =
                    QTensor::quantize(&random_tensor(&[out, inp], seed as u64)?, GgmlDType::Q5_0)?;
                LegacyMatrix::from_qtensor(&weight)?
                    .and_then(|m| m.with_isa(isa))
                    .context("the legacy kernels need an x86-64 CPU with AVX2 and FMA")
            })
            .collect::<Result<Vec<_>>>()?;
        for m in [1, 4, 8, 10, 16] {
            let xs = random_tensor(&[m, inp], 2)?;
            let mut best = f64::INFINITY;
            for _ in 0..reps {
                let started = std::time::Instant::now();
                for matrix in &matrices {
                    matrix.matmul(&xs)?;
                }
                best = best.min(started.elapsed().as_secs_f64());
            }
            println!(
                "| {matrices_count} × gate ({out} × {inp}), {:.0} MB | {isa:?} | {m} | {:.2} | {:.1} | {:.0} |",
                bytes / 1e6,
                best * 1e3,
                bytes / best / 1e9,
                (matrices_count * out * inp * m) as f64 / best / 1e9
            );
        }
    }
    Ok(())
}

/// Q4_K and Q6_K: our tiles (each kernel this CPU runs) against candle's.
fn kquant_table(reps: usize, kernels: &[Isa]) -> Result<()> {
    let mut header = "\n| type | projection (out × in) | rows | candle |".to_string();
    let mut rule = "|---|---|---|---|".to_string();
    for isa in kernels {
        header += &format!(" ours, {isa:?} | candle / ours |");
        rule += "---|---|";
    }
    println!("{header}\n{rule}");
    let shapes: [(&str, usize, usize); 3] = [
        ("0.5B down", 896, 4864),
        ("1.5B gate, up", 8960, 1536),
        ("1.5B down", 1536, 8960),
    ];
    for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
        for (name, out, inp) in shapes {
            let weight = QTensor::quantize(&random_tensor(&[out, inp], 1)?, dtype)?;
            let ours: Vec<KQuantMatrix> = kernels
                .iter()
                .map(|&isa| {
                    KQuantMatrix::from_qtensor(&weight)?
                        .and_then(|m| m.with_isa(isa))
                        .context("the k-quant kernels need an x86-64 CPU with AVX2 and FMA")
                })
                .collect::<Result<_>>()?;
            let candle = QMatMul::from_qtensor(weight)?;
            for m in [1, 8, 64, 512] {
                let xs = random_tensor(&[m, inp], 2)?;
                let theirs = median_ms(reps, || Ok(candle.forward(&xs)?))?;
                let mut line =
                    format!("| {dtype:?} | {name} ({out} × {inp}) | {m} | {theirs:.3} |");
                for matrix in &ours {
                    let t = median_ms(reps, || Ok(matrix.matmul(&xs)?))?;
                    line += &format!(" {t:.3} | {:.2}× |", theirs / t);
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// Legacy types on their nibbles against the same weights converted to Q8_0.
fn legacy_table(reps: usize, shapes: &[(&str, usize, usize, &[usize])]) -> Result<()> {
    println!(
        "\n| type | projection (out × in) | rows | converted to Q8_0 | on its nibbles | Q8_0 / nibbles |"
    );
    println!("|---|---|---|---|---|---|");
    for dtype in [GgmlDType::Q5_0, GgmlDType::Q4_1] {
        for &(name, out, inp, rows) in shapes {
            let weight = QTensor::quantize(&random_tensor(&[out, inp], 1)?, dtype)?;
            let converted = QTensor::quantize(
                &weight.dequantize(&candle_core::Device::Cpu)?,
                GgmlDType::Q8_0,
            )?;
            let q8 = Q8Matrix::from_qtensor(&converted)?
                .context("the Q8_0 kernels need an x86-64 CPU with AVX2 and FMA")?;
            let nibbles = LegacyMatrix::from_qtensor(&weight)?
                .context("the legacy kernels need an x86-64 CPU with AVX2 and FMA")?;
            for &m in rows {
                let xs = random_tensor(&[m, inp], 2)?;
                let t_q8 = median_ms(reps, || Ok(q8.matmul(&xs)?))?;
                let t_nibbles = median_ms(reps, || Ok(nibbles.matmul(&xs)?))?;
                println!(
                    "| {dtype:?} | {name} ({out} × {inp}) | {m} | {t_q8:.3} | {t_nibbles:.3} | {:.2}× |",
                    t_q8 / t_nibbles
                );
            }
        }
    }
    Ok(())
}
