//! `hexacoder-lsp`: editors spawn it and speak LSP over stdin/stdout.

use clap::Parser;

/// HexaCoder's language server: secure completions from a HexaCoder server, for any LSP
/// editor. Settings come from the editor (`initializationOptions`,
/// `workspace/didChangeConfiguration`); logs go to stderr.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Log filter, e.g. `info` or `hexacoder_lsp=debug` (also `HEXACODER_LOG`).
    #[arg(long, env = "HEXACODER_LOG", default_value = "warn")]
    log: String,
    /// Speak LSP over stdio (the default; accepted because editors pass it).
    #[arg(long)]
    stdio: bool,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())?;
    // Without waiting for the read of stdin still in flight: tokio reads stdin on a blocking
    // thread that cannot be cancelled, and an editor need not close the pipe after `exit`.
    runtime.shutdown_background();
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .map_err(|e| anyhow::anyhow!("invalid --log {:?}: {e}", cli.log))?;
    // stdout carries the protocol; logs must never go there.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    hexacoder_lsp::serve(tokio::io::stdin(), tokio::io::stdout()).await;
    Ok(())
}
