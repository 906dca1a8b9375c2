//! Run with: `cargo run --release -p hexacoder-benches --bin engine-bench -- MODEL.gguf WORKLOAD.json`
//!
//! Runs the workload `engine_vs_llamacpp.py` writes (the same one the llama.cpp side runs)
//! on our engine and prints one JSON document of raw timings. Each measurement is one
//! `Engine::generate` call, timed from the call to the first and last streamed text.

use std::time::Instant;

use anyhow::{Context, Result};
use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions};
use hexacoder_engine::{Engine, GenerateRequest, SamplingParams};
use serde_json::{Value, json};

struct Timing {
    ttft_s: f64,
    total_s: f64,
    first_delta_s: Option<f64>,
    last_delta_s: Option<f64>,
    tokens: usize,
    prompt_tokens: usize,
    cached_tokens: usize,
}

fn run(engine: &mut Engine, prompt: &str, max_tokens: usize) -> Result<Timing> {
    let request = GenerateRequest {
        prompt: prompt.to_string(),
        suffix: None,
        max_tokens,
        sampling: SamplingParams::greedy(),
        n: 1,
        stop: vec![],
        top_logprobs: 0,
        context_files: vec![],
        logit_bias: vec![],
        adapter: None,
        ignore_eos: false,
        ..Default::default()
    };
    let started = Instant::now();
    let mut first = None;
    let mut last = None;
    let generation = engine.generate(&request, &mut |_, _| {
        let now = started.elapsed().as_secs_f64();
        first.get_or_insert(now);
        last = Some(now);
        true
    })?;
    Ok(Timing {
        ttft_s: generation.time_to_first_token.as_secs_f64(),
        total_s: started.elapsed().as_secs_f64(),
        first_delta_s: first,
        last_delta_s: last,
        tokens: generation.completion_tokens(),
        prompt_tokens: generation.prompt_tokens.len(),
        cached_tokens: generation.cached_prompt_tokens,
    })
}

fn timing_json(t: &Timing) -> Value {
    json!({
        "ttft_s": t.ttft_s, "total_s": t.total_s, "first_delta_s": t.first_delta_s, "last_delta_s": t.last_delta_s,
        "tokens": t.tokens, "prompt_tokens": t.prompt_tokens, "cached_tokens": t.cached_tokens,
    })
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

// As the server does: large blocks (KV buffers) on transparent huge pages.
#[global_allocator]
static ALLOCATOR: hexacoder_engine::alloc::HugePageAlloc = hexacoder_engine::alloc::HugePageAlloc;

fn main() -> Result<()> {
    // On a thread of its own, as the server's scheduler runs the engine: glibc gives other
    // threads other heaps (arenas), and they reuse and return memory differently.
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(bench)?
        .join()
        .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?
}

fn bench() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, workload] = args.as_slice() else {
        anyhow::bail!("usage: engine-bench MODEL.gguf WORKLOAD.json");
    };
    let workload: Value =
        serde_json::from_str(&std::fs::read_to_string(workload).context("reading workload")?)?;
    let text = |key: &str| {
        workload[key]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("workload.{key}"))
    };
    let number = |key: &str| {
        workload[key]
            .as_u64()
            .map(|n| n as usize)
            .with_context(|| format!("workload.{key}"))
    };
    let reps = number("reps")?;
    if let Ok(filter) = std::env::var("HEXACODER_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }

    let load_started = Instant::now();
    let requantize = match std::env::var("HEXACODER_REQUANTIZE").as_deref() {
        Ok("all") => load::Requantize::AllToQ8_0,
        Ok("legacy") => load::Requantize::LegacyToQ8_0,
        _ => LoadOptions::cpu().requantize,
    };
    let options = LoadOptions {
        requantize,
        ..LoadOptions::cpu()
    };
    let mut engine = load::load(&ModelFiles::Gguf(model.into()), &options)?;
    let load_s = load_started.elapsed().as_secs_f64();
    // For profiling the load alone (`HEXACODER_BENCH_LOAD_ONLY=1`).
    if std::env::var_os("HEXACODER_BENCH_LOAD_ONLY").is_some() {
        println!(
            "{}",
            json!({ "load_s": load_s, "peak_rss_bytes": peak_rss_bytes() })
        );
        return Ok(());
    }
    // One untimed request warms up thread pools and allocators, as the peer gets one too.
    run(&mut engine, "def warmup():", 4)?;
    // For profiling the prefix-cache path alone (`HEXACODER_BENCH_WARM_LOOP=N`): one long
    // prompt, then N distinct edits of it; `HEXACODER_BENCH_EDIT` shapes the edit (`{i}` is
    // the iteration), default `_{i}`.
    if let Some(n) = std::env::var("HEXACODER_BENCH_WARM_LOOP")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let long = text("ttft_prompt")?;
        run(&mut engine, &long, 1)?;
        let mut ttfts: Vec<(f64, usize)> = (0..n)
            .map(|i| {
                run(
                    &mut engine,
                    &format!(
                        "{long}{}\n\ndef check_input(value):\n    return",
                        std::env::var("HEXACODER_BENCH_EDIT")
                            .ok()
                            .map(|e| e.replace("{i}", &i.to_string()))
                            .unwrap_or_else(|| format!("_{i}"))
                    ),
                    1,
                )
                .map(|t| (t.ttft_s * 1e3, t.prompt_tokens - t.cached_tokens))
            })
            .collect::<Result<_>>()?;
        ttfts.sort_by(|a, b| a.0.total_cmp(&b.0));
        println!(
            "{}",
            json!({"warm_ttft_ms_median": ttfts[n / 2], "warm_ttft_ms": ttfts})
        );
        return Ok(());
    }

    let mut decode = Vec::new();
    let mut prefill = Vec::new();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for rep in 0..reps {
        // Distinct first lines keep the prefix cache out of the cold measurements.
        decode.push(timing_json(&run(
            &mut engine,
            &format!("# run {rep}\n{}", text("decode_prompt")?),
            number("decode_tokens")?,
        )?));
        prefill.push(timing_json(&run(
            &mut engine,
            &format!("# run {rep}\n{}", text("prefill_prompt")?),
            1,
        )?));
        let long = format!("# run {rep}\n{}", text("ttft_prompt")?);
        cold.push(timing_json(&run(&mut engine, &long, 1)?));
        warm.push(timing_json(&run(
            &mut engine,
            &format!("{long}{}", text("warm_suffix")?),
            1,
        )?));
    }
    let stats = engine.prefix_cache_stats();
    let doc = json!({
        "engine": "hexacoder",
        "cpu_kernels": hexacoder_engine::nn::Isa::best().map(|isa| isa.name()),
        "load_s": load_s,
        "decode": decode,
        "prefill": prefill,
        "ttft_cold": cold,
        "ttft_warm": warm,
        "prefix_cache": {"queries": stats.queries, "hits": stats.hits, "hit_tokens": stats.hit_tokens, "entries": stats.entries, "bytes": stats.bytes},
        "peak_rss_bytes": peak_rss_bytes(),
    });
    println!("{doc}");
    Ok(())
}
