//! `POST /infill`: llama.cpp's fill-in-the-middle route, so llama.vim and llama.vscode work
//! against this server unchanged. `input_extra` files become repository-level context.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hexacoder_api as api;
use hexacoder_engine::{ContextFile, FinishReason, GenerateRequest, Generation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{ApiBody, ApiError};
use super::params::{self, CommonFields, OneOrMany};
use super::response::adapter_header;
use super::run::{Run, RunEvent};
use super::two_step::{self, TwoStepChoice};
use super::{AppState, sse};

/// `n_predict` when absent or -1 (llama.cpp's "until done").
const DEFAULT_N_PREDICT: usize = 256;

/// llama.cpp's sampler defaults, for the samplers a request leaves unset.
const DEFAULT_TEMPERATURE: f64 = 0.8;
const DEFAULT_TOP_P: f64 = 0.95;
const DEFAULT_TOP_K: i64 = 40;

/// llama-server's `/infill` body, beside [`CommonFields`] (`model`, `temperature`, `top_p`,
/// `seed`, `stop`, `stream`, the penalties, `logit_bias` and the `hexacoder` extension). Fields
/// it has that this server does not act on (`t_max_prompt_ms`, `id_slot`, `cache_prompt`)
/// are accepted and named in the README.
#[derive(Debug, Deserialize)]
pub struct InfillFields {
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
    pub top_k: Option<i64>,
    #[serde(default)]
    pub n_probs: Option<i64>,
    /// End at the first generated line indented by fewer than this many spaces or tabs.
    #[serde(default)]
    pub n_indent: Option<i64>,
    /// After this long generating, end at the next newline.
    #[serde(default)]
    pub t_max_predict_ms: Option<i64>,
    /// Which samplers run: names (`["top_k", "top_p"]`) or llama.cpp's letters (`"kp"`).
    #[serde(default)]
    pub samplers: Option<Samplers>,
    /// Return only these fields, each under its `/`-separated path (`"timings/prompt_n"`).
    #[serde(default)]
    pub response_fields: Option<Vec<String>>,
    /// Echoed back, as llama-server does; there is one pool of KV state, not slots.
    #[serde(default)]
    pub id_slot: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct ExtraChunk {
    #[serde(default)]
    pub filename: String,
    pub text: String,
}

/// llama.cpp's `samplers`: a list of names or a string of one-letter codes.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a list of sampler names or a string of letters"
)]
pub enum Samplers {
    Names(Vec<String>),
    Letters(String),
}

/// The samplers of llama.cpp's chain that this engine has. The others (`infill`, `min_p`,
/// `typ_p`, `xtc`, `dry`, `penalties`, `top_n_sigma`) are accepted and not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplerChain {
    pub top_k: bool,
    pub top_p: bool,
    pub temperature: bool,
}

impl SamplerChain {
    /// Every sampler on: a request without `samplers`.
    const ALL: SamplerChain = SamplerChain {
        top_k: true,
        top_p: true,
        temperature: true,
    };

    /// The chain a `samplers` value names, with llama.cpp's names, alternative names and
    /// letters. Unknown names are skipped, as llama.cpp skips them.
    pub fn from_request(samplers: Option<&Samplers>) -> SamplerChain {
        let names: Vec<String> = match samplers {
            None => return SamplerChain::ALL,
            Some(Samplers::Names(names)) => names.clone(),
            Some(Samplers::Letters(letters)) => letters
                .chars()
                .filter_map(|c| {
                    Some(match c {
                        'k' => "top_k",
                        'p' => "top_p",
                        't' => "temperature",
                        _ => return None,
                    })
                })
                .map(String::from)
                .collect(),
        };
        let has = |aliases: &[&str]| names.iter().any(|n| aliases.contains(&n.as_str()));
        SamplerChain {
            top_k: has(&["top_k", "top-k"]),
            top_p: has(&["top_p", "top-p", "nucleus"]),
            temperature: has(&["temperature", "temp"]),
        }
    }
}

/// llama-server's `response_fields`: each listed path that exists, `/`-separated into
/// nested objects, becomes a top-level key named by the whole path. An empty list means
/// the whole response.
pub fn select_fields(fields: &[String], response: Value) -> Value {
    if fields.is_empty() {
        return response;
    }
    let mut selected = Map::new();
    for path in fields {
        let mut current = &response;
        let found = path.split('/').all(|key| match current.get(key) {
            Some(next) if current.is_object() => {
                current = next;
                true
            }
            _ => false,
        });
        if found {
            selected.insert(path.clone(), current.clone());
        }
    }
    Value::Object(selected)
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    ApiBody(mut common, req): ApiBody<CommonFields, InfillFields>,
) -> Result<Response, ApiError> {
    // As llama-server: llama.vim sends `"model": ""` unless one is configured, a negative
    // seed means a random one, and empty stop strings are dropped rather than refused.
    common.model = common.model.filter(|m| !m.is_empty());
    common.seed = common.seed.filter(|&s| s >= 0);
    if let Some(stop) = common.stop.take() {
        let kept = stop.into_vec().into_iter().filter(|s| !s.is_empty());
        common.stop = Some(OneOrMany::Many(kept.collect()));
    }
    let common = common.validate(&state)?;
    if common.n != 1 {
        return Err(ApiError::bad_param(
            "n",
            "`/infill` returns one completion; use `/v1/completions` with `suffix` for more.",
        ));
    }
    let (extension, adapter) = (&common.extension, &common.adapter);
    let choice = TwoStepChoice::resolve(&state, extension, adapter)?;
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
    // A sampler left out of `samplers` does not run; without temperature the distribution
    // is sampled as it stands (temperature 1), as llama.cpp's chain does.
    let chain = SamplerChain::from_request(req.samplers.as_ref());
    let sampling = params::sampling(
        Some(if chain.temperature {
            common.temperature.unwrap_or(DEFAULT_TEMPERATURE)
        } else {
            1.0
        }),
        Some(if chain.top_p {
            common.top_p.unwrap_or(DEFAULT_TOP_P)
        } else {
            1.0
        }),
        Some(if chain.top_k {
            req.top_k
                .or(extension.top_k.map(|k| k as i64))
                .unwrap_or(DEFAULT_TOP_K)
        } else {
            0
        }),
        common.seed,
    )?;
    let top_logprobs = params::top_logprobs("n_probs", req.n_probs)?;
    let request = GenerateRequest {
        prompt: format!("{}{}", req.input_prefix, req.prompt),
        suffix: Some(req.input_suffix),
        max_tokens,
        sampling,
        n: 1,
        stop: common.stop.clone(),
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
        logit_bias: common.logit_bias.clone(),
        adapter: adapter.clone(),
        ignore_eos: extension.ignore_eos,
        indent_floor: params::indent_floor(req.n_indent.or(extension.n_indent)),
        newline_deadline: params::newline_deadline(
            req.t_max_predict_ms.or(extension.t_max_predict_ms),
        ),
        ..Default::default()
    };
    let shape = ResponseShape {
        fields: req.response_fields.unwrap_or_default(),
        id_slot: req.id_slot.unwrap_or(0),
    };
    let run = Run::start_jobs(&state, "/infill", vec![choice.job(&state, request)])?;
    if common.stream {
        let translate = StreamTranslate {
            state: Arc::clone(&state),
            shape,
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
    let body = api::InfillResponse {
        content: sample.text.clone(),
        hexacoder: report
            .as_ref()
            .and_then(|r| Some(two_step::sample_choice(r, r.samples.first()?))),
        ..final_object(&state, &generation, &shape)
    };
    Ok(adapter_header(
        axum::Json(select_fields(&shape.fields, to_value(&body))).into_response(),
        &answered_by,
    ))
}

/// What the client asked the final object to look like.
struct ResponseShape {
    fields: Vec<String>,
    id_slot: i64,
}

/// llama-server's final object, `content` empty (the caller fills it, or a stream has sent
/// it). `tokens_cached` and `timings.cache_n` count the prompt tokens whose KV state was
/// reused.
fn final_object(
    state: &AppState,
    generation: &Generation,
    shape: &ResponseShape,
) -> api::InfillResponse {
    let sample = generation.samples.first();
    let predicted = generation.completion_tokens();
    let prompt_n = generation.prompt_tokens.len() - generation.cached_prompt_tokens;
    let prompt_ms = generation.time_to_first_token.as_secs_f64() * 1e3;
    let predicted_ms = (generation.elapsed - generation.time_to_first_token).as_secs_f64() * 1e3;
    let per_second = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    let per_token = |n: usize, ms: f64| if n > 0 { ms / n as f64 } else { 0.0 };
    let stop_type = match sample.map(|s| s.finish_reason) {
        Some(FinishReason::EndOfGeneration) => "eos",
        Some(FinishReason::Stop) => "word",
        Some(FinishReason::Length | FinishReason::BlockEnd | FinishReason::TimeLimit) => "limit",
        Some(FinishReason::Cancelled) | None => "none",
    };
    api::InfillResponse {
        content: String::new(),
        has_new_line: sample.is_some_and(|s| s.text.contains('\n')),
        hexacoder: None,
        id_slot: shape.id_slot,
        index: 0,
        model: state.model.id.clone(),
        stop: true,
        stop_type: stop_type.into(),
        stopping_word: sample
            .and_then(|s| s.stop_string.clone())
            .unwrap_or_default(),
        timings: api::InfillTimings {
            cache_n: generation.cached_prompt_tokens as u64,
            predicted_ms,
            predicted_n: predicted as u64,
            predicted_per_second: per_second(predicted, predicted_ms),
            predicted_per_token_ms: per_token(predicted, predicted_ms),
            prompt_ms,
            prompt_n: prompt_n as u64,
            prompt_per_second: per_second(prompt_n, prompt_ms),
            prompt_per_token_ms: per_token(prompt_n, prompt_ms),
        },
        tokens_cached: generation.cached_prompt_tokens as u64,
        tokens_evaluated: generation.prompt_tokens.len() as u64,
        tokens_predicted: predicted as u64,
        truncated: false,
    }
}

/// A wire type as a JSON value, for `response_fields` to pick from. Wire types have string
/// keys only, so this cannot fail.
fn to_value(wire: &impl serde::Serialize) -> Value {
    serde_json::to_value(wire).unwrap_or_default()
}

struct StreamTranslate {
    state: Arc<AppState>,
    shape: ResponseShape,
}

impl StreamTranslate {
    fn piece(&self, content: String, hexacoder: Option<api::HexacoderChoice>) -> Value {
        to_value(&api::InfillChunk {
            content,
            hexacoder,
            id_slot: self.shape.id_slot,
            index: 0,
            stop: false,
        })
    }
}

impl sse::Translate for StreamTranslate {
    /// JSON values: the final object may be cut down to `response_fields`.
    type Chunk = Value;

    fn event(&mut self, event: RunEvent) -> Vec<Value> {
        match event {
            RunEvent::Token { text, .. } if !text.is_empty() => vec![self.piece(text, None)],
            RunEvent::Token { .. } => Vec::new(),
            // Two-step: the imports edit comes before the code.
            RunEvent::Imports {
                samples, skipped, ..
            } => samples
                .first()
                .map(|(_, preview)| {
                    let extension = two_step::preview_choice(preview, skipped);
                    self.piece(String::new(), Some(extension))
                })
                .into_iter()
                .collect(),
            RunEvent::Finished {
                generation,
                two_step: report,
                ..
            } => {
                let last = api::InfillResponse {
                    hexacoder: report
                        .as_ref()
                        .and_then(|r| Some(two_step::sample_choice(r, r.samples.first()?))),
                    ..final_object(&self.state, &generation, &self.shape)
                };
                vec![select_fields(&self.shape.fields, to_value(&last))]
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn response_fields_flatten_paths_as_llama_server_does() {
        let response = json!({"content": "x", "tokens_cached": 3,
            "timings": {"prompt_n": 5, "predicted_ms": 1.5}});
        let fields = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            select_fields(
                &fields(&[
                    "content",
                    "timings/prompt_n",
                    "timings/predicted_ms",
                    "tokens_cached"
                ]),
                response.clone()
            ),
            json!({"content": "x", "timings/prompt_n": 5, "timings/predicted_ms": 1.5, "tokens_cached": 3})
        );
        // Missing paths (and llama.vim's `[""]`) are left out; a whole object can be asked for.
        assert_eq!(
            select_fields(&fields(&["", "nope", "content/x"]), response.clone()),
            json!({})
        );
        assert_eq!(
            select_fields(&fields(&["timings"]), response.clone())["timings"]["prompt_n"],
            5
        );
        // No list, or an empty one: everything.
        assert_eq!(select_fields(&[], response.clone()), response);
    }

    #[test]
    fn samplers_choose_which_of_top_k_top_p_and_temperature_run() {
        let names = |n: &[&str]| Samplers::Names(n.iter().map(|s| s.to_string()).collect());
        assert_eq!(SamplerChain::from_request(None), SamplerChain::ALL);
        // llama.vim's FIM request: top-k and top-p, then llama.cpp's infill sampler.
        assert_eq!(
            SamplerChain::from_request(Some(&names(&["top_k", "top_p", "infill"]))),
            SamplerChain {
                top_k: true,
                top_p: true,
                temperature: false
            }
        );
        assert_eq!(
            SamplerChain::from_request(Some(&names(&["temp", "nucleus", "dry"]))),
            SamplerChain {
                top_k: false,
                top_p: true,
                temperature: true
            }
        );
        assert_eq!(
            SamplerChain::from_request(Some(&Samplers::Letters("kt".into()))),
            SamplerChain {
                top_k: true,
                top_p: false,
                temperature: true
            }
        );
        assert_eq!(
            SamplerChain::from_request(Some(&names(&[]))),
            SamplerChain {
                top_k: false,
                top_p: false,
                temperature: false
            }
        );
    }
}
