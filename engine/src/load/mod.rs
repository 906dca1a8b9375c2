//! Turning files on disk into an [`Engine`](crate::Engine).

pub mod gguf;
mod gguf_check;
pub mod safetensors;

use std::path::Path;

use candle_core::Device;

use crate::ModelFiles;
use crate::fim::{FimSetting, FimTemplate};
use crate::models::llama::Model;
use crate::nn::{KvDtype, Q8Kernel};
use crate::tokenizer::Tokenizer;
use crate::{Engine, Error, Result};

pub use gguf::Requantize;

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where the weights live.
    pub device: Device,
    /// Cap on the context (prompt plus completion), below the model's own.
    pub max_context: Option<usize>,
    /// What to do with tensor types candle is slow at.
    pub requantize: Requantize,
    /// Fill-in-the-middle template.
    pub fim: FimSetting,
    /// Bytes of KV state the prefix cache may hold; 0 disables it.
    pub prefix_cache_bytes: usize,
    /// Prompt tokens per prefill forward pass (bounds attention memory).
    pub prefill_chunk: usize,
    /// The CPU kernels for Q8_0 and the legacy 4/5-bit weights.
    pub q8_kernel: Q8Kernel,
    /// How the KV cache keeps keys and values on the CPU (on a GPU always f32).
    pub kv_dtype: KvDtype,
}

impl LoadOptions {
    /// Defaults for a CPU server: legacy quants kept as stored where our kernels multiply
    /// them (else converted to Q8_0 for candle's), FIM auto, 512 MiB prefix cache, keys and
    /// values in f16.
    pub fn cpu() -> Self {
        LoadOptions {
            device: Device::Cpu,
            max_context: None,
            requantize: if crate::nn::LegacyMatrix::supported() {
                Requantize::Keep
            } else {
                Requantize::LegacyToQ8_0
            },
            fim: FimSetting::Auto,
            prefix_cache_bytes: 512 << 20,
            prefill_chunk: 512,
            q8_kernel: Q8Kernel::Fastest,
            kv_dtype: KvDtype::default(),
        }
    }
}

/// Parses `cpu` or `cuda:N` (`cuda` means `cuda:0`).
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => Ok(Device::new_cuda(ordinal)?),
            _ => Err(Error::InvalidRequest(format!(
                "device {other:?} is not `cpu` or `cuda:N`"
            ))),
        },
    }
}

/// Loads the model in `files`.
pub fn load(files: &ModelFiles, options: &LoadOptions) -> Result<Engine> {
    match files {
        ModelFiles::Gguf(path) => load_gguf(path, options),
        ModelFiles::HfDir(dir) => load_hf_dir(dir, options),
    }
}

fn load_gguf(path: &Path, options: &LoadOptions) -> Result<Engine> {
    let gguf = gguf::GgufFile::open(path)?;
    let config = gguf.config()?;
    let max_positions = context_length(config.max_position_embeddings, options);
    // The tokenizer is built from the metadata on a second thread while the tensors load.
    let (tokenizer, model) = std::thread::scope(|scope| {
        let tokenizer = scope.spawn(|| Tokenizer::from_gguf(&gguf));
        let model = gguf
            .load_tensors(&options.device, options.requantize, options.q8_kernel)
            .and_then(|weights| Model::load(&config, &weights, max_positions, &options.device));
        let tokenizer = tokenizer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (tokenizer, model)
    });
    let (tokenizer, model) = (tokenizer?, model?);
    let declared = [
        "tokenizer.ggml.fim_pre_token_id",
        "tokenizer.ggml.fim_suf_token_id",
        "tokenizer.ggml.fim_mid_token_id",
    ]
    .map(|key| gguf.opt_usize(key).ok().flatten().map(|id| id as u32));
    let fim = FimTemplate::choose(&options.fim, &tokenizer, declared)?;
    let chat_template = gguf.opt_str("tokenizer.chat_template")?.map(str::to_string);
    let name = gguf
        .opt_str("general.name")?
        .map(str::to_string)
        .unwrap_or_else(|| file_stem(path));
    Ok(Engine::new(
        model,
        tokenizer,
        fim,
        chat_template,
        name,
        path.to_path_buf(),
        options,
    ))
}

fn load_hf_dir(dir: &Path, options: &LoadOptions) -> Result<Engine> {
    let config = safetensors::read_config(dir)?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    let fim = FimTemplate::choose(&options.fim, &tokenizer, [None; 3])?;
    let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| {
            json.get("chat_template")
                .and_then(|t| t.as_str())
                .map(str::to_string)
        });
    let weights =
        safetensors::VarBuilderWeights::mmap(&safetensors::shard_paths(dir)?, &options.device)?;
    let max_positions = context_length(config.max_position_embeddings, options);
    let model = Model::load(&config, &weights, max_positions, &options.device)?;
    Ok(Engine::new(
        model,
        tokenizer,
        fim,
        chat_template,
        file_stem(dir),
        dir.to_path_buf(),
        options,
    ))
}

fn context_length(model_context: usize, options: &LoadOptions) -> usize {
    options
        .max_context
        .map_or(model_context, |cap| cap.min(model_context))
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
