//! HexaCoder's two-step generation, model side: step 1 shows the model the file up to the end
//! of its import block and lets it add imports; step 2 completes the code from the prompt
//! with those imports merged in.
//!
//! [`TwoStepPlan`] is the method without any I/O: it builds the step-1 request, turns what
//! step 1 generated into step-2 requests, and reports each sample's imports once its
//! completion is known. [`generate`] runs a plan on an [`Engine`] synchronously (the trainer,
//! the CLI, tests); the server drives the same plan through its scheduler.
//!
//! Step 2's prompt starts with step 1's prompt and generated imports, so the engine's prefix
//! cache hands step 2 the KV state step 1 left and only the rest of the prompt is prefilled.
#![deny(missing_docs)]

use hexacoder_engine::tokenizer::Tokenizer;
use hexacoder_engine::{
    Engine, FinishReason, GenerateRequest, Generation, OnDelta, Result, Sample, StopCondition,
};
pub use hexacoder_imports::{Import, ImportBlock, Language, NewImports, TextEdit};

/// How two-step generation behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwoStepOptions {
    /// Step 1's token budget (the paper's 20). It comes out of the request's `max_tokens`.
    pub first_step_tokens: usize,
    /// Drop the new imports whose names the completion (and the rest of the file) never uses.
    pub prune_unused: bool,
    /// With `n > 1`, run step 1 once per sample instead of once for all of them.
    pub per_sample_imports: bool,
    /// Run step 1 on a prompt without imports too (from its header, or from nothing), as the
    /// paper does.
    pub without_imports: bool,
}

impl Default for TwoStepOptions {
    fn default() -> Self {
        TwoStepOptions {
            first_step_tokens: 20,
            prune_unused: true,
            per_sample_imports: false,
            without_imports: true,
        }
    }
}

/// Why a request ran as one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// The prompt has no imports and [`TwoStepOptions::without_imports`] is off.
    NoImports,
    /// `max_tokens` is 0.
    NoBudget,
    /// Nothing precedes the import block and the model has no token to start from.
    EmptyPrompt,
    /// The prompt's language is unknown (see [`TwoStepPlan::unknown_language`]).
    UnknownLanguage,
}

impl Skipped {
    /// A short reason for responses and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Skipped::NoImports => "the prompt has no imports",
            Skipped::NoBudget => "max_tokens is 0",
            Skipped::EmptyPrompt => "the import block is empty and the model has no BOS token",
            Skipped::UnknownLanguage => {
                "the prompt's language could not be told from its imports; set its language"
            }
        }
    }
}

/// One request's two steps.
#[derive(Clone, Debug)]
pub struct TwoStepPlan {
    block: ImportBlock,
    request: GenerateRequest,
    options: TwoStepOptions,
    first_prompt: String,
    skipped: Option<Skipped>,
}

/// A step-2 request and what it is built on.
#[derive(Clone, Debug)]
pub struct SecondStep {
    /// What to generate.
    pub request: GenerateRequest,
    /// The original request's sample index of this request's first sample.
    pub first_sample: usize,
    /// What step 1 added (before pruning).
    pub imports: NewImports,
    /// Tokens step 1 generated for these samples.
    pub first_step_tokens: usize,
}

/// One sample's imports once its completion is known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportsOutcome {
    /// New or changed import statements kept.
    pub added: Vec<String>,
    /// New import statements dropped because nothing uses them.
    pub pruned: Vec<String>,
    /// The kept imports as one edit of the original prompt; `None` when there are none.
    pub edit: Option<TextEdit>,
    /// The original prompt with `edit` applied.
    pub prompt: String,
}

impl TwoStepPlan {
    /// Plans `request` (its `max_tokens` is the total of both steps) for a prompt in
    /// `language`.
    pub fn new(
        tokenizer: &Tokenizer,
        language: Language,
        request: GenerateRequest,
        options: TwoStepOptions,
    ) -> Self {
        let block = ImportBlock::find(language, &request.prompt);
        let first_prompt = block.step1_prompt(&request.prompt);
        let starts_empty = first_prompt.is_empty()
            && request.suffix.is_none()
            && request.context_files.is_empty()
            && tokenizer.bos_to_add().is_none();
        let skipped = if request.max_tokens == 0 || options.first_step_tokens == 0 {
            Some(Skipped::NoBudget)
        } else if block.imports.is_empty() && !options.without_imports {
            Some(Skipped::NoImports)
        } else if starts_empty {
            Some(Skipped::EmptyPrompt)
        } else {
            None
        };
        TwoStepPlan {
            block,
            request,
            options,
            first_prompt,
            skipped,
        }
    }

    /// A plan for a prompt in no known language: step 2 alone, reported as skipped.
    pub fn unknown_language(request: GenerateRequest) -> Self {
        TwoStepPlan {
            block: ImportBlock::find(Language::Python, ""),
            request,
            options: TwoStepOptions::default(),
            first_prompt: String::new(),
            skipped: Some(Skipped::UnknownLanguage),
        }
    }

    /// The prompt's import block.
    pub fn block(&self) -> &ImportBlock {
        &self.block
    }

    /// The original request.
    pub fn request(&self) -> &GenerateRequest {
        &self.request
    }

    /// Why step 1 does not run, if it does not.
    pub fn skipped(&self) -> Option<Skipped> {
        self.skipped
    }

    /// Step 1: the file up to the end of its import block, framed like step 2's prompt (the
    /// same context files; a FIM prefix when step 2 fills in the middle) so that step 2
    /// reuses its KV state. It has the request's sampling and adapter, no stop strings, no
    /// indentation floor or time budget, and ends at the first line that cannot be an
    /// import. `None` when skipped.
    pub fn first_step(&self) -> Option<GenerateRequest> {
        if self.skipped.is_some() {
            return None;
        }
        let block = self.block.clone();
        Some(GenerateRequest {
            prompt: self.first_prompt.clone(),
            suffix: None,
            fim_prefix_only: self.request.suffix.is_some(),
            max_tokens: self.options.first_step_tokens.min(self.request.max_tokens),
            n: if self.options.per_sample_imports {
                self.request.n
            } else {
                1
            },
            stop: Vec::new(),
            top_logprobs: 0,
            stop_condition: Some(StopCondition::new(move |text| block.step1_done(text))),
            // The block and the time budget are the code's, step 2's.
            indent_floor: 0,
            newline_deadline: None,
            ..self.request.clone()
        })
    }

    /// Step 2 from step 1's result (`None` when step 1 was skipped): one request for every
    /// sample when step 1 ran once, one per sample when it ran per sample. Each has the
    /// request's budget less what its step 1 used.
    pub fn second_step(&self, first: Option<&Generation>) -> Vec<SecondStep> {
        let samples = first.map(|g| g.samples.as_slice()).unwrap_or_default();
        if samples.is_empty() {
            return vec![SecondStep {
                request: self.request.clone(),
                first_sample: 0,
                imports: NewImports::default(),
                first_step_tokens: 0,
            }];
        }
        let shared = samples.len() == 1;
        samples
            .iter()
            .enumerate()
            .map(|(index, sample)| {
                let imports = self.block.new_imports(&step1_text(sample));
                let (prompt, _) = self.block.merge(&self.request.prompt, &imports);
                let used = sample.tokens.len();
                let mut sampling = self.request.sampling.clone();
                if !shared {
                    // One request per sample: vary the seed as the sample index would.
                    sampling.seed = sampling.seed.map(|s| s.wrapping_add(index as u64));
                }
                SecondStep {
                    request: GenerateRequest {
                        prompt,
                        max_tokens: self.request.max_tokens.saturating_sub(used),
                        n: if shared { self.request.n } else { 1 },
                        sampling,
                        ..self.request.clone()
                    },
                    first_sample: if shared { 0 } else { index },
                    imports,
                    first_step_tokens: used,
                }
            })
            .collect()
    }

    /// A sample's imports after step 2 produced `completion`: pruned of unused ones (when
    /// asked), as one edit of the original prompt.
    pub fn finish(&self, step: &SecondStep, completion: &str) -> ImportsOutcome {
        let prompt = &self.request.prompt;
        if !self.options.prune_unused {
            return self.outcome(&step.imports, Vec::new());
        }
        // A name counts as used anywhere after the block: the completion, the code the
        // prompt already has, and the text after the cursor.
        let rest = &prompt[self.block.insert_at.min(prompt.len())..];
        let suffix = self.request.suffix.as_deref().unwrap_or("");
        let code = format!("{rest}{completion}\n{suffix}");
        let (kept, pruned) = self.block.prune_unused(&step.imports, &code);
        self.outcome(&kept, pruned)
    }

    /// What step 2 starts from, before its completion is known (and so before pruning):
    /// what a stream sends ahead of the code.
    pub fn preview(&self, step: &SecondStep) -> ImportsOutcome {
        self.outcome(&step.imports, Vec::new())
    }

    fn outcome(&self, kept: &NewImports, pruned: Vec<Import>) -> ImportsOutcome {
        let prompt = &self.request.prompt;
        let pruned = pruned.into_iter().map(|i| i.text).collect();
        if kept.is_empty() {
            return ImportsOutcome {
                added: Vec::new(),
                pruned,
                edit: None,
                prompt: prompt.clone(),
            };
        }
        let (merged, edit) = self.block.merge(prompt, kept);
        ImportsOutcome {
            added: kept.statements().map(|i| i.text.clone()).collect(),
            pruned,
            edit: Some(edit),
            prompt: merged,
        }
    }
}

/// Step 1's text as the parser should see it: a sample that ended at end of generation
/// ended its last line too.
fn step1_text(sample: &Sample) -> String {
    let mut text = sample.text.clone();
    if sample.finish_reason == FinishReason::EndOfGeneration && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// One sample of a two-step generation.
#[derive(Clone, Debug)]
pub struct TwoStepSample {
    /// The completion at the cursor (step 2's text) and its tokens.
    pub sample: Sample,
    /// Its imports.
    pub imports: ImportsOutcome,
    /// Tokens step 1 generated for it (shared by every sample when step 1 ran once).
    pub first_step_tokens: usize,
}

/// What [`generate`] returns.
#[derive(Clone, Debug)]
pub struct TwoStepGeneration {
    /// Step 1's generation, when it ran.
    pub first: Option<Generation>,
    /// Step 2's generations, in the order of [`TwoStepPlan::second_step`].
    pub second: Vec<Generation>,
    /// Every sample, in request order.
    pub samples: Vec<TwoStepSample>,
}

impl TwoStepGeneration {
    /// Prompt tokens taken from the prefix cache in step 2, over its requests.
    pub fn second_step_cached_tokens(&self) -> usize {
        self.second.iter().map(|g| g.cached_prompt_tokens).sum()
    }
}

/// Runs `plan` on `engine`, streaming step 2's text through `on_delta` (step 1's text is
/// not the completion and is not streamed).
///
/// # Errors
/// Whatever [`Engine::generate`] fails with on either step.
pub fn generate(
    engine: &mut Engine,
    plan: &TwoStepPlan,
    on_delta: &mut OnDelta<'_>,
) -> Result<TwoStepGeneration> {
    let first = match plan.first_step() {
        Some(request) => Some(engine.generate(&request, &mut |_, _| true)?),
        None => None,
    };
    let mut second = Vec::new();
    let mut samples = Vec::new();
    for step in plan.second_step(first.as_ref()) {
        let base = step.first_sample;
        let generation = engine.generate(&step.request, &mut |sample, delta| {
            on_delta(base + sample, delta)
        })?;
        for sample in &generation.samples {
            samples.push(TwoStepSample {
                imports: plan.finish(&step, &sample.text),
                sample: sample.clone(),
                first_step_tokens: step.first_step_tokens,
            });
        }
        second.push(generation);
    }
    Ok(TwoStepGeneration {
        first,
        second,
        samples,
    })
}
