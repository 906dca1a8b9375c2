//! HexaCoder's inference engine: decoder-only code models on candle.
//!
//! The type to read first is [`Engine`]: a loaded model with its tokenizer, fill-in-the-middle
//! template and prefix cache, and [`Engine::generate`], which runs one request. A server runs
//! many at once through a [`Scheduler`], which owns the engine on its own thread and steps a
//! continuous [`batch::Batch`]. Models are
//! loaded with [`load::load`] from [`ModelFiles`] (a GGUF file or an HF directory; the server
//! resolves hub ids to them).
//!
//! Design decisions:
//! - Our own decoder code on `candle-core`/`candle-nn` rather than a serving framework, so that
//!   every projection has a hook point ([`nn::LinearHook`]) where a LoRA side branch is added per
//!   request, unmerged, and so that the trainer reuses the exact forward pass
//!   ([`models::llama::Outputs::All`]).
//! - The forward pass takes a ragged batch of sequences: weights are read once per step for all
//!   of them, which is what bounds decoding speed on a CPU.
//! - Quantized weights stay quantized; candle's slow legacy types are re-quantized to Q8_0 at
//!   load ([`load::Requantize`]).
//! - The engine knows nothing about HTTP or JSON wire formats.
#![deny(missing_docs)]

mod error;
mod generate;
mod prefix_cache;
mod request;
mod sampling;
mod text;

pub mod alloc;
pub mod batch;
pub mod config;
pub mod fim;
pub mod load;
pub mod lora;
pub mod model_files;
pub mod models;
pub mod nn;
pub mod scheduler;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::{Error, Result};
pub use lora::{LoadedAdapter, SharedAdapter};
pub use model_files::{ModelFiles, local_files};
pub use prefix_cache::{PrefixCache, PrefixCacheStats};
pub use request::{
    ContextFile, FinishReason, GenerateRequest, GeneratedToken, Generation, LogitsProcessor,
    OnDelta, Sample, StopCondition,
};
pub use sampling::SamplingParams;
pub use scheduler::{Rejected, Scheduler, SchedulerOptions, SchedulerStats};

use fim::FimTemplate;
use models::llama::Model;
use tokenizer::Tokenizer;

/// A loaded model, ready to generate.
pub struct Engine {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    fim: Option<FimTemplate>,
    chat_template: Option<String>,
    name: String,
    path: PathBuf,
    prefix_cache: PrefixCache,
    prefill_chunk: usize,
}

/// Below this many shared tokens a prefix-cache copy is not worth it.
const PREFIX_CACHE_MIN_MATCH: usize = 4;

impl Engine {
    /// Assembles an engine from its parts (see [`load::load`] for the usual way in).
    pub fn new(
        mut model: Model,
        tokenizer: Tokenizer,
        fim: Option<FimTemplate>,
        chat_template: Option<String>,
        name: String,
        path: PathBuf,
        options: &load::LoadOptions,
    ) -> Self {
        model.set_kv_dtype(options.kv_dtype);
        Engine {
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            fim,
            chat_template,
            name,
            path,
            prefix_cache: PrefixCache::new(options.prefix_cache_bytes, PREFIX_CACHE_MIN_MATCH),
            prefill_chunk: options.prefill_chunk.max(1),
        }
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Merges `adapter` into the weights for a single-adapter deployment: every request then
    /// gets it at the base model's speed.
    ///
    /// # Errors
    /// The model is already shared ([`Engine::shared_model`]), or the adapter does not fit it.
    pub fn merge_adapter(
        &mut self,
        adapter: &hexacoder_adapters::Adapter,
        kernel: nn::Q8Kernel,
    ) -> Result<()> {
        let model = Arc::get_mut(&mut self.model).ok_or_else(|| {
            Error::InvalidRequest("cannot merge an adapter into a model that is shared".into())
        })?;
        lora::merge_into(model, adapter, kernel)?;
        self.prefix_cache
            .invalidate(request::PREFIX_CACHE_NAMESPACE_BASE);
        Ok(())
    }

    /// The model, to share with threads that validate and prepare adapters for it (the
    /// forward pass only reads it).
    pub fn shared_model(&self) -> Arc<Model> {
        Arc::clone(&self.model)
    }

    /// The tokenizer, to share with threads that prepare requests.
    pub fn shared_tokenizer(&self) -> Arc<Tokenizer> {
        Arc::clone(&self.tokenizer)
    }

    /// The FIM template, if the model has one.
    pub fn fim(&self) -> Option<&FimTemplate> {
        self.fim.as_ref()
    }

    /// The model's own chat template (Jinja), if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's name (`general.name` or the file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Prefix-cache counters.
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.prefix_cache.stats()
    }

    /// Forgets every remembered prompt, so the next request prefills from scratch.
    pub fn clear_prefix_cache(&mut self) {
        self.prefix_cache.clear();
    }

    /// Positions a sequence may hold (prompt plus completion).
    pub fn context_length(&self) -> usize {
        self.model.max_positions()
    }
}
