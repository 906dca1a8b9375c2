//! Model architectures. `llama.rs` holds the LLaMA-family decoder; `qwen2.rs` configures the
//! same decoder with Qwen2's q/k/v bias. Weight names are HF checkpoint names everywhere; the
//! GGUF loader maps them to llama.cpp's names.

pub mod llama;
pub mod qwen2;

use candle_core::Tensor;
use serde::Deserialize;

use crate::Result;
use crate::nn::{Embedding, Linear, Q8Kernel};

/// `rope_parameters`: where transformers 5 writes `rope_theta` and the scaling type that
/// older configs kept at the top level and in `rope_scaling`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RopeParameters {
    /// RoPE base.
    pub rope_theta: Option<f32>,
    /// `default` is plain RoPE; the scaled kinds (`linear`, `yarn`, `llama3`, ...) are refused.
    pub rope_type: Option<String>,
}

/// The RoPE base from a config's `rope_parameters` or top-level `rope_theta`, else `default`.
///
/// # Errors
/// A scaled `rope_type`, which the engine does not implement; ignoring it would silently
/// compute the wrong positions.
pub(crate) fn rope_theta(
    parameters: Option<&RopeParameters>,
    top_level: Option<f32>,
    default: f32,
) -> std::result::Result<f32, String> {
    if let Some(kind) = parameters.and_then(|p| p.rope_type.as_deref())
        && kind != "default"
    {
        return Err(format!(
            "rope_parameters.rope_type {kind:?} is not supported (only \"default\")"
        ));
    }
    Ok(parameters
        .and_then(|p| p.rope_theta)
        .or(top_level)
        .unwrap_or(default))
}

/// Where a model's tensors come from (a GGUF file, safetensors shards, or a test's `VarMap`).
/// Names are HF checkpoint names (`model.layers.0.self_attn.q_proj.weight`).
pub trait WeightSource {
    /// A dense tensor (norm scales, biases) as f32, checked against `shape`.
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// A projection `prefix.weight` of shape `[out, in]`, plus `prefix.bias` when `bias`.
    fn linear(
        &self,
        prefix: &str,
        out_features: usize,
        in_features: usize,
        bias: bool,
    ) -> Result<Linear>;
    /// The embedding table `name` of shape `[vocab, hidden]`.
    fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding>;
    /// Whether a tensor exists.
    fn contains(&self, name: &str) -> bool;
    /// The kernel for Q8_0 projections built from this source (also tied output heads).
    fn q8_kernel(&self) -> Q8Kernel {
        Q8Kernel::Fastest
    }
}

#[cfg(test)]
mod tests;
