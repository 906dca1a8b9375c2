//! Run with: `cargo run --release -p hexacoder-benches --bin two-step-bench -- MODEL.gguf PROMPTS.jsonl [--every K] [--no-reuse-every K]`
//!
//! Two-step generation against one-step generation on the same prompts at the same total
//! tokens (greedy, end of text banned so both produce exactly `--tokens`), each from a cold
//! prefix cache, alternating which goes first. On every `--no-reuse-every`-th prompt it also
//! runs two-step with the cache cleared between the steps, to show what the KV reuse saves.
//! Prints a Markdown section for `benches/RESULTS.md` and, with `--json FILE`, the raw rows.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions};
use hexacoder_engine::{Engine, GenerateRequest, SamplingParams};
use hexacoder_two_step::{Language, TwoStepOptions, TwoStepPlan};
use serde_json::{Value, json};

struct Args {
    model: String,
    prompts: String,
    every: usize,
    no_reuse_every: usize,
    tokens: usize,
    json: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut parsed = Args {
        model: String::new(),
        prompts: String::new(),
        every: 1,
        no_reuse_every: 5,
        tokens: 200,
        json: None,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--every" => parsed.every = value("--every")?.parse().context("--every")?,
            "--no-reuse-every" => {
                parsed.no_reuse_every = value("--no-reuse-every")?
                    .parse()
                    .context("--no-reuse-every")?
            }
            "--tokens" => parsed.tokens = value("--tokens")?.parse().context("--tokens")?,
            "--json" => parsed.json = Some(value("--json")?),
            other if other.starts_with("--") => bail!("unknown option {other}"),
            other => positional.push(other.to_string()),
        }
    }
    let [model, prompts] = positional.as_slice() else {
        bail!(
            "usage: two-step-bench MODEL.gguf PROMPTS.jsonl [--every K] [--no-reuse-every K] [--tokens N] [--json FILE]"
        );
    };
    parsed.model = model.clone();
    parsed.prompts = prompts.clone();
    anyhow::ensure!(
        parsed.every >= 1 && parsed.no_reuse_every >= 1,
        "--every and --no-reuse-every must be at least 1"
    );
    Ok(parsed)
}

fn request(prompt: &str, tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.to_string(),
        max_tokens: tokens,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    }
}

fn one_step(engine: &mut Engine, prompt: &str, tokens: usize) -> Result<f64> {
    engine.clear_prefix_cache();
    let started = Instant::now();
    let generation = engine.generate(&request(prompt, tokens), &mut |_, _| true)?;
    anyhow::ensure!(
        generation.completion_tokens() == tokens,
        "one step made {} tokens",
        generation.completion_tokens()
    );
    Ok(started.elapsed().as_secs_f64())
}

struct TwoStepRow {
    seconds: f64,
    first_step_tokens: usize,
    first_prompt_tokens: usize,
    second_prompt_tokens: usize,
    second_cached_tokens: usize,
    added: usize,
}

fn two_step(engine: &mut Engine, plan: &TwoStepPlan, reuse: bool) -> Result<TwoStepRow> {
    engine.clear_prefix_cache();
    let started = Instant::now();
    let first = match plan.first_step() {
        Some(request) => Some(engine.generate(&request, &mut |_, _| true)?),
        None => None,
    };
    if !reuse {
        engine.clear_prefix_cache();
    }
    let mut row = TwoStepRow {
        seconds: 0.0,
        first_step_tokens: first.as_ref().map_or(0, |g| g.completion_tokens()),
        first_prompt_tokens: first.as_ref().map_or(0, |g| g.prompt_tokens.len()),
        second_prompt_tokens: 0,
        second_cached_tokens: 0,
        added: 0,
    };
    let mut total = row.first_step_tokens;
    for step in plan.second_step(first.as_ref()) {
        let generation = engine.generate(&step.request, &mut |_, _| true)?;
        total += generation.completion_tokens();
        row.second_prompt_tokens += generation.prompt_tokens.len();
        row.second_cached_tokens += generation.cached_prompt_tokens;
        row.added += plan.finish(&step, &generation.samples[0].text).added.len();
    }
    row.seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        total == plan.request().max_tokens,
        "two steps made {total} tokens"
    );
    Ok(row)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

// As the binaries do: large blocks on reused, huge-page memory.
#[global_allocator]
static ALLOCATOR: hexacoder_engine::alloc::HugePageAlloc = hexacoder_engine::alloc::HugePageAlloc;

fn main() -> Result<()> {
    let args = parse_args()?;
    let text = std::fs::read_to_string(&args.prompts)
        .with_context(|| format!("reading {}", args.prompts))?;
    let mut prompts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line)?;
        let language = row["language"]
            .as_str()
            .and_then(Language::from_name)
            .context("language")?;
        let prompt = row["prompt"].as_str().context("prompt")?.to_string();
        prompts.push((language, prompt));
    }
    let mut engine = load::load(
        &ModelFiles::Gguf(args.model.clone().into()),
        &LoadOptions::cpu(),
    )?;
    engine.generate(&request("import os\n", 8), &mut |_, _| true)?;

    let mut rows = Vec::new();
    for (index, (language, prompt)) in prompts.iter().enumerate() {
        if index % args.every != 0 {
            continue;
        }
        let plan = TwoStepPlan::new(
            engine.tokenizer(),
            *language,
            request(prompt, args.tokens),
            TwoStepOptions::default(),
        );
        let (one, two) = if index % 2 == 0 {
            let one = one_step(&mut engine, prompt, args.tokens)?;
            (one, two_step(&mut engine, &plan, true)?)
        } else {
            let two = two_step(&mut engine, &plan, true)?;
            (one_step(&mut engine, prompt, args.tokens)?, two)
        };
        let without_reuse = if index % args.no_reuse_every == 0 {
            Some(two_step(&mut engine, &plan, false)?.seconds)
        } else {
            None
        };
        eprintln!(
            "{index:>3} one {one:.2}s two {:.2}s (step 1 {} tok, step 2 reused {}/{} prompt tok, {} import(s)){}",
            two.seconds,
            two.first_step_tokens,
            two.second_cached_tokens,
            two.second_prompt_tokens,
            two.added,
            without_reuse.map_or(String::new(), |s| format!(", without reuse {s:.2}s")),
        );
        rows.push(json!({
            "index": index, "language": format!("{language:?}"), "one_step_s": one, "two_step_s": two.seconds,
            "two_step_without_reuse_s": without_reuse, "first_step_tokens": two.first_step_tokens,
            "first_prompt_tokens": two.first_prompt_tokens, "second_prompt_tokens": two.second_prompt_tokens,
            "second_cached_tokens": two.second_cached_tokens, "added_imports": two.added,
        }));
    }
    if let Some(path) = &args.json {
        let staged = format!("{path}.tmp");
        std::fs::write(&staged, serde_json::to_string_pretty(&rows)?)?;
        std::fs::rename(&staged, path)?;
    }
    let column = |key: &str| -> Vec<f64> { rows.iter().filter_map(|r| r[key].as_f64()).collect() };
    let (one, two) = (column("one_step_s"), column("two_step_s"));
    let ratios: Vec<f64> = one.iter().zip(&two).map(|(o, t)| t / o).collect();
    let sum = |key: &str| -> f64 { column(key).iter().sum() };
    let paired: Vec<&Value> = rows
        .iter()
        .filter(|r| r["two_step_without_reuse_s"].is_f64())
        .collect();
    let paired_column =
        |key: &str| -> Vec<f64> { paired.iter().filter_map(|r| r[key].as_f64()).collect() };
    let (reuse, no_reuse) = (
        paired_column("two_step_s"),
        paired_column("two_step_without_reuse_s"),
    );
    println!("| measure | one-step | two-step | two / one |");
    println!("|---|---|---|---|");
    for (label, p) in [("median latency (s)", 50.0), ("p95 latency (s)", 95.0)] {
        let (a, b) = (percentile(&one, p), percentile(&two, p));
        println!("| {label} | {a:.2} | {b:.2} | {:.3} |", b / a);
    }
    println!(
        "| median of per-prompt ratios | | | {:.3} |",
        percentile(&ratios, 50.0)
    );
    println!(
        "| p95 of per-prompt ratios | | | {:.3} |",
        percentile(&ratios, 95.0)
    );
    println!();
    println!(
        "Prompts: {}. Step 1 generated {:.1} tokens on median and stopped early (before its 20) on {} prompts; {} prompts kept at least one new import.",
        rows.len(),
        percentile(&column("first_step_tokens"), 50.0),
        rows.iter()
            .filter(|r| r["first_step_tokens"].as_u64().is_some_and(|t| t < 20))
            .count(),
        rows.iter()
            .filter(|r| r["added_imports"].as_u64().is_some_and(|a| a > 0))
            .count(),
    );
    println!(
        "Prefill: step 2's prompts held {:.0} tokens, of which {:.0} ({:.1}%) came from step 1's KV state instead of being prefilled again.",
        sum("second_prompt_tokens"),
        sum("second_cached_tokens"),
        100.0 * sum("second_cached_tokens") / sum("second_prompt_tokens"),
    );
    println!(
        "Without the reuse (prefix cache cleared between the steps, {} prompts): median two-step latency {:.2} s against {:.2} s with it ({:.3}x).",
        paired.len(),
        percentile(&no_reuse, 50.0),
        percentile(&reuse, 50.0),
        percentile(&no_reuse, 50.0) / percentile(&reuse, 50.0),
    );
    Ok(())
}
