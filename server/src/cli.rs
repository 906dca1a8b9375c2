//! Command-line options. Each option is defined once, here; `--help` is generated from it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// HexaCoder: secure code completion on a local model.
#[derive(Debug, Parser)]
#[command(name = "hexacoder-server", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate one completion and print it to stdout.
    Generate(Box<GenerateArgs>),
    /// Download, verify and cache catalogue models (default: the default model).
    Fetch(FetchArgs),
}

/// Which model and how to load it.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A catalogue id (see `fetch --list`), a GGUF file, an HF checkpoint directory, or a hub
    /// id `owner/name[:FILE.gguf][@REVISION]`.
    #[arg(long, env = "HEXACODER_MODEL", default_value = "qwen2.5-coder-0.5b")]
    pub model: String,
    /// Device: `cpu` or `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, env = "HEXACODER_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Read hub models from the local cache only (also `HF_HUB_OFFLINE=1`).
    #[arg(long)]
    pub offline: bool,
    /// The hub cache directory (default: `HF_HUB_CACHE`, `HF_HOME/hub` or `~/.cache/huggingface/hub`).
    #[arg(long, env = "HF_HUB_CACHE")]
    pub hub_cache: Option<PathBuf>,
    /// Cap the context length (prompt plus completion) below the model's own.
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Keep Q4_0/Q4_1/Q5_0/Q5_1 tensors as stored instead of converting them to Q8_0
    /// (smaller, but much slower on CPU with candle's kernels).
    #[arg(long)]
    pub keep_legacy_quants: bool,
    /// Multiply Q8_0 weights with candle's kernel instead of HexaCoder's AVX2 kernel (for
    /// comparison; ours is used only where the CPU has AVX2 and FMA).
    #[arg(long)]
    pub candle_q8_kernel: bool,
    /// FIM template: `auto`, `off`, or three token texts `PREFIX,SUFFIX,MIDDLE`.
    #[arg(long, default_value = "auto")]
    pub fim: String,
    /// Bytes of KV state the prefix cache may hold (0 disables it).
    #[arg(long, default_value_t = 512 << 20)]
    pub prefix_cache_bytes: usize,
}

/// `generate` options.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model selection and loading.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (text before the cursor); `-` reads it from stdin.
    #[arg(long)]
    pub prompt: String,
    /// Text after the cursor: fill in the middle (needs a model with FIM tokens).
    #[arg(long)]
    pub suffix: Option<String>,
    /// New tokens per sample at most.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sample only from the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// RNG seed; the same seed gives the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of samples (they share one prefill).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Stop string (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print a JSON document with every sample, its tokens and log-probabilities instead of
    /// streaming text.
    #[arg(long)]
    pub json: bool,
    /// With `--json`: alternatives to report per token.
    #[arg(long, default_value_t = 0)]
    pub logprobs: usize,
}

/// `fetch` options.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Catalogue ids to fetch.
    pub models: Vec<String>,
    /// List the catalogue instead.
    #[arg(long)]
    pub list: bool,
    /// Cache directory (default: `HEXACODER_MODELS_DIR` or `<user cache>/hexacoder/models`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}
