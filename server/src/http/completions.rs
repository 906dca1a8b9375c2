//! `POST /v1/completions`: OpenAI's legacy completions, with `suffix` for fill-in-the-middle.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hexacoder_engine::tokenizer::Tokenizer;
use hexacoder_engine::{GenerateRequest, GeneratedToken, Generation, SharedAdapter};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiJson};
use super::params::{self, Extension, OneOrMany, StreamOptions};
use super::run::{self as two_step_run, Job, Run, RunEvent, openai_finish_reason};
use super::two_step::{self, TwoStepChoice};
use super::verify::{self, Verified, VerifySettings};
use super::{AppState, response_id, sse, unix_now};

/// OpenAI's default for this route.
const DEFAULT_MAX_TOKENS: usize = 16;

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: OneOrMany,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub best_of: Option<i64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub logit_bias: Option<HashMap<String, f64>>,
    #[serde(default)]
    pub hexacoder: Option<Extension>,
}

struct Plan {
    adapter: Option<SharedAdapter>,
    prompts: Vec<String>,
    /// Taken when the run starts.
    jobs: Vec<Job>,
    /// Per prompt: whether it runs two steps (its echo waits for its imports).
    two_step: Vec<bool>,
    n: usize,
    logprobs: Option<usize>,
    echo: bool,
    stream: bool,
    include_usage: bool,
    /// Verify mode: the settings and each prompt's language.
    verify: Option<(VerifySettings, Vec<hexacoder_oracle::Language>)>,
    suffix: Option<String>,
}

fn plan(state: &AppState, req: CompletionRequest) -> Result<Plan, ApiError> {
    let extension = req.hexacoder.unwrap_or_default();
    let adapter = state.resolve_model(req.model.as_deref(), extension.adapter.as_deref())?;
    let prompts = req.prompt.into_vec();
    if prompts.is_empty() {
        return Err(ApiError::bad_param(
            "prompt",
            "`prompt` must not be an empty array.",
        ));
    }
    let n = params::n(req.n)?;
    if let Some(best_of) = req.best_of
        && best_of != n as i64
    {
        return Err(ApiError::bad_param(
            "best_of",
            "`best_of` other than `n` is not supported; leave it out.",
        ));
    }
    params::unsupported_zero("presence_penalty", req.presence_penalty)?;
    params::unsupported_zero("frequency_penalty", req.frequency_penalty)?;
    let logit_bias = params::logit_bias(req.logit_bias)?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) => Some(params::top_logprobs("logprobs", Some(k))?),
    };
    let echo = req.echo.unwrap_or(false);
    if echo && logprobs.is_some() {
        return Err(ApiError::bad_param(
            "echo",
            "`echo` together with `logprobs` (prompt log-probabilities) is not supported.",
        ));
    }
    if echo && req.suffix.is_some() {
        return Err(ApiError::bad_param(
            "echo",
            "`echo` cannot be combined with `suffix`.",
        ));
    }
    if req.suffix.is_some() && !state.model.has_fim {
        return Err(hexacoder_engine::Error::NoFim.into());
    }
    let top_k = extension.top_k.map(|k| k as i64);
    let sampling = params::sampling(req.temperature, req.top_p, top_k, req.seed)?;
    let choice = TwoStepChoice::resolve(state, &extension, &adapter)?;
    let max_tokens = params::max_tokens(
        "max_tokens",
        req.max_tokens,
        choice.default_max_tokens(DEFAULT_MAX_TOKENS),
        state.model.context_length,
    )?;
    let stop = params::stop(req.stop)?;
    let _ = req.user;
    let stream = req.stream.unwrap_or(false);
    let verify = match verify::resolve(&extension, n, stream)? {
        None => None,
        Some(settings) => {
            let languages = prompts
                .iter()
                .map(|p| verify::language_of(&settings, p))
                .collect::<Result<Vec<_>, _>>()?;
            Some((settings, languages))
        }
    };
    // Verification samples its candidates as the engine's samples: one prefill for all.
    let samples = verify.as_ref().map_or(n, |(v, _)| v.candidates);
    let jobs: Vec<Job> = prompts
        .iter()
        .map(|prompt| GenerateRequest {
            prompt: prompt.clone(),
            suffix: req.suffix.clone(),
            max_tokens,
            sampling: sampling.clone(),
            n: samples,
            stop: stop.clone(),
            top_logprobs: logprobs.unwrap_or(0),
            context_files: extension.context_files(),
            logit_bias: logit_bias.clone(),
            adapter: adapter.clone(),
            ignore_eos: extension.ignore_eos,
            indent_floor: params::indent_floor(extension.n_indent),
            newline_deadline: params::newline_deadline(extension.t_max_predict_ms),
            ..Default::default()
        })
        .map(|request| choice.job(state, request))
        .collect();
    let two_step = jobs.iter().map(|j| matches!(j, Job::TwoStep(_))).collect();
    Ok(Plan {
        adapter,
        prompts,
        jobs,
        two_step,
        n,
        logprobs,
        echo,
        stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        verify,
        suffix: req.suffix,
    })
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let mut plan = plan(&state, req)?;
    let adapter = plan.adapter.clone();
    let run = Run::start_jobs(&state, "/v1/completions", std::mem::take(&mut plan.jobs))?;
    let id = response_id("cmpl");
    let created = unix_now();
    if plan.stream {
        let translate = StreamTranslate {
            state: Arc::clone(&state),
            id,
            created,
            plan,
            offsets: HashMap::new(),
            pending_tokens: HashMap::new(),
            usage: Usage::default(),
            echoed: false,
        };
        return Ok(adapter_header(sse::response(run, translate), &adapter));
    }
    let generations = run.collect_two_step().await?;
    let (generations, verified) = match &plan.verify {
        None => (generations, None),
        Some((_, languages)) => {
            let (generations, verified) =
                check_candidates(&state, generations, &plan, languages.clone()).await?;
            (generations, Some(verified))
        }
    };
    let mut choices = Vec::new();
    let mut usage = Usage::default();
    for (p, ((generation, report), prompt)) in generations.iter().zip(&plan.prompts).enumerate() {
        usage.add(generation);
        if let Some(first) = report.as_ref().and_then(|r| r.first.as_ref()) {
            usage.add_counts(first);
        }
        let verified = verified.as_ref().map(|v: &Vec<Verified>| &v[p]);
        for (s, sample) in generation.samples.iter().enumerate() {
            if verified.is_some_and(|v| v.chosen != s) {
                continue;
            }
            let imports = report.as_ref().and_then(|r| Some((r, r.samples.get(s)?)));
            // With two steps, `echo` shows the prompt with its imports merged.
            let prefix = match (plan.echo, imports) {
                (false, _) => "",
                (true, Some((_, imports))) => imports.outcome.prompt.as_str(),
                (true, None) => prompt.as_str(),
            };
            let logprobs = plan.logprobs.map(|_| {
                let mut offset = prefix.len();
                logprobs_json(&state.model.tokenizer, &sample.tokens, &mut offset)
            });
            let index = if verified.is_some() {
                p
            } else {
                p * plan.n + s
            };
            let mut choice = json!({
                "index": index,
                "text": format!("{prefix}{}", sample.text),
                "logprobs": logprobs,
                "finish_reason": openai_finish_reason(sample.finish_reason),
            });
            if let Some((report, imports)) = imports {
                choice["hexacoder"] = two_step::sample_json(report, imports);
            }
            if let Some(verified) = verified {
                if choice["hexacoder"].is_null() {
                    choice["hexacoder"] = json!({});
                }
                choice["hexacoder"]["verification"] = verified.json();
            }
            choices.push(choice);
        }
    }
    let mut body = json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model_label(&state, &plan.adapter),
        "choices": choices,
        "system_fingerprint": Value::Null,
    });
    usage.attach(&mut body, &plan.adapter);
    Ok(adapter_header(axum::Json(body).into_response(), &adapter))
}

/// Checks every prompt's candidates off the async runtime (the analyzer is CPU work) and
/// records them in the metrics.
async fn check_candidates(
    state: &Arc<AppState>,
    generations: Vec<(Generation, Option<two_step_run::TwoStepReport>)>,
    plan: &Plan,
    languages: Vec<hexacoder_oracle::Language>,
) -> Result<
    (
        Vec<(Generation, Option<two_step_run::TwoStepReport>)>,
        Vec<Verified>,
    ),
    ApiError,
> {
    let analyzer = Arc::clone(&state.oracle);
    let prompts = plan.prompts.clone();
    let suffix = plan.suffix.clone().unwrap_or_default();
    let (generations, verified) = tokio::task::spawn_blocking(move || {
        let verified: Vec<Verified> = generations
            .iter()
            .zip(&prompts)
            .zip(&languages)
            .map(|(((generation, report), prompt), language)| {
                let contexts: Vec<&str> = (0..generation.samples.len())
                    .map(|s| {
                        report
                            .as_ref()
                            .and_then(|r| r.samples.get(s))
                            .map_or(prompt.as_str(), |i| i.outcome.prompt.as_str())
                    })
                    .collect();
                verify::check(&analyzer, *language, generation, &contexts, &suffix)
            })
            .collect();
        (generations, verified)
    })
    .await
    .map_err(|e| ApiError::internal(format!("verification failed: {e}")))?;
    for ((_, report), verified) in generations.iter().zip(&verified) {
        let mode = if report.is_some() {
            "two_step"
        } else {
            "one_step"
        };
        verify::observe(state, verified, mode);
    }
    Ok((generations, verified))
}

/// Token counts and timings summed over a request's prompts.
#[derive(Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    pub ttft_ms: f64,
    pub elapsed_ms: f64,
}

impl Usage {
    pub fn add(&mut self, generation: &Generation) {
        self.add_counts(generation);
        self.ttft_ms = self
            .ttft_ms
            .max(generation.time_to_first_token.as_secs_f64() * 1e3);
        self.elapsed_ms = self.elapsed_ms.max(generation.elapsed.as_secs_f64() * 1e3);
    }

    /// Adds token counts only (two-step's first step, whose time the second's includes).
    pub fn add_counts(&mut self, generation: &Generation) {
        self.prompt_tokens += generation.prompt_tokens.len();
        self.completion_tokens += generation.completion_tokens();
        self.cached_tokens += generation.cached_prompt_tokens;
    }

    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }

    /// Adds `usage` and the `hexacoder` object to a response or a stream's last chunk.
    pub fn attach(&self, body: &mut Value, adapter: &Option<SharedAdapter>) {
        body["usage"] = self.json();
        body["hexacoder"] = self.extension(adapter);
    }

    /// The `hexacoder` object of a response: timings and which adapter version answered.
    fn extension(&self, adapter: &Option<SharedAdapter>) -> Value {
        json!({
            "cached_prompt_tokens": self.cached_tokens,
            "time_to_first_token_ms": self.ttft_ms,
            "elapsed_ms": self.elapsed_ms,
            "adapter": adapter.as_ref().map(|a| a.name()),
            "adapter_generation": adapter.as_ref().map(|a| a.generation()),
        })
    }
}

/// `x-hexacoder-adapter: NAME@GENERATION` on a response an adapter produced, so that even a
/// stream without a usage chunk says which version answered.
pub fn adapter_header(mut response: Response, adapter: &Option<SharedAdapter>) -> Response {
    if let Some(adapter) = adapter
        && let Ok(value) = axum::http::HeaderValue::from_str(&format!(
            "{}@{}",
            adapter.name(),
            adapter.generation()
        ))
    {
        response.headers_mut().insert("x-hexacoder-adapter", value);
    }
    response
}

/// The `model` a response names: the adapter's name, or the base model's.
pub fn model_label(state: &AppState, adapter: &Option<SharedAdapter>) -> String {
    adapter
        .as_ref()
        .map_or_else(|| state.model.id.clone(), |a| a.name().to_string())
}

/// How a token is shown in logprobs: its text, or its name for control tokens.
pub fn token_string(tokenizer: &Tokenizer, id: u32) -> String {
    if tokenizer.is_special(id) {
        return tokenizer.token_text(id).unwrap_or_default();
    }
    String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned()
}

/// OpenAI's legacy logprobs object; `offset` is the text offset of the first token.
fn logprobs_json(tokenizer: &Tokenizer, tokens: &[GeneratedToken], offset: &mut usize) -> Value {
    let mut strings = Vec::with_capacity(tokens.len());
    let mut logprobs = Vec::with_capacity(tokens.len());
    let mut tops = Vec::with_capacity(tokens.len());
    let mut offsets = Vec::with_capacity(tokens.len());
    for token in tokens {
        let text = token_string(tokenizer, token.id);
        offsets.push(*offset);
        *offset += text.len();
        strings.push(text);
        logprobs.push(token.logprob);
        let top: serde_json::Map<String, Value> = token
            .top
            .iter()
            .map(|&(id, lp)| (token_string(tokenizer, id), json!(lp)))
            .collect();
        tops.push(Value::Object(top));
    }
    json!({
        "tokens": strings,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    })
}

struct StreamTranslate {
    state: Arc<AppState>,
    id: String,
    created: u64,
    plan: Plan,
    /// Text offset per choice, for logprobs.
    offsets: HashMap<usize, usize>,
    /// Tokens whose text is still held back, per choice.
    pending_tokens: HashMap<usize, Vec<GeneratedToken>>,
    usage: Usage,
    echoed: bool,
}

impl StreamTranslate {
    fn chunk(&self, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": model_label(&self.state, &self.plan.adapter),
            "choices": choices,
        })
    }
}

impl sse::Translate for StreamTranslate {
    fn event(&mut self, event: RunEvent) -> Vec<Value> {
        let mut out = Vec::new();
        if !self.echoed {
            self.echoed = true;
            if self.plan.echo {
                // Two-step prompts echo with their imports, once step 1 is done.
                let choices: Vec<Value> = (0..self.plan.prompts.len() * self.plan.n)
                    .filter(|i| !self.plan.two_step[i / self.plan.n])
                    .map(|i| {
                        let prompt = &self.plan.prompts[i / self.plan.n];
                        self.offsets.insert(i, prompt.len());
                        json!({"index": i, "text": prompt, "logprobs": null, "finish_reason": null})
                    })
                    .collect();
                if !choices.is_empty() {
                    out.push(self.chunk(choices));
                }
            }
        }
        match event {
            RunEvent::Imports {
                prompt,
                samples,
                skipped,
            } => {
                let choices = samples
                    .iter()
                    .map(|(sample, preview)| {
                        let index = prompt * self.plan.n + sample;
                        let text = if self.plan.echo {
                            preview.prompt.as_str()
                        } else {
                            ""
                        };
                        self.offsets.insert(index, text.len());
                        json!({
                            "index": index,
                            "text": text,
                            "logprobs": null,
                            "finish_reason": null,
                            "hexacoder": two_step::preview_json(preview, skipped),
                        })
                    })
                    .collect();
                out.push(self.chunk(choices));
            }
            RunEvent::Token {
                prompt,
                sample,
                token,
                text,
                finish_reason,
            } => {
                let index = prompt * self.plan.n + sample;
                let pending = self.pending_tokens.entry(index).or_default();
                pending.push(token);
                if text.is_empty() && finish_reason.is_none() {
                    return out;
                }
                let tokens = std::mem::take(pending);
                let logprobs = self.plan.logprobs.map(|_| {
                    let offset = self.offsets.entry(index).or_insert(0);
                    logprobs_json(&self.state.model.tokenizer, &tokens, offset)
                });
                out.push(self.chunk(vec![json!({
                    "index": index,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason.map(openai_finish_reason),
                })]));
            }
            RunEvent::Finished {
                prompt,
                generation,
                two_step: report,
            } => {
                self.usage.add(&generation);
                if let Some(first) = report.as_ref().and_then(|r| r.first.as_ref()) {
                    self.usage.add_counts(first);
                }
                // Samples that ended before any token (`max_tokens: 0`) still get a reason.
                for (sample, s) in generation.samples.iter().enumerate() {
                    if s.tokens.is_empty() {
                        out.push(self.chunk(vec![json!({
                            "index": prompt * self.plan.n + sample,
                            "text": "",
                            "logprobs": null,
                            "finish_reason": openai_finish_reason(s.finish_reason),
                        })]));
                    }
                }
                // Two-step: the final imports (pruned by what the completion used).
                if let Some(report) = &report {
                    let choices: Vec<Value> = report
                        .samples
                        .iter()
                        .enumerate()
                        .map(|(sample, imports)| {
                            json!({
                                "index": prompt * self.plan.n + sample,
                                "text": "",
                                "logprobs": null,
                                "finish_reason": null,
                                "hexacoder": two_step::sample_json(report, imports),
                            })
                        })
                        .collect();
                    out.push(self.chunk(choices));
                }
            }
        }
        out
    }

    fn end(&mut self) -> Vec<Value> {
        if !self.plan.include_usage {
            return Vec::new();
        }
        let mut chunk = self.chunk(Vec::new());
        self.usage.attach(&mut chunk, &self.plan.adapter);
        vec![chunk]
    }
}
