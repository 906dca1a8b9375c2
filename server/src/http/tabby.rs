//! Tabby's completion API under `/tabby`, so Tabby's editor extensions work with the
//! endpoint `http://HOST:PORT/tabby`. Declarations and snippets become repository context.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hexacoder_api as api;
use hexacoder_engine::{ContextFile, GenerateRequest};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiJson};
use super::params;
use super::response::response_id;
use super::run::Run;

/// Tabby's defaults: `max_decoding_tokens` and `sampling_temperature`.
const MAX_TOKENS: usize = 64;
const TEMPERATURE: f64 = 0.1;

#[derive(Debug, Deserialize)]
pub struct TabbyRequest {
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub segments: Option<Segments>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct Segments {
    pub prefix: String,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub declarations: Vec<Snippet>,
    #[serde(default)]
    pub relevant_snippets_from_changed_files: Vec<Snippet>,
    #[serde(default)]
    pub relevant_snippets_from_recently_opened_files: Vec<Snippet>,
}

#[derive(Debug, Deserialize)]
pub struct Snippet {
    pub filepath: String,
    pub body: String,
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<TabbyRequest>,
) -> Result<Response, ApiError> {
    let segments = req
        .segments
        .ok_or_else(|| ApiError::bad_param("segments", "`segments.prefix` is required."))?;
    let sampling = params::sampling(
        Some(req.temperature.unwrap_or(TEMPERATURE)),
        None,
        None,
        req.seed,
    )?;
    let suffix = segments
        .suffix
        .filter(|s| !s.is_empty() && state.model.has_fim);
    let context_files = segments
        .declarations
        .into_iter()
        .chain(segments.relevant_snippets_from_changed_files)
        .chain(segments.relevant_snippets_from_recently_opened_files)
        .map(|s| ContextFile {
            name: s.filepath,
            text: s.body,
        })
        .collect();
    let _ = req.language;
    let request = GenerateRequest {
        prompt: segments.prefix,
        suffix,
        max_tokens: MAX_TOKENS,
        sampling,
        n: 1,
        // A completion ends with the block it started.
        stop: vec!["\n\n\n".into()],
        top_logprobs: 0,
        context_files,
        logit_bias: vec![],
        adapter: None,
        ignore_eos: false,
        ..Default::default()
    };
    let generation = Run::start(&state, "/tabby/v1/completions", vec![request])?
        .collect()
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("no result"))?;
    let text = generation
        .samples
        .first()
        .map(|s| s.text.clone())
        .unwrap_or_default();
    Ok(axum::Json(api::TabbyCompletion {
        choices: vec![api::TabbyChoice { index: 0, text }],
        id: response_id("cmpl"),
    })
    .into_response())
}

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(api::TabbyHealth {
        accelerators: Vec::new(),
        arch: std::env::consts::ARCH.into(),
        cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        cpu_info: String::new(),
        device: "cpu".into(),
        model: state.model.id.clone(),
        version: api::TabbyVersion {
            git_describe: concat!("hexacoder-", env!("CARGO_PKG_VERSION")).into(),
        },
    })
    .into_response()
}

/// Tabby's editor telemetry: views, selections and dismissals count as shown, accepted and
/// rejected suggestions; other event types are accepted and dropped.
pub async fn events(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> StatusCode {
    let kind = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string));
    let event = match kind.as_deref() {
        Some("view") => "show",
        Some("select") => "accept",
        Some("dismiss") => "reject",
        _ => return StatusCode::OK,
    };
    super::events::count(&state, event, &state.model.id, "unknown", "inline");
    StatusCode::OK
}
