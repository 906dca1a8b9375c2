//! One two-step prompt in flight, as a state machine that knows nothing of HTTP or the
//! scheduler: step 1's request, then (once it finishes) the step-2 requests and the imports
//! each sample starts from, then, once every step 2 has finished, one generation holding
//! every sample and the report of their imports.

use std::time::Duration;

use hexacoder_engine::{GenerateRequest, Generation};
use hexacoder_two_step::{ImportsOutcome, SecondStep, TwoStepPlan};

/// A sample's two-step result, for responses.
#[derive(Clone, Debug)]
pub struct SampleImports {
    /// The imports it kept, their edit and the updated prompt.
    pub outcome: ImportsOutcome,
    pub first_step_tokens: usize,
    pub second_step_tokens: usize,
}

/// A prompt's two-step result.
#[derive(Clone, Debug)]
pub struct TwoStepReport {
    /// Why step 1 did not run, if it did not.
    pub skipped: Option<&'static str>,
    /// Step 1's generation, when it ran (its tokens count in usage).
    pub first: Option<Generation>,
    /// One per sample, in order.
    pub samples: Vec<SampleImports>,
}

/// A two-step prompt in flight.
pub struct TwoStepJob {
    plan: Box<TwoStepPlan>,
    first: Option<Generation>,
    seconds: Vec<SecondStep>,
    results: Vec<Option<Generation>>,
}

impl TwoStepJob {
    /// The job, and its step-1 request (`None` when step 1 is skipped: start step 2 at once).
    pub fn new(plan: Box<TwoStepPlan>) -> (TwoStepJob, Option<GenerateRequest>) {
        let first = plan.first_step();
        let job = TwoStepJob {
            plan,
            first: None,
            seconds: Vec::new(),
            results: Vec::new(),
        };
        (job, first)
    }

    /// Why step 1 does not run, if it does not.
    pub fn skipped(&self) -> Option<&'static str> {
        self.plan.skipped().map(|s| s.reason())
    }

    /// Whether step 2 has been started (nothing is left to submit).
    pub fn second_step_started(&self) -> bool {
        !self.seconds.is_empty()
    }

    /// Step 1 finished (or was skipped): the step-2 requests to submit, in order, and
    /// `(sample, imports)` for every sample of the prompt.
    pub fn begin_second_step(
        &mut self,
        first: Option<Generation>,
    ) -> (Vec<GenerateRequest>, Vec<(usize, ImportsOutcome)>) {
        let seconds = self.plan.second_step(first.as_ref());
        let mut samples = Vec::new();
        for step in &seconds {
            let preview = self.plan.preview(step);
            for sample in 0..step.request.n {
                samples.push((step.first_sample + sample, preview.clone()));
            }
        }
        self.first = first;
        self.results = vec![None; seconds.len()];
        let requests = seconds.iter().map(|s| s.request.clone()).collect();
        self.seconds = seconds;
        (requests, samples)
    }

    /// The prompt's sample index of sample `sample` of step-2 request `index`.
    pub fn sample_of(&self, index: usize, sample: usize) -> usize {
        self.seconds
            .get(index)
            .map_or(sample, |step| step.first_sample + sample)
    }

    /// Records step-2 request `index`'s result; whether every step 2 has now finished.
    pub fn second_finished(&mut self, index: usize, generation: Generation) -> bool {
        if let Some(slot) = self.results.get_mut(index) {
            *slot = Some(generation);
        }
        !self.results.is_empty() && self.results.iter().all(Option::is_some)
    }

    /// One generation holding every sample (timed from step 1's start), and its report.
    pub fn finish(self) -> (Generation, TwoStepReport) {
        let TwoStepJob {
            plan,
            first,
            seconds,
            results,
        } = self;
        let mut samples = Vec::new();
        let mut reports = Vec::new();
        let mut combined: Option<Generation> = None;
        let first_elapsed = first.as_ref().map_or(Duration::ZERO, |g| g.elapsed);
        for (step, generation) in seconds.iter().zip(results.into_iter().flatten()) {
            for sample in &generation.samples {
                reports.push(SampleImports {
                    outcome: plan.finish(step, &sample.text),
                    first_step_tokens: step.first_step_tokens,
                    second_step_tokens: sample.tokens.len(),
                });
                samples.push(sample.clone());
            }
            combined = Some(match combined {
                None => generation,
                Some(mut all) => {
                    all.cached_prompt_tokens += generation.cached_prompt_tokens;
                    all.prompt_tokens.extend(generation.prompt_tokens);
                    all.time_to_first_token =
                        all.time_to_first_token.max(generation.time_to_first_token);
                    all.elapsed = all.elapsed.max(generation.elapsed);
                    all
                }
            });
        }
        let mut generation = combined.unwrap_or_else(|| Generation {
            samples: Vec::new(),
            prompt_tokens: Vec::new(),
            cached_prompt_tokens: 0,
            time_to_first_token: Duration::ZERO,
            elapsed: Duration::ZERO,
        });
        generation.samples = samples;
        // Step 1 ran before step 2 started: the user waited for both.
        generation.time_to_first_token += first_elapsed;
        generation.elapsed += first_elapsed;
        let report = TwoStepReport {
            skipped: plan.skipped().map(|s| s.reason()),
            first,
            samples: reports,
        };
        (generation, report)
    }
}

#[cfg(test)]
mod tests;
