//! Qwen2 and Qwen2.5(-Coder) (Qwen team, 2024): the LLaMA decoder of `llama.rs` with a bias
//! on the q, k and v projections. Matches HF `transformers`' `Qwen2ForCausalLM` and
//! candle-transformers' `qwen2.rs`; the integration tests check logits against the latter.

use serde::Deserialize;

use crate::config::{Arch, RopeStyle, TransformerConfig};

/// `config.json` of a HF Qwen2 checkpoint.
#[derive(Debug, Deserialize)]
pub struct Qwen2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base (before transformers 5).
    #[serde(default)]
    pub rope_theta: Option<f32>,
    /// RoPE base and type (transformers 5).
    #[serde(default)]
    pub rope_parameters: Option<super::RopeParameters>,
    /// Trained context.
    pub max_position_embeddings: usize,
    /// Tied output projection.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Sliding-window attention; refused when enabled, since no Qwen2.5-Coder uses it.
    #[serde(default)]
    pub use_sliding_window: bool,
}

const DEFAULT_ROPE_THETA: f32 = 1_000_000.0;

impl Qwen2Config {
    /// The engine's view of this configuration.
    pub fn into_config(self) -> Result<TransformerConfig, String> {
        if self.use_sliding_window {
            return Err("use_sliding_window=true is not supported".into());
        }
        Ok(TransformerConfig {
            arch: Arch::Qwen2,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.hidden_size / self.num_attention_heads.max(1),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: super::rope_theta(
                self.rope_parameters.as_ref(),
                self.rope_theta,
                DEFAULT_ROPE_THETA,
            )?,
            rope_style: RopeStyle::Half,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: true,
        })
    }
}
