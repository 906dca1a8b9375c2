//! One HTTP request's engine work: its prompts submitted to the scheduler, their events
//! merged, timed for metrics, and bounded by the request timeout. Dropping a `Run` cancels
//! whatever is still generating: the scheduler sees the channel closed before its next step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use hexacoder_engine::batch::{Event, Sink};
use hexacoder_engine::{FinishReason, GenerateRequest, GeneratedToken, Generation};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::AppState;
use super::error::ApiError;

struct ChannelSink {
    prompt: usize,
    events: UnboundedSender<(usize, Event)>,
}

impl Sink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.events.send((self.prompt, event)).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.events.is_closed()
    }
}

/// What a run reports, per prompt.
pub enum RunEvent {
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
    },
}

pub struct Run {
    state: Arc<AppState>,
    /// Adapters of this run's prompts, counted in `adapter_requests` until it ends.
    adapters: Vec<String>,
    route: &'static str,
    events: UnboundedReceiver<(usize, Event)>,
    remaining: usize,
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
        let (sender, events) = unbounded_channel();
        let remaining = requests.len();
        let adapters: Vec<String> = requests
            .iter()
            .filter_map(|r| r.adapter.as_ref().map(|a| a.name().to_string()))
            .collect();
        for (prompt, request) in requests.into_iter().enumerate() {
            let sink = ChannelSink {
                prompt,
                events: sender.clone(),
            };
            // On rejection the receiver is dropped with the error, cancelling earlier prompts.
            state.scheduler.submit(request, Box::new(sink))?;
        }
        let timeout = state.request_timeout;
        {
            let mut counts = state
                .adapter_requests
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for name in &adapters {
                *counts.entry(name.clone()).or_default() += 1;
                state
                    .metrics
                    .lora_requests
                    .with_label_values(&[name.as_str()])
                    .inc();
            }
        }
        Ok(Run {
            state: Arc::clone(state),
            adapters,
            route,
            events,
            remaining,
            started: Instant::now(),
            deadline: timeout.map(|t| tokio::time::Instant::now() + t),
            first_token: true,
            last_token: HashMap::new(),
        })
    }

    /// The next event, `None` once every prompt finished.
    pub async fn next(&mut self) -> Option<Result<RunEvent, ApiError>> {
        if self.remaining == 0 {
            return None;
        }
        let received = match self.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(received) => received,
                Err(_) => {
                    self.abandon();
                    let seconds = self.state.request_timeout.map_or(0, |t| t.as_secs());
                    return Some(Err(ApiError::timeout(seconds)));
                }
            },
            None => self.events.recv().await,
        };
        let Some((prompt, event)) = received else {
            self.remaining = 0;
            return Some(Err(ApiError::internal(
                "the engine stopped before finishing the request",
            )));
        };
        Some(match event {
            Event::Token {
                sample,
                token,
                text,
                finish_reason,
            } => {
                self.observe_token(prompt, sample);
                Ok(RunEvent::Token {
                    prompt,
                    sample,
                    token,
                    text,
                    finish_reason,
                })
            }
            Event::Finished(result) => {
                self.remaining -= 1;
                match result {
                    Ok(generation) => {
                        self.observe_finished(&generation);
                        Ok(RunEvent::Finished { prompt, generation })
                    }
                    Err(err) => {
                        self.remaining = 0;
                        Err(err.into())
                    }
                }
            }
        })
    }

    /// Waits for every prompt; generations in prompt order.
    pub async fn collect(mut self) -> Result<Vec<Generation>, ApiError> {
        let mut generations: Vec<Option<Generation>> = Vec::new();
        while let Some(event) = self.next().await {
            if let RunEvent::Finished { prompt, generation } = event? {
                if generations.len() <= prompt {
                    generations.resize_with(prompt + 1, || None);
                }
                generations[prompt] = Some(generation);
            }
        }
        generations
            .into_iter()
            .map(|g| g.ok_or_else(|| ApiError::internal("a prompt ended without a result")))
            .collect()
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

fn finish_reason_label(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::EndOfGeneration => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "abort",
    }
}

/// OpenAI's `finish_reason`.
pub fn openai_finish_reason(reason: FinishReason) -> &'static str {
    finish_reason_label(reason)
}
