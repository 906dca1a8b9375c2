//! Run with: `cargo run --release -p hexacoder-benches --bin attention-bench`
//!
//! The engine's CPU attention (fixed reduction order, masked keys skipped) against the same
//! attention as candle matmuls with an additive mask (what the engine used before, and still
//! uses off the CPU), at the shapes of the catalogue's models: a decode step at a long
//! context, and prefill chunks. Prints a markdown table of medians and ratios.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use hexacoder_benches::{cpu_name, median};
use hexacoder_engine::nn::{attend, attend_with_matmuls};

fn random(shape: (usize, usize, usize), seed: u64) -> Result<Tensor> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = shape.0 * shape.1 * shape.2;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

fn time(reps: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(9);
    println!(
        "CPU: {}, {} threads, median of {reps}\n",
        cpu_name(),
        candle_core::utils::get_num_threads()
    );
    println!("| shape (one layer) | new queries | context | ours (ms) | matmuls (ms) | ratio |");
    println!("|---|---|---|---|---|---|");
    // (name, heads, kv heads, head size)
    let models = [
        ("Qwen2.5-Coder-0.5B", 14, 2, 64),
        ("SmolLM2-135M", 9, 3, 64),
    ];
    for (name, heads, kv_heads, head_dim) in models {
        for (n, total) in [(1, 512), (1, 2048), (64, 2048), (512, 512), (512, 2048)] {
            // Keys in a buffer with room to grow, as the KV cache holds them.
            let keys = random((kv_heads, total + 64, head_dim), 1)?.narrow(1, 0, total)?;
            let values = random((kv_heads, total + 64, head_dim), 2)?.narrow(1, 0, total)?;
            let queries = random((heads, n, head_dim), 3)?;
            let ours = time(reps, || Ok(attend(&queries, &keys, &values)?))?;
            let theirs = time(reps, || Ok(attend_with_matmuls(&queries, &keys, &values)?))?;
            println!(
                "| {name} ({heads}/{kv_heads} heads of {head_dim}) | {n} | {total} | {ours:.3} | {theirs:.3} | {:.2}× |",
                theirs / ours
            );
        }
    }
    Ok(())
}
