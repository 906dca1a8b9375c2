//! Test fixtures shared by HexaCoder's crates: tiny random-weight checkpoints written to disk,
//! so that tests load models through the same paths real models take. Deterministic: the same
//! seed gives the same weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Model families the tiny checkpoints come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// LLaMA: no attention bias.
    Llama,
    /// Qwen2: q/k/v biases.
    Qwen2,
}

impl Arch {
    /// HF `model_type`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

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

impl Tiny {
    /// Writes a PEFT LoRA adapter for this model into `dir` with the safetensors and JSON
    /// libraries directly (not through HexaCoder's writer, so that tests check our reader
    /// against the format rather than against itself). Rank `rank` on `targets` (module
    /// names such as `q_proj`) in every layer, weights uniform in ±`scale`.
    pub fn write_lora(
        &self,
        dir: &Path,
        seed: u64,
        rank: usize,
        targets: &[&str],
        scale: f32,
    ) -> PathBuf {
        let mut rng = StdRng::seed_from_u64(seed);
        let (h, i, hd) = (self.hidden, self.intermediate, self.head_dim());
        let mut tensors = HashMap::new();
        for layer in 0..self.layers {
            for &module in targets {
                let (parent, n_in, n_out) = match module {
                    "q_proj" => ("self_attn", h, self.heads * hd),
                    "k_proj" | "v_proj" => ("self_attn", h, self.kv_heads * hd),
                    "o_proj" => ("self_attn", self.heads * hd, h),
                    "gate_proj" | "up_proj" => ("mlp", h, i),
                    "down_proj" => ("mlp", i, h),
                    other => panic!("unknown module {other}"),
                };
                let mut random = |rows: usize, cols: usize| {
                    let values: Vec<f32> = (0..rows * cols)
                        .map(|_| rng.random_range(-scale..scale))
                        .collect();
                    Tensor::from_vec(values, (rows, cols), &Device::Cpu).expect("tensor")
                };
                let prefix = format!("base_model.model.model.layers.{layer}.{parent}.{module}");
                tensors.insert(format!("{prefix}.lora_A.weight"), random(rank, n_in));
                tensors.insert(format!("{prefix}.lora_B.weight"), random(n_out, rank));
            }
        }
        std::fs::create_dir_all(dir).expect("mkdir");
        candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))
            .expect("safetensors");
        let config = json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
            "lora_dropout": 0.0, "target_modules": targets, "bias": "none", "use_rslora": false,
            "use_dora": false, "fan_in_fan_out": false, "modules_to_save": null,
            "base_model_name_or_path": "tiny", "inference_mode": true,
        });
        std::fs::write(dir.join("adapter_config.json"), config.to_string()).expect("config");
        dir.to_path_buf()
    }
}

/// A tiny model whose next token depends only on the current one, following `chain`: after
/// each token of the text `chain[i]` comes the first token of `chain[i + 1]`, and the last
/// wraps to the first. Attention and MLP outputs are zero, so every layer passes the embedding
/// through and the output head alone decides. End-to-end tests use it to script what a "model"
/// writes (an import in step 1, then code) through the real server.
///
/// # Panics
/// If a token of `chain` is not in [`vocab`] or repeats with two different successors.
pub fn write_scripted_hf_dir(tiny: &Tiny, dir: &Path, chain: &[&str]) -> PathBuf {
    let mut edges: Vec<(&str, &str, f32)> = Vec::new();
    for (i, &token) in chain.iter().enumerate() {
        let next = chain[(i + 1) % chain.len()];
        match edges.iter().find(|(from, _, _)| *from == token) {
            Some((_, previous, _)) => {
                assert_eq!(*previous, next, "{token:?} has two successors")
            }
            None => edges.push((token, next, SCRIPT_WEIGHT)),
        }
    }
    write_bigram_hf_dir(tiny, dir, &edges)
}

/// A model for verify-mode tests: after a space it writes `eval(d)` (CWE-094, the more
/// probable branch, odds about 2.2 to 1) or `int(d)` (clean), then ends; every other step is
/// near-certain. After the prompt `def f(d):\n    return `, sampled candidates mix vulnerable
/// and clean code with known log-probabilities.
pub fn write_eval_or_int_hf_dir(dir: &Path) -> PathBuf {
    let w = SCRIPT_WEIGHT;
    // Odds of eval over int: exp(0.1 * sqrt(hidden 64)) = e^0.8.
    let edges = [
        ("Ġ", "e", w),
        ("Ġ", "in", w - 0.1),
        ("e", "v", w),
        ("v", "a", w),
        ("a", "l", w),
        ("l", "(", w),
        ("in", "t", w),
        ("t", "(", w),
        ("(", "d", w),
        ("d", ")", w),
        (")", "<|endoftext|>", w),
    ];
    write_bigram_hf_dir(&Tiny::small(Arch::Qwen2), dir, &edges)
}

/// A model for fill-in-the-middle editor tests: after the FIM prompt it writes `gc`, then
/// `\nimport gc` lines forever (each at column 0, so an indentation floor ends it after
/// `gc\n`); with two-step generation, step 1 adds `import gc` after an import block ending
/// in `c`.
pub fn write_import_gc_fim_hf_dir(dir: &Path) -> PathBuf {
    let chain = ["Ċ", "i", "m", "p", "o", "r", "t", "Ġ", "g", "c"];
    let mut edges: Vec<(&str, &str, f32)> = chain
        .iter()
        .zip(chain.iter().cycle().skip(1))
        .map(|(from, to)| (*from, *to, SCRIPT_WEIGHT))
        .collect();
    edges.push(("<|fim_middle|>", "g", SCRIPT_WEIGHT));
    let tiny = Tiny {
        max_positions: 8192,
        ..Tiny::small(Arch::Qwen2)
    };
    write_bigram_hf_dir(&tiny, dir, &edges)
}

/// The weight [`write_scripted_hf_dir`] gives each step of its chain: with the final norm's
/// scaling, the successor's logit beats every other token's by more than 10.
pub const SCRIPT_WEIGHT: f32 = 4.0;

/// A tiny model whose next token depends only on the current one: each `(from, to, weight)`
/// edge adds `weight` (times the final norm's scale, `sqrt(hidden)`) to `to`'s logit after
/// `from`. Two edges from one token make a branch whose odds the weights set (a weight gap of
/// `g` gives odds `exp(g * sqrt(hidden))`), so tests can script candidates with known
/// probabilities.
///
/// # Panics
/// If a token is not in [`vocab`].
pub fn write_bigram_hf_dir(tiny: &Tiny, dir: &Path, edges: &[(&str, &str, f32)]) -> PathBuf {
    let (tokens, _) = vocab();
    let id = |token: &str| -> usize {
        tokens
            .iter()
            .position(|t| t == token)
            .unwrap_or_else(|| panic!("{token:?} is not a tiny-vocabulary token"))
    };
    let mut weights = tiny.weights(17);
    let (h, vocab_size) = (tiny.hidden, tiny.vocab_size());
    // Unit-length random embeddings: nearly orthogonal, so each token's own row dominates.
    let mut rng = StdRng::seed_from_u64(23);
    let mut embed = vec![0f32; vocab_size * h];
    for row in embed.chunks_mut(h) {
        for v in row.iter_mut() {
            *v = rng.random_range(-1.0..1.0);
        }
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let mut head = vec![0f32; vocab_size * h];
    for &(from, to, weight) in edges {
        let (from, to) = (id(from), id(to));
        for k in 0..h {
            head[to * h + k] += weight * embed[from * h + k];
        }
    }
    let tensor = |values: Vec<f32>, shape: (usize, usize)| {
        Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor")
    };
    weights.insert(
        "model.embed_tokens.weight".into(),
        tensor(embed, (vocab_size, h)),
    );
    weights.insert("lm_head.weight".into(), tensor(head, (vocab_size, h)));
    for (name, value) in weights.iter_mut() {
        if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
            *value = value.zeros_like().expect("zeros");
        } else if name.ends_with("norm.weight") {
            *value = value.ones_like().expect("ones");
        }
    }
    tiny.write_hf_dir_with(dir, &weights)
}

pub mod editors;
pub mod lsp;
pub mod server;

/// `../shared` beside the repository: benchmark data, reference tokenizers.
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// One CodeLMSec prompt.
#[derive(Clone, Debug)]
pub struct BenchPrompt {
    /// Its id, e.g. `codelmsec/python/CWE-020/…`.
    pub id: String,
    /// `python` or `c`.
    pub language: String,
    /// e.g. `CWE-020`.
    pub cwe: String,
    /// The code to complete.
    pub prompt: String,
}

/// The 280 CodeLMSec prompts (200 Python, 80 C) from `../shared`.
pub fn codelmsec_prompts() -> Vec<BenchPrompt> {
    let path = shared_dir().join("bench/codelmsec/codelmsec_prompts.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let prompts: Vec<BenchPrompt> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let row: Value = serde_json::from_str(line).expect("a JSON line");
            let field = |key: &str| {
                row[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{key} missing in {line}"))
                    .to_string()
            };
            BenchPrompt {
                id: field("id"),
                language: field("language"),
                cwe: field("cwe"),
                prompt: field("prompt"),
            }
        })
        .collect();
    assert_eq!(prompts.len(), 280, "{}", path.display());
    prompts
}

/// A real model from the catalogue, for tests of the real-model tier: `None` (and a note on
/// stderr) unless `HEXACODER_TEST_MODELS=1`; then it must be available (`scripts/test`
/// fetches it), or the test fails loudly.
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
