//! Run with: `cargo run --release -p hexacoder-benches --bin attention-bench`
//!
//! The engine's CPU attention (fixed reduction order, masked keys skipped) against the same
//! attention as candle matmuls with an additive mask (what the engine used before, and still
//! uses off the CPU), at the shapes of the catalogue's models: a decode step at a long
//! context, and prefill chunks; ours with keys and values in f16 (the KV cache's default) and
//! in f32. Prints a markdown table of medians and ratios.

use anyhow::Result;
use candle_core::DType;
use hexacoder_benches::{cpu_name, median_ms, random_tensor};
use hexacoder_engine::nn::{attend, attend_with_matmuls};

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
    println!(
        "| shape (one layer) | new queries | context | ours, f16 KV (ms) | ours, f32 KV (ms) | matmuls, f32 (ms) | f32 matmuls / ours f32 |"
    );
    println!("|---|---|---|---|---|---|---|");
    // (name, heads, kv heads, head size)
    let models = [
        ("Qwen2.5-Coder-0.5B", 14, 2, 64),
        ("SmolLM2-135M", 9, 3, 64),
    ];
    for (name, heads, kv_heads, head_dim) in models {
        for (n, total) in [
            (1, 512),
            (1, 2048),
            (8, 2048),
            (64, 2048),
            (512, 512),
            (512, 2048),
        ] {
            // Keys in a buffer with room to grow, as the KV cache holds them.
            let keys = random_tensor(&[kv_heads, total + 64, head_dim], 1)?.narrow(1, 0, total)?;
            let values =
                random_tensor(&[kv_heads, total + 64, head_dim], 2)?.narrow(1, 0, total)?;
            let queries = random_tensor(&[heads, n, head_dim], 3)?;
            // The KV cache's default type.
            let (keys16, values16) = (keys.to_dtype(DType::F16)?, values.to_dtype(DType::F16)?);
            let halves = median_ms(reps, || Ok(attend(&queries, &keys16, &values16)?))?;
            let ours = median_ms(reps, || Ok(attend(&queries, &keys, &values)?))?;
            let theirs = median_ms(reps, || Ok(attend_with_matmuls(&queries, &keys, &values)?))?;
            println!(
                "| {name} ({heads}/{kv_heads} heads of {head_dim}) | {n} | {total} | {halves:.3} | {ours:.3} | {theirs:.3} | {:.2}× |",
                theirs / ours
            );
        }
    }
    Ok(())
}
