//! `POST /infill`: llama.cpp's fill-in-the-middle route, so llama.vim and llama.vscode work
//! against this server unchanged. `input_extra` files become repository-level context.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hexacoder_engine::{ContextFile, FinishReason, GenerateRequest, Generation};
use serde::Deserialize;
use serde_json::{Value, json};

use super::completions::adapter_header;
use super::error::{ApiError, ApiJson};
use super::params::{self, Extension, OneOrMany};
use super::run::{Run, RunEvent};
use super::two_step::{self, TwoStepChoice};
use super::{AppState, sse};

/// `n_predict` when absent or -1 (llama.cpp's "until done").
const DEFAULT_N_PREDICT: usize = 256;

#[derive(Debug, Deserialize)]
pub struct InfillRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input_prefix: String,
    #[serde(default)]
    pub input_suffix: String,
    #[serde(default)]
    pub input_extra: Vec<ExtraChunk>,
    /// Text typed after `input_prefix` on the cursor's line; it continues the prefix.
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub n_predict: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub n_probs: Option<i64>,
    /// HexaCoder's extension: two-step generation, adapter, `ignore_eos`, context files.
    #[serde(default)]
    pub hexacoder: Option<Extension>,
}

#[derive(Debug, Deserialize)]
pub struct ExtraChunk {
    #[serde(default)]
    pub filename: String,
    pub text: String,
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<InfillRequest>,
) -> Result<Response, ApiError> {
    let extension = req.hexacoder.unwrap_or_default();
    let adapter = state.resolve_model(req.model.as_deref(), extension.adapter.as_deref())?;
    let choice = TwoStepChoice::resolve(&state, &extension, &adapter)?;
    let answered_by = adapter.clone();
    if !state.model.has_fim {
        return Err(hexacoder_engine::Error::NoFim.into());
    }
    let max_tokens = match req.n_predict {
        None | Some(-1) => DEFAULT_N_PREDICT,
        value => params::max_tokens(
            "n_predict",
            value,
            DEFAULT_N_PREDICT,
            state.model.context_length,
        )?,
    };
    // llama.cpp's sampler defaults: a little randomness unless the client asks otherwise.
    let sampling = params::sampling(
        req.temperature.or(Some(0.8)),
        req.top_p.or(Some(0.95)),
        req.top_k.or(extension.top_k.map(|k| k as i64)).or(Some(40)),
        req.seed.filter(|&s| s >= 0),
    )?;
    let top_logprobs = params::top_logprobs("n_probs", req.n_probs)?;
    let request = GenerateRequest {
        prompt: format!("{}{}", req.input_prefix, req.prompt),
        suffix: Some(req.input_suffix),
        max_tokens,
        sampling,
        n: 1,
        stop: params::stop(req.stop)?,
        top_logprobs,
        context_files: req
            .input_extra
            .into_iter()
            .map(|c| ContextFile {
                name: c.filename,
                text: c.text,
            })
            .chain(extension.context_files())
            .collect(),
        logit_bias: vec![],
        adapter,
        ignore_eos: extension.ignore_eos,
        ..Default::default()
    };
    let run = Run::start_jobs(&state, "/infill", vec![choice.job(&state, request)])?;
    if req.stream.unwrap_or(false) {
        let translate = StreamTranslate {
            state: Arc::clone(&state),
        };
        return Ok(adapter_header(sse::response(run, translate), &answered_by));
    }
    let (generation, report) = run
        .collect_two_step()
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("no result"))?;
    let sample = generation
        .samples
        .first()
        .ok_or_else(|| ApiError::internal("no sample"))?;
    let mut body = final_object(&state, &generation);
    body["content"] = json!(sample.text);
    if let Some(report) = &report
        && let Some(imports) = report.samples.first()
    {
        body["hexacoder"] = two_step::sample_json(report, imports);
    }
    Ok(adapter_header(
        axum::Json(body).into_response(),
        &answered_by,
    ))
}

fn final_object(state: &AppState, generation: &Generation) -> Value {
    let sample = generation.samples.first();
    let predicted = generation.completion_tokens();
    let prompt_n = generation.prompt_tokens.len() - generation.cached_prompt_tokens;
    let prompt_ms = generation.time_to_first_token.as_secs_f64() * 1e3;
    let predicted_ms = (generation.elapsed - generation.time_to_first_token).as_secs_f64() * 1e3;
    let per_second = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    let stop_type = match sample.map(|s| s.finish_reason) {
        Some(FinishReason::EndOfGeneration) => "eos",
        Some(FinishReason::Stop) => "word",
        Some(FinishReason::Length) => "limit",
        _ => "none",
    };
    json!({
        "content": "",
        "stop": true,
        "model": state.model.id,
        "tokens_predicted": predicted,
        "tokens_evaluated": generation.prompt_tokens.len(),
        "tokens_cached": generation.cached_prompt_tokens,
        "truncated": false,
        "stop_type": stop_type,
        "timings": {
            "cache_n": generation.cached_prompt_tokens,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_second": per_second(prompt_n, prompt_ms),
            "predicted_n": predicted,
            "predicted_ms": predicted_ms,
            "predicted_per_second": per_second(predicted, predicted_ms),
        },
    })
}

struct StreamTranslate {
    state: Arc<AppState>,
}

impl sse::Translate for StreamTranslate {
    fn event(&mut self, event: RunEvent) -> Vec<Value> {
        match event {
            RunEvent::Token { text, .. } if !text.is_empty() => {
                vec![json!({"content": text, "stop": false, "index": 0})]
            }
            RunEvent::Token { .. } => Vec::new(),
            // Two-step: the imports edit comes before the code.
            RunEvent::Imports {
                samples, skipped, ..
            } => samples
                .first()
                .map(|(_, preview)| {
                    json!({
                        "content": "",
                        "stop": false,
                        "index": 0,
                        "hexacoder": two_step::preview_json(preview, skipped),
                    })
                })
                .into_iter()
                .collect(),
            RunEvent::Finished {
                generation,
                two_step: report,
                ..
            } => {
                let mut last = final_object(&self.state, &generation);
                if let Some(report) = &report
                    && let Some(imports) = report.samples.first()
                {
                    last["hexacoder"] = two_step::sample_json(report, imports);
                }
                vec![last]
            }
        }
    }

    fn end(&mut self) -> Vec<Value> {
        Vec::new()
    }

    fn done_marker(&self) -> bool {
        false
    }
}
