//! Run with: `cargo run --release -p hexacoder-benches --bin matmul-bench [REPS]`
//!
//! The engine's Q8_0 matmul kernels against candle's (the peer: what the engine would use
//! without them), at the projection shapes of Qwen2.5-Coder-0.5B, for a decode step (1 row),
//! a batch of decode steps (4) and prefill chunks (64, 512). Every kernel this CPU runs is
//! measured in the same run. Prints a markdown table of medians and ratios.

use anyhow::{Context, Result};
use candle_core::Module;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use hexacoder_benches::{cpu_name, median_ms, random_tensor};
use hexacoder_engine::nn::{Isa, Q8Matrix};

fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse().context("REPS must be a whole number"))
        .transpose()?
        .unwrap_or(7);
    let kernels: Vec<Isa> = Isa::ALL.into_iter().filter(|isa| isa.supported()).collect();
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
    // (name, out, in, row counts)
    let shapes: [(&str, usize, usize, &[usize]); 5] = [
        ("q, o", 896, 896, &[1, 4, 64, 512]),
        ("k, v", 128, 896, &[1, 4, 64, 512]),
        ("gate, up", 4864, 896, &[1, 4, 64, 512]),
        ("down", 896, 4864, &[1, 4, 64, 512]),
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
    Ok(())
}
