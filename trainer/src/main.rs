//! `hexacoder-train`: a thin CLI over the trainer library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hexacoder_trainer::scan::{self, Format};

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
    /// Find weaknesses (CWEs) in source files. Exit status: 0 nothing found, 1 findings,
    /// 2 an error.
    Scan {
        /// Files or directories (walked, honouring .gitignore).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Comma-separated analyzers.
        #[arg(long, value_delimiter = ',', default_value = "embedded")]
        analyzers: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
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
        } => {
            let files = scan::collect_files(&paths)?;
            let outcome = scan::scan(&files, &analyzers)?;
            print!("{}", scan::render(&outcome, format)?);
            Ok(if outcome.findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
