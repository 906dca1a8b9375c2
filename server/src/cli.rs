//! Command-line options. Each option is defined once, here; `--help` is generated from it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hexacoder_engine::nn::KvDtype;

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
    /// Serve the OpenAI-compatible HTTP API (plus llama.cpp's `/infill` and Tabby's API under `/tabby`).
    ///
    /// Every option can also come from an environment variable (shown below) or from the TOML
    /// file given by `--config`, whose keys are the long option names (`port = 9000`,
    /// `max-concurrent = 4`). Precedence: command line, then environment, then file, then
    /// the default.
    Serve(Box<ServeArgs>),
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
    /// Convert Q4_0/Q4_1/Q5_0/Q5_1 tensors to Q8_0 at load, as before the kernels for them
    /// (for comparison: as measured, 15-25% more memory, twice the load time and 13-16% slower
    /// decoding, prefill within a few percent). Without AVX2 this is what happens anyway.
    #[arg(long)]
    pub legacy_quants_to_q8: bool,
    /// The default now; accepted so that older command lines still start.
    #[arg(long, hide = true)]
    pub keep_legacy_quants: bool,
    /// Multiply Q8_0 weights with candle's kernel instead of HexaCoder's (for comparison;
    /// ours are used only where the CPU has AVX2 and FMA).
    #[arg(long)]
    pub candle_q8_kernel: bool,
    /// FIM template: `auto`, `off`, or three token texts `PREFIX,SUFFIX,MIDDLE`.
    #[arg(long, default_value = "auto")]
    pub fim: String,
    /// Bytes of KV state the prefix cache may hold (0 disables it).
    #[arg(long, default_value_t = 512 << 20)]
    pub prefix_cache_bytes: usize,
    /// How the KV cache keeps keys and values on the CPU: `f16` (half the memory and half
    /// the bytes attention reads, each value rounded as it is stored, as llama.cpp does) or
    /// `f32` (exact). A GPU keeps them in f32.
    #[arg(long, default_value_t = KvDtype::default())]
    pub kv_dtype: KvDtype,
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
    /// Two-step generation: imports first (up to --first-step-tokens of --max-tokens), then
    /// the code. The added imports are printed to stderr (in --json, per sample).
    #[arg(long)]
    pub two_step: bool,
    /// With --two-step: the prompt's language (`python`, `c`, `cpp`, `javascript`,
    /// `typescript`, `tsx`, `go`, `java`, `rust`, or an extension);
    /// detected from its imports when absent.
    #[arg(long, requires = "two_step")]
    pub language: Option<String>,
    /// With --two-step: tokens step 1 may spend.
    #[arg(long, default_value_t = 20, requires = "two_step")]
    pub first_step_tokens: usize,
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model selection and loading.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A TOML file with defaults for any of these options (keys are long option names).
    #[arg(long, env = "HEXACODER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on. Keep the loopback default unless an API key is set.
    #[arg(long, env = "HEXACODER_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on the first line).
    #[arg(long, env = "HEXACODER_PORT", default_value_t = 8080)]
    pub port: u16,
    /// The model name clients send in `model` (default: the `--model` value).
    #[arg(long, env = "HEXACODER_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on every route except `/health`.
    #[arg(long, env = "HEXACODER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Read the API key from this file (first line) instead.
    #[arg(long, env = "HEXACODER_API_KEY_FILE", conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
    /// Requests generated together at most (their decode steps are batched).
    #[arg(long, env = "HEXACODER_MAX_CONCURRENT", default_value_t = 8)]
    pub max_concurrent: usize,
    /// Requests waiting for a place at most; beyond that the server answers 429.
    #[arg(long, env = "HEXACODER_MAX_QUEUE", default_value_t = 32)]
    pub max_queue: usize,
    /// Seconds a request may take in all before it is cancelled (0: no limit).
    #[arg(long, env = "HEXACODER_REQUEST_TIMEOUT", default_value_t = 300)]
    pub request_timeout: u64,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C before they are
    /// cancelled.
    #[arg(long, env = "HEXACODER_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Seconds a client may take to send a request's headers; a slower one (a slow-loris
    /// attack holding connections open) is disconnected. A keep-alive connection idle this
    /// long is closed too.
    #[arg(long, env = "HEXACODER_HEADER_READ_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout: u64,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "HEXACODER_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Prompt tokens per forward pass while no other request is decoding.
    #[arg(long, env = "HEXACODER_PREFILL_CHUNK", default_value_t = 512)]
    pub prefill_chunk: usize,
    /// Prompt tokens per forward pass while other requests decode: smaller keeps their
    /// inter-token latency low, larger gets new requests to their first token sooner.
    #[arg(
        long,
        env = "HEXACODER_INTERLEAVED_PREFILL_CHUNK",
        default_value_t = 64
    )]
    pub interleaved_prefill_chunk: usize,
    /// Load a LoRA adapter (PEFT directory) at startup under NAME; repeatable. Requests
    /// select it with `"model": "NAME"`.
    #[arg(long = "adapter", value_name = "NAME=PATH")]
    pub adapters: Vec<String>,
    /// Do not load the security adapter HexaCoder ships for the model (served as the model
    /// `hexacoder-secure` when the base is a catalogue model that has one).
    #[arg(long, env = "HEXACODER_NO_DEFAULT_ADAPTER")]
    pub no_default_adapter: bool,
    /// Load every subdirectory of this directory as an adapter named after it.
    #[arg(long, env = "HEXACODER_ADAPTER_DIR")]
    pub adapter_dir: Option<PathBuf>,
    /// Allow loading and unloading adapters at run time (`POST /v1/load_lora_adapter`,
    /// `/v1/unload_lora_adapter`); needs --admin-token and --adapter-root.
    #[arg(long, env = "HEXACODER_ENABLE_ADAPTER_MUTATION")]
    pub enable_adapter_mutation: bool,
    /// The token run-time adapter changes must present in `x-admin-token` (separate from
    /// the API key).
    #[arg(long, env = "HEXACODER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Read the admin token from this file (first line) instead.
    #[arg(
        long,
        env = "HEXACODER_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// The only directory run-time loads may read adapters from (symlinks are resolved).
    #[arg(long, env = "HEXACODER_ADAPTER_ROOT")]
    pub adapter_root: Option<PathBuf>,
    /// Merge this adapter (PEFT directory) into the base weights at startup: a single-adapter
    /// deployment with no per-request LoRA cost. Quantized projections become Q8_0.
    #[arg(long, env = "HEXACODER_MERGE_ADAPTER")]
    pub merge_adapter: Option<PathBuf>,
    /// Adapters loaded at once at most.
    #[arg(long, env = "HEXACODER_MAX_ADAPTERS", default_value_t = 16)]
    pub max_adapters: usize,
    /// Bytes of adapter weights loaded at once at most.
    #[arg(long, env = "HEXACODER_MAX_ADAPTER_BYTES", default_value_t = 1 << 30)]
    pub max_adapter_bytes: usize,
    /// Two-step generation (imports first, then code) for completions that do not choose:
    /// `on` or `off`. Requests choose with `hexacoder.two_step`; an adapter's metadata
    /// (`hexacoder.two_step`) sets the default for requests on it.
    #[arg(long, env = "HEXACODER_TWO_STEP", default_value = "off", value_parser = switch, action = clap::ArgAction::Set)]
    pub two_step: bool,
    /// Two-step generation: tokens step 1 may spend on imports (out of `max_tokens`).
    #[arg(long, env = "HEXACODER_FIRST_STEP_TOKENS", default_value_t = 20)]
    pub first_step_tokens: usize,
    /// Two-step generation: drop added imports the completion never uses (`on`/`off`).
    #[arg(long, env = "HEXACODER_PRUNE_UNUSED_IMPORTS", default_value = "on", value_parser = switch, action = clap::ArgAction::Set)]
    pub prune_unused_imports: bool,
    /// Two-step generation: run step 1 on prompts without imports too, as the paper does
    /// (`on`/`off`).
    #[arg(long, env = "HEXACODER_TWO_STEP_WITHOUT_IMPORTS", default_value = "on", value_parser = switch, action = clap::ArgAction::Set)]
    pub two_step_without_imports: bool,
    /// Log format on stderr: `text` or `json` (one object per line). Verbosity comes from
    /// `HEXACODER_LOG` (e.g. `info`, `hexacoder_server=debug`).
    #[arg(long, env = "HEXACODER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
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

/// `on`/`off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
fn switch(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("expected `on` or `off`, got {value:?}")),
    }
}
