//! Run with: `hexacoder-server serve` (HTTP API) or
//! `hexacoder-server generate --model smollm2-135m --prompt 'def fibonacci(n):'`.

use std::process::ExitCode;

use hexacoder_server::cli::{Command, FetchArgs};

// Large blocks (KV buffers, activations) on reused, huge-page memory: see the module.
#[global_allocator]
static ALLOCATOR: hexacoder_engine::alloc::HugePageAlloc = hexacoder_engine::alloc::HugePageAlloc;

fn main() -> ExitCode {
    let cli = match hexacoder_server::config::parse() {
        Ok(cli) => cli,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let (default_level, json) = match &cli.command {
        Command::Serve(args) => ("info", args.log_format == "json"),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HEXACODER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    let result = match &cli.command {
        Command::Serve(args) => hexacoder_server::serve::run(args),
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
