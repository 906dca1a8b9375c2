//! `hexacoder-server generate`.

use std::io::{Read, Write};

use anyhow::{Context, Result};
use hexacoder_engine::{GenerateRequest, SamplingParams};
use hexacoder_two_step::{ImportsOutcome, Language, TwoStepOptions, TwoStepPlan};
use serde_json::{Value, json};

use crate::cli::GenerateArgs;
use crate::model_source;

/// Runs one request and prints it.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let prompt = if args.prompt == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the prompt from stdin")?;
        text
    } else {
        args.prompt.clone()
    };
    let request = GenerateRequest {
        prompt,
        suffix: args.suffix.clone(),
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: args.seed,
        },
        n: args.n,
        stop: args.stop.clone(),
        top_logprobs: args.logprobs,
        context_files: vec![],
        logit_bias: vec![],
        adapter: None,
        ignore_eos: false,
        ..Default::default()
    };
    // Bad sampling values are reported before the model is fetched or loaded.
    request.sampling.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(request.n >= 1, "--n must be at least 1, got {}", request.n);
    let language = match &args.language {
        Some(name) => Some(Language::from_name(name).with_context(|| {
            format!("--language {name:?} is not one of python, c, cpp, javascript, typescript, tsx, go, java, rust (or their extensions)")
        })?),
        None => None,
    };
    let mut engine = model_source::load_engine(&args.model)?;
    let stream = !args.json;
    let mut stdout = std::io::stdout().lock();
    let mut last_sample = 0;
    let mut on_delta = |sample: usize, delta: &str| {
        if !stream {
            return true;
        }
        if sample != last_sample {
            let _ = writeln!(stdout, "\n--- sample {sample} ---");
            last_sample = sample;
        }
        // A closed stdout (`| head`) cancels generation.
        write!(stdout, "{delta}")
            .and_then(|_| stdout.flush())
            .is_ok()
    };
    let (generation, imports) = if args.two_step {
        let language = language
            .or_else(|| Language::detect(&request.prompt))
            .context("two-step generation needs the prompt's language: it has no imports to tell it by; pass --language")?;
        let options = TwoStepOptions {
            first_step_tokens: args.first_step_tokens,
            ..TwoStepOptions::default()
        };
        let plan = TwoStepPlan::new(engine.tokenizer(), language, request, options);
        let result = hexacoder_two_step::generate(&mut engine, &plan, &mut on_delta)?;
        let mut generation = result
            .second
            .first()
            .cloned()
            .context("two-step generation produced nothing")?;
        generation.samples = result.samples.iter().map(|s| s.sample.clone()).collect();
        let imports: Vec<ImportsOutcome> = result.samples.into_iter().map(|s| s.imports).collect();
        (generation, Some(imports))
    } else {
        (engine.generate(&request, &mut on_delta)?, None)
    };
    if stream {
        writeln!(stdout)?;
        for (sample, outcome) in imports.iter().flatten().enumerate() {
            for statement in &outcome.added {
                eprintln!("sample {sample}: added `{statement}`");
            }
            for statement in &outcome.pruned {
                eprintln!("sample {sample}: pruned unused `{statement}`");
            }
        }
    } else {
        let tokenizer = engine.tokenizer();
        let token_text = |id: u32| String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned();
        let samples: Vec<_> = generation
            .samples
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let imports = imports.as_ref().and_then(|all| all.get(index)).map(imports_json);
                json!({
                    "text": s.text,
                    "imports": imports,
                    "finish_reason": format!("{:?}", s.finish_reason),
                    "cumulative_logprob": s.cumulative_logprob,
                    "tokens": s.tokens.iter().map(|t| json!({
                        "id": t.id,
                        "text": token_text(t.id),
                        "logprob": t.logprob,
                        "top": t.top.iter().map(|(id, lp)| json!({"id": id, "text": token_text(*id), "logprob": lp})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc = json!({
            "model": engine.name(),
            "prompt_tokens": generation.prompt_tokens.len(),
            "cached_prompt_tokens": generation.cached_prompt_tokens,
            "completion_tokens": generation.completion_tokens(),
            "time_to_first_token_ms": generation.time_to_first_token.as_secs_f64() * 1e3,
            "elapsed_ms": generation.elapsed.as_secs_f64() * 1e3,
            "samples": samples,
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&doc)?)?;
    }
    tracing::info!(
        prompt_tokens = generation.prompt_tokens.len(),
        completion_tokens = generation.completion_tokens(),
        ttft_ms = generation.time_to_first_token.as_millis() as u64,
        elapsed_ms = generation.elapsed.as_millis() as u64,
        "done"
    );
    Ok(())
}

fn imports_json(outcome: &ImportsOutcome) -> Value {
    json!({
        "added": outcome.added,
        "pruned": outcome.pruned,
        "prompt": outcome.prompt,
    })
}
