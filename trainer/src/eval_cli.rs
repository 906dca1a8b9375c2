//! `hexacoder-train eval` and `hexacoder-train report`: the command line over
//! `hexacoder_trainer::eval`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hexacoder_trainer::eval::bench::Benchmark;
use hexacoder_trainer::eval::check::Compilers;
use hexacoder_trainer::eval::client::Client;
use hexacoder_trainer::eval::report::{self, BenchmarkResults, ConfigResults, Results};
use hexacoder_trainer::eval::sandbox::{self, Limits};
use hexacoder_trainer::eval::{self, Config, Progress, Settings, serve};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Args)]
pub struct EvalArgs {
    /// An OpenAI-compatible server (`http://host:port`, with or without `/v1`).
    #[arg(long, conflicts_with = "serve", required_unless_present = "serve")]
    endpoint: Option<String>,
    /// The base model's name at the endpoint [default with --serve: what the server serves].
    #[arg(long)]
    model: Option<String>,
    /// The environment variable holding the endpoint's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// Start our server on this model (catalogue id or path) for the run, and stop it after.
    #[arg(long)]
    serve: Option<String>,
    /// With --serve: an adapter to load, NAME=PATH (its NAME is the adapter evaluated);
    /// without --serve: the adapter's NAME at the endpoint. With --serve and no --adapter,
    /// the shipped HexaCoder adapter for the model, when there is one.
    #[arg(long, value_name = "NAME[=PATH]")]
    adapter: Option<String>,
    /// The server binary for --serve [default: beside this one, else on PATH].
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// Further arguments for the server started by --serve (repeatable), e.g.
    /// --server-arg=--max-concurrent=4.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Benchmarks, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "codelmsec")]
    benchmark: Vec<Benchmark>,
    /// A JSONL of {id, language, cwe, prompt} evaluated as CodeLMSec is (implies `custom`).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// The shared benchmark directory.
    #[arg(long, default_value = "../shared/bench")]
    bench_dir: PathBuf,
    /// Samples per prompt of the security benchmarks [default: the paper's: 5 CodeLMSec and
    /// custom prompts, 15 Pearce].
    #[arg(long)]
    samples: Option<usize>,
    /// HumanEval: samples per problem of the T=0.8 pass for pass@10 (1: only the greedy pass
    /// for pass@1).
    #[arg(long, default_value_t = 20)]
    humaneval_samples: usize,
    /// New tokens per sample [default: 200; HumanEval 384].
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Two-step: tokens of --max-tokens step 1 (imports) may spend.
    #[arg(long, default_value_t = 20)]
    first_step_tokens: u32,
    /// Sampling temperature [default: 0.4; HumanEval's sampled pass 0.8].
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling.
    #[arg(long)]
    top_p: Option<f64>,
    /// Base of the requests' seeds.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Configurations, comma-separated: base, base+two-step, adapter, adapter+two-step, each
    /// optionally +verify; `all` for the whole matrix [default: from --two-step and
    /// --verify, for base, and for the adapter when there is one].
    #[arg(long, value_delimiter = ',')]
    configs: Vec<String>,
    /// Two-step generation, when --configs is not given.
    #[arg(long, value_enum)]
    two_step: Option<OnOff>,
    /// Verify mode, when --configs is not given.
    #[arg(long, value_enum)]
    verify: Option<OnOff>,
    /// Verify mode's candidates per sample.
    #[arg(long, default_value_t = 4)]
    candidates: u32,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// A fixed, seeded, CWE-stratified subset of this many prompts.
    #[arg(long)]
    subset: Option<usize>,
    /// The subset's seed.
    #[arg(long, default_value_t = 0)]
    subset_seed: u64,
    /// Analyzers of the oracle, comma-separated (embedded, semgrep, bandit, cppcheck,
    /// flawfinder, gcc, codeql, all).
    #[arg(long, value_delimiter = ',', default_value = "embedded")]
    analyzers: Vec<String>,
    /// Stop generation early where the function cut-off would cut anyway (Python at the
    /// top level). Changes no sample; saves tokens.
    #[arg(long, value_enum, default_value = "on")]
    early_stop: OnOff,
    /// Seconds one request may take (with `--serve`, the server's limit too).
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// HumanEval: seconds one sample's tests may take.
    #[arg(long, default_value_t = 10)]
    test_timeout: u64,
    /// HumanEval: the interpreter samples run with [default: /usr/bin/python3, else python3].
    #[arg(long)]
    python: Option<PathBuf>,
    /// Results directory: results.json, report.md, plots.
    #[arg(long)]
    out: PathBuf,
    /// The sample cache (JSONL) [default: ~/.cache/hexacoder/eval/NAME/samples.jsonl, NAME
    /// being --out's last component].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Generate nothing: write the report from what the cache holds (no endpoint needed;
    /// samples not generated yet are counted as such).
    #[arg(long)]
    report_only: bool,
    /// Check the cached CodeLMSec, Pearce and own-prompt samples again with this build's
    /// oracle and compilers before reporting (the cache keeps the verdicts of the build that
    /// generated each sample: use this after the oracle's rules change).
    #[arg(long)]
    recheck: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let benchmarks: Vec<Benchmark> = match &args.prompts {
        Some(_) => vec![Benchmark::Custom],
        None => args.benchmark.clone(),
    };
    if args.benchmark.contains(&Benchmark::Custom) && args.prompts.is_none() {
        bail!("--benchmark custom needs --prompts FILE");
    }
    if args.concurrency == 0 {
        bail!("--concurrency 0: give at least 1");
    }
    if let Some(t) = args.temperature
        && !(t.is_finite() && t >= 0.0)
    {
        bail!("--temperature {t}: give a number of 0 or more");
    }
    let analyzers = hexacoder_trainer::scan::parse_analyzers(&args.analyzers)?;
    // Check every benchmark file before starting anything.
    let mut files = Vec::new();
    for &benchmark in &benchmarks {
        let path = match (&args.prompts, benchmark.default_path(&args.bench_dir)) {
            (Some(path), _) => path.clone(),
            (None, Some(path)) => path,
            (None, None) => bail!("--benchmark custom needs --prompts FILE"),
        };
        eval::bench::load(benchmark, &path)?;
        files.push((benchmark, path));
    }

    // The endpoint: given, or our server started for the run.
    let (adapter_name, adapter_path) = match &args.adapter {
        Some(spec) => match spec.split_once('=') {
            Some((name, path)) => (Some(name.to_string()), Some(path.to_string())),
            None => (Some(spec.clone()), None),
        },
        None => (None, None),
    };
    let mut served = None;
    let base = match (&args.endpoint, &args.serve) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(_)) if args.report_only => String::new(),
        (None, Some(model)) => {
            let binary = args
                .server_binary
                .clone()
                .unwrap_or_else(serve::default_server_binary);
            let mut server_args =
                serve::server_args(args.request_timeout, args.concurrency, &args.server_args);
            if let (Some(name), Some(path)) = (&adapter_name, &adapter_path) {
                server_args.push(format!("--adapter={name}={path}"));
            }
            eprintln!("starting {} serve --model {model}", binary.display());
            let log = cache_path(&args)?.with_file_name("server.log");
            let started = serve::start(
                &binary,
                model,
                &server_args,
                &log,
                Duration::from_secs(1800),
            )?;
            eprintln!("server log: {}", log.display());
            let base = started.base.clone();
            served = Some(started);
            base
        }
        (None, None) => bail!("give --endpoint URL or --serve MODEL"),
    };
    let api_key = std::env::var(&args.api_key_env)
        .ok()
        .filter(|k| !k.is_empty());
    let client = Client::new(&base, api_key, Duration::from_secs(args.request_timeout))?;
    let models = if args.report_only {
        hexacoder_api::ModelList {
            object: None,
            data: Vec::new(),
        }
    } else {
        client.models().await?
    };
    let model = match (&args.model, &served) {
        (Some(model), _) => model.clone(),
        // Our server names a catalogue model by its id.
        (None, None) if args.report_only && args.serve.is_some() => {
            args.serve.clone().unwrap_or_default()
        }
        // Our server lists its base model first, then its adapters (with a parent).
        (None, Some(_)) => models
            .data
            .iter()
            .find(|m| m.parent.is_none())
            .map(|m| m.id.clone())
            .context("the server lists no base model")?,
        (None, None) => bail!("give --model NAME (the endpoint's name for the base model)"),
    };
    let adapter = adapter_name.or_else(|| {
        // --serve without --adapter: the shipped adapter the server loaded, if any.
        if args.report_only {
            let model = args.serve.as_deref()?;
            return hexacoder_catalog::trained_adapter_for(model)
                .map(|_| hexacoder_catalog::SECURE_ADAPTER_NAME.to_string());
        }
        served.as_ref()?;
        models
            .data
            .iter()
            .find(|m| m.parent.is_some())
            .map(|m| m.id.clone())
    });
    let configs = parse_configs(&args, adapter.is_some())?;
    let out = args.out.clone();
    let cache = cache_path(&args)?;
    let helper = std::env::current_exe().context("finding this binary for the sandbox")?;
    let commit = eval::current_commit();
    // A served run's port changes each time; its report names the model instead.
    let endpoint_label = match &args.serve {
        Some(model) => format!("hexacoder-server serve --model {model} (started for the run)"),
        None => base.clone(),
    };
    let progress: Arc<dyn Progress> = Arc::new(Bars::new("vulnerable or passing"));
    let mut results = Results {
        benchmarks: Vec::new(),
    };
    for (benchmark, path) in files {
        let humaneval = benchmark == Benchmark::Humaneval;
        let settings = Settings {
            benchmark,
            prompts: path.clone(),
            subset: args.subset,
            subset_seed: args.subset_seed,
            samples: if humaneval {
                args.humaneval_samples
            } else {
                args.samples.unwrap_or_else(|| benchmark.default_samples())
            },
            max_tokens: args.max_tokens.unwrap_or(if humaneval { 384 } else { 200 }),
            first_step_tokens: args.first_step_tokens,
            temperature: args
                .temperature
                .unwrap_or(if humaneval { 0.8 } else { 0.4 }),
            top_p: args.top_p,
            seed: args.seed,
            configs: configs.clone(),
            model: model.clone(),
            adapter: adapter.clone(),
            candidates: args.candidates,
            concurrency: args.concurrency,
            analyzers: analyzers.clone(),
            early_stop: args.early_stop == OnOff::On,
            request_timeout: Duration::from_secs(args.request_timeout),
            sandbox: Limits {
                wall: Duration::from_secs(args.test_timeout),
                cpu_seconds: args.test_timeout,
                ..Limits::default()
            },
            python: args.python.clone().unwrap_or_else(sandbox::default_python),
            helper: helper.clone(),
            compilers: Compilers::default(),
            out: out.clone(),
            cache: cache.clone(),
            commit: commit.clone(),
            report_only: args.report_only,
            recheck: args.recheck,
        };
        let preflight = if args.report_only {
            eval::Preflight { isolation: None }
        } else {
            eval::preflight(&settings, &client).await?
        };
        if let Some(isolation) = &preflight.isolation {
            for gap in isolation.gaps() {
                eprintln!("warning: sandbox: {gap}");
            }
        }
        let tasks = eval::load_tasks(&settings)?;
        eprintln!(
            "{}: {} prompts × {} samples, configurations {}; cache {}",
            benchmark.name(),
            tasks.len(),
            settings.samples,
            configs
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(", "),
            cache.display()
        );
        let started = Instant::now();
        let tasks_count = tasks.len();
        let settings = Arc::new(settings);
        let records = eval::run(settings.clone(), client.clone(), tasks, progress.clone()).await?;
        let mut configs_results = Vec::new();
        let expected = eval::expected_samples(&settings, tasks_count);
        for (_, (config, recs)) in eval::by_config(&records, &settings.configs) {
            let mut summary = report::summarize(&recs);
            summary.missing_samples = expected.saturating_sub(summary.samples + summary.errors);
            configs_results.push(ConfigResults {
                config: config.name(),
                summary,
            });
        }
        results.benchmarks.push(BenchmarkResults {
            benchmark,
            prompts_file: path,
            model: model.clone(),
            adapter: adapter.clone(),
            endpoint: endpoint_label.clone(),
            samples_per_prompt: settings.samples,
            temperature: settings.temperature,
            max_tokens: settings.max_tokens,
            first_step_tokens: settings.first_step_tokens,
            seed: settings.seed,
            subset: settings.subset,
            analyzers: settings
                .analyzers
                .iter()
                .map(|a| a.name().to_string())
                .collect(),
            commit: commit.clone(),
            rechecked: args.recheck,
            wall_seconds: started.elapsed().as_secs_f64(),
            configs: configs_results,
            sandbox: preflight.isolation,
        });
        // Written after every benchmark, so a later failure keeps what is done.
        report::write(&out, &results)?;
    }
    drop(served);
    let written = report::write(&out, &results)?;
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    print!("{}", report::markdown(&results));
    Ok(ExitCode::SUCCESS)
}

fn cache_path(args: &EvalArgs) -> anyhow::Result<PathBuf> {
    match &args.cache {
        Some(cache) => Ok(cache.clone()),
        None => eval::default_cache(&args.out)
            .context("no default cache (HOME unset or --out has no name); pass --cache"),
    }
}

fn parse_configs(args: &EvalArgs, has_adapter: bool) -> anyhow::Result<Vec<Config>> {
    let configs = if args.configs.iter().any(|c| c == "all") {
        Config::matrix()
    } else if !args.configs.is_empty() {
        if args.two_step.is_some() || args.verify.is_some() {
            bail!("--configs names the configurations; leave --two-step and --verify out");
        }
        let mut configs = Vec::new();
        for text in &args.configs {
            let config = Config::parse(text)?;
            if !configs.contains(&config) {
                configs.push(config);
            }
        }
        configs
    } else {
        let two_step = args.two_step == Some(OnOff::On);
        let verify = args.verify == Some(OnOff::On);
        let mut configs = vec![Config {
            adapter: false,
            two_step,
            verify,
        }];
        if has_adapter {
            configs.push(Config {
                adapter: true,
                two_step,
                verify,
            });
        }
        configs
    };
    if configs.iter().any(|c| c.adapter) && !has_adapter {
        bail!(
            "an adapter configuration needs --adapter (or --serve on a model with a shipped adapter)"
        );
    }
    Ok(configs)
}

pub fn compare(a: &Path, b: &Path, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let ra = Results::read(a)?;
    let rb = Results::read(b)?;
    let text = report::compare(&ra, &rb, &a.display().to_string(), &b.display().to_string());
    match out {
        Some(path) => {
            hexacoder_trainer::train::checkpoint::write_atomic(path, text.as_bytes())?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A bar per configuration on a terminal; a line every tenth of the way otherwise.
pub struct Bars {
    /// What the running rate counts.
    what: &'static str,
    terminal: bool,
    multi: indicatif::MultiProgress,
    bars: Mutex<std::collections::HashMap<String, (indicatif::ProgressBar, usize)>>,
}

impl Bars {
    pub fn new(what: &'static str) -> Self {
        Bars {
            what,
            terminal: std::io::stderr().is_terminal(),
            multi: indicatif::MultiProgress::new(),
            bars: Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl Progress for Bars {
    fn start(&self, config: &str, total: usize, done: usize) {
        let bar = self.multi.add(indicatif::ProgressBar::new(total as u64));
        if !self.terminal {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            eprintln!("{config}: {done}/{total} samples cached");
        }
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>24} {bar:30} {pos}/{len}  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(config.to_string());
        bar.set_position(done as u64);
        bar.reset_eta();
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.insert(config.to_string(), (bar, total / 10));
    }

    fn advance(&self, config: &str, hits: usize, scored: usize, errors: usize) {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        let Some((bar, step)) = bars.get(config) else {
            return;
        };
        bar.inc(1);
        let rate = if scored > 0 {
            100.0 * hits as f64 / scored as f64
        } else {
            0.0
        };
        bar.set_message(format!("{} {rate:.1}%  errors {errors}", self.what));
        if !self.terminal && (*step == 0 || bar.position() % (*step as u64) == 0) {
            eprintln!(
                "{config}: {}/{} done, {} {rate:.1}%, errors {errors}, ETA {:?}",
                bar.position(),
                bar.length().unwrap_or(0),
                self.what,
                bar.eta()
            );
        }
    }

    fn finish(&self, config: &str) {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((bar, _)) = bars.get(config) {
            bar.finish();
            if !self.terminal {
                eprintln!("{config}: done");
            }
        }
    }
}
