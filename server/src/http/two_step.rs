//! Two-step generation on the HTTP routes: whether a request gets it, how its plan is built,
//! and the `hexacoder` objects that report each sample's imports.

use hexacoder_api as api;
use hexacoder_engine::{GenerateRequest, SharedAdapter};
use hexacoder_two_step::{ImportsOutcome, Language, TwoStepOptions, TwoStepPlan};

use super::AppState;
use super::error::ApiError;
use super::params::Extension;
use super::run::{Job, SampleImports, TwoStepReport};

/// Total tokens of both steps when a two-step request gives no `max_tokens` (the paper's
/// 20 + 180).
pub const DEFAULT_TOTAL_TOKENS: usize = 200;

/// The server's two-step defaults.
#[derive(Clone, Copy, Debug)]
pub struct TwoStepDefaults {
    pub enabled: bool,
    pub options: TwoStepOptions,
}

/// A request's two-step choice.
#[derive(Clone, Debug)]
pub struct TwoStepChoice {
    /// `None`: one-step generation.
    enabled: Option<Settings>,
}

#[derive(Clone, Debug)]
struct Settings {
    language: Option<Language>,
    options: TwoStepOptions,
}

impl TwoStepChoice {
    /// Whether two-step is on for a request with `extension` on `adapter`: the request's
    /// choice, else the adapter's default, else the server's.
    pub fn resolve(
        state: &AppState,
        extension: &Extension,
        adapter: &Option<SharedAdapter>,
    ) -> Result<Self, ApiError> {
        let enabled = extension
            .two_step
            .or_else(|| adapter.as_ref().and_then(|a| a.two_step_default()))
            .unwrap_or(state.two_step.enabled);
        let language = match extension.language.as_deref() {
            None => None,
            Some(name) => Some(Language::from_name(name).ok_or_else(|| {
                ApiError::bad_param(
                    "hexacoder.language",
                    format!(
                        "Two-step generation knows python, c, cpp, javascript, typescript, tsx, go, java and rust (or their file extensions), not {name:?}."
                    ),
                )
            })?),
        };
        let defaults = state.two_step.options;
        let first_step_tokens = extension
            .first_step_tokens
            .unwrap_or(defaults.first_step_tokens);
        if first_step_tokens > state.model.context_length {
            return Err(ApiError::bad_param(
                "hexacoder.first_step_tokens",
                format!(
                    "`first_step_tokens` must be at most the context length {}, got {first_step_tokens}.",
                    state.model.context_length
                ),
            ));
        }
        let options = TwoStepOptions {
            first_step_tokens,
            prune_unused: extension
                .prune_unused_imports
                .unwrap_or(defaults.prune_unused),
            per_sample_imports: extension
                .per_sample_imports
                .unwrap_or(defaults.per_sample_imports),
            without_imports: defaults.without_imports,
        };
        Ok(TwoStepChoice {
            enabled: enabled.then_some(Settings { language, options }),
        })
    }

    /// Whether the request runs two steps.
    pub fn is_on(&self) -> bool {
        self.enabled.is_some()
    }

    /// `max_tokens` when the request has none: `one_step_default`, or both steps' total.
    pub fn default_max_tokens(&self, one_step_default: usize) -> usize {
        if self.is_on() {
            DEFAULT_TOTAL_TOKENS
        } else {
            one_step_default
        }
    }

    /// The job for one prompt. A prompt whose language cannot be told runs as two-step with
    /// step 1 skipped, and says so.
    pub fn job(&self, state: &AppState, request: GenerateRequest) -> Job {
        let Some(settings) = &self.enabled else {
            return Job::OneStep(Box::new(request));
        };
        let language = settings
            .language
            .or_else(|| Language::detect(&request.prompt));
        match language {
            Some(language) => Job::TwoStep(Box::new(TwoStepPlan::new(
                &state.model.tokenizer,
                language,
                request,
                settings.options,
            ))),
            None => Job::TwoStep(Box::new(TwoStepPlan::unknown_language(request))),
        }
    }
}

/// A choice's `hexacoder` object once its completion is known.
pub fn sample_choice(report: &TwoStepReport, sample: &SampleImports) -> api::HexacoderChoice {
    api::HexacoderChoice {
        first_step_tokens: Some(sample.first_step_tokens as u64),
        second_step_tokens: Some(sample.second_step_tokens as u64),
        pruned_imports: Some(sample.outcome.pruned.clone()),
        ..preview_choice(&sample.outcome, report.skipped)
    }
}

/// What a stream sends before a sample's code: the imports step 2 starts from.
pub fn preview_choice(outcome: &ImportsOutcome, skipped: Option<&str>) -> api::HexacoderChoice {
    api::HexacoderChoice {
        added_imports: Some(outcome.added.clone()),
        first_step_skipped: skipped.map(str::to_string),
        imports_edit: Some(outcome.edit.clone()),
        two_step: Some(true),
        ..Default::default()
    }
}
