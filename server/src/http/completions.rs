//! `POST /v1/completions`: OpenAI's legacy completions, with `suffix` for fill-in-the-middle.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hexacoder_api as api;
use hexacoder_engine::{GenerateRequest, GeneratedToken, Generation, SharedAdapter};
use serde::Deserialize;

use super::error::{ApiBody, ApiError};
use super::params::{self, CommonFields, OneOrMany};
use super::response::response_id;
use super::response::{self, Usage, adapter_header, model_label};
use super::run::{self as two_step_run, Job, Run, RunEvent, openai_finish_reason};
use super::two_step::{self, TwoStepChoice};
use super::verify::{self, Verified, VerifySettings};
use super::{AppState, sse};
use crate::time::unix_now;

/// OpenAI's default for this route.
const DEFAULT_MAX_TOKENS: usize = 16;

/// `/v1/completions`' own fields, beside [`CommonFields`].
#[derive(Debug, Deserialize)]
pub struct CompletionFields {
    pub prompt: OneOrMany,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub best_of: Option<i64>,
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

fn plan(state: &AppState, common: CommonFields, req: CompletionFields) -> Result<Plan, ApiError> {
    let common = common.validate(state)?;
    let (extension, adapter, n) = (&common.extension, &common.adapter, common.n);
    let prompts = req.prompt.into_vec();
    if prompts.is_empty() {
        return Err(ApiError::bad_param(
            "prompt",
            "`prompt` must not be an empty array.",
        ));
    }
    if let Some(best_of) = req.best_of
        && best_of != n as i64
    {
        return Err(ApiError::bad_param(
            "best_of",
            "`best_of` other than `n` is not supported; leave it out.",
        ));
    }
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
    let sampling = common.openai_sampling()?;
    let choice = TwoStepChoice::resolve(state, extension, adapter)?;
    let max_tokens = params::max_tokens(
        "max_tokens",
        req.max_tokens,
        choice.default_max_tokens(DEFAULT_MAX_TOKENS),
        state.model.context_length,
    )?;
    let stream = common.stream;
    let verify = match verify::resolve(extension, n, stream)? {
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
            stop: common.stop.clone(),
            top_logprobs: logprobs.unwrap_or(0),
            context_files: extension.context_files(),
            logit_bias: common.logit_bias.clone(),
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
        adapter: adapter.clone(),
        prompts,
        jobs,
        two_step,
        n,
        logprobs,
        echo,
        stream,
        include_usage: common.include_usage,
        verify,
        suffix: req.suffix,
    })
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    ApiBody(common, req): ApiBody<CommonFields, CompletionFields>,
) -> Result<Response, ApiError> {
    let mut plan = plan(&state, common, req)?;
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
                response::logprobs(&state.model.tokenizer, &sample.tokens, &mut offset)
            });
            let index = if verified.is_some() {
                p
            } else {
                p * plan.n + s
            };
            let mut extension =
                imports.map(|(report, imports)| two_step::sample_choice(report, imports));
            if let Some(verified) = verified {
                extension.get_or_insert_default().verification = Some(verified.wire());
            }
            choices.push(api::Choice {
                finish_reason: Some(openai_finish_reason(sample.finish_reason).to_string()),
                hexacoder: extension,
                index: index as u32,
                logprobs,
                text: format!("{prefix}{}", sample.text),
            });
        }
    }
    let body = api::CompletionResponse {
        choices,
        created: Some(created),
        hexacoder: Some(usage.extension(&plan.adapter)),
        id: Some(id),
        model: Some(model_label(&state, &plan.adapter)),
        object: Some("text_completion".into()),
        system_fingerprint: None,
        usage: Some(usage.wire()),
    };
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
    fn chunk(&self, choices: Vec<api::Choice>) -> api::CompletionChunk {
        api::CompletionChunk {
            choices,
            created: Some(self.created),
            hexacoder: None,
            id: Some(self.id.clone()),
            model: Some(model_label(&self.state, &self.plan.adapter)),
            object: Some("text_completion".into()),
            usage: None,
        }
    }
}

/// A streamed choice: a piece of text, maybe its end, maybe its `hexacoder` object.
fn piece(
    index: usize,
    text: &str,
    finish_reason: Option<&str>,
    hexacoder: Option<api::HexacoderChoice>,
) -> api::Choice {
    api::Choice {
        finish_reason: finish_reason.map(str::to_string),
        hexacoder,
        index: index as u32,
        logprobs: None,
        text: text.to_string(),
    }
}

impl sse::Translate for StreamTranslate {
    type Chunk = api::CompletionChunk;

    fn event(&mut self, event: RunEvent) -> Vec<api::CompletionChunk> {
        let mut out = Vec::new();
        if !self.echoed {
            self.echoed = true;
            if self.plan.echo {
                // Two-step prompts echo with their imports, once step 1 is done.
                let choices: Vec<api::Choice> = (0..self.plan.prompts.len() * self.plan.n)
                    .filter(|i| !self.plan.two_step[i / self.plan.n])
                    .map(|i| {
                        let prompt = &self.plan.prompts[i / self.plan.n];
                        self.offsets.insert(i, prompt.len());
                        piece(i, prompt, None, None)
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
                        piece(
                            index,
                            text,
                            None,
                            Some(two_step::preview_choice(preview, skipped)),
                        )
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
                let mut choice = piece(index, &text, finish_reason.map(openai_finish_reason), None);
                choice.logprobs = self.plan.logprobs.map(|_| {
                    let offset = self.offsets.entry(index).or_insert(0);
                    response::logprobs(&self.state.model.tokenizer, &tokens, offset)
                });
                out.push(self.chunk(vec![choice]));
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
                        let index = prompt * self.plan.n + sample;
                        let reason = openai_finish_reason(s.finish_reason);
                        out.push(self.chunk(vec![piece(index, "", Some(reason), None)]));
                    }
                }
                // Two-step: the final imports (pruned by what the completion used).
                if let Some(report) = &report {
                    let choices = report
                        .samples
                        .iter()
                        .enumerate()
                        .map(|(sample, imports)| {
                            let index = prompt * self.plan.n + sample;
                            let extension = two_step::sample_choice(report, imports);
                            piece(index, "", None, Some(extension))
                        })
                        .collect();
                    out.push(self.chunk(choices));
                }
            }
        }
        out
    }

    fn end(&mut self) -> Vec<api::CompletionChunk> {
        if !self.plan.include_usage {
            return Vec::new();
        }
        let mut chunk = self.chunk(Vec::new());
        chunk.usage = Some(self.usage.wire());
        chunk.hexacoder = Some(self.usage.extension(&self.plan.adapter));
        vec![chunk]
    }
}
