//! OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.

use serde::{Deserialize, Serialize};

/// The body of every error response. Fields in the server's (alphabetical) order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A string in OpenAI's and ours; some servers send a number.
    #[serde(default)]
    pub code: Option<serde_json::Value>,
    pub message: String,
    /// The request field at fault.
    #[serde(default)]
    pub param: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}
