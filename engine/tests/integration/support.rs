//! Tiny random-weight checkpoints written to disk, so tests load them through the real paths.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use hexacoder_engine::Engine;
use hexacoder_engine::config::Arch;
use hexacoder_engine::fim::FimSetting;
use hexacoder_engine::hub::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions, Requantize};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// GPT-2 byte-level characters of printable ASCII, `\n`, and a few merges, plus special
/// tokens. Every token is printable, so random models produce readable text.
pub fn vocab() -> (Vec<String>, Vec<(String, String)>) {
    let byte_char = |b: u8| -> String {
        match b {
            b' ' => "Ġ".into(),
            b'\n' => "Ċ".into(),
            b => (b as char).to_string(),
        }
    };
    let mut tokens: Vec<String> = (0x20u8..=0x7e).chain([b'\n']).map(byte_char).collect();
    let merges: Vec<(String, String)> = [
        ("d", "e"),
        ("de", "f"),
        ("Ġ", "Ġ"),
        ("ĠĠ", "ĠĠ"),
        ("r", "e"),
        ("re", "t"),
        ("i", "n"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.extend(
        [
            "<|endoftext|>",
            "<|fim_prefix|>",
            "<|fim_suffix|>",
            "<|fim_middle|>",
        ]
        .map(String::from),
    );
    (tokens, merges)
}

pub const SPECIAL: [&str; 4] = [
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
];

/// The `tokenizer.json` HF would write for [`vocab`] with the `smollm` pre-tokenizer.
pub fn tokenizer_json() -> Value {
    let (tokens, merges) = vocab();
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = SPECIAL
        .iter()
        .map(|t| {
            json!({"id": tokens.iter().position(|x| x == t), "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()},
    })
}

/// Sizes of a tiny model. k-quants need rows that are multiples of 256, hence `hidden`.
#[derive(Clone, Copy, Debug)]
pub struct Tiny {
    pub arch: Arch,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tied: bool,
    pub max_positions: usize,
}

impl Tiny {
    pub fn small(arch: Arch) -> Self {
        Tiny {
            arch,
            hidden: 64,
            intermediate: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            tied: false,
            max_positions: 256,
        }
    }

    pub fn quantizable(arch: Arch) -> Self {
        Tiny {
            arch,
            hidden: 256,
            intermediate: 512,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            tied: false,
            max_positions: 256,
        }
    }

    pub fn vocab_size(&self) -> usize {
        vocab().0.len()
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    pub fn config_json(&self) -> Value {
        json!({
            "model_type": self.arch.name(),
            "vocab_size": self.vocab_size(),
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "max_position_embeddings": self.max_positions,
            "tie_word_embeddings": self.tied,
            // Fields candle-transformers' qwen2 config requires.
            "sliding_window": self.max_positions,
            "max_window_layers": self.layers,
            "use_sliding_window": false,
            "hidden_act": "silu",
        })
    }

    /// HF tensor names and shapes.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, hd) = (self.hidden, self.intermediate, self.head_dim());
        let mut res = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size(), h],
        )];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            res.push((format!("{p}.input_layernorm.weight"), vec![h]));
            res.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            res.push((
                format!("{p}.self_attn.q_proj.weight"),
                vec![self.heads * hd, h],
            ));
            res.push((
                format!("{p}.self_attn.k_proj.weight"),
                vec![self.kv_heads * hd, h],
            ));
            res.push((
                format!("{p}.self_attn.v_proj.weight"),
                vec![self.kv_heads * hd, h],
            ));
            res.push((
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, self.heads * hd],
            ));
            if self.arch == Arch::Qwen2 {
                res.push((format!("{p}.self_attn.q_proj.bias"), vec![self.heads * hd]));
                res.push((
                    format!("{p}.self_attn.k_proj.bias"),
                    vec![self.kv_heads * hd],
                ));
                res.push((
                    format!("{p}.self_attn.v_proj.bias"),
                    vec![self.kv_heads * hd],
                ));
            }
            res.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            res.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            res.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        res.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tied {
            res.push(("lm_head.weight".to_string(), vec![self.vocab_size(), h]));
        }
        res
    }

    /// Deterministic random weights: norms near 1, matrices with std 1/sqrt(fan_in).
    pub fn weights(&self, seed: u64) -> HashMap<String, Tensor> {
        let mut rng = StdRng::seed_from_u64(seed);
        self.shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = if name.ends_with("norm.weight") {
                    (0..n).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
                } else {
                    let scale = if shape.len() == 2 {
                        2.0 / (shape[1] as f32).sqrt()
                    } else {
                        0.1
                    };
                    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
                };
                let tensor = Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor");
                (name, tensor)
            })
            .collect()
    }

    /// Writes an HF checkpoint directory and returns it.
    pub fn write_hf_dir(&self, dir: &Path, seed: u64) -> PathBuf {
        self.write_hf_dir_with(dir, &self.weights(seed))
    }

    /// Writes an HF checkpoint directory with these weights.
    pub fn write_hf_dir_with(&self, dir: &Path, weights: &HashMap<String, Tensor>) -> PathBuf {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join("config.json"), self.config_json().to_string()).expect("config");
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string())
            .expect("tokenizer");
        std::fs::write(
            dir.join("tokenizer_config.json"),
            json!({"eos_token": "<|endoftext|>"}).to_string(),
        )
        .expect("tokenizer config");
        candle_core::safetensors::save(weights, dir.join("model.safetensors"))
            .expect("safetensors");
        dir.to_path_buf()
    }
}

pub fn options() -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        max_context: None,
        requantize: Requantize::Keep,
        fim: FimSetting::Auto,
        prefix_cache_bytes: 64 << 20,
        prefill_chunk: 512,
        q8_kernel: hexacoder_engine::nn::Q8Kernel::Fastest,
    }
}

/// A tiny engine loaded from a fresh HF directory.
pub fn tiny_engine(tiny: Tiny, seed: u64, options: &LoadOptions) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny.write_hf_dir(&dir.path().join("model"), seed);
    let engine = load::load(&ModelFiles::HfDir(path), options).expect("load tiny model");
    (dir, engine)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).expect("f32") - b.to_dtype(DType::F32).expect("f32"))
        .expect("sub")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flatten")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar")
}

/// Real models, fetched by `.ci/run` (or `hexacoder-server fetch`). Tests that need them run
/// when `HEXACODER_TEST_MODELS=1` and fail loudly if the model is missing then.
pub fn real_model(id: &str) -> Option<PathBuf> {
    if std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() != Some("1") {
        eprintln!("skipping: set HEXACODER_TEST_MODELS=1 (and fetch {id}) to run real-model tests");
        return None;
    }
    let model = hexacoder_catalog::find(id).expect("catalogue id");
    let path = hexacoder_catalog::ensure(
        model,
        &hexacoder_catalog::cache_dir(),
        hexacoder_catalog::Progress::Quiet,
    )
    .unwrap_or_else(|e| panic!("HEXACODER_TEST_MODELS=1 but {id} is not available: {e}"));
    Some(path)
}

pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}
