//! Request fields shared by the completion routes, validated into engine parameters with
//! errors that name the field and the accepted range.

use std::collections::HashMap;
use std::time::Duration;

use hexacoder_engine::{ContextFile, SamplingParams, SharedAdapter};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;

/// Samples per prompt at most.
pub const MAX_N: usize = 16;
/// Alternatives per token at most.
pub const MAX_LOGPROBS: usize = 20;
/// Stop strings at most.
pub const MAX_STOP: usize = 16;

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of strings")]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The body fields every completion route shares (`/v1/completions`, `/v1/chat/completions`,
/// `/infill`), declared once; each route reads its own beside them ([`super::error::ApiBody`]).
/// Penalties, `logit_bias` and `stop` are llama-server's names too.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CommonFields {
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Accepted and not used, as OpenAI's own abuse-tracking field.
    pub user: Option<String>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub hexacoder: Option<Extension>,
}

/// [`CommonFields`] checked: what every completion route needs before its own fields.
pub struct Common {
    pub extension: Extension,
    /// The adapter `model` (or `hexacoder.adapter`) names; `None` for the base model.
    pub adapter: Option<SharedAdapter>,
    pub n: usize,
    pub stop: Vec<String>,
    pub logit_bias: Vec<(u32, f32)>,
    pub stream: bool,
    pub include_usage: bool,
    /// Sampling as sent, checked by [`sampling`] with the route's defaults.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
}

impl CommonFields {
    /// Resolves the model and checks every shared field, naming the first bad one.
    pub fn validate(self, state: &AppState) -> Result<Common, ApiError> {
        let extension = self.hexacoder.unwrap_or_default();
        let adapter = state.resolve_model(self.model.as_deref(), extension.adapter.as_deref())?;
        unsupported_zero("presence_penalty", self.presence_penalty)?;
        unsupported_zero("frequency_penalty", self.frequency_penalty)?;
        let common = Common {
            adapter,
            n: n(self.n)?,
            stop: stop(self.stop)?,
            logit_bias: logit_bias(self.logit_bias)?,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            extension,
        };
        // Checked here too, so that a bad value is refused before any route-specific work.
        common.openai_sampling()?;
        Ok(common)
    }
}

impl Common {
    /// OpenAI's sampling: `temperature` and `top_p` default to 1, `top_k` (the extension's)
    /// to off.
    pub fn openai_sampling(&self) -> Result<SamplingParams, ApiError> {
        sampling(
            self.temperature,
            self.top_p,
            self.extension.top_k.map(|k| k as i64),
            self.seed,
        )
    }
}

/// The `hexacoder` extension object (`extra_body={"hexacoder": {...}}` in the OpenAI client).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// Sample only among the K most likely tokens (0: all).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Never end at an end-of-generation token.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Other files shown to the model before the prompt.
    #[serde(default)]
    pub context_files: Vec<ContextFileWire>,
    /// The LoRA adapter to apply (alternative to naming it in `model`).
    #[serde(default)]
    pub adapter: Option<String>,
    /// Two-step generation: imports first, then code (default: the adapter's, then the
    /// server's).
    #[serde(default)]
    pub two_step: Option<bool>,
    /// The prompt's language (`python`, `c`, `cpp`, `javascript`, `typescript`, `tsx`, `go`,
    /// `java`, `rust`, or an extension); detected from its
    /// imports when absent.
    #[serde(default)]
    pub language: Option<String>,
    /// Tokens step 1 may spend (out of `max_tokens`).
    #[serde(default)]
    pub first_step_tokens: Option<usize>,
    /// Drop added imports the completion never uses.
    #[serde(default)]
    pub prune_unused_imports: Option<bool>,
    /// With `n` > 1, run step 1 once per sample instead of once for all.
    #[serde(default)]
    pub per_sample_imports: Option<bool>,
    /// Check candidates with the security oracle and return the most probable clean one.
    #[serde(default)]
    pub verify: Option<bool>,
    /// Candidates verification samples (from one prefill).
    #[serde(default)]
    pub candidates: Option<usize>,
    /// End the completion at the first line after its first that is indented by fewer than
    /// this many spaces or tabs, a blank line included (llama.cpp's `n_indent`); 0 is off.
    #[serde(default)]
    pub n_indent: Option<i64>,
    /// Once this many milliseconds of generation have passed, end at the next newline
    /// (llama.cpp's `t_max_predict_ms`); 0 is off.
    #[serde(default)]
    pub t_max_predict_ms: Option<i64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextFileWire {
    pub name: String,
    pub text: String,
}

impl Extension {
    pub fn context_files(&self) -> Vec<ContextFile> {
        self.context_files
            .iter()
            .map(|f| ContextFile {
                name: f.name.clone(),
                text: f.text.clone(),
            })
            .collect()
    }
}

/// llama.cpp's `n_indent` as an indentation floor: zero or negative is off, as there.
pub fn indent_floor(n_indent: Option<i64>) -> usize {
    n_indent.map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

/// llama.cpp's `t_max_predict_ms` as a deadline: zero or negative is off, as there.
pub fn newline_deadline(t_max_predict_ms: Option<i64>) -> Option<Duration> {
    t_max_predict_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

/// `n`: 1 to [`MAX_N`].
pub fn n(value: Option<i64>) -> Result<usize, ApiError> {
    let n = value.unwrap_or(1);
    if !(1..=MAX_N as i64).contains(&n) {
        return Err(ApiError::bad_param(
            "n",
            format!("`n` must be between 1 and {MAX_N}, got {n}."),
        ));
    }
    Ok(n as usize)
}

/// `max_tokens` (or `n_predict`): at least 0, at most the context; `default` when absent.
pub fn max_tokens(
    param: &str,
    value: Option<i64>,
    default: usize,
    context: usize,
) -> Result<usize, ApiError> {
    let Some(value) = value else {
        return Ok(default);
    };
    if value < 0 || value as u64 > context as u64 {
        return Err(ApiError::bad_param(
            param,
            format!("`{param}` must be between 0 and the context length {context}, got {value}."),
        ));
    }
    Ok(value as usize)
}

/// Temperature, top-p, top-k and seed as the engine takes them.
pub fn sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    seed: Option<i64>,
) -> Result<SamplingParams, ApiError> {
    let temperature = temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_param(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}."),
        ));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_param(
            "top_p",
            format!("`top_p` must be in (0, 1], got {top_p}."),
        ));
    }
    let top_k = top_k.unwrap_or(0);
    if top_k < 0 {
        return Err(ApiError::bad_param(
            "top_k",
            format!("`top_k` must be 0 (off) or positive, got {top_k}."),
        ));
    }
    Ok(SamplingParams {
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k: top_k as usize,
        // Negative seeds are accepted by OpenAI; their bits are as good a seed as any.
        seed: seed.map(|s| s as u64),
    })
}

/// Stop strings: at most [`MAX_STOP`], none empty.
pub fn stop(value: Option<OneOrMany>) -> Result<Vec<String>, ApiError> {
    let stops = value.map(OneOrMany::into_vec).unwrap_or_default();
    if stops.len() > MAX_STOP {
        return Err(ApiError::bad_param(
            "stop",
            format!("At most {MAX_STOP} stop strings, got {}.", stops.len()),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::bad_param(
            "stop",
            "Stop strings must not be empty.",
        ));
    }
    Ok(stops)
}

/// Alternatives per token: 0 to [`MAX_LOGPROBS`].
pub fn top_logprobs(param: &str, value: Option<i64>) -> Result<usize, ApiError> {
    let k = value.unwrap_or(0);
    if !(0..=MAX_LOGPROBS as i64).contains(&k) {
        return Err(ApiError::bad_param(
            param,
            format!("`{param}` must be between 0 and {MAX_LOGPROBS}, got {k}."),
        ));
    }
    Ok(k as usize)
}

/// Penalties and biases the engine does not implement are refused rather than ignored.
pub fn unsupported_zero(param: &str, value: Option<f64>) -> Result<(), ApiError> {
    match value {
        Some(v) if v != 0.0 => Err(ApiError::bad_param(
            param,
            format!("`{param}` is not supported by this server; send 0 or leave it out."),
        )),
        _ => Ok(()),
    }
}

/// `logit_bias`: token ids (as strings, OpenAI's format) to biases in [-100, 100]; ids are
/// checked against the vocabulary by the engine.
pub fn logit_bias(value: Option<HashMap<String, f64>>) -> Result<Vec<(u32, f32)>, ApiError> {
    let mut biases = Vec::new();
    for (key, bias) in value.unwrap_or_default() {
        let id: u32 = key.parse().map_err(|_| {
            ApiError::bad_param(
                "logit_bias",
                format!("`logit_bias` keys are token ids; {key:?} is not one."),
            )
        })?;
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::bad_param(
                "logit_bias",
                format!("`logit_bias` values must be between -100 and 100, got {bias} for {key}."),
            ));
        }
        biases.push((id, bias as f32));
    }
    biases.sort_by_key(|&(id, _)| id);
    Ok(biases)
}
