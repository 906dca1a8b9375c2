//! Run with: `cargo run --release -p hexacoder-benches --bin adapter-bench -- MODEL.gguf`
//!
//! LoRA costs on a real model, with a random r=16 adapter on all seven projections of every
//! layer (written and read back through the PEFT format): decode speed of the base model,
//! the unmerged side branch (with f16 values, as a trained adapter saved in f16 has, with
//! bf16 values, as PEFT saves one for a bf16 base, and with f32 values) and the merged weights; adapter load latency; and aggregate throughput of four
//! concurrent requests on one adapter against four distinct adapters. The decode rates are
//! measured in alternation, one request of each per round, so that drift in the machine's
//! speed falls on all of them alike; an unmerged adapter's "relative" is the median over
//! rounds of its rate over the base's in the same round. Prints a Markdown table of medians.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};
use hexacoder_adapters::{Adapter, BaseModel, LoraConfig, LoraModule, ModuleKey, TargetModules};
use hexacoder_benches::median;
use hexacoder_engine::ModelFiles;
use hexacoder_engine::batch::{Event, Sink};
use hexacoder_engine::load::{self, LoadOptions};
use hexacoder_engine::nn::{LinearHook, Proj, Q8Kernel};
use hexacoder_engine::{
    Engine, GenerateRequest, LoadedAdapter, SamplingParams, Scheduler, SchedulerOptions,
};

const RANK: usize = 16;
const TOKENS: usize = 64;
const REPS: usize = 7;
const PROMPT: &str =
    "import numpy as np\n\n\nclass LinearRegression:\n    \"\"\"Ordinary least squares.\"\"\"\n\n";

/// What an adapter's values are rounded to, as an adapter saved in that type holds them.
#[derive(Clone, Copy)]
enum Saved {
    F16,
    /// PEFT's dtype for an adapter on a bf16 base.
    Bf16,
    F32,
}

fn random_adapter(engine: &Engine, seed: u64, saved: Saved) -> Result<Adapter> {
    let model = engine.model();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift: reproducible weights without another dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let value = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04;
        match saved {
            Saved::F16 => half::f16::from_f32(value).to_f32(),
            Saved::Bf16 => half::bf16::from_f32(value).to_f32(),
            Saved::F32 => value,
        }
    };
    let mut modules = BTreeMap::new();
    for layer in 0..model.n_layers() {
        for proj in Proj::ALL {
            let (n_in, n_out) = model
                .projection_shape(layer, proj.parent(), proj.module_name())
                .context("projection")?;
            let a: Vec<f32> = (0..RANK * n_in).map(|_| next()).collect();
            let b: Vec<f32> = (0..n_out * RANK).map(|_| next()).collect();
            let device = candle_core::Device::Cpu;
            modules.insert(
                ModuleKey {
                    layer,
                    parent: proj.parent().into(),
                    module: proj.module_name().into(),
                },
                LoraModule {
                    a: candle_core::Tensor::from_vec(a, (RANK, n_in), &device)?,
                    b: candle_core::Tensor::from_vec(b, (n_out, RANK), &device)?,
                    scale: 2.0,
                },
            );
        }
    }
    let config = LoraConfig {
        r: RANK,
        lora_alpha: 2.0 * RANK as f64,
        use_rslora: false,
        target_modules: TargetModules::Names(
            Proj::ALL
                .iter()
                .map(|p| p.module_name().to_string())
                .collect(),
        ),
        rank_pattern: BTreeMap::new(),
        alpha_pattern: BTreeMap::new(),
        base_model_name_or_path: Some(engine.name().to_string()),
    };
    Ok(Adapter::new(config, modules))
}

fn request(adapter: Option<Arc<LoadedAdapter>>, prompt: &str) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.to_string(),
        suffix: None,
        max_tokens: TOKENS,
        sampling: SamplingParams::greedy(),
        n: 1,
        stop: vec![],
        top_logprobs: 0,
        context_files: vec![],
        logit_bias: vec![],
        adapter,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Decode tokens/s after the first token per adapter (or none) and round, one request of
/// each per round.
fn decode_rates(
    engine: &mut Engine,
    adapters: &[Option<Arc<LoadedAdapter>>],
) -> Result<Vec<Vec<f64>>> {
    let mut rates = vec![Vec::new(); adapters.len()];
    for rep in 0..REPS {
        for (i, adapter) in adapters.iter().enumerate() {
            // A distinct prompt each time, so the prefix cache does not shorten anything.
            let prompt = format!("# run {rep}.{i}\n{PROMPT}");
            let generation =
                engine.generate(&request(adapter.clone(), &prompt), &mut |_, _| true)?;
            let decode = generation.elapsed - generation.time_to_first_token;
            rates[i].push((generation.completion_tokens() - 1) as f64 / decode.as_secs_f64());
        }
    }
    Ok(rates)
}

/// One-token forward passes (a decode step's projections and head, no context), each
/// configuration in turn every round, `STEPS` rounds: the median ms per pass of each, and the
/// median over rounds of the base's time over each one's in the same round (a speed ratio). Rounds tens of
/// milliseconds long leave the machine's drift out of the ratios.
fn step_costs(engine: &Engine, adapters: &[Option<Arc<LoadedAdapter>>]) -> Result<Vec<(f64, f64)>> {
    const STEPS: usize = 150;
    let token = engine.tokenizer().encode_plain("def")?;
    let mut times = vec![Vec::with_capacity(STEPS); adapters.len()];
    for step in 0..=STEPS {
        for (i, adapter) in adapters.iter().enumerate() {
            let hook = adapter.as_deref().map(|a| a as &dyn LinearHook);
            let started = Instant::now();
            engine.model().forward_all(&token, hook)?;
            // The first round warms up.
            if step > 0 {
                times[i].push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Ok(times
        .iter()
        .map(|t| {
            let ratios = t.iter().zip(&times[0]).map(|(t, b)| b / t).collect();
            (median(t.clone()), median(ratios))
        })
        .collect())
}

/// The median rate, and the median over rounds of `rates[r] / base[r]`: a ratio of requests
/// minutes apart would carry the machine's drift in between.
fn rate_and_ratio(rates: &[f64], base: &[f64]) -> (f64, f64) {
    let ratios = rates.iter().zip(base).map(|(r, b)| r / b).collect();
    (median(rates.to_vec()), median(ratios))
}

struct Done(mpsc::Sender<usize>);

impl Sink for Done {
    fn send(&mut self, event: Event) -> bool {
        if let Event::Finished(result) = event {
            let _ = self.0.send(result.map_or(0, |g| g.completion_tokens()));
        }
        true
    }
}

/// Aggregate tokens/s of four concurrent requests with these adapters.
fn aggregate(
    scheduler: &Scheduler,
    adapters: &[Arc<LoadedAdapter>],
    round: &mut usize,
) -> Result<f64> {
    let mut rates = Vec::new();
    for _ in 0..REPS {
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        for (i, adapter) in adapters.iter().enumerate() {
            *round += 1;
            let prompt = format!("# client {i}, round {round}\n{PROMPT}");
            scheduler
                .submit(
                    request(Some(Arc::clone(adapter)), &prompt),
                    Box::new(Done(tx.clone())),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let tokens: usize = (0..adapters.len()).map(|_| rx.recv().unwrap_or(0)).sum();
        rates.push(tokens as f64 / started.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

// As the binaries do: large blocks on reused, huge-page memory.
#[global_allocator]
static ALLOCATOR: hexacoder_engine::alloc::HugePageAlloc = hexacoder_engine::alloc::HugePageAlloc;

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: adapter-bench MODEL.gguf")?;
    let files = ModelFiles::Gguf(path.clone().into());
    let options = LoadOptions::cpu();
    let mut engine = load::load(&files, &options)?;
    let adapter = random_adapter(&engine, 1, Saved::F16)?;
    let dir = tempfile::tempdir()?;
    adapter.save(&dir.path().join("a"))?;
    let mut load_ms = Vec::new();
    let mut prepared = None;
    for generation in 1..=5 {
        let started = Instant::now();
        let read = Adapter::load(&dir.path().join("a"), engine.model())?;
        prepared = Some(Arc::new(LoadedAdapter::new(
            "a",
            generation,
            &read,
            engine.model(),
        )?));
        load_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let prepared = prepared.context("loaded")?;
    let bytes = prepared.bytes();

    let brains = Arc::new(LoadedAdapter::new(
        "bf16",
        1,
        &random_adapter(&engine, 1, Saved::Bf16)?,
        engine.model(),
    )?);
    let floats = Arc::new(LoadedAdapter::new(
        "f32",
        1,
        &random_adapter(&engine, 1, Saved::F32)?,
        engine.model(),
    )?);
    let rates = decode_rates(
        &mut engine,
        &[
            None,
            Some(Arc::clone(&prepared)),
            Some(Arc::clone(&brains)),
            Some(Arc::clone(&floats)),
        ],
    )?;
    let steps = step_costs(
        &engine,
        &[
            None,
            Some(Arc::clone(&prepared)),
            Some(Arc::clone(&brains)),
            Some(Arc::clone(&floats)),
        ],
    )?;
    let base = median(rates[0].clone());
    let [unmerged, unmerged_bf16, unmerged_f32] =
        [1, 2, 3].map(|i| rate_and_ratio(&rates[i], &rates[0]));
    drop((brains, floats));
    let mut merged_engine = load::load(&files, &options)?;
    merged_engine.merge_adapter(&adapter, Q8Kernel::Fastest)?;
    let merged = median(decode_rates(&mut merged_engine, &[None])?.remove(0));
    drop(merged_engine);

    let others: Vec<Arc<LoadedAdapter>> = (2..=4)
        .map(|seed| -> Result<_> {
            Ok(Arc::new(LoadedAdapter::new(
                &format!("a{seed}"),
                1,
                &random_adapter(&engine, seed, Saved::F16)?,
                engine.model(),
            )?))
        })
        .collect::<Result<_>>()?;
    let scheduler = Scheduler::start(
        engine,
        SchedulerOptions {
            max_running: 8,
            max_waiting: 8,
            batch: Default::default(),
        },
    )?;
    let mut round = 0;
    let one = vec![Arc::clone(&prepared); 4];
    let mut four = vec![Arc::clone(&prepared)];
    four.extend(others);
    let same = aggregate(&scheduler, &one, &mut round)?;
    let distinct = aggregate(&scheduler, &four, &mut round)?;

    println!("| measure | value | relative |");
    println!("|---|---|---|");
    println!("| decode, base model (tokens/s) | {base:.1} | 1.00 |");
    for (values, (rate, ratio)) in [
        ("f16", unmerged),
        ("bf16", unmerged_bf16),
        ("f32", unmerged_f32),
    ] {
        println!(
            "| decode, r={RANK} adapter unmerged, {values} values (tokens/s) | {rate:.1} | {ratio:.2} |"
        );
    }
    for ((ms, ratio), what) in steps.iter().zip(["base model", "f16", "bf16", "f32"]) {
        println!(
            "| one-token forward, {}{what} (ms; alternated every pass) | {ms:.2} | {ratio:.3} |",
            if what == "base model" {
                ""
            } else {
                "adapter with "
            }
        );
    }
    println!(
        "| decode, r={RANK} adapter merged (tokens/s) | {merged:.1} | {:.2} |",
        merged / base
    );
    println!(
        "| adapter load: read, validate, prepare ({:.1} MB) (ms) | {:.0} | |",
        bytes as f64 / 1e6,
        median(load_ms)
    );
    println!("| 4 concurrent requests, one adapter (tokens/s) | {same:.1} | 1.00 |");
    println!(
        "| 4 concurrent requests, 4 distinct adapters (tokens/s) | {distinct:.1} | {:.2} |",
        distinct / same
    );
    Ok(())
}
