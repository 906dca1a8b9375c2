//! `hexacoder-train synth`: the command line over `hexacoder_trainer::synth`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hexacoder_trainer::eval::check::Compilers;
use hexacoder_trainer::eval::client::Client;
use hexacoder_trainer::eval::serve;
use hexacoder_trainer::synth::prompts::{Feedback, Hints};
use hexacoder_trainer::synth::{self, Endpoint, Settings};

use crate::eval_cli::Bars;

#[derive(Args)]
pub struct SynthArgs {
    /// The generator: an OpenAI-compatible server [default: our server, see --serve].
    #[arg(long, requires = "generator_model")]
    generator: Option<String>,
    /// The generator's model name.
    #[arg(long)]
    generator_model: Option<String>,
    /// The repairer: an OpenAI-compatible chat server [default: our server, see --serve].
    #[arg(long, requires = "repairer_model")]
    repairer: Option<String>,
    /// The repairer's model name.
    #[arg(long)]
    repairer_model: Option<String>,
    /// The model our own server runs for whichever of --generator and --repairer is not
    /// given (started for the run, stopped after).
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    serve: String,
    /// The server binary for --serve [default: beside this one, else on PATH].
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// Further arguments for the server started by --serve (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// The environment variable holding the endpoints' API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// CWEs, comma-separated (`CWE-089`, or `python/CWE-089`, `c/CWE-787`) [default: every
    /// Python CWE the embedded analyzer covers].
    #[arg(long, value_delimiter = ',')]
    cwes: Vec<String>,
    /// Samples generated per CWE.
    #[arg(long, default_value_t = 10)]
    per_cwe: usize,
    /// Few-shot examples per generation prompt.
    #[arg(long, default_value_t = 3)]
    shots: usize,
    /// How the oracle's report reaches the repairer; several run side by side.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "raw")]
    feedback: Vec<Feedback>,
    /// Where the CWE's hint comes from; several run side by side.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "curated")]
    hints: Vec<Hints>,
    /// Repairs tried per sample (each retry carries the new report).
    #[arg(long, default_value_t = 3)]
    attempts: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Analyzers of the oracle, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "embedded")]
    analyzers: Vec<String>,
    /// The shared benchmark directory (few-shot examples, hints, evaluation prompts).
    #[arg(long, default_value = "../shared/bench")]
    bench_dir: PathBuf,
    #[arg(long, default_value_t = 0.8)]
    generation_temperature: f64,
    #[arg(long, default_value_t = 384)]
    generation_max_tokens: u32,
    #[arg(long, default_value_t = 0.2)]
    repair_temperature: f64,
    #[arg(long, default_value_t = 768)]
    repair_max_tokens: u32,
    /// Pairs whose fixed code shares more than this share of tokens are duplicates.
    #[arg(long, default_value_t = 0.9)]
    dedup_threshold: f64,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Output directory: pairs.jsonl (for `hexacoder-train train --data`), samples.jsonl,
    /// repairs.jsonl, report.md.
    #[arg(long)]
    out: PathBuf,
    /// The answers cache [default: ~/.cache/hexacoder/synth/NAME/answers.jsonl, NAME being
    /// --out's last component].
    #[arg(long)]
    cache: Option<PathBuf>,
}

pub fn run(args: SynthArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: SynthArgs) -> anyhow::Result<ExitCode> {
    if args.per_cwe == 0 || args.attempts == 0 || args.concurrency == 0 || args.shots == 0 {
        bail!("--per-cwe, --attempts, --shots and --concurrency must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.dedup_threshold) {
        bail!(
            "--dedup-threshold {}: give a number from 0 to 1",
            args.dedup_threshold
        );
    }
    let shots_file = args
        .bench_dir
        .join("codelmsec/fewshot_prompt_code_pairs.json");
    let hints_file = args.bench_dir.join("hexacoder/hints.md");
    for file in [&shots_file, &hints_file] {
        if !file.exists() {
            bail!("{} is missing (--bench-dir)", file.display());
        }
    }
    let analyzers = hexacoder_trainer::scan::parse_analyzers(&args.analyzers)?;
    let oracle = hexacoder_oracle::Oracle::new(
        hexacoder_oracle::CweMap::builtin()?,
        hexacoder_oracle::ExternalOptions::default(),
    )?;
    let targets = synth::parse_targets(&oracle, &args.cwes)?;
    let cache = match &args.cache {
        Some(cache) => cache.clone(),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set; pass --cache")?;
            let name = args
                .out
                .file_name()
                .context("--out has no name; pass --cache")?;
            PathBuf::from(home)
                .join(".cache/hexacoder/synth")
                .join(name)
                .join("answers.jsonl")
        }
    };
    let api_key = std::env::var(&args.api_key_env)
        .ok()
        .filter(|k| !k.is_empty());
    let timeout = Duration::from_secs(args.request_timeout);
    let needs_server = args.generator.is_none() || args.repairer.is_none();
    let mut served = None;
    let mut served_endpoint = None;
    if needs_server {
        let binary = args
            .server_binary
            .clone()
            .unwrap_or_else(serve::default_server_binary);
        let mut server_args =
            serve::server_args(args.request_timeout, args.concurrency, &args.server_args);
        server_args.push("--no-default-adapter".into());
        let log = cache.with_file_name("server.log");
        eprintln!("starting {} serve --model {}", binary.display(), args.serve);
        let started = serve::start(
            &binary,
            &args.serve,
            &server_args,
            &log,
            Duration::from_secs(1800),
        )?;
        eprintln!("server log: {}", log.display());
        let client = Client::new(&started.base, None, timeout)?;
        let models = client.models().await?;
        let model = models
            .data
            .iter()
            .find(|m| m.parent.is_none())
            .map(|m| m.id.clone())
            .context("the server lists no base model")?;
        served_endpoint = Some(Endpoint { client, model });
        served = Some(started);
    }
    let endpoint = |url: &Option<String>, model: &Option<String>| -> anyhow::Result<Endpoint> {
        match (url, model, &served_endpoint) {
            (Some(url), Some(model), _) => Ok(Endpoint {
                client: Client::new(url, api_key.clone(), timeout)?,
                model: model.clone(),
            }),
            (None, _, Some(served)) => Ok(served.clone()),
            _ => bail!("give both the endpoint and its model"),
        }
    };
    let generator = endpoint(&args.generator, &args.generator_model)?;
    let repairer = endpoint(&args.repairer, &args.repairer_model)?;
    for (role, e) in [("generator", &generator), ("repairer", &repairer)] {
        let models = e.client.models().await?;
        if !models.data.iter().any(|m| m.id == e.model) {
            let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
            bail!(
                "the {role} endpoint {} does not serve {:?}; it serves {ids:?}",
                e.client.base(),
                e.model
            );
        }
    }
    let mut variants = Vec::new();
    for &feedback in &args.feedback {
        for &hints in &args.hints {
            if !variants.contains(&(feedback, hints)) {
                variants.push((feedback, hints));
            }
        }
    }
    let settings = Settings {
        generator,
        repairer,
        targets,
        per_cwe: args.per_cwe,
        shots: args.shots,
        generation_temperature: args.generation_temperature,
        generation_max_tokens: args.generation_max_tokens,
        repair_temperature: args.repair_temperature,
        repair_max_tokens: args.repair_max_tokens,
        variants,
        attempts: args.attempts,
        concurrency: args.concurrency,
        analyzers,
        compilers: Compilers::default(),
        shots_file,
        hints_file,
        bench_dir: args.bench_dir.clone(),
        dedup_threshold: args.dedup_threshold,
        out: args.out.clone(),
        cache: cache.clone(),
    };
    let started = Instant::now();
    let outcome = synth::run(settings, Arc::new(Bars::new("flagged or repaired"))).await?;
    drop(served);
    eprintln!(
        "{} in {:.0} s; wrote {}/pairs.jsonl, samples.jsonl, repairs.jsonl, report.md (answers cached in {})",
        synth::summary(&outcome),
        started.elapsed().as_secs_f64(),
        args.out.display(),
        cache.display()
    );
    print!("{}", outcome.report);
    Ok(ExitCode::SUCCESS)
}
