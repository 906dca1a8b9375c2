//! Real checkpoints from the catalogue (`HEXACODER_TEST_MODELS=1`; `.ci/run` fetches them).

use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions};
use hexacoder_engine::nn::KvDtype;
use hexacoder_engine::{FinishReason, GenerateRequest, Generation, SamplingParams, Scheduler};

use crate::invariance::same_output;
use crate::support;

fn greedy(prompt: &str, suffix: Option<&str>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        suffix: suffix.map(str::to_string),
        max_tokens,
        sampling: SamplingParams::greedy(),
        n: 1,
        stop: vec![],
        top_logprobs: 3,
        context_files: vec![],
        logit_bias: vec![],
        adapter: None,
        ignore_eos: false,
        ..Default::default()
    }
}

#[test]
fn smollm2_completes_fibonacci_with_a_return() {
    let Some(path) = support::real_model("smollm2-135m") else {
        return;
    };
    let mut engine = load::load(&ModelFiles::Gguf(path), &LoadOptions::cpu()).expect("load");
    assert!(engine.fim().is_none(), "SmolLM2 has no FIM tokens");
    let generation = engine
        .generate(&greedy("def fibonacci(n):\n", None, 64), &mut |_, _| true)
        .expect("generate");
    let sample = &generation.samples[0];
    assert!(
        sample.text.contains("return"),
        "no return in {:?}",
        sample.text
    );
    assert!(
        sample.text.contains("fibonacci")
            || sample.text.contains("n - 1")
            || sample.text.contains("n-1"),
        "{:?}",
        sample.text
    );
    for token in &sample.tokens {
        assert!(
            token.logprob.is_finite() && token.logprob <= 0.0,
            "{token:?}"
        );
        assert!(token.top.iter().all(|(_, lp)| lp.is_finite() && *lp <= 0.0));
    }
    // A suffix needs FIM, which this model does not have.
    let err = engine
        .generate(&greedy("def f(", Some(")"), 4), &mut |_, _| true)
        .expect_err("no FIM");
    assert!(err.to_string().contains("fill-in-the-middle"), "{err}");
}

#[test]
fn qwen_coder_fills_in_the_middle_and_reuses_the_prefix_cache() {
    let Some(path) = support::real_model("qwen2.5-coder-0.5b") else {
        return;
    };
    let mut engine = load::load(&ModelFiles::Gguf(path), &LoadOptions::cpu()).expect("load");
    let prefix = "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    ";
    let suffix = "\n\n\nprint(add(2, 3))\n";
    let generation = engine
        .generate(&greedy(prefix, Some(suffix), 24), &mut |_, _| true)
        .expect("generate");
    let sample = &generation.samples[0];
    assert!(
        sample.text.contains("return") && sample.text.contains('+'),
        "{:?}",
        sample.text
    );
    assert_ne!(sample.finish_reason, FinishReason::Cancelled);
    // The same request again reuses all but one prompt token and gives the same tokens and
    // logprobs to the bit (Q5_0, Q4_K, Q6_K and Q8_0 weights all take part).
    for _ in 0..2 {
        let again = engine
            .generate(&greedy(prefix, Some(suffix), 24), &mut |_, _| true)
            .expect("generate");
        assert_eq!(again.cached_prompt_tokens, again.prompt_tokens.len() - 1);
        if let Err(diff) = same_output(&generation, &again) {
            panic!("after a prefix-cache hit: {diff}");
        }
    }
    // A prompt of more than one 64-row tile of activations (and of the 32 rows from which
    // candle would take its AMX path for Q4_K), against the same prompt restored from the cache.
    let long: String = (0..12)
        .map(|i| format!("def helper_{i}(value):\n    return value * {i}\n\n"))
        .collect();
    let cold = engine
        .generate(&greedy(&long, None, 16), &mut |_, _| true)
        .expect("generate");
    assert!(
        cold.prompt_tokens.len() > 64,
        "{}",
        cold.prompt_tokens.len()
    );
    let cached = engine
        .generate(&greedy(&long, None, 16), &mut |_, _| true)
        .expect("generate");
    assert_eq!(cached.cached_prompt_tokens, cached.prompt_tokens.len() - 1);
    if let Err(diff) = same_output(&cold, &cached) {
        panic!("a long prompt after a prefix-cache hit: {diff}");
    }
}

/// The example of issue 20: this prompt used to answer `…os.path.join(os.` the first time and
/// `…"*.py")…` once it was in the prefix cache. Now five sends give the same text and
/// logprobs, and so does the request inside a batch of eight others.
#[test]
fn smollm2_repeats_a_greedy_request_exactly_cold_cached_and_batched() {
    let Some(path) = support::real_model("smollm2-135m") else {
        return;
    };
    let prompt = "import os\n\ndef list_files(path):\n";
    let mut engine =
        load::load(&ModelFiles::Gguf(path.clone()), &LoadOptions::cpu()).expect("load");
    let cold = engine
        .generate(&greedy(prompt, None, 32), &mut |_, _| true)
        .expect("cold");
    assert_eq!(cold.cached_prompt_tokens, 0);
    for attempt in 1..5 {
        let again = engine
            .generate(&greedy(prompt, None, 32), &mut |_, _| true)
            .expect("again");
        assert!(again.cached_prompt_tokens > 0);
        if let Err(diff) = same_output(&cold, &again) {
            panic!("send {} after a cache hit: {diff}", attempt + 1);
        }
    }
    let scheduler = Scheduler::start(engine, crate::scheduler::options(9, 0)).expect("start");
    let others = [
        "def add(a, b):\n",
        "class Config:\n    def __init__(self):\n",
        "# Read a CSV file\n",
        "import sys\nimport re\n\n",
        "for i in range(10):\n",
        "def main():\n    args = ",
        "def total(xs):\n    s = 0\n    for x in xs:\n",
        "while True:\n    line = input()\n",
    ];
    let mut receivers: Vec<_> = others
        .iter()
        .map(|p| crate::scheduler::submit(&scheduler, greedy(p, None, 16)))
        .collect();
    receivers.insert(
        4,
        crate::scheduler::submit(&scheduler, greedy(prompt, None, 32)),
    );
    let batched: Vec<Generation> = receivers
        .iter()
        .map(|r| crate::scheduler::finish(r, 1))
        .collect();
    if let Err(diff) = same_output(&cold, &batched[4]) {
        panic!("alone and in a batch of nine: {diff}");
    }
}

/// Keys and values kept in f16 (the default) against f32 on the default model, every
/// position of a real source file teacher-forced: what rounding them costs in the model's
/// predictions.
#[test]
fn qwen_coder_predicts_the_same_with_f16_keys_and_values() {
    let Some(path) = support::real_model("qwen2.5-coder-0.5b") else {
        return;
    };
    let source = include_str!("../../src/sampling.rs");
    let load_with = |kv_dtype| {
        let options = LoadOptions {
            kv_dtype,
            ..LoadOptions::cpu()
        };
        load::load(&ModelFiles::Gguf(path.clone()), &options).expect("load")
    };
    let (half, full) = (load_with(KvDtype::F16), load_with(KvDtype::F32));
    let tokens = half.tokenizer().encode(source).expect("tokens");
    let tokens = &tokens[..tokens.len().min(600)];
    let logprobs = |engine: &hexacoder_engine::Engine| -> Vec<Vec<f32>> {
        let logits = engine.model().forward_all(tokens, None).expect("forward");
        candle_nn::ops::log_softmax(&logits, 1)
            .and_then(|l| l.to_vec2::<f32>())
            .expect("logprobs")
    };
    let (half, full) = (logprobs(&half), logprobs(&full));
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("a vocabulary")
    };
    let mut disagreements = 0;
    let mut max_shift = 0f32;
    let mut shifts = Vec::new();
    for (h, f) in half.iter().zip(&full) {
        let best = argmax(f);
        if argmax(h) != best {
            disagreements += 1;
        }
        let shift = (h[best] - f[best]).abs();
        max_shift = max_shift.max(shift);
        shifts.push(shift);
    }
    shifts.sort_by(f32::total_cmp);
    let median = shifts[shifts.len() / 2];
    eprintln!(
        "{} positions: top-1 differs at {disagreements}, |Δ logprob| of the f32 top-1 median \
         {median:.2e}, max {max_shift:.2e}",
        tokens.len()
    );
    assert!(
        disagreements * 100 <= tokens.len(),
        "top-1 differs at {disagreements} of {} positions",
        tokens.len()
    );
    assert!(median < 0.01, "median |Δ logprob| {median}");
}
