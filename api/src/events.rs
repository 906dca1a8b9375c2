//! `POST /v1/hexacoder/events`: what happened to a shown suggestion, which the editor bridge
//! reports so that platform teams see acceptance rates per adapter and generation mode.

use serde::{Deserialize, Serialize};

/// One editor event. Unknown fields are refused: a misspelt field would silently skew the
/// counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditorEvent {
    /// `show`, `accept` or `reject`.
    pub event: String,
    /// The response id of the completion.
    pub completion_id: String,
    /// The model or adapter that produced it.
    pub model: String,
    /// Whether two-step generation produced it.
    #[serde(default)]
    pub two_step: bool,
    /// `inline` (ghost text) or `popup` (completion menu).
    #[serde(default = "inline")]
    pub kind: String,
}

fn inline() -> String {
    "inline".into()
}
