//! vLLM's runtime LoRA routes, which platform teams use to hot-swap adapters:
//! `POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`, `GET /v1/lora_adapters`.
//! Response fields in the server's (alphabetical) order.

use serde::{Deserialize, Serialize};

/// `POST /v1/load_lora_adapter`: load the PEFT adapter at `lora_path` (under the server's
/// `--adapter-root`) as `lora_name`, replacing one of that name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadAdapterRequest {
    pub lora_name: String,
    pub lora_path: String,
}

/// `POST /v1/unload_lora_adapter`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnloadAdapterRequest {
    pub lora_name: String,
}

/// A loaded adapter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterInfo {
    /// Bytes of weights it holds.
    pub bytes: u64,
    /// When it was loaded (Unix seconds).
    pub created: u64,
    /// Counts loads under its name: a replaced adapter gets the next number.
    pub generation: u64,
    pub name: String,
    /// The directory it was loaded from.
    pub path: String,
    /// Two-step generation by default for its requests, from its metadata.
    #[serde(default)]
    pub two_step_default: Option<bool>,
}

/// `GET /v1/lora_adapters`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterList {
    pub data: Vec<AdapterInfo>,
    pub object: String,
}

/// The answer to a load or an unload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterChange {
    pub adapter: AdapterInfo,
    /// `lora_adapter`.
    pub object: String,
    /// `loaded` or `unloaded`.
    pub status: String,
}
