//! Run with: `hexacoder-server generate --model smollm2-135m --prompt 'def fibonacci(n):'`

use std::process::ExitCode;

use clap::Parser;
use hexacoder_server::cli::{Cli, Command, FetchArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEXACODER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match &cli.command {
        Command::Generate(args) => hexacoder_server::generate::run(args),
        Command::Fetch(args) => fetch(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn fetch(args: &FetchArgs) -> anyhow::Result<()> {
    if args.list {
        for model in hexacoder_catalog::MODELS {
            println!(
                "{:<20} {:>6} MB  {}",
                model.id,
                model.bytes / 1_000_000,
                model.description
            );
        }
        return Ok(());
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(hexacoder_catalog::cache_dir);
    let ids: Vec<&str> = if args.models.is_empty() {
        vec![hexacoder_catalog::default_model().id]
    } else {
        args.models.iter().map(String::as_str).collect()
    };
    for id in ids {
        let model = hexacoder_catalog::find(id).ok_or_else(|| {
            let known: Vec<&str> = hexacoder_catalog::MODELS.iter().map(|m| m.id).collect();
            anyhow::anyhow!(
                "unknown catalogue model {id:?}; known: {}",
                known.join(", ")
            )
        })?;
        let path =
            hexacoder_catalog::ensure(model, &dir, hexacoder_server::model_source::progress())?;
        println!("{}", path.display());
    }
    Ok(())
}
