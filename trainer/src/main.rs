//! `hexacoder-train`: a thin CLI over the trainer library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use clap::{Args, Parser, Subcommand};
use hexacoder_adapters::WeightDtype;
use hexacoder_oracle::{ExternalOptions, RunStatus};
use hexacoder_trainer::scan::{self, Format, ScanSettings};
use hexacoder_trainer::train::model::LoraSettings;
use hexacoder_trainer::train::optim::AdamWSettings;
use hexacoder_trainer::train::{self, Progress, Settings, Trainer};

#[derive(Parser)]
#[command(
    version,
    about = "HexaCoder's companion tool: the security oracle, synthesis, training and evaluation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find weaknesses (CWEs) in source files. Exit status: 0 every file clean, 1 a file
    /// vulnerable, 2 an error or a file some chosen analyzer could not analyze.
    Scan {
        /// Files or directories (walked, honouring .gitignore).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Comma-separated analyzers: embedded, semgrep, bandit, cppcheck, flawfinder, gcc,
        /// codeql, or all.
        #[arg(long, value_delimiter = ',', default_value = "embedded")]
        analyzers: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The rules directory semgrep runs (required with semgrep).
        #[arg(long, env = "HEXACODER_SEMGREP_RULES")]
        semgrep_rules: Option<PathBuf>,
        /// Seconds each external analyzer may take.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
        /// flawfinder's minimum risk level (0-5).
        #[arg(long, default_value_t = 3)]
        flawfinder_min_level: u8,
        /// bandit's minimum severity (all, low, medium, high).
        #[arg(long, default_value = "medium")]
        bandit_severity: String,
        /// A CWE table (TOML, the shape of oracle/data/cwe-map.toml) replacing the built-in one.
        #[arg(long)]
        cwe_map: Option<PathBuf>,
        /// Comma-separated CWEs that make a file vulnerable (default: any CWE).
        #[arg(long, value_delimiter = ',')]
        cwes: Vec<String>,
        /// Comma-separated CWEs reported apart in the verdicts.
        #[arg(long, value_delimiter = ',')]
        target_cwes: Vec<String>,
        /// An analyzer's program, when it is not on PATH: NAME=PATH (repeatable), e.g.
        /// semgrep=/opt/venv/bin/semgrep.
        #[arg(long = "program", value_name = "NAME=PATH")]
        programs: Vec<String>,
    },
    /// Train a LoRA adapter with HexaCoder's masked loss (only the tokens a fix changed carry
    /// loss) and write it as a PEFT directory the server serves.
    Train(TrainArgs),
    /// Count vulnerable completions (CodeLMSec, Pearce, your prompts) and correct ones
    /// (HumanEval) of any OpenAI-compatible endpoint, per configuration; resumable.
    Eval(Box<eval_cli::EvalArgs>),
    /// Synthesize (vulnerable, fixed) training pairs: generate vulnerable code per CWE, confirm
    /// it with the oracle, repair it from the oracle's report and a hint, re-check; resumable.
    Synth(Box<synth_cli::SynthArgs>),
    /// Compare two evaluation runs (directories with results.json) side by side.
    Report {
        /// The first run (the reference).
        a: PathBuf,
        /// The second run.
        b: PathBuf,
        /// Write the comparison here instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

mod eval_cli;
mod synth_cli;

#[derive(Args)]
struct TrainArgs {
    /// Base model: a catalogue id (fetched once) or a GGUF file / HF directory.
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    model: String,
    /// Training data, JSONL: `{"text", "changes"}` rows (the shared HexaCoder set) or
    /// `{"vulnerable", "fixed", "language", "cwe"}` pairs. Repeatable.
    #[arg(long = "data", required_unless_present = "resume")]
    data: Vec<PathBuf>,
    /// Where the adapter is written (PEFT: adapter_config.json, adapter_model.safetensors).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Checkpoints, metrics and the best adapter [default: ~/.cache/hexacoder/runs/NAME, NAME
    /// being --out's last component].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the run in this run directory from its last checkpoint, with its settings
    /// (--max-steps and --epochs may extend it).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Dropout on the LoRA branch's input.
    #[arg(long, default_value_t = 0.05)]
    dropout: f64,
    /// Scale by alpha/sqrt(r) instead of alpha/r.
    #[arg(long)]
    rslora: bool,
    /// Projections to adapt: q, k, v, o, gate, up, down (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o")]
    target_modules: Vec<String>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Rows per optimizer step (gradients are accumulated over them).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Passes over the training rows.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Longest row in tokens; longer rows keep a window around their changes.
    #[arg(long, default_value_t = 512)]
    max_seq_len: usize,
    /// Share of rows held out for validation.
    #[arg(long, default_value_t = 0.1)]
    validation_fraction: f64,
    /// Share of the steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.03)]
    warmup_ratio: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Seed of the split, data order, initialization and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint every N steps (and at each epoch's end).
    #[arg(long, default_value_t = 10)]
    checkpoint_every: usize,
    /// Validation loss every N steps (and at each epoch's end).
    #[arg(long, default_value_t = 20)]
    eval_every: usize,
    /// The shared benchmarks directory: training rows overlapping its evaluation prompts
    /// (CodeLMSec, Pearce, HumanEval) are dropped [default: ../shared/bench when it exists].
    #[arg(long, env = "HEXACODER_BENCHMARKS")]
    benchmarks: Option<PathBuf>,
    /// Keep rows that overlap the evaluation prompts.
    #[arg(long, conflicts_with = "benchmarks")]
    no_overlap_filter: bool,
    /// Device: cpu or cuda:N (needs a build with --features cuda).
    #[arg(long, env = "HEXACODER_DEVICE", default_value = "cpu")]
    device: String,
    /// How the adapter's weights are stored: f16 (half the bytes, and the server's faster
    /// f16 side branch) or f32 (exactly as trained).
    #[arg(long, default_value = "f16")]
    save_dtype: WeightDtype,
    /// Refuse to start when the run would need more memory than this many GiB
    /// [default: what the machine has available].
    #[arg(long)]
    memory_limit_gib: Option<f64>,
}

fn train_command(args: TrainArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let mut log = std::io::stderr();
    let (run_dir, settings, resume) = match &args.resume {
        Some(run_dir) => {
            let saved = train::checkpoint::read_settings(run_dir)?;
            let settings = Settings {
                max_steps: args.max_steps,
                epochs: args.epochs,
                ..saved
            };
            (run_dir.clone(), settings, true)
        }
        None => {
            let out = args.out.clone().context("--out is required")?;
            let (model, model_name) = hexacoder_trainer::model_source::resolve(&args.model)?;
            let benchmarks = if args.no_overlap_filter {
                None
            } else {
                match &args.benchmarks {
                    Some(dir) if !dir.is_dir() => {
                        anyhow::bail!("--benchmarks {}: no such directory", dir.display())
                    }
                    Some(dir) => Some(dir.clone()),
                    None => Some(PathBuf::from("../shared/bench")).filter(|d| d.is_dir()),
                }
            };
            if benchmarks.is_none() && !args.no_overlap_filter {
                anyhow::bail!(
                    "no benchmarks to check for overlap: pass --benchmarks DIR (the shared bench \
                     directory) or --no-overlap-filter"
                );
            }
            let name = out
                .file_name()
                .map_or("adapter".into(), |n| n.to_string_lossy().into_owned());
            let run_dir = match &args.run_dir {
                Some(dir) => dir.clone(),
                None => dirs_cache()?.join("runs").join(name),
            };
            let settings = Settings {
                model,
                model_name,
                data: args.data.clone(),
                out,
                lora: LoraSettings {
                    rank: args.rank,
                    alpha: args.alpha,
                    dropout: args.dropout,
                    rslora: args.rslora,
                    target_modules: args.target_modules.clone(),
                },
                optim: AdamWSettings {
                    lr: args.lr,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: args.weight_decay,
                },
                epochs: args.epochs,
                max_steps: args.max_steps,
                batch_size: args.batch_size,
                max_seq_len: args.max_seq_len,
                validation_fraction: args.validation_fraction,
                seed: args.seed,
                warmup_ratio: args.warmup_ratio,
                max_grad_norm: args.max_grad_norm,
                checkpoint_every: args.checkpoint_every,
                eval_every: args.eval_every,
                benchmarks,
                device: args.device.clone(),
                save_dtype: args.save_dtype,
            };
            (run_dir, settings, false)
        }
    };
    let memory_limit = match args.memory_limit_gib {
        Some(gib) if !(gib.is_finite() && gib > 0.0) => {
            anyhow::bail!("--memory-limit-gib {gib}: give a positive number")
        }
        Some(gib) => Some((gib * (1u64 << 30) as f64) as u64),
        None => None,
    };
    train::keep_freed_memory();
    let mut trainer = Trainer::prepare(settings, &run_dir, resume, memory_limit, &mut log)?;
    eprintln!(
        "run directory {}; {} steps of {} rows",
        run_dir.display(),
        trainer.total_steps(),
        trainer.settings.batch_size
    );
    let progress = if std::io::stderr().is_terminal() {
        Progress::Bar
    } else {
        Progress::Lines
    };
    let outcome = trainer.run(progress, &mut log)?;
    eprintln!(
        "wrote {} after {} steps: train loss {}, validation loss {}, {:.0} tokens/s",
        outcome.out.display(),
        outcome.steps,
        outcome
            .final_train_loss
            .map_or("n/a".into(), |l| format!("{l:.4}")),
        outcome
            .validation_loss
            .map_or("n/a".into(), |l| format!("{l:.4}")),
        outcome.tokens_per_second
    );
    Ok(ExitCode::SUCCESS)
}

/// `~/.cache/hexacoder`, beside the model cache.
fn dirs_cache() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set; pass --run-dir")?;
    Ok(PathBuf::from(home).join(".cache").join("hexacoder"))
}

// Large blocks (KV buffers, activations) on reused, huge-page memory: see the module.
#[global_allocator]
static ALLOCATOR: hexacoder_engine::alloc::HugePageAlloc = hexacoder_engine::alloc::HugePageAlloc;

fn main() -> ExitCode {
    // The sandbox's confined side runs before anything else (it must stay single-threaded).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == hexacoder_trainer::eval::sandbox::EXEC_SUBCOMMAND)
    {
        let code = hexacoder_trainer::eval::sandbox::exec_confined(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(125));
    }
    // SAFETY: nothing has started a thread yet.
    unsafe { hexacoder_trainer::train::settle_thread_count() };
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train(args) => train_command(args),
        Command::Eval(args) => eval_cli::run(*args),
        Command::Synth(args) => synth_cli::run(*args),
        Command::Report { a, b, out } => eval_cli::compare(&a, &b, out.as_deref()),
        Command::Scan {
            paths,
            analyzers,
            format,
            semgrep_rules,
            timeout,
            flawfinder_min_level,
            bandit_severity,
            cwe_map,
            cwes,
            target_cwes,
            programs,
        } => {
            if !(timeout.is_finite() && timeout > 0.0) {
                anyhow::bail!("--timeout {timeout}: give a positive number of seconds");
            }
            let files = scan::collect_files(&paths)?;
            let settings = ScanSettings {
                analyzers,
                options: ExternalOptions {
                    timeout: Duration::from_secs_f64(timeout),
                    semgrep_rules,
                    flawfinder_min_level,
                    bandit_min_severity: bandit_severity,
                    programs: scan::parse_programs(&programs)?,
                },
                cwe_map,
                cwes,
                targeted: target_cwes,
            };
            let outcome = scan::scan(&files, settings)?;
            print!("{}", scan::render(&outcome, format)?);
            for run in outcome.report.incomplete() {
                let why = match &run.status {
                    RunStatus::Unavailable { reason } => format!("unavailable: {reason}"),
                    RunStatus::TimedOut { seconds } => format!("timed out after {seconds} s"),
                    RunStatus::Failed { reason } => format!("failed: {reason}"),
                    RunStatus::Ran | RunStatus::NotApplicable => continue,
                };
                eprintln!(
                    "warning: {}: {why}; its files are not counted as clean",
                    run.analyzer.name()
                );
            }
            Ok(ExitCode::from(outcome.exit_code()))
        }
    }
}
