//! Editor telemetry: what happened to a shown suggestion. `hexacoder-lsp` reports every shown,
//! accepted and rejected suggestion here, which gives platform teams the acceptance rate per
//! adapter and generation mode.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use hexacoder_api::EditorEvent;

use super::AppState;
use super::error::{ApiError, ApiJson};

const EVENTS: [&str; 3] = ["show", "accept", "reject"];
const KINDS: [&str; 2] = ["inline", "popup"];

pub async fn record(
    State(state): State<Arc<AppState>>,
    ApiJson(event): ApiJson<EditorEvent>,
) -> Result<StatusCode, ApiError> {
    if !EVENTS.contains(&event.event.as_str()) {
        return Err(ApiError::bad_param(
            "event",
            format!("{:?} is not one of {EVENTS:?}.", event.event),
        ));
    }
    if !KINDS.contains(&event.kind.as_str()) {
        return Err(ApiError::bad_param(
            "kind",
            format!("{:?} is not one of {KINDS:?}.", event.kind),
        ));
    }
    let mode = if event.two_step {
        "two_step"
    } else {
        "one_step"
    };
    count(&state, &event.event, &event.model, mode, &event.kind);
    tracing::debug!(event = %event.event, id = %event.completion_id, model = %event.model, mode, kind = %event.kind, "editor event");
    Ok(StatusCode::NO_CONTENT)
}

/// Counts one event; models the server does not serve (any more) share one label, so that
/// clients cannot grow the metric without bound.
pub fn count(state: &AppState, event: &str, model: &str, mode: &str, kind: &str) {
    let model = if model == state.model.id || state.adapters.get(model).is_some() {
        model
    } else {
        "other"
    };
    state
        .metrics
        .completion_events
        .with_label_values(&[event, model, mode, kind])
        .inc();
}
