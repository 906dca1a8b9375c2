//! Tokenizers: loaded from `tokenizer.json`, or built from GGUF metadata.
//!
//! A GGUF file carries the BPE vocabulary, merges, token types and the name of its
//! pre-tokenizer (`tokenizer.ggml.pre`). We build from them the pieces that HF's converters
//! write into `tokenizer.json` (BPE model, normalizer, pre-tokenizer, byte-level decoder,
//! added tokens) with the `tokenizers` crate's own types, so encoding is the reference
//! implementation rather than a re-implementation. The integration tests compare ids against
//! independently built `tokenizer.json` files.
//!
//! Decoding for generation goes through a per-token byte table instead: a token may end in
//! the middle of a UTF-8 character, and streaming must hold such bytes back, not emit U+FFFD.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};

use crate::load::gguf::GgufFile;
use crate::{Error, Result};

/// A tokenizer plus the facts generation needs: byte strings, special and end tokens.
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// Same as `inner`, but special tokens in the text are encoded as plain text. A full copy
    /// of `inner` (150 ms of CPU for Qwen's vocabulary), so it is made after the load, on a
    /// thread of its own, or by the first call that needs it, whichever comes first.
    plain: Arc<OnceLock<tokenizers::Tokenizer>>,
    token_bytes: Vec<Vec<u8>>,
    special: HashSet<u32>,
    end_of_generation: HashSet<u32>,
    bos: Option<u32>,
    add_bos: bool,
}

/// GGUF `tokenizer.ggml.token_type` values.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Token texts that end generation in every family we know, in addition to the declared EOS
/// (llama.cpp treats the same set as end-of-generation).
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<｜end▁of▁sentence｜>",
    "<EOT>",
    "</s>",
    "<end_of_turn>",
];

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let model = gguf.opt_str("tokenizer.ggml.model")?.unwrap_or_default();
        if model != "gpt2" {
            return Err(Error::Unsupported(format!(
                "GGUF tokenizer model {model:?} in {}; only BPE (\"gpt2\") tokenizers can be built from GGUF metadata, \
                 use an HF directory with tokenizer.json for SentencePiece models",
                path.display()
            )));
        }
        let tokens: Vec<&str> = gguf
            .array("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.to_string().map(|s| s.as_str()))
            .collect::<Result<_, _>>()
            .map_err(|_| Error::invalid_model(path, "tokenizer.ggml.tokens holds a non-string"))?;
        let types: Vec<i32> = match gguf.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .and_then(|vs| vs.iter().map(|v| v.to_i32()).collect::<Result<Vec<_>, _>>())
                .map_err(|_| {
                    Error::invalid_model(path, "tokenizer.ggml.token_type is not an i32 array")
                })?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Error::invalid_model(
                path,
                format!("{} token types for {} tokens", types.len(), tokens.len()),
            ));
        }
        let merges: tokenizers::models::bpe::Merges = gguf
            .array("tokenizer.ggml.merges")?
            .iter()
            .map(|v| {
                let merge = v
                    .to_string()
                    .map_err(|_| Error::invalid_model(path, "a merge is not a string"))?;
                let (left, right) = merge.split_once(' ').ok_or_else(|| {
                    Error::invalid_model(path, format!("merge {merge:?} has no space"))
                })?;
                Ok((left.to_string(), right.to_string()))
            })
            .collect::<Result<_>>()?;
        let pre = gguf.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let (normalizer, pre_tokenizer) = pre_tokenizer_for(pre)?;
        // A token text listed twice keeps its last id, as in `tokenizer.json`; the earlier id
        // then has no text of its own.
        let mut vocab = ahash::AHashMap::with_capacity(tokens.len());
        let mut shadowed = HashSet::new();
        for (id, token) in tokens.iter().enumerate() {
            if let Some(earlier) = vocab.insert(token.to_string(), id as u32) {
                shadowed.insert(earlier);
            }
        }
        let texts: Vec<Option<&str>> = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (!shadowed.contains(&(id as u32))).then_some(*token))
            .collect();
        let added_tokens: Vec<tokenizers::AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| **ty == TOKEN_TYPE_CONTROL || **ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(token, ty)| {
                tokenizers::AddedToken::from(token.to_string(), *ty == TOKEN_TYPE_CONTROL)
                    .single_word(false)
                    .lstrip(false)
                    .rstrip(false)
                    .normalized(false)
            })
            .collect();
        // The pieces HF's converters would write into tokenizer.json, built directly: the
        // JSON round trip took 0.47 s of a 1.3 s load for Qwen's 151,646 tokens.
        let building = |e: &dyn std::fmt::Display| {
            Error::Tokenizer(format!("building the tokenizer of {}: {e}", path.display()))
        };
        // The BPE cache stays off; see `finish`.
        let bpe = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab, merges)
            .cache_capacity(0)
            .build()
            .map_err(|e| building(&e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        if !normalizer.is_null() {
            let normalizer: tokenizers::NormalizerWrapper =
                serde_json::from_value(normalizer).map_err(|e| building(&e))?;
            inner
                .with_normalizer(Some(normalizer))
                .map_err(|e| building(&e))?;
        }
        let pre_tokenizer: tokenizers::PreTokenizerWrapper =
            serde_json::from_value(pre_tokenizer).map_err(|e| building(&e))?;
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::new(
            true, true, true,
        )));
        inner.add_tokens(added_tokens).map_err(|e| building(&e))?;
        let mut end_of_generation = HashSet::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = gguf.opt_usize(key)? {
                end_of_generation.insert(id as u32);
            }
        }
        let bos = gguf
            .opt_usize("tokenizer.ggml.bos_token_id")?
            .map(|id| id as u32);
        let add_bos = gguf
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false);
        Self::finish(inner, Some(&texts), end_of_generation, bos, add_bos)
    }

    /// Loads `tokenizer.json` from an HF directory, with `tokenizer_config.json` and
    /// `generation_config.json` for BOS/EOS when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("reading {}: {e}", path.display())))?;
        // `tokenizers` keeps BPE words in a thread-local map keyed by tokenizer instance and
        // never frees an instance's entries when it is dropped: each tokenizer built and used
        // left up to 10,000 words on every thread that encoded with it (the `gguf_tokenizer`
        // fuzzer ran out of memory). Without the cache a 1,857-token prompt encodes in 3.8 ms
        // instead of 2.1 ms, far below its prefill. (`from_gguf` builds its BPE without one.)
        let mut model = inner.get_model().clone();
        if let tokenizers::models::ModelWrapper::BPE(bpe) = &mut model {
            bpe.resize_cache(0);
        }
        inner.with_model(model);
        let read_json = |name: &str| -> Option<Value> {
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            serde_json::from_str(&text).ok()
        };
        let token_config = read_json("tokenizer_config.json").unwrap_or(Value::Null);
        let generation_config = read_json("generation_config.json").unwrap_or(Value::Null);
        let token_text = |v: &Value| -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let mut end_of_generation = HashSet::new();
        if let Some(eos) = token_config
            .get("eos_token")
            .and_then(token_text)
            .and_then(|t| inner.token_to_id(&t))
        {
            end_of_generation.insert(eos);
        }
        match generation_config.get("eos_token_id") {
            Some(Value::Number(n)) => end_of_generation.extend(n.as_u64().map(|id| id as u32)),
            Some(Value::Array(ids)) => {
                end_of_generation.extend(ids.iter().filter_map(|v| v.as_u64()).map(|id| id as u32))
            }
            _ => {}
        }
        let bos = token_config
            .get("bos_token")
            .and_then(token_text)
            .and_then(|t| inner.token_to_id(&t));
        let add_bos = token_config
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Self::finish(inner, None, end_of_generation, bos, add_bos)
    }

    /// `texts`: each id's token text where the caller has them (the GGUF's list), which
    /// spares a lookup and a copy per token.
    fn finish(
        inner: tokenizers::Tokenizer,
        texts: Option<&[Option<&str>]>,
        mut end_of_generation: HashSet<u32>,
        bos: Option<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        let special: HashSet<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        for text in END_OF_GENERATION_TEXTS {
            if let Some(id) = inner.token_to_id(text) {
                end_of_generation.insert(id);
            }
        }
        let token_bytes = token_byte_table(&inner, texts)?;
        let (inner, plain) = (Arc::new(inner), Arc::new(OnceLock::new()));
        let (source, target) = (inner.clone(), plain.clone());
        // If no thread can be started, the first plain encoding makes the copy.
        let _ = std::thread::Builder::new()
            .name("tokenizer-copy".into())
            .spawn(move || {
                target.get_or_init(|| plain_copy(&source));
            });
        Ok(Tokenizer {
            inner,
            plain,
            token_bytes,
            special,
            end_of_generation,
            bos,
            add_bos,
        })
    }

    /// Token ids of `text`; special-token texts in it become special tokens (as OpenAI-compatible
    /// servers do for completion prompts). No BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode_with(&self.inner, text)
    }

    /// Token ids of `text` with special-token texts encoded as ordinary text, for user content
    /// placed between template tokens (a FIM prefix must not be able to inject `<|fim_middle|>`).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        encode_with(self.plain.get_or_init(|| plain_copy(&self.inner)), text)
    }

    /// The text of `ids` with special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes token `id` stands for in generated text (empty for special tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        match self.token_bytes.get(id as usize) {
            Some(bytes) if !self.special.contains(&id) => bytes,
            _ => &[],
        }
    }

    /// The id of a token given by its text (`"<|fim_prefix|>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// The text of a token as written in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether generating `id` ends a completion.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// Ids that end generation.
    pub fn end_of_generation(&self) -> &HashSet<u32> {
        &self.end_of_generation
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The model's BOS token, whether or not prompts start with it (chat templates use it).
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The BOS token to prepend to prompts, if the model wants one.
    pub fn bos_to_add(&self) -> Option<u32> {
        if self.add_bos { self.bos } else { None }
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// `tokenizer` with special-token texts encoded as ordinary text.
fn plain_copy(tokenizer: &tokenizers::Tokenizer) -> tokenizers::Tokenizer {
    let mut plain = tokenizer.clone();
    plain.set_encode_special_tokens(true);
    plain
}

fn encode_with(tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    let encoding = tokenizer
        .encode_fast(text, false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(encoding.get_ids().to_vec())
}

/// The normalizer and pre-tokenizer that llama.cpp's `tokenizer.ggml.pre` names stand for,
/// as HF's `tokenizer.json` files of those models define them.
fn pre_tokenizer_for(pre: &str) -> Result<(Value, Value)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    let sequence = |items: Vec<Value>| json!({"type": "Sequence", "pretokenizers": items});
    Ok(match pre {
        "qwen2" => (
            json!({"type": "NFC"}),
            sequence(vec![
                split(
                    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
                ),
                byte_level(false),
            ]),
        ),
        "llama-bpe" | "llama3" => (
            Value::Null,
            sequence(vec![
                split(
                    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
                ),
                byte_level(false),
            ]),
        ),
        "smollm" | "starcoder" | "refact" => (
            Value::Null,
            sequence(vec![
                json!({"type": "Digits", "individual_digits": true}),
                byte_level(true),
            ]),
        ),
        "deepseek-coder" => (
            Value::Null,
            sequence(vec![
                split(r"[\r\n]"),
                split(r"\s?\p{L}+"),
                split(r"\s?\p{P}+"),
                split(r"[一-龥ࠀ-一가-퟿]+"),
                split(r"\p{N}"),
                byte_level(false),
            ]),
        ),
        "default" | "gpt-2" | "gpt2" => (Value::Null, byte_level(true)),
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF pre-tokenizer {other:?}; supported: qwen2, llama-bpe, smollm, starcoder, refact, deepseek-coder, gpt-2"
            )));
        }
    })
}

/// GPT-2's reversible byte-to-character map: printable bytes stand for themselves, the rest
/// are shifted above U+0100.
fn byte_level_char_to_byte() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u8> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<char> = printable.iter().map(|&b| b as char).collect();
    let mut shifted = 0u32;
    for byte in 0..=255u8 {
        if !printable.contains(&byte) {
            printable.push(byte);
            chars.push(char::from_u32(256 + shifted).expect("valid code point"));
            shifted += 1;
        }
    }
    chars.into_iter().zip(printable).collect()
}

/// The bytes every token decodes to. Byte-level BPE maps token characters back to bytes;
/// SentencePiece-style vocabularies use `▁` for space and `<0xNN>` byte tokens; anything
/// else falls back to decoding each token alone.
fn token_byte_table(
    tokenizer: &tokenizers::Tokenizer,
    texts: Option<&[Option<&str>]>,
) -> Result<Vec<Vec<u8>>> {
    let decoder = tokenizer
        .get_decoder()
        .map(|d| serde_json::to_value(d).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let decoder_text = decoder.to_string();
    let byte_level = decoder_text.contains("\"ByteLevel\"");
    let metaspace = decoder_text.contains("ByteFallback") || decoder_text.contains("Metaspace");
    let vocab_size = tokenizer.get_vocab_size(true);
    let added = tokenizer.get_added_tokens_decoder();
    let char_to_byte = byte_level_char_to_byte();
    let mut table = Vec::with_capacity(vocab_size);
    for id in 0..vocab_size as u32 {
        if let Some(token) = added.get(&id) {
            table.push(token.content.as_bytes().to_vec());
            continue;
        }
        let text = match texts.and_then(|texts| texts.get(id as usize)) {
            Some(text) => text.map(std::borrow::Cow::Borrowed),
            None => tokenizer.id_to_token(id).map(std::borrow::Cow::Owned),
        };
        let Some(text) = text else {
            table.push(Vec::new());
            continue;
        };
        let bytes = if byte_level {
            text.chars()
                .map(|c| char_to_byte.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
        } else if metaspace {
            match text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
                Some(hex) if hex.len() == 2 => u8::from_str_radix(hex, 16).ok().map(|b| vec![b]),
                _ => Some(text.replace('▁', " ").into_bytes()),
            }
        } else {
            None
        };
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => tokenizer
                .decode(&[id], false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .into_bytes(),
        };
        table.push(bytes);
    }
    Ok(table)
}
