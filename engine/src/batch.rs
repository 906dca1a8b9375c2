//! Continuous batching: requests join and leave one running batch between forward passes.
//!
//! Every step runs a single ragged forward pass holding one new token for each decoding
//! sample of every request, plus a chunk of the prompt of requests still prefilling. So the
//! weights are read once per step for everyone, a long prompt never stalls the others for
//! longer than one chunk, and a request that finishes frees its place at once.
//!
//! Why one file of about 650 lines: admission, the step, sampling and retirement all change the
//! same per-request state (`Active`) and must stay in step with one another.

use std::time::Instant;

use crate::Sample;
use crate::lora::RowAdapters;
use crate::models::llama::{Outputs, SeqInput};
use crate::nn::KvCache;
use crate::sampling::{self, Sampler};
use crate::text::{Pushed, TextAssembler};
use crate::{Engine, Error, FinishReason, GenerateRequest, GeneratedToken, Generation, Result};

/// What a running request reports, in order: tokens as they are chosen, then exactly one
/// `Finished`.
#[derive(Debug)]
pub enum Event {
    /// Sample `sample` chose `token`. `text` is the text that became final with it (empty
    /// while a possible stop string or a split UTF-8 character is held back).
    Token {
        /// Sample index, `0..n`.
        sample: usize,
        /// The token.
        token: GeneratedToken,
        /// Final text.
        text: String,
        /// Set on the sample's last token.
        finish_reason: Option<FinishReason>,
    },
    /// The request ended: every sample, or why it failed.
    Finished(Result<Generation>),
}

/// Where a request's events go.
pub trait Sink {
    /// Delivers an event. `false` means nobody listens any more: the request is cancelled.
    fn send(&mut self, event: Event) -> bool;

    /// Whether nobody listens any more; checked before every step so that a request whose
    /// client left stops costing compute even while it produces no text.
    fn is_closed(&self) -> bool {
        false
    }
}

/// How the batch spends each forward pass.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Prompt tokens per step while nothing else is decoding.
    pub prefill_chunk: usize,
    /// Prompt tokens per step while other requests decode: their next token waits for the
    /// chunk, so this bounds the inter-token latency a new request can cause.
    pub interleaved_prefill_chunk: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            prefill_chunk: 512,
            interleaved_prefill_chunk: 64,
        }
    }
}

/// Counters a step adds to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Prompt tokens run through the model (prefix-cache hits excluded).
    pub prefilled_tokens: usize,
    /// Tokens sampled.
    pub generated_tokens: usize,
    /// Requests that ended.
    pub finished_requests: usize,
}

struct Running {
    cache: KvCache,
    sampler: Sampler,
    text: TextAssembler,
    tokens: Vec<GeneratedToken>,
    finish_reason: Option<FinishReason>,
    stop_string: Option<String>,
}

enum Phase {
    /// `cache` holds the first `cache.len()` prompt tokens.
    Prefill {
        cache: KvCache,
    },
    Decode {
        samples: Vec<Running>,
    },
}

struct Active<'a> {
    request: GenerateRequest,
    sink: Box<dyn Sink + 'a>,
    prompt: Vec<u32>,
    cached: usize,
    started: Instant,
    /// When the prompt was in and the first tokens were chosen: the time to first token
    /// and the start of the newline deadline (llama.cpp counts `t_max_predict_ms` from it).
    first_token_at: Option<Instant>,
    phase: Phase,
}

/// Requests being generated together. Not thread-safe by itself; [`crate::Scheduler`] runs
/// one on its own thread.
pub struct Batch<'a> {
    active: Vec<Active<'a>>,
    options: BatchOptions,
}

/// A step's share of one request: which rows of the forward pass are its.
enum Slot {
    Prefill { request: usize, n_tokens: usize },
    Decode { request: usize, sample: usize },
}

impl<'a> Batch<'a> {
    /// An empty batch.
    pub fn new(options: BatchOptions) -> Self {
        Batch {
            active: Vec::new(),
            options: BatchOptions {
                prefill_chunk: options.prefill_chunk.max(1),
                interleaved_prefill_chunk: options.interleaved_prefill_chunk.max(1),
            },
        }
    }

    /// Requests in the batch.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether no request is running.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Samples being decoded now.
    pub fn decoding_sequences(&self) -> usize {
        self.active
            .iter()
            .map(|a| match &a.phase {
                Phase::Decode { samples } => {
                    samples.iter().filter(|s| s.finish_reason.is_none()).count()
                }
                Phase::Prefill { .. } => 0,
            })
            .sum()
    }

    /// Starts `request`: validates it and looks its prompt up in the prefix cache. A request
    /// that is invalid ends at once with `Finished(Err(..))` on its sink.
    pub fn add(&mut self, engine: &mut Engine, request: GenerateRequest, sink: Box<dyn Sink + 'a>) {
        let started = Instant::now();
        let mut sink = sink;
        match Self::admit(engine, &request) {
            Ok((prompt, cache, cached)) => self.active.push(Active {
                request,
                sink,
                prompt,
                cached,
                started,
                first_token_at: None,
                phase: Phase::Prefill { cache },
            }),
            Err(err) => {
                sink.send(Event::Finished(Err(err)));
            }
        }
    }

    fn admit(engine: &mut Engine, request: &GenerateRequest) -> Result<(Vec<u32>, KvCache, usize)> {
        request.sampling.validate().map_err(Error::InvalidRequest)?;
        if request.n == 0 {
            return Err(Error::InvalidRequest("n must be at least 1".into()));
        }
        let vocab = engine.tokenizer.vocab_size();
        for &(id, bias) in &request.logit_bias {
            if id as usize >= vocab {
                return Err(Error::InvalidRequest(format!(
                    "logit_bias names token {id}, but the vocabulary has {vocab} tokens"
                )));
            }
            if !(-100.0..=100.0).contains(&bias) {
                return Err(Error::InvalidRequest(format!(
                    "logit_bias for token {id} is {bias}; biases must be between -100 and 100"
                )));
            }
        }
        let prompt = engine.prompt_tokens(
            &request.prompt,
            request.suffix.as_deref(),
            request.fim_prefix_only,
            &request.context_files,
        )?;
        let context = engine.model.max_positions();
        if prompt.len() + request.max_tokens > context {
            return Err(Error::ContextOverflow {
                n_prompt: prompt.len(),
                max_tokens: request.max_tokens,
                context,
                excess: prompt.len() + request.max_tokens - context,
            });
        }
        let namespace = prefix_namespace(request);
        let (cache, cached) =
            match engine
                .prefix_cache
                .lookup(namespace, &prompt, request.max_tokens)?
            {
                Some(hit) => hit,
                None => (engine.model.new_cache(), 0),
            };
        Ok((prompt, cache, cached))
    }

    /// Ends every request as cancelled (shutdown past its deadline).
    pub fn cancel_all(&mut self, engine: &mut Engine) -> StepReport {
        for active in &mut self.active {
            active.cancel();
        }
        self.retire(engine)
    }

    /// Ends every request with an error built by `error` (the engine failed mid-step).
    pub fn fail_all(&mut self, error: impl Fn() -> Error) -> usize {
        let n = self.active.len();
        for mut active in self.active.drain(..) {
            active.sink.send(Event::Finished(Err(error())));
        }
        n
    }

    /// Runs one forward pass for everyone and delivers what it produced.
    ///
    /// # Errors
    /// Tensor failures. The batch is then in an unknown state; the caller ends it with
    /// [`Batch::fail_all`].
    pub fn step(&mut self, engine: &mut Engine) -> Result<StepReport> {
        for active in &mut self.active {
            if active.sink.is_closed() {
                active.cancel();
            }
        }
        let mut report = self.retire(engine);

        let any_decoding = self.decoding_sequences() > 0;
        let mut budget = if any_decoding {
            self.options.interleaved_prefill_chunk
        } else {
            self.options.prefill_chunk
        };
        let mut tokens: Vec<u32> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        for (index, active) in self.active.iter().enumerate() {
            match &active.phase {
                Phase::Decode { samples } => {
                    for (sample, running) in samples.iter().enumerate() {
                        if running.finish_reason.is_none()
                            && let Some(last) = running.tokens.last()
                        {
                            tokens.push(last.id);
                            slots.push(Slot::Decode {
                                request: index,
                                sample,
                            });
                        }
                    }
                }
                Phase::Prefill { cache } if budget > 0 => {
                    let remaining = &active.prompt[cache.len()..];
                    let n_tokens = remaining.len().min(budget);
                    budget -= n_tokens;
                    tokens.extend_from_slice(&remaining[..n_tokens]);
                    slots.push(Slot::Prefill {
                        request: index,
                        n_tokens,
                    });
                }
                Phase::Prefill { .. } => {}
            }
        }
        if slots.is_empty() {
            return Ok(report);
        }

        let adapters: Vec<Option<crate::SharedAdapter>> = self
            .active
            .iter()
            .map(|a| a.request.adapter.clone())
            .collect();
        let self_adapters: Vec<Option<&crate::SharedAdapter>> =
            adapters.iter().map(Option::as_ref).collect();
        let logits = {
            // Each slot borrows a distinct cache; collect them in slot order.
            let mut caches: Vec<(usize, usize, &mut KvCache)> = Vec::with_capacity(slots.len());
            let mut by_request: Vec<Vec<(usize, &mut KvCache)>> = self
                .active
                .iter_mut()
                .map(|active| match &mut active.phase {
                    Phase::Prefill { cache } => vec![(0, cache)],
                    Phase::Decode { samples } => samples
                        .iter_mut()
                        .enumerate()
                        .map(|(i, s)| (i, &mut s.cache))
                        .collect(),
                })
                .collect();
            for slot in &slots {
                let (request, sample, n_tokens) = match *slot {
                    Slot::Prefill { request, n_tokens } => (request, 0, n_tokens),
                    Slot::Decode { request, sample } => (request, sample, 1),
                };
                let list = &mut by_request[request];
                let pos = list
                    .iter()
                    .position(|(i, _)| *i == sample)
                    .ok_or_else(|| Error::InvalidRequest("batch slot without a cache".into()))?;
                let (_, cache) = list.swap_remove(pos);
                caches.push((request, n_tokens, cache));
            }
            let hook = RowAdapters::new(
                caches
                    .iter()
                    .map(|&(request, n_tokens, _)| (n_tokens, self_adapters[request].map(|a| &**a)))
                    .collect(),
            );
            let mut seqs: Vec<SeqInput<'_>> = caches
                .into_iter()
                .map(|(_, n_tokens, cache)| SeqInput { cache, n_tokens })
                .collect();
            engine
                .model
                .forward(
                    &tokens,
                    &mut seqs,
                    Outputs::LastOfEachSeq,
                    hook.as_ref().map(|h| h as &dyn crate::nn::LinearHook),
                )?
                .ok_or_else(|| Error::InvalidRequest("no logits for a non-empty batch".into()))?
                .to_vec2::<f32>()?
        };
        // A NaN would sample token 0 with a null log-probability and look like output; a
        // broken kernel or checkpoint must fail the requests instead.
        if logits.iter().flatten().any(|x| x.is_nan()) {
            return Err(Error::Internal(
                "the model produced NaN logits (a numerical fault in the forward pass)".into(),
            ));
        }

        for (slot, row) in slots.iter().zip(logits) {
            match *slot {
                Slot::Decode { request, sample } => {
                    let active = &mut self.active[request];
                    report.generated_tokens += active.sample_next(engine, sample, &row);
                }
                Slot::Prefill { request, n_tokens } => {
                    report.prefilled_tokens += n_tokens;
                    let active = &mut self.active[request];
                    let done = match &active.phase {
                        Phase::Prefill { cache } => cache.len() == active.prompt.len(),
                        Phase::Decode { .. } => false,
                    };
                    if done {
                        active.start_decoding()?;
                        let n = active.request.n;
                        for sample in 0..n {
                            report.generated_tokens += active.sample_next(engine, sample, &row);
                        }
                        let first_token_at = Instant::now();
                        active.first_token_at = Some(first_token_at);
                        tracing::debug!(
                            n_prompt = active.prompt.len(),
                            cached = active.cached,
                            ttft = ?(first_token_at - active.started),
                            "first tokens"
                        );
                    }
                }
            }
        }
        let retired = self.retire(engine);
        report.finished_requests += retired.finished_requests;
        Ok(report)
    }

    /// Removes finished requests, remembers their prompts' KV state, and reports them.
    fn retire(&mut self, engine: &mut Engine) -> StepReport {
        let mut report = StepReport::default();
        let mut index = 0;
        while index < self.active.len() {
            if !self.active[index].is_finished() {
                index += 1;
                continue;
            }
            let active = self.active.swap_remove(index);
            report.finished_requests += 1;
            let generation = active.into_generation(engine);
            let (mut sink, result) = generation;
            sink.send(Event::Finished(result));
        }
        // Keep arrival order for fairness in prefill budgeting.
        self.active.sort_by_key(|a| a.started);
        report
    }
}

/// KV state is reusable only under the same adapter version: its identity is the namespace.
fn prefix_namespace(request: &GenerateRequest) -> u64 {
    request
        .adapter
        .as_ref()
        .map_or(crate::request::PREFIX_CACHE_NAMESPACE_BASE, |a| {
            a.namespace()
        })
}

/// Samples that end before their first token.
fn finished_samples(request: &GenerateRequest, reason: FinishReason) -> Vec<Running> {
    (0..request.n)
        .map(|index| Running {
            cache: KvCache::empty(),
            sampler: Sampler::new(&request.sampling, 0, index),
            text: TextAssembler::new(&[]),
            tokens: Vec::new(),
            finish_reason: Some(reason),
            stop_string: None,
        })
        .collect()
}

impl<'a> Active<'a> {
    fn is_finished(&self) -> bool {
        match &self.phase {
            Phase::Prefill { .. } => false,
            Phase::Decode { samples } => samples.iter().all(|s| s.finish_reason.is_some()),
        }
    }

    fn cancel(&mut self) {
        match &mut self.phase {
            Phase::Prefill { .. } => {
                self.phase = Phase::Decode {
                    samples: finished_samples(&self.request, FinishReason::Cancelled),
                };
            }
            Phase::Decode { samples } => {
                for s in samples.iter_mut().filter(|s| s.finish_reason.is_none()) {
                    s.finish_reason = Some(FinishReason::Cancelled);
                }
            }
        }
    }

    /// Forks the prefilled cache into one per sample. With `max_tokens: 0` every sample ends
    /// at once, and the prompt's KV state (kept by the first) goes to the prefix cache: a
    /// request that only warms the cache (llama.vim's `n_predict: 0`).
    fn start_decoding(&mut self) -> Result<()> {
        let Phase::Prefill { cache } = &mut self.phase else {
            return Ok(());
        };
        let n = self.request.n;
        let max_tokens = self.request.max_tokens;
        if max_tokens == 0 {
            let mut samples = finished_samples(&self.request, FinishReason::Length);
            if let Some(first) = samples.first_mut() {
                first.cache = std::mem::replace(cache, KvCache::empty());
            }
            self.phase = Phase::Decode { samples };
            return Ok(());
        }
        let base_seed = self.request.sampling.seed.unwrap_or_else(rand::random);
        let mut samples = Vec::with_capacity(n);
        for index in 0..n {
            let cache = if index + 1 == n {
                std::mem::replace(cache, KvCache::empty())
            } else {
                cache.fork(cache.len(), max_tokens)?
            };
            samples.push(Running {
                cache,
                sampler: Sampler::new(&self.request.sampling, base_seed, index),
                text: TextAssembler::new(&self.request.stop)
                    .with_indent_floor(self.request.indent_floor),
                tokens: Vec::new(),
                finish_reason: None,
                stop_string: None,
            });
        }
        self.phase = Phase::Decode { samples };
        Ok(())
    }

    /// Samples the next token of `sample` from `logits` and delivers it; returns tokens
    /// generated (0 or 1).
    fn sample_next(&mut self, engine: &Engine, sample: usize, logits: &[f32]) -> usize {
        let Phase::Decode { samples } = &mut self.phase else {
            return 0;
        };
        let Some(seq) = samples.get_mut(sample) else {
            return 0;
        };
        if seq.finish_reason.is_some() {
            return 0;
        }
        let request = &self.request;
        let tokenizer = &engine.tokenizer;
        let adjusted;
        let logits = if request.ignore_eos
            || !request.logit_bias.is_empty()
            || request.logits_processor.is_some()
        {
            let mut row = logits.to_vec();
            for &(id, bias) in &request.logit_bias {
                if let Some(logit) = row.get_mut(id as usize) {
                    *logit += bias;
                }
            }
            if request.ignore_eos {
                for &id in tokenizer.end_of_generation() {
                    if let Some(logit) = row.get_mut(id as usize) {
                        *logit = f32::NEG_INFINITY;
                    }
                }
            }
            if let Some(processor) = &request.logits_processor {
                let generated: Vec<u32> = seq.tokens.iter().map(|t| t.id).collect();
                processor.process(sample, &generated, &mut row);
            }
            adjusted = row;
            &adjusted[..]
        } else {
            logits
        };
        let id = seq.sampler.sample(logits);
        let lse = sampling::log_sum_exp(logits);
        let token = GeneratedToken {
            id,
            logprob: logits[id as usize] - lse,
            top: sampling::top_logprobs(logits, lse, request.top_logprobs),
        };
        seq.tokens.push(token.clone());
        let text = if tokenizer.is_end_of_generation(id) {
            seq.finish_reason = Some(FinishReason::EndOfGeneration);
            seq.text.finish()
        } else {
            let bytes = tokenizer.token_bytes(id);
            let past_deadline = request.newline_deadline.is_some_and(|limit| {
                bytes.contains(&b'\n')
                    && self
                        .first_token_at
                        .is_some_and(|since| since.elapsed() > limit)
            });
            match seq.text.push(bytes) {
                Pushed::Stopped { delta, stop } => {
                    seq.finish_reason = Some(FinishReason::Stop);
                    seq.stop_string = Some(stop);
                    delta
                }
                Pushed::Dedented(delta) => {
                    seq.finish_reason = Some(FinishReason::BlockEnd);
                    delta
                }
                Pushed::Delta(delta)
                    if request
                        .stop_condition
                        .as_ref()
                        .is_some_and(|c| c.is_met(seq.text.text())) =>
                {
                    seq.finish_reason = Some(FinishReason::Stop);
                    delta + &seq.text.finish()
                }
                Pushed::Delta(delta) if past_deadline => {
                    seq.finish_reason = Some(FinishReason::TimeLimit);
                    delta + &seq.text.finish()
                }
                Pushed::Delta(delta) if seq.tokens.len() >= request.max_tokens => {
                    seq.finish_reason = Some(FinishReason::Length);
                    delta + &seq.text.finish()
                }
                Pushed::Delta(delta) => delta,
            }
        };
        let finish_reason = seq.finish_reason;
        let delivered = self.sink.send(Event::Token {
            sample,
            token,
            text,
            finish_reason,
        });
        if !delivered {
            self.cancel();
        }
        1
    }

    fn into_generation(self, engine: &mut Engine) -> (Box<dyn Sink + 'a>, Result<Generation>) {
        let Phase::Decode { mut samples } = self.phase else {
            let err = Error::InvalidRequest("request retired before decoding".into());
            return (self.sink, Err(err));
        };
        let cancelled = samples
            .iter()
            .any(|s| s.finish_reason == Some(FinishReason::Cancelled));
        // A sample's cache holds the prompt and every generated token but the last (never fed
        // back). Remembering all of it lets a follow-up that contains the completion (an
        // accepted suggestion, step 2 of two-step generation) skip its prefill too.
        if !cancelled
            && let Some(seq) = samples
                .iter_mut()
                .find(|s| s.cache.len() >= self.prompt.len())
        {
            let fed = (seq.cache.len() - self.prompt.len()).min(seq.tokens.len());
            let mut tokens = self.prompt.clone();
            tokens.extend(seq.tokens[..fed].iter().map(|t| t.id));
            let namespace = prefix_namespace(&self.request);
            // The sample is done with its cache: the prefix cache takes it whole.
            let cache = std::mem::replace(&mut seq.cache, KvCache::empty());
            if let Err(err) = engine.prefix_cache.insert(namespace, &tokens, cache) {
                tracing::warn!(%err, "prefix cache insert failed");
            }
        }
        let samples = samples
            .into_iter()
            .map(|seq| Sample {
                text: seq.text.text().to_string(),
                cumulative_logprob: seq.tokens.iter().map(|t| t.logprob as f64).sum(),
                tokens: seq.tokens,
                finish_reason: seq.finish_reason.unwrap_or(FinishReason::Length),
                stop_string: seq.stop_string,
            })
            .collect();
        let generation = Generation {
            samples,
            prompt_tokens: self.prompt,
            cached_prompt_tokens: self.cached,
            time_to_first_token: self
                .first_token_at
                .map(|at| at - self.started)
                .unwrap_or_default(),
            elapsed: self.started.elapsed(),
        };
        (self.sink, Ok(generation))
    }
}
