//! One HTTP request's engine work: its prompts submitted to the scheduler, their events
//! merged, timed for metrics, and bounded by the request timeout. Dropping a `Run` cancels
//! whatever is still generating: the scheduler sees the channel closed before its next step.
//!
//! A prompt is a [`Job`]: one engine request, or a two-step plan whose step-2 requests are
//! submitted when its step 1 finishes. Step 1's tokens are not the completion and are never
//! reported as tokens; its result arrives as one [`RunEvent::Imports`] before step 2's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use hexacoder_engine::batch::{Event, Sink};
use hexacoder_engine::{FinishReason, GenerateRequest, GeneratedToken, Generation};
use hexacoder_two_step::{ImportsOutcome, TwoStepPlan};
use tokio::sync::mpsc::{Receiver, Sender, channel};

use super::AppState;
use super::error::ApiError;

mod two_step;

use two_step::TwoStepJob;
pub use two_step::{SampleImports, TwoStepReport};

/// What one prompt of a request runs.
pub enum Job {
    /// One engine request.
    OneStep(Box<GenerateRequest>),
    /// Imports first, then code.
    TwoStep(Box<TwoStepPlan>),
}

/// Whether a submission is a request's first (checked against the scheduler's capacity) or
/// the continuation of one already admitted (step 2 after step 1: never refused for capacity,
/// so that step 1's work is not thrown away with a 429).
#[derive(Clone, Copy)]
enum Admission {
    New,
    Continued,
}

/// Which engine request of a prompt an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Only,
    First,
    /// Index into the prompt's step-2 requests.
    Second(usize),
}

struct ChannelSink {
    prompt: usize,
    stage: Stage,
    events: Sender<(usize, Stage, Event)>,
}

impl Sink for ChannelSink {
    /// Never blocks the engine thread: the channel holds every event the run can produce
    /// (see [`event_capacity`]), so a full channel means something is wrong and the request
    /// is cancelled rather than stalling every other request in the batch.
    fn send(&mut self, event: Event) -> bool {
        self.events
            .try_send((self.prompt, self.stage, event))
            .is_ok()
    }

    fn is_closed(&self) -> bool {
        self.events.is_closed()
    }
}

/// What a run reports, per prompt.
pub enum RunEvent {
    /// A two-step prompt's step 1 finished (or was skipped): what each sample's step 2
    /// starts from. Comes before any of the prompt's tokens.
    Imports {
        prompt: usize,
        /// `(sample, preview)` for every sample of the prompt.
        samples: Vec<(usize, ImportsOutcome)>,
        skipped: Option<&'static str>,
    },
    Token {
        prompt: usize,
        sample: usize,
        token: GeneratedToken,
        text: String,
        finish_reason: Option<FinishReason>,
    },
    Finished {
        prompt: usize,
        generation: Generation,
        /// Set for two-step prompts.
        two_step: Option<TwoStepReport>,
    },
}

pub struct Run {
    state: Arc<AppState>,
    /// Adapters of this run's prompts, counted in `adapter_requests` until it ends.
    adapters: Vec<String>,
    route: &'static str,
    sender: Option<Sender<(usize, Stage, Event)>>,
    events: Receiver<(usize, Stage, Event)>,
    /// Prompts not finished yet.
    remaining: usize,
    two_step: HashMap<usize, TwoStepJob>,
    /// Events ready to hand out before receiving more.
    ready: std::collections::VecDeque<RunEvent>,
    started: Instant,
    deadline: Option<tokio::time::Instant>,
    first_token: bool,
    last_token: HashMap<(usize, usize), Instant>,
}

impl Run {
    /// Submits one engine request per prompt.
    pub fn start(
        state: &Arc<AppState>,
        route: &'static str,
        requests: Vec<GenerateRequest>,
    ) -> Result<Run, ApiError> {
        Run::start_jobs(
            state,
            route,
            requests
                .into_iter()
                .map(|r| Job::OneStep(Box::new(r)))
                .collect(),
        )
    }

    /// Starts every prompt's job: its request, or its step 1 (its step 2 when step 1 is
    /// skipped).
    pub fn start_jobs(
        state: &Arc<AppState>,
        route: &'static str,
        jobs: Vec<Job>,
    ) -> Result<Run, ApiError> {
        let (sender, events) = channel(event_capacity(&jobs));
        let adapters: Vec<String> = jobs
            .iter()
            .filter_map(|job| match job {
                Job::OneStep(request) => request.adapter.as_ref(),
                Job::TwoStep(plan) => plan.request().adapter.as_ref(),
            })
            .map(|a| a.name().to_string())
            .collect();
        let timeout = state.request_timeout;
        let mut run = Run {
            state: Arc::clone(state),
            adapters,
            route,
            sender: Some(sender),
            events,
            remaining: jobs.len(),
            two_step: HashMap::new(),
            ready: Default::default(),
            started: Instant::now(),
            deadline: timeout.map(|t| tokio::time::Instant::now() + t),
            first_token: true,
            last_token: HashMap::new(),
        };
        if let Err(err) = run.submit_jobs(jobs) {
            // Rejected at admission: nothing ran, so nothing counts as aborted or in flight.
            run.remaining = 0;
            run.adapters.clear();
            return Err(err);
        }
        run.count_adapters();
        run.release_sender_when_done();
        Ok(run)
    }

    fn submit_jobs(&mut self, jobs: Vec<Job>) -> Result<(), ApiError> {
        // On rejection the run is dropped with the error, cancelling earlier prompts.
        for (prompt, job) in jobs.into_iter().enumerate() {
            match job {
                Job::OneStep(request) => {
                    self.submit(prompt, Stage::Only, *request, Admission::New)?
                }
                Job::TwoStep(plan) => {
                    let (job, first) = TwoStepJob::new(plan);
                    let skipped = job.skipped();
                    self.two_step.insert(prompt, job);
                    match first {
                        Some(request) => {
                            self.submit(prompt, Stage::First, request, Admission::New)?
                        }
                        None => {
                            self.state
                                .metrics
                                .two_step_requests
                                .with_label_values(&["skipped"])
                                .inc();
                            self.start_second_step(prompt, None, skipped, Admission::New)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn count_adapters(&self) {
        let mut counts = self
            .state
            .adapter_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for name in &self.adapters {
            *counts.entry(name.clone()).or_default() += 1;
            self.state
                .metrics
                .lora_requests
                .with_label_values(&[name.as_str()])
                .inc();
        }
    }

    /// Lets go of the run's own sender once no step 2 is left to submit, so that an engine
    /// that drops every sink is noticed instead of waited on.
    fn release_sender_when_done(&mut self) {
        if self.two_step.values().all(TwoStepJob::second_step_started) {
            self.sender = None;
        }
    }

    fn submit(
        &self,
        prompt: usize,
        stage: Stage,
        request: GenerateRequest,
        admission: Admission,
    ) -> Result<(), ApiError> {
        let events = self
            .sender
            .clone()
            .ok_or_else(|| ApiError::internal("the run already ended"))?;
        let sink = ChannelSink {
            prompt,
            stage,
            events,
        };
        let sink = Box::new(sink);
        match admission {
            Admission::New => self.state.scheduler.submit(request, sink)?,
            Admission::Continued => self.state.scheduler.submit_admitted(request, sink)?,
        }
        Ok(())
    }

    /// Submits a two-step prompt's step 2 and queues the [`RunEvent::Imports`] announcing it.
    fn start_second_step(
        &mut self,
        prompt: usize,
        first: Option<Generation>,
        skipped: Option<&'static str>,
        admission: Admission,
    ) -> Result<(), ApiError> {
        let Some(job) = self.two_step.get_mut(&prompt) else {
            return Err(ApiError::internal("step 2 of an unknown prompt"));
        };
        let (requests, samples) = job.begin_second_step(first);
        for (index, request) in requests.into_iter().enumerate() {
            self.submit(prompt, Stage::Second(index), request, admission)?;
        }
        self.ready.push_back(RunEvent::Imports {
            prompt,
            samples,
            skipped,
        });
        Ok(())
    }

    /// The next event, `None` once every prompt finished.
    pub async fn next(&mut self) -> Option<Result<RunEvent, ApiError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.remaining == 0 {
                return None;
            }
            let received = match self.deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.events.recv()).await {
                        Ok(received) => received,
                        Err(_) => {
                            self.abandon();
                            let seconds = self.state.request_timeout.map_or(0, |t| t.as_secs());
                            return Some(Err(ApiError::timeout(seconds)));
                        }
                    }
                }
                None => self.events.recv().await,
            };
            let Some((prompt, stage, event)) = received else {
                self.remaining = 0;
                return Some(Err(ApiError::internal(
                    "the engine stopped before finishing the request",
                )));
            };
            match self.handle(prompt, stage, event) {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => {}
                Err(err) => {
                    self.abandon();
                    return Some(Err(err));
                }
            }
        }
    }

    fn handle(
        &mut self,
        prompt: usize,
        stage: Stage,
        event: Event,
    ) -> Result<Option<RunEvent>, ApiError> {
        match (stage, event) {
            (Stage::First, Event::Token { .. }) => Ok(None),
            (Stage::First, Event::Finished(result)) => {
                let generation = result?;
                let metrics = &self.state.metrics;
                metrics.two_step_requests.with_label_values(&["ran"]).inc();
                metrics
                    .two_step_first_step_seconds
                    .observe(self.started.elapsed().as_secs_f64());
                metrics
                    .two_step_first_step_tokens
                    .inc_by(generation.completion_tokens() as u64);
                metrics
                    .prompt_tokens
                    .inc_by(generation.prompt_tokens.len() as u64);
                self.start_second_step(prompt, Some(generation), None, Admission::Continued)?;
                self.release_sender_when_done();
                Ok(None)
            }
            (
                stage,
                Event::Token {
                    sample,
                    token,
                    text,
                    finish_reason,
                },
            ) => {
                let sample = match stage {
                    Stage::Second(index) => self
                        .two_step
                        .get(&prompt)
                        .map_or(sample, |job| job.sample_of(index, sample)),
                    _ => sample,
                };
                self.observe_token(prompt, sample);
                Ok(Some(RunEvent::Token {
                    prompt,
                    sample,
                    token,
                    text,
                    finish_reason,
                }))
            }
            (Stage::Only, Event::Finished(result)) => {
                let generation = result?;
                self.remaining -= 1;
                self.observe_finished(&generation);
                Ok(Some(RunEvent::Finished {
                    prompt,
                    generation,
                    two_step: None,
                }))
            }
            (Stage::Second(index), Event::Finished(result)) => {
                let generation = result?;
                self.observe_finished(&generation);
                let job = self
                    .two_step
                    .get_mut(&prompt)
                    .ok_or_else(|| ApiError::internal("step 2 of an unknown prompt"))?;
                if !job.second_finished(index, generation) {
                    return Ok(None);
                }
                let Some(job) = self.two_step.remove(&prompt) else {
                    return Ok(None);
                };
                self.remaining -= 1;
                let (generation, report) = job.finish();
                let metrics = &self.state.metrics;
                for sample in &report.samples {
                    metrics
                        .imports_added
                        .inc_by(sample.outcome.added.len() as u64);
                    metrics
                        .imports_pruned
                        .inc_by(sample.outcome.pruned.len() as u64);
                }
                Ok(Some(RunEvent::Finished {
                    prompt,
                    generation,
                    two_step: Some(report),
                }))
            }
        }
    }

    /// Waits for every prompt; generations (with two-step reports) in prompt order.
    pub async fn collect_two_step(
        mut self,
    ) -> Result<Vec<(Generation, Option<TwoStepReport>)>, ApiError> {
        let mut out: Vec<Option<(Generation, Option<TwoStepReport>)>> = Vec::new();
        while let Some(event) = self.next().await {
            if let RunEvent::Finished {
                prompt,
                generation,
                two_step,
            } = event?
            {
                if out.len() <= prompt {
                    out.resize_with(prompt + 1, || None);
                }
                out[prompt] = Some((generation, two_step));
            }
        }
        out.into_iter()
            .map(|g| g.ok_or_else(|| ApiError::internal("a prompt ended without a result")))
            .collect()
    }

    /// Waits for every prompt; generations in prompt order.
    pub async fn collect(self) -> Result<Vec<Generation>, ApiError> {
        Ok(self
            .collect_two_step()
            .await?
            .into_iter()
            .map(|(generation, _)| generation)
            .collect())
    }

    /// Counts what is still generating as aborted; the scheduler cancels it once the
    /// channel closes.
    fn abandon(&mut self) {
        if self.remaining > 0 {
            self.state
                .metrics
                .request_success
                .with_label_values(&["abort"])
                .inc_by(self.remaining as u64);
            self.remaining = 0;
        }
    }

    fn observe_token(&mut self, prompt: usize, sample: usize) {
        let now = Instant::now();
        let metrics = &self.state.metrics;
        if std::mem::take(&mut self.first_token) {
            metrics
                .time_to_first_token
                .observe((now - self.started).as_secs_f64());
        }
        if let Some(previous) = self.last_token.insert((prompt, sample), now) {
            metrics
                .inter_token_latency
                .observe((now - previous).as_secs_f64());
        }
    }

    fn observe_finished(&self, generation: &Generation) {
        let metrics = &self.state.metrics;
        metrics
            .e2e_latency
            .observe(self.started.elapsed().as_secs_f64());
        metrics
            .prompt_tokens
            .inc_by(generation.prompt_tokens.len() as u64);
        metrics
            .request_prompt_tokens
            .with_label_values(&[self.route])
            .observe(generation.prompt_tokens.len() as f64);
        for sample in &generation.samples {
            metrics
                .request_success
                .with_label_values(&[finish_reason_label(sample.finish_reason)])
                .inc();
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.abandon();
        let mut counts = self
            .state
            .adapter_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for name in &self.adapters {
            if let Some(count) = counts.get_mut(name) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(name);
                }
            }
        }
    }
}

/// Every event the jobs can send: a token event per sample and token (step 1's and step 2's
/// share one budget), and a `Finished` per engine request (a two-step prompt has at most one
/// step 2 per sample). Bounding the channel by what the request itself asked for keeps a
/// slow client's backlog within its own `max_tokens`, and lets the engine never wait.
fn event_capacity(jobs: &[Job]) -> usize {
    const CEILING: usize = 1 << 22;
    jobs.iter()
        .map(|job| {
            let request = match job {
                Job::OneStep(request) => request.as_ref(),
                Job::TwoStep(plan) => plan.request(),
            };
            let n = request.n.max(1);
            n.saturating_mul(request.max_tokens.saturating_add(2))
                .saturating_add(2)
        })
        .fold(1usize, usize::saturating_add)
        .min(CEILING)
}

fn finish_reason_label(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::EndOfGeneration | FinishReason::BlockEnd => "stop",
        FinishReason::Length | FinishReason::TimeLimit => "length",
        FinishReason::Cancelled => "abort",
    }
}

/// OpenAI's `finish_reason`.
pub fn openai_finish_reason(reason: FinishReason) -> &'static str {
    finish_reason_label(reason)
}
