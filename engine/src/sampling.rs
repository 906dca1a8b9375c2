//! Token selection: greedy, or temperature with top-k and top-p, from a seeded RNG; and the
//! untempered natural-log probabilities reported with each token.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in `(0, 1]`; `1` disables it.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables it.
    pub top_k: usize,
    /// RNG seed; the same seed and request give the same output. `None` draws one.
    pub seed: Option<u64>,
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
        }
    }

    /// Checks ranges, naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// A seeded sampler for one sequence.
pub(crate) struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// Sample `index` of a request gets seed `seed + index`, so sample 0 of an `n = 4`
    /// request equals the only sample of an `n = 1` request with the same seed.
    pub(crate) fn new(params: &SamplingParams, base_seed: u64, index: usize) -> Self {
        Sampler {
            params: params.clone(),
            rng: StdRng::seed_from_u64(base_seed.wrapping_add(index as u64)),
        }
    }

    pub(crate) fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / self.params.temperature;
        let weight = |logit: f32| ((logit - max) * inv_t).exp();
        let mut candidates: Vec<(u32, f32)> =
            if self.params.top_k > 0 && self.params.top_k < logits.len() {
                let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
                let k = self.params.top_k;
                ids.select_nth_unstable_by(k - 1, |&a, &b| {
                    logits[b as usize]
                        .total_cmp(&logits[a as usize])
                        .then(a.cmp(&b))
                });
                ids.truncate(k);
                ids.into_iter()
                    .map(|id| (id, weight(logits[id as usize])))
                    .collect()
            } else {
                logits
                    .iter()
                    .enumerate()
                    .map(|(id, &l)| (id as u32, weight(l)))
                    .collect()
            };
        if self.params.top_p < 1.0 {
            candidates = nucleus(candidates, self.params.top_p);
        }
        let total: f64 = candidates.iter().map(|&(_, w)| w as f64).sum();
        if total.is_nan() || total <= 0.0 {
            return argmax(logits);
        }
        let mut target = self.rng.random::<f64>() * total;
        for &(id, w) in &candidates {
            target -= w as f64;
            if target < 0.0 {
                return id;
            }
        }
        candidates
            .last()
            .map(|&(id, _)| id)
            .unwrap_or_else(|| argmax(logits))
    }
}

/// The smallest set of most likely candidates whose mass reaches `top_p` of the total.
///
/// Sorting all of a 150k vocabulary costs milliseconds per token, so candidates below a
/// threshold are dropped first; when the kept ones still hold `top_p` of the mass the
/// nucleus lies entirely among them, and the result is exact.
fn nucleus(candidates: Vec<(u32, f32)>, top_p: f32) -> Vec<(u32, f32)> {
    let total: f64 = candidates.iter().map(|&(_, w)| w as f64).sum();
    // Mass within rounding of `top_p` counts as reaching it, so that a nucleus that is exactly
    // `top_p` does not pull in one more token because of how f32 weights add up.
    let target = top_p as f64 * total * (1.0 - 1e-6);
    let max = candidates.iter().map(|&(_, w)| w).fold(0.0f32, f32::max);
    let mut threshold = max * 1e-3;
    let mut kept = loop {
        let kept: Vec<(u32, f32)> = candidates
            .iter()
            .copied()
            .filter(|&(_, w)| w >= threshold)
            .collect();
        let mass: f64 = kept.iter().map(|&(_, w)| w as f64).sum();
        if mass >= target || threshold == 0.0 {
            break kept;
        }
        threshold = if threshold < f32::MIN_POSITIVE * 1e6 {
            0.0
        } else {
            threshold * 1e-3
        };
    };
    kept.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut mass = 0.0f64;
    let mut cut = kept.len();
    for (idx, &(_, w)) in kept.iter().enumerate() {
        mass += w as f64;
        if mass >= target {
            cut = idx + 1;
            break;
        }
    }
    kept.truncate(cut);
    kept
}

/// The most likely token; the lowest id wins ties, so greedy decoding is deterministic.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (idx, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = idx;
        }
    }
    best as u32
}

/// `log(sum(exp(logits)))`, computed stably.
pub(crate) fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// The `k` most likely tokens and their log-probabilities, most likely first.
pub(crate) fn top_logprobs(logits: &[f32], lse: f32, k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.select_nth_unstable_by(k - 1, |&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    ids.truncate(k);
    ids.sort_unstable_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    ids.into_iter()
        .map(|id| (id, logits[id as usize] - lse))
        .collect()
}

#[cfg(test)]
mod tests;
