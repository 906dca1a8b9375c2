//! `POST /v1/chat/completions`: messages rendered with the model's chat template, then
//! generated like a completion.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hexacoder_api as api;
use hexacoder_engine::{GenerateRequest, SharedAdapter};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiBody, ApiError};
use super::params::{self, CommonFields};
use super::response::response_id;
use super::response::{Usage, adapter_header, model_label, token_string};
use super::run::{Run, RunEvent, openai_finish_reason};
use super::{AppState, sse};
use crate::chat_template::Message;
use crate::time::unix_now;

/// Reply length when the request sets none, clamped to what the context leaves.
const DEFAULT_MAX_TOKENS: usize = 1024;

/// `/v1/chat/completions`' own fields, beside [`CommonFields`].
#[derive(Debug, Deserialize)]
pub struct ChatFields {
    pub messages: Vec<WireMessage>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of content parts")]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

fn messages(wire: Vec<WireMessage>) -> Result<Vec<Message>, ApiError> {
    if wire.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "`messages` must not be empty.",
        ));
    }
    wire.into_iter()
        .enumerate()
        .map(|(i, m)| {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::bad_param(
                    &format!("messages[{i}].role"),
                    format!(
                        "Unknown role {:?}; expected one of {}.",
                        m.role,
                        ROLES.join(", ")
                    ),
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::bad_param(
                                    &format!("messages[{i}].content[{j}]"),
                                    format!("Only text content parts are supported, got {kind:?}."),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            Ok(Message {
                role: m.role,
                content,
            })
        })
        .collect()
}

struct Plan {
    adapter: Option<SharedAdapter>,
    request: GenerateRequest,
    top_logprobs: Option<usize>,
    stream: bool,
    include_usage: bool,
}

fn plan(state: &AppState, common: CommonFields, req: ChatFields) -> Result<Plan, ApiError> {
    let common = common.validate(state)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad_param(
            "tools",
            "Tool calling is not supported by this server.",
        ));
    }
    let messages = messages(req.messages)?;
    let card = &state.model;
    let prompt = card
        .chat_template
        .render(&messages, &card.tokenizer)
        .map_err(|err| {
            ApiError::bad_param("messages", format!("The chat template failed: {err}"))
        })?;
    let top_logprobs = match req.logprobs {
        Some(true) => Some(params::top_logprobs("top_logprobs", req.top_logprobs)?),
        _ if req.top_logprobs.is_some_and(|k| k > 0) => {
            return Err(ApiError::bad_param(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`.",
            ));
        }
        _ => None,
    };
    let sampling = common.openai_sampling()?;
    let prompt_len = card
        .tokenizer
        .encode(&prompt)
        .map_err(|err| ApiError::bad_param("messages", err.to_string()))?
        .len();
    let default_max = DEFAULT_MAX_TOKENS.min(card.context_length.saturating_sub(prompt_len + 1));
    let (param, value) = match req.max_completion_tokens {
        Some(v) => ("max_completion_tokens", Some(v)),
        None => ("max_tokens", req.max_tokens),
    };
    let max_tokens = params::max_tokens(param, value, default_max, card.context_length)?;
    let mut stop = common.stop;
    stop.extend(card.chat_template.extra_stops());
    let extension = common.extension;
    Ok(Plan {
        adapter: common.adapter.clone(),
        request: GenerateRequest {
            prompt,
            suffix: None,
            max_tokens,
            sampling,
            n: common.n,
            stop,
            top_logprobs: top_logprobs.unwrap_or(0),
            context_files: extension.context_files(),
            logit_bias: common.logit_bias,
            adapter: common.adapter,
            ignore_eos: extension.ignore_eos,
            indent_floor: params::indent_floor(extension.n_indent),
            newline_deadline: params::newline_deadline(extension.t_max_predict_ms),
            ..Default::default()
        },
        top_logprobs,
        stream: common.stream,
        include_usage: common.include_usage,
    })
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    ApiBody(common, req): ApiBody<CommonFields, ChatFields>,
) -> Result<Response, ApiError> {
    let plan = plan(&state, common, req)?;
    let adapter = plan.adapter.clone();
    let run = Run::start(&state, "/v1/chat/completions", vec![plan.request.clone()])?;
    let id = response_id("chatcmpl");
    let created = unix_now();
    if plan.stream {
        let translate = StreamTranslate {
            state: Arc::clone(&state),
            id,
            created,
            plan,
            started: HashSet::new(),
            usage: Usage::default(),
        };
        return Ok(adapter_header(sse::response(run, translate), &adapter));
    }
    let generations = run.collect().await?;
    let mut usage = Usage::default();
    let mut choices = Vec::new();
    for generation in &generations {
        usage.add(generation);
        for (index, sample) in generation.samples.iter().enumerate() {
            let logprobs = plan.top_logprobs.map(|_| api::ChatLogprobs {
                content: sample
                    .tokens
                    .iter()
                    .map(|t| token_logprob(&state, t))
                    .collect(),
            });
            choices.push(api::ChatChoice {
                finish_reason: Some(openai_finish_reason(sample.finish_reason).to_string()),
                index: index as u32,
                logprobs,
                message: api::ChatMessage::assistant(sample.text.clone()),
            });
        }
    }
    let body = api::ChatResponse {
        choices,
        created: Some(created),
        hexacoder: Some(usage.extension(&plan.adapter)),
        id: Some(id),
        model: Some(model_label(&state, &plan.adapter)),
        object: Some("chat.completion".into()),
        system_fingerprint: None,
        usage: Some(usage.wire()),
    };
    Ok(adapter_header(axum::Json(body).into_response(), &adapter))
}

fn token_logprob(state: &AppState, token: &hexacoder_engine::GeneratedToken) -> api::TokenLogprob {
    let entry = |id: u32, logprob: f32| {
        let text = token_string(&state.model.tokenizer, id);
        api::TokenLogprob {
            bytes: Some(text.as_bytes().to_vec()),
            logprob: f64::from(logprob),
            token: text,
            top_logprobs: None,
        }
    };
    api::TokenLogprob {
        top_logprobs: Some(token.top.iter().map(|&(id, lp)| entry(id, lp)).collect()),
        ..entry(token.id, token.logprob)
    }
}

struct StreamTranslate {
    state: Arc<AppState>,
    id: String,
    created: u64,
    plan: Plan,
    /// Choices whose role chunk was sent.
    started: HashSet<usize>,
    usage: Usage,
}

impl StreamTranslate {
    fn chunk(&self, choices: Vec<api::ChatChunkChoice>) -> api::ChatChunk {
        api::ChatChunk {
            choices,
            created: Some(self.created),
            hexacoder: None,
            id: Some(self.id.clone()),
            model: Some(model_label(&self.state, &self.plan.adapter)),
            object: Some("chat.completion.chunk".into()),
            usage: None,
        }
    }

    fn role_chunk(&mut self, index: usize, out: &mut Vec<api::ChatChunk>) {
        if self.started.insert(index) {
            let delta = api::ChatDelta {
                content: Some(String::new()),
                role: Some("assistant".into()),
            };
            out.push(self.chunk(vec![piece(index, delta, None)]));
        }
    }
}

/// A streamed choice.
fn piece(index: usize, delta: api::ChatDelta, finish_reason: Option<&str>) -> api::ChatChunkChoice {
    api::ChatChunkChoice {
        delta,
        finish_reason: finish_reason.map(str::to_string),
        index: index as u32,
        logprobs: None,
    }
}

impl sse::Translate for StreamTranslate {
    type Chunk = api::ChatChunk;

    fn event(&mut self, event: RunEvent) -> Vec<api::ChatChunk> {
        let mut out = Vec::new();
        match event {
            // Chat runs one step.
            RunEvent::Imports { .. } => {}
            RunEvent::Token {
                sample,
                token,
                text,
                finish_reason,
                ..
            } => {
                self.role_chunk(sample, &mut out);
                if text.is_empty() && finish_reason.is_none() && self.plan.top_logprobs.is_none() {
                    return out;
                }
                let delta = api::ChatDelta {
                    content: (!text.is_empty()).then_some(text),
                    role: None,
                };
                let mut choice = piece(sample, delta, finish_reason.map(openai_finish_reason));
                choice.logprobs = self.plan.top_logprobs.map(|_| api::ChatLogprobs {
                    content: vec![token_logprob(&self.state, &token)],
                });
                out.push(self.chunk(vec![choice]));
            }
            RunEvent::Finished { generation, .. } => {
                self.usage.add(&generation);
                for (index, s) in generation.samples.iter().enumerate() {
                    if s.tokens.is_empty() {
                        self.role_chunk(index, &mut out);
                        let reason = openai_finish_reason(s.finish_reason);
                        out.push(self.chunk(vec![piece(
                            index,
                            api::ChatDelta::default(),
                            Some(reason),
                        )]));
                    }
                }
            }
        }
        out
    }

    fn end(&mut self) -> Vec<api::ChatChunk> {
        if !self.plan.include_usage {
            return Vec::new();
        }
        let mut chunk = self.chunk(Vec::new());
        chunk.usage = Some(self.usage.wire());
        chunk.hexacoder = Some(self.usage.extension(&self.plan.adapter));
        vec![chunk]
    }
}
