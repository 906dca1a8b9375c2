//! Fill-in-the-middle prompts: `<prefix-token> prefix <suffix-token> suffix <middle-token>`
//! (the PSM order every supported family was trained with).

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The three FIM control tokens of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FimTemplate {
    prefix: u32,
    suffix: u32,
    middle: u32,
}

/// How to choose the FIM template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FimSetting {
    /// From GGUF metadata or the tokenizer's known special tokens.
    Auto,
    /// No FIM, even if the model has the tokens.
    Off,
    /// These token texts, in prefix, suffix, middle order.
    Tokens {
        /// e.g. `<|fim_prefix|>`.
        prefix: String,
        /// e.g. `<|fim_suffix|>`.
        suffix: String,
        /// e.g. `<|fim_middle|>`.
        middle: String,
    },
}

/// Token texts of known families: Qwen2.5-Coder, StarCoder/SantaCoder, DeepSeek-Coder, CodeLlama.
const KNOWN: &[[&str; 3]] = &[
    ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
    ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
    ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
    ["▁<PRE>", "▁<SUF>", "▁<MID>"],
];

impl FimTemplate {
    /// Picks the template `setting` asks for; `declared` are ids from model metadata
    /// (GGUF `tokenizer.ggml.fim_{pre,suf,mid}_token_id`), preferred when complete.
    pub fn choose(
        setting: &FimSetting,
        tokenizer: &Tokenizer,
        declared: [Option<u32>; 3],
    ) -> Result<Option<Self>> {
        match setting {
            FimSetting::Off => Ok(None),
            FimSetting::Tokens {
                prefix,
                suffix,
                middle,
            } => {
                let id = |text: &str| {
                    tokenizer.token_id(text).ok_or_else(|| {
                        Error::InvalidRequest(format!(
                            "FIM token {text:?} is not in the vocabulary"
                        ))
                    })
                };
                Ok(Some(FimTemplate {
                    prefix: id(prefix)?,
                    suffix: id(suffix)?,
                    middle: id(middle)?,
                }))
            }
            FimSetting::Auto => {
                if let [Some(prefix), Some(suffix), Some(middle)] = declared {
                    return Ok(Some(FimTemplate {
                        prefix,
                        suffix,
                        middle,
                    }));
                }
                Ok(KNOWN.iter().find_map(|[p, s, m]| {
                    Some(FimTemplate {
                        prefix: tokenizer.token_id(p)?,
                        suffix: tokenizer.token_id(s)?,
                        middle: tokenizer.token_id(m)?,
                    })
                }))
            }
        }
    }

    /// The prompt for filling between `prefix` and `suffix`. User text is encoded with
    /// special tokens disabled so it cannot forge the template.
    pub fn encode(&self, tokenizer: &Tokenizer, prefix: &str, suffix: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_prefix(tokenizer, prefix)?;
        ids.push(self.suffix);
        ids.extend(tokenizer.encode_plain(suffix)?);
        ids.push(self.middle);
        Ok(ids)
    }

    /// The opening of a FIM prompt, `<prefix-token> prefix`: what [`FimTemplate::encode`]
    /// starts with for any suffix.
    pub fn encode_prefix(&self, tokenizer: &Tokenizer, prefix: &str) -> Result<Vec<u32>> {
        let mut ids = vec![self.prefix];
        ids.extend(tokenizer.encode_plain(prefix)?);
        Ok(ids)
    }

    /// The `(prefix, suffix, middle)` token ids.
    pub fn ids(&self) -> (u32, u32, u32) {
        (self.prefix, self.suffix, self.middle)
    }
}
