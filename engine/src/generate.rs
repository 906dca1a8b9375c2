//! One generation request end to end: prompt assembly, prefix-cache lookup, chunked
//! prefill, then decoding all `n` samples together, one batched forward per step.

use std::time::{Duration, Instant};

use crate::models::llama::{Outputs, SeqInput};
use crate::nn::KvCache;
use crate::sampling::{self, Sampler, SamplingParams};
use crate::text::{Pushed, TextAssembler};
use crate::{Engine, Error, Result};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// The text before the cursor (or the whole prompt).
    pub prompt: String,
    /// The text after the cursor; generation fills the middle. Needs a FIM-capable model.
    pub suffix: Option<String>,
    /// New tokens per sample at most.
    pub max_tokens: usize,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Samples; they share one prefill.
    pub n: usize,
    /// Strings that end a sample; they are not part of its text.
    pub stop: Vec<String>,
    /// Alternatives to report per token (0 for none). The chosen token's log-probability
    /// is always reported.
    pub top_logprobs: usize,
}

/// Why a sample ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop string was generated.
    Stop,
    /// An end-of-generation token was generated.
    EndOfGeneration,
    /// `max_tokens` was reached.
    Length,
    /// The caller asked to stop (a client went away).
    Cancelled,
}

/// One generated token.
#[derive(Clone, Debug)]
pub struct GeneratedToken {
    /// Its id.
    pub id: u32,
    /// Natural-log probability under the untempered distribution.
    pub logprob: f32,
    /// The most likely alternatives `(id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// One completed sample.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The completion, stop string excluded.
    pub text: String,
    /// Every generated token, including an end-of-generation token or the tokens of a stop
    /// string.
    pub tokens: Vec<GeneratedToken>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Sum of the tokens' log-probabilities, to rank samples.
    pub cumulative_logprob: f64,
}

/// The result of a request.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Samples in request order.
    pub samples: Vec<Sample>,
    /// The prompt as tokens.
    pub prompt_tokens: Vec<u32>,
    /// Prompt tokens whose KV state came from the prefix cache.
    pub cached_prompt_tokens: usize,
    /// Time until the first token of every sample was chosen.
    pub time_to_first_token: Duration,
    /// Total time.
    pub elapsed: Duration,
}

impl Generation {
    /// Tokens generated over all samples.
    pub fn completion_tokens(&self) -> usize {
        self.samples.iter().map(|s| s.tokens.len()).sum()
    }
}

/// A streamed piece of text: sample index and new text. Returning `false` cancels.
pub type OnDelta<'a> = dyn FnMut(usize, &str) -> bool + 'a;

const PREFIX_CACHE_NAMESPACE_BASE: u64 = 0;

struct Running {
    cache: KvCache,
    sampler: Sampler,
    text: TextAssembler,
    tokens: Vec<GeneratedToken>,
    finish_reason: Option<FinishReason>,
}

impl Engine {
    /// The token ids the model sees for `prompt` (and `suffix`, as fill-in-the-middle).
    pub fn prompt_tokens(&self, prompt: &str, suffix: Option<&str>) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.tokenizer.bos_to_add().into_iter().collect();
        match suffix {
            Some(suffix) => {
                let fim = self.fim.as_ref().ok_or(Error::NoFim)?;
                ids.extend(fim.encode(&self.tokenizer, prompt, suffix)?);
            }
            None => ids.extend(self.tokenizer.encode(prompt)?),
        }
        if ids.is_empty() {
            return Err(Error::InvalidRequest(
                "prompt is empty and the model has no BOS token to start from".into(),
            ));
        }
        Ok(ids)
    }

    /// Runs `request` to completion, streaming text through `on_delta`.
    ///
    /// # Errors
    /// Invalid parameters, a prompt that does not fit the context, `suffix` on a model
    /// without FIM tokens, and tensor failures.
    pub fn generate(
        &mut self,
        request: &GenerateRequest,
        on_delta: &mut OnDelta<'_>,
    ) -> Result<Generation> {
        let started = Instant::now();
        request.sampling.validate().map_err(Error::InvalidRequest)?;
        if request.n == 0 {
            return Err(Error::InvalidRequest("n must be at least 1".into()));
        }
        let prompt = self.prompt_tokens(&request.prompt, request.suffix.as_deref())?;
        let tokenized = started.elapsed();
        let context = self.model.max_positions();
        if prompt.len() + request.max_tokens > context {
            return Err(Error::ContextOverflow {
                n_prompt: prompt.len(),
                max_tokens: request.max_tokens,
                context,
                excess: prompt.len() + request.max_tokens - context,
            });
        }
        let (mut cache, cached) = match self.prefix_cache.lookup(
            PREFIX_CACHE_NAMESPACE_BASE,
            &prompt,
            request.max_tokens,
        )? {
            Some(hit) => hit,
            None => (self.model.new_cache(), 0),
        };
        let looked_up = started.elapsed();
        let logits = self.prefill(&prompt[cached..], &mut cache)?;
        let prefilled = started.elapsed();
        tracing::debug!(
            n_prompt = prompt.len(),
            cached,
            ?tokenized,
            lookup = ?(looked_up - tokenized),
            prefill = ?(prefilled - looked_up),
            "prompt ready"
        );

        let base_seed = request.sampling.seed.unwrap_or_else(rand::random);
        let mut running = Vec::with_capacity(request.n);
        for index in 0..request.n {
            let cache = if index + 1 == request.n {
                std::mem::replace(&mut cache, self.model.new_cache())
            } else {
                cache.fork(cache.len(), request.max_tokens)?
            };
            running.push(Running {
                cache,
                sampler: Sampler::new(&request.sampling, base_seed, index),
                text: TextAssembler::new(&request.stop),
                tokens: Vec::new(),
                finish_reason: (request.max_tokens == 0).then_some(FinishReason::Length),
            });
        }
        let mut rows: Vec<Vec<f32>> = vec![logits; request.n];
        let mut time_to_first_token = None;
        loop {
            let mut cancelled = false;
            for (index, (seq, logits)) in running.iter_mut().zip(&rows).enumerate() {
                if seq.finish_reason.is_some() {
                    continue;
                }
                let id = seq.sampler.sample(logits);
                let lse = sampling::log_sum_exp(logits);
                seq.tokens.push(GeneratedToken {
                    id,
                    logprob: logits[id as usize] - lse,
                    top: sampling::top_logprobs(logits, lse, request.top_logprobs),
                });
                let delta = if self.tokenizer.is_end_of_generation(id) {
                    seq.finish_reason = Some(FinishReason::EndOfGeneration);
                    seq.text.finish()
                } else {
                    match seq.text.push(self.tokenizer.token_bytes(id)) {
                        Pushed::Stopped(delta) => {
                            seq.finish_reason = Some(FinishReason::Stop);
                            delta
                        }
                        Pushed::Delta(delta) if seq.tokens.len() >= request.max_tokens => {
                            seq.finish_reason = Some(FinishReason::Length);
                            delta + &seq.text.finish()
                        }
                        Pushed::Delta(delta) => delta,
                    }
                };
                if !delta.is_empty() && !on_delta(index, &delta) {
                    cancelled = true;
                }
            }
            time_to_first_token.get_or_insert_with(|| started.elapsed());
            if cancelled {
                for seq in running.iter_mut().filter(|s| s.finish_reason.is_none()) {
                    seq.finish_reason = Some(FinishReason::Cancelled);
                }
            }
            let active: Vec<usize> = (0..running.len())
                .filter(|&i| running[i].finish_reason.is_none())
                .collect();
            if active.is_empty() {
                break;
            }
            let tokens: Vec<u32> = active
                .iter()
                .map(|&i| {
                    running[i]
                        .tokens
                        .last()
                        .map(|t| t.id)
                        .expect("one token sampled")
                })
                .collect();
            let mut seqs: Vec<SeqInput<'_>> = running
                .iter_mut()
                .filter(|s| s.finish_reason.is_none())
                .map(|s| SeqInput {
                    cache: &mut s.cache,
                    n_tokens: 1,
                })
                .collect();
            let logits = self
                .model
                .forward(&tokens, &mut seqs, Outputs::LastOfEachSeq, None)?
                .expect("logits asked for");
            let logits = logits.to_vec2::<f32>()?;
            for (&index, row) in active.iter().zip(logits) {
                rows[index] = row;
            }
        }
        // The prompt's KV state is remembered only now: the next request is the first that can
        // use it, so the copy stays out of this one's time to first token. Every sample's
        // cache starts with the prompt's positions, unchanged by decoding.
        if let Some(seq) = running.last() {
            self.prefix_cache
                .insert(PREFIX_CACHE_NAMESPACE_BASE, &prompt, &seq.cache)?;
        }
        let samples = running
            .into_iter()
            .map(|seq| Sample {
                text: seq.text.text().to_string(),
                cumulative_logprob: seq.tokens.iter().map(|t| t.logprob as f64).sum(),
                tokens: seq.tokens,
                finish_reason: seq.finish_reason.unwrap_or(FinishReason::Length),
            })
            .collect();
        Ok(Generation {
            samples,
            prompt_tokens: prompt,
            cached_prompt_tokens: cached,
            time_to_first_token: time_to_first_token.unwrap_or_default(),
            elapsed: started.elapsed(),
        })
    }

    /// Runs `tokens` through the model in chunks, appending to `cache`; returns the logits of
    /// the last one.
    fn prefill(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let mut logits = None;
        let chunks: Vec<&[u32]> = tokens.chunks(self.prefill_chunk).collect();
        for (idx, chunk) in chunks.iter().enumerate() {
            let outputs = if idx + 1 == chunks.len() {
                Outputs::LastOfEachSeq
            } else {
                Outputs::None
            };
            let mut seqs = [SeqInput {
                cache: &mut *cache,
                n_tokens: chunk.len(),
            }];
            logits = self.model.forward(chunk, &mut seqs, outputs, None)?;
        }
        let logits = logits.ok_or_else(|| Error::InvalidRequest("nothing to prefill".into()))?;
        Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
    }
}
