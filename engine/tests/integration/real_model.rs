//! Real checkpoints from the catalogue (`HEXACODER_TEST_MODELS=1`; `.ci/run` fetches them).

use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions};
use hexacoder_engine::{FinishReason, GenerateRequest, SamplingParams};

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
    // The same request again reuses all but one prompt token and gives the same tokens.
    let again = engine
        .generate(&greedy(prefix, Some(suffix), 24), &mut |_, _| true)
        .expect("generate");
    assert_eq!(again.cached_prompt_tokens, again.prompt_tokens.len() - 1);
    assert_eq!(
        again.samples[0]
            .tokens
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>(),
        sample.tokens.iter().map(|t| t.id).collect::<Vec<_>>()
    );
}
