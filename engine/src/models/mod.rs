//! Model architectures. `llama.rs` holds the LLaMA-family decoder; `qwen2.rs` configures the
//! same decoder with Qwen2's q/k/v bias. Weight names are HF checkpoint names everywhere; the
//! GGUF loader maps them to llama.cpp's names.

pub mod llama;
pub mod qwen2;

use candle_core::Tensor;

use crate::Result;
use crate::nn::{Embedding, Linear, Q8Kernel};

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
