//! `hexacoder-train`: a thin CLI over the trainer library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hexacoder_oracle::{ExternalOptions, RunStatus};
use hexacoder_trainer::scan::{self, Format, ScanSettings};

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
}

fn main() -> ExitCode {
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
