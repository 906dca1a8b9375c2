//! The LLaMA decoder (Touvron et al., 2023): pre-norm blocks of grouped-query attention with
//! rotary embeddings and a SwiGLU MLP, RMSNorm throughout. Matches HF `transformers`'
//! `LlamaForCausalLM` and candle-transformers' `llama.rs`; the integration tests check logits
//! against the latter on random weights.
//!
//! The forward pass takes a *ragged batch*: the new tokens of several sequences concatenated.
//! Projections run once over all of them (the weights are read once per step, which is what
//! bounds decoding speed), and attention runs per sequence against its own KV cache.

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::Result;
use crate::config::{Arch, RopeStyle, TransformerConfig};
use crate::models::WeightSource;
use crate::nn::{self, Embedding, KvCache, KvDtype, Linear, LinearHook, Proj, RmsNorm, Rope};

/// `config.json` of a HF LLaMA checkpoint.
#[derive(Debug, Deserialize)]
pub struct LlamaConfig {
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
    /// Key/value heads; equal to query heads when absent.
    pub num_key_value_heads: Option<usize>,
    /// Head width; `hidden_size / num_attention_heads` when absent.
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base (before transformers 5).
    #[serde(default)]
    pub rope_theta: Option<f32>,
    /// RoPE base and type (transformers 5).
    #[serde(default)]
    pub rope_parameters: Option<super::RopeParameters>,
    /// Trained context.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Tied output projection.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o (some LLaMA variants).
    #[serde(default)]
    pub attention_bias: bool,
    /// RoPE scaling (LLaMA 3.1 style); refused for now rather than silently ignored.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

const DEFAULT_ROPE_THETA: f32 = 10_000.0;

fn default_max_positions() -> usize {
    4096
}

impl LlamaConfig {
    /// The engine's view of this configuration.
    pub fn into_config(self) -> Result<TransformerConfig, String> {
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(format!(
                "rope_scaling {:?} is not supported",
                self.rope_scaling
            ));
        }
        Ok(TransformerConfig {
            arch: Arch::Llama,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: super::rope_theta(
                self.rope_parameters.as_ref(),
                self.rope_theta,
                DEFAULT_ROPE_THETA,
            )?,
            rope_style: RopeStyle::Half,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
        })
    }
}

/// One sequence's share of a ragged batch.
pub struct SeqInput<'a> {
    /// The sequence's cache; the new tokens are appended to it.
    pub cache: &'a mut KvCache,
    /// How many of the batch's tokens belong to this sequence (they are contiguous).
    pub n_tokens: usize,
}

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outputs {
    /// None (an intermediate prefill chunk).
    None,
    /// The last new position of each sequence: `[n_seqs, vocab]`.
    LastOfEachSeq,
    /// Every new position: `[n_tokens, vocab]` (training, scoring, parity tests).
    All,
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// A model's weights as dense f32 tensors ([`Model::dense_weights`]).
pub struct DenseWeights {
    /// `[vocab, hidden]`.
    pub embed_tokens: Tensor,
    /// Per decoder layer.
    pub layers: Vec<DenseLayer>,
    /// The final norm's scale.
    pub norm: Tensor,
    /// `[vocab, hidden]`; the embedding's tensor when tied.
    pub lm_head: Tensor,
}

/// One decoder layer's weights as dense f32.
pub struct DenseLayer {
    /// Scale of the norm before attention.
    pub input_layernorm: Tensor,
    /// Scale of the norm before the MLP.
    pub post_attention_layernorm: Tensor,
    /// Weight `[out, in]` and bias of each projection, in [`Proj::ALL`] order.
    pub projections: Vec<(Tensor, Option<Tensor>)>,
}

/// A LLaMA-family causal language model.
pub struct Model {
    config: TransformerConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    device: Device,
    kv_dtype: KvDtype,
}

impl Model {
    /// Builds the model from `weights`; `max_positions` caps the RoPE tables (and so the context).
    pub fn load(
        config: &TransformerConfig,
        weights: &dyn WeightSource,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let c = config;
        let (hidden, heads, kv_heads, head_dim) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        let embed_tokens = weights.embedding("model.embed_tokens.weight", c.vocab_size, hidden)?;
        // Not sized from the config up front: a file's layer count is only trusted as far as
        // its tensors go.
        let mut layers = Vec::new();
        for layer_idx in 0..c.num_hidden_layers {
            let p = format!("model.layers.{layer_idx}");
            let attn = format!("{p}.self_attn");
            let mlp = format!("{p}.mlp");
            let bias = c.attention_bias;
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::new(
                    weights.dense(&format!("{p}.input_layernorm.weight"), &[hidden])?,
                    c.rms_norm_eps,
                ),
                self_attn: Attention {
                    q_proj: weights.linear(
                        &format!("{attn}.q_proj"),
                        heads * head_dim,
                        hidden,
                        bias,
                    )?,
                    k_proj: weights.linear(
                        &format!("{attn}.k_proj"),
                        kv_heads * head_dim,
                        hidden,
                        bias,
                    )?,
                    v_proj: weights.linear(
                        &format!("{attn}.v_proj"),
                        kv_heads * head_dim,
                        hidden,
                        bias,
                    )?,
                    o_proj: weights.linear(
                        &format!("{attn}.o_proj"),
                        hidden,
                        heads * head_dim,
                        false,
                    )?,
                },
                post_attention_layernorm: RmsNorm::new(
                    weights.dense(&format!("{p}.post_attention_layernorm.weight"), &[hidden])?,
                    c.rms_norm_eps,
                ),
                mlp: Mlp {
                    gate_proj: weights.linear(
                        &format!("{mlp}.gate_proj"),
                        c.intermediate_size,
                        hidden,
                        false,
                    )?,
                    up_proj: weights.linear(
                        &format!("{mlp}.up_proj"),
                        c.intermediate_size,
                        hidden,
                        false,
                    )?,
                    down_proj: weights.linear(
                        &format!("{mlp}.down_proj"),
                        hidden,
                        c.intermediate_size,
                        false,
                    )?,
                },
            });
        }
        let norm = RmsNorm::new(
            weights.dense("model.norm.weight", &[hidden])?,
            c.rms_norm_eps,
        );
        let (embed_tokens, lm_head) =
            if c.tie_word_embeddings || !weights.contains("lm_head.weight") {
                embed_tokens.tied_with_head(weights.q8_kernel())?
            } else {
                let head = weights.linear("lm_head", c.vocab_size, hidden, false)?;
                (embed_tokens, head)
            };
        let rope = Rope::new(head_dim, max_positions, c.rope_theta, c.rope_style, device)?;
        Ok(Model {
            config: c.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            device: device.clone(),
            kv_dtype: KvDtype::default(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Positions a sequence may hold.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// The rotary-embedding tables (`[max_positions, head_dim / 2]` cosines and sines).
    pub fn rope_tables(&self) -> (&Tensor, &Tensor) {
        self.rope.tables()
    }

    /// An empty KV cache shaped for this model.
    pub fn new_cache(&self) -> KvCache {
        let c = &self.config;
        // Other devices attend with candle's matmuls, in f32.
        let dtype = if self.device.is_cpu() {
            self.kv_dtype.dtype()
        } else {
            candle_core::DType::F32
        };
        KvCache::new(
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            dtype,
            &self.device,
        )
    }

    /// How [`Model::new_cache`]'s caches keep keys and values on the CPU.
    pub fn set_kv_dtype(&mut self, kv_dtype: KvDtype) {
        self.kv_dtype = kv_dtype;
    }

    /// How this model's KV caches keep keys and values on the CPU.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Every weight as dense f32 (quantized ones dequantized): the frozen base of training.
    /// A tied output head shares the embedding's tensor.
    pub fn dense_weights(&self) -> Result<DenseWeights> {
        let embed_tokens = self.embed_tokens.dequantized()?;
        let lm_head = if self.config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            self.lm_head.dequantized_weight()?
        };
        let layers = (0..self.layers.len())
            .map(|layer_idx| {
                let layer = &self.layers[layer_idx];
                let projections = Proj::ALL
                    .iter()
                    .map(|&proj| {
                        let linear = self
                            .projection(layer_idx, proj)
                            .ok_or_else(|| crate::Error::InvalidRequest("no projection".into()))?;
                        Ok((linear.dequantized_weight()?, linear.bias().cloned()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(DenseLayer {
                    input_layernorm: layer.input_layernorm.weight().clone(),
                    post_attention_layernorm: layer.post_attention_layernorm.weight().clone(),
                    projections,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DenseWeights {
            embed_tokens,
            layers,
            norm: self.norm.weight().clone(),
            lm_head,
        })
    }

    /// The projection `proj` of layer `layer_idx` (for adapters that need shapes or merging).
    pub fn projection(&self, layer_idx: usize, proj: Proj) -> Option<&Linear> {
        let layer = self.layers.get(layer_idx)?;
        Some(match proj {
            Proj::Q => &layer.self_attn.q_proj,
            Proj::K => &layer.self_attn.k_proj,
            Proj::V => &layer.self_attn.v_proj,
            Proj::O => &layer.self_attn.o_proj,
            Proj::Gate => &layer.mlp.gate_proj,
            Proj::Up => &layer.mlp.up_proj,
            Proj::Down => &layer.mlp.down_proj,
        })
    }

    /// Mutable access to a projection (merging an adapter at load).
    pub fn projection_mut(&mut self, layer_idx: usize, proj: Proj) -> Option<&mut Linear> {
        let layer = self.layers.get_mut(layer_idx)?;
        Some(match proj {
            Proj::Q => &mut layer.self_attn.q_proj,
            Proj::K => &mut layer.self_attn.k_proj,
            Proj::V => &mut layer.self_attn.v_proj,
            Proj::O => &mut layer.self_attn.o_proj,
            Proj::Gate => &mut layer.mlp.gate_proj,
            Proj::Up => &mut layer.mlp.up_proj,
            Proj::Down => &mut layer.mlp.down_proj,
        })
    }

    /// Logits for every position of one sequence from scratch: `[tokens.len(), vocab]`
    /// (training, scoring, and checking against references).
    pub fn forward_all(&self, tokens: &[u32], hook: Option<&dyn LinearHook>) -> Result<Tensor> {
        let mut cache = self.new_cache();
        let mut seqs = [SeqInput {
            cache: &mut cache,
            n_tokens: tokens.len(),
        }];
        self.forward(tokens, &mut seqs, Outputs::All, hook)?
            .ok_or_else(|| crate::Error::InvalidRequest("no logits for an empty sequence".into()))
    }

    /// Runs `tokens`, the concatenated new tokens of `seqs`, appending to each sequence's cache.
    pub fn forward(
        &self,
        tokens: &[u32],
        seqs: &mut [SeqInput<'_>],
        outputs: Outputs,
        hook: Option<&dyn LinearHook>,
    ) -> Result<Option<Tensor>> {
        let n_total: usize = seqs.iter().map(|s| s.n_tokens).sum();
        if n_total != tokens.len() || seqs.iter().any(|s| s.n_tokens == 0) {
            return Err(crate::Error::InvalidRequest(format!(
                "ragged batch of {} tokens does not match sequence lengths {:?}",
                tokens.len(),
                seqs.iter().map(|s| s.n_tokens).collect::<Vec<_>>()
            )));
        }
        for seq in seqs.iter_mut() {
            let end = seq.cache.len() + seq.n_tokens;
            if end > self.max_positions() {
                return Err(crate::Error::InvalidRequest(format!(
                    "sequence of {end} positions exceeds the context of {}",
                    self.max_positions()
                )));
            }
            seq.cache.reserve(seq.n_tokens)?;
        }
        let c = &self.config;
        let mut xs = self.embed_tokens.forward(tokens, &self.device)?;
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            let residual = &xs;
            let hs = layer.input_layernorm.forward(&xs)?;
            let attn = &layer.self_attn;
            let [q, k, v]: [Tensor; 3] = Linear::forward_each_hooked(
                &[
                    (&attn.q_proj, Proj::Q),
                    (&attn.k_proj, Proj::K),
                    (&attn.v_proj, Proj::V),
                ],
                &hs,
                hook,
                layer_idx,
            )?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("three projections gave another count".into()))?;
            let mut per_seq = Vec::with_capacity(seqs.len());
            let mut offset = 0;
            for seq in seqs.iter_mut() {
                let n = seq.n_tokens;
                let past = seq.cache.len();
                let heads = |xs: &Tensor, n_heads: usize| -> Result<Tensor> {
                    Ok(xs
                        .narrow(0, offset, n)?
                        .reshape((n, n_heads, c.head_dim))?
                        .transpose(0, 1)?)
                };
                let q = self.rope.apply(&heads(&q, c.num_attention_heads)?, past)?;
                let k = self.rope.apply(&heads(&k, c.num_key_value_heads)?, past)?;
                let v = heads(&v, c.num_key_value_heads)?;
                let kv = seq.cache.write(layer_idx, &k, &v)?;
                per_seq.push(nn::attend_parts(&q, kv.parts())?);
                offset += n;
            }
            let attn_out = if per_seq.len() == 1 {
                per_seq.remove(0)
            } else {
                Tensor::cat(&per_seq, 0)?
            };
            let attn_out = attn
                .o_proj
                .forward_hooked(&attn_out, hook, layer_idx, Proj::O)?;
            xs = (residual + attn_out)?;
            let hs = layer.post_attention_layernorm.forward(&xs)?;
            let mlp = &layer.mlp;
            let [gate, up]: [Tensor; 2] = Linear::forward_each_hooked(
                &[(&mlp.gate_proj, Proj::Gate), (&mlp.up_proj, Proj::Up)],
                &hs,
                hook,
                layer_idx,
            )?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("two projections gave another count".into()))?;
            let down = mlp.down_proj.forward_hooked(
                &nn::silu_mul(&gate, &up)?,
                hook,
                layer_idx,
                Proj::Down,
            )?;
            xs = (xs + down)?;
        }
        for seq in seqs.iter_mut() {
            seq.cache.advance(seq.n_tokens);
        }
        let xs = match outputs {
            Outputs::None => return Ok(None),
            Outputs::All => xs,
            Outputs::LastOfEachSeq => {
                let mut last = Vec::with_capacity(seqs.len());
                let mut end = 0u32;
                for seq in seqs.iter() {
                    end += seq.n_tokens as u32;
                    last.push(end - 1);
                }
                xs.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?
            }
        };
        Ok(Some(self.lm_head.forward(&self.norm.forward(&xs)?)?))
    }
}
