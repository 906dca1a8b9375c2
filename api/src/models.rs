//! `GET /v1/models`.

use serde::{Deserialize, Serialize};

/// `{"object": "list", "data": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    #[serde(default)]
    pub object: Option<String>,
    pub data: Vec<Model>,
}

/// One served model or adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub owned_by: Option<String>,
    /// Ours: the base model an adapter applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}
