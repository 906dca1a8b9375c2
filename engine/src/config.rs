//! The architecture-independent description of a decoder-only transformer.

/// Which model family a checkpoint belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// LLaMA and its descendants (SmolLM2, DeepSeek-Coder 1.x, CodeLlama).
    Llama,
    /// Qwen2 and Qwen2.5(-Coder): LLaMA plus a bias on q, k and v.
    Qwen2,
}

impl Arch {
    /// The name used by GGUF `general.architecture` and HF `model_type`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension `i` rotates with `i + d/2` (HF checkpoints, and GGUF qwen2).
    Half,
    /// Dimension `2i` rotates with `2i + 1`. llama.cpp's converter permutes LLaMA's q and k
    /// weights into this order, so GGUF llama checkpoints need it.
    Interleaved,
}

/// Hyper-parameters of a decoder, after reading `config.json` or GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerConfig {
    /// The family.
    pub arch: Arch,
    /// Rows of the embedding matrix.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RoPE pairing.
    pub rope_style: RopeStyle,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q, k and v carry a bias (qwen2).
    pub attention_bias: bool,
}

impl TransformerConfig {
    /// For projection outputs stored in another row order than HF checkpoints (q and k of GGUF
    /// LLaMA checkpoints, which llama.cpp's converter permutes for interleaved RoPE): for each
    /// of this model's output rows, the HF row it holds. `None` when the orders agree.
    ///
    /// PEFT adapters are written in HF order; `B`'s rows must follow this map to act on such a
    /// model, and the trainer maps them back when it exports.
    pub fn hf_rows(&self, proj: crate::nn::Proj) -> Option<Vec<u32>> {
        use crate::nn::Proj;
        let heads = match (self.rope_style, proj) {
            (RopeStyle::Interleaved, Proj::Q) => self.num_attention_heads,
            (RopeStyle::Interleaved, Proj::K) => self.num_key_value_heads,
            _ => return None,
        };
        let d = self.head_dim;
        Some(
            (0..heads * d)
                .map(|row| {
                    let (head, r) = (row / d, row % d);
                    (head * d + (r % 2) * (d / 2) + r / 2) as u32
                })
                .collect(),
        )
    }

    /// Checks the relations between sizes that the model code relies on.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        Ok(())
    }
}
