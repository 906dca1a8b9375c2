//! `POST /infill`: llama-server's fill-in-the-middle route, which llama.vim and llama.vscode
//! call. Fields in the server's (alphabetical) order.

use serde::{Deserialize, Serialize};

use crate::completions::HexacoderChoice;

/// The final object: the whole completion, or, streamed, the last event (`content` empty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InfillResponse {
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub has_new_line: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hexacoder: Option<HexacoderChoice>,
    #[serde(default)]
    pub id_slot: i64,
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub stop: bool,
    /// `eos`, `word`, `limit` or `none`.
    #[serde(default)]
    pub stop_type: String,
    /// The stop string that ended it; empty otherwise.
    #[serde(default)]
    pub stopping_word: String,
    #[serde(default)]
    pub timings: InfillTimings,
    /// Prompt tokens whose KV state was reused.
    #[serde(default)]
    pub tokens_cached: u64,
    #[serde(default)]
    pub tokens_evaluated: u64,
    #[serde(default)]
    pub tokens_predicted: u64,
    #[serde(default)]
    pub truncated: bool,
}

/// llama-server's `timings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InfillTimings {
    #[serde(default)]
    pub cache_n: u64,
    #[serde(default)]
    pub predicted_ms: f64,
    #[serde(default)]
    pub predicted_n: u64,
    #[serde(default)]
    pub predicted_per_second: f64,
    #[serde(default)]
    pub predicted_per_token_ms: f64,
    #[serde(default)]
    pub prompt_ms: f64,
    /// Prompt tokens computed (not reused).
    #[serde(default)]
    pub prompt_n: u64,
    #[serde(default)]
    pub prompt_per_second: f64,
    #[serde(default)]
    pub prompt_per_token_ms: f64,
}

/// A streamed piece of the completion (before the final object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InfillChunk {
    pub content: String,
    /// Two-step: the imports edit, before any code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hexacoder: Option<HexacoderChoice>,
    #[serde(default)]
    pub id_slot: i64,
    #[serde(default)]
    pub index: u32,
    pub stop: bool,
}
