//! `GET /v1/models`, `GET /v1/models/{id}` and `GET /health`. Response fields in the server's
//! (alphabetical) order; read from other servers, everything but `id` may be missing.

use serde::{Deserialize, Serialize};

/// `{"object": "list", "data": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub data: Vec<Model>,
    #[serde(default)]
    pub object: Option<String>,
}

/// One served model or adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    #[serde(default)]
    pub created: Option<u64>,
    /// Ours: what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hexacoder: Option<ModelDetails>,
    pub id: String,
    /// vLLM's: the context length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u64>,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub owned_by: Option<String>,
    /// The base model an adapter applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Where an adapter was loaded from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

/// A model's `hexacoder` object: `base` with `fill_in_the_middle`, or `lora` with its
/// generation, size and two-step default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_in_the_middle: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// `base` or `lora`.
    pub kind: String,
    /// An adapter's two-step default: `null` when its metadata has none (absent on a base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_step_default: Option<Option<bool>>,
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub model: String,
    pub requests_running: u64,
    pub requests_waiting: u64,
    /// `ok`, or `shutting_down` (with 503).
    pub status: String,
}
