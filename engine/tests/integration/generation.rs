//! Generation on tiny random models: sampling, stop strings, `n`, logprobs, streaming,
//! cancellation, the prefix cache and fill-in-the-middle.

use candle_core::{D, IndexOp};
use hexacoder_engine::fim::FimSetting;
use hexacoder_engine::{Engine, Error, FinishReason, GenerateRequest, Generation, SamplingParams};
use hexacoder_testkit::Arch;

use crate::support::{self, Tiny, request};

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 40,
        seed: Some(seed),
    }
}

fn run(engine: &mut Engine, request: &GenerateRequest) -> Generation {
    engine
        .generate(request, &mut |_, _| true)
        .expect("generate")
}

fn engine(arch: Arch) -> (tempfile::TempDir, Engine) {
    support::tiny_engine(Tiny::small(arch), 11, &support::options())
}

#[test]
fn same_seed_same_output_and_greedy_ignores_seed() {
    let (_dir, mut engine) = engine(Arch::Qwen2);
    let texts: Vec<String> = [1, 1, 2]
        .iter()
        .map(|&seed| {
            run(&mut engine, &request("def f(x):", 40, sampled(seed))).samples[0]
                .text
                .clone()
        })
        .collect();
    assert_eq!(texts[0], texts[1]);
    assert_ne!(
        texts[0], texts[2],
        "different seeds gave the same 40 tokens"
    );
    let mut greedy = |seed| {
        let params = SamplingParams {
            seed: Some(seed),
            ..SamplingParams::greedy()
        };
        run(&mut engine, &request("def f(x):", 30, params)).samples[0]
            .text
            .clone()
    };
    assert_eq!(greedy(1), greedy(99));
}

#[test]
fn n_samples_share_one_prefill_and_sample_zero_matches_n_one() {
    let (_dir, mut engine) = engine(Arch::Llama);
    let single = run(&mut engine, &request("def g(y):", 24, sampled(5)));
    let many = run(
        &mut engine,
        &GenerateRequest {
            n: 3,
            ..request("def g(y):", 24, sampled(5))
        },
    );
    assert_eq!(many.samples.len(), 3);
    assert_eq!(many.samples[0].text, single.samples[0].text);
    assert!(
        many.samples[1].text != many.samples[0].text
            || many.samples[2].text != many.samples[0].text
    );
    for sample in &many.samples {
        assert!(sample.tokens.len() <= 24);
        let sum: f64 = sample.tokens.iter().map(|t| t.logprob as f64).sum();
        assert!((sample.cumulative_logprob - sum).abs() < 1e-6);
    }
}

/// Each reported logprob is the untempered log-softmax of a full forward pass over the
/// prompt and the tokens before it (which also checks the KV cache across samples).
#[test]
fn logprobs_match_an_independent_full_forward_pass() {
    let (_dir, mut engine) = engine(Arch::Qwen2);
    let req = GenerateRequest {
        n: 2,
        top_logprobs: 5,
        context_files: vec![],
        logit_bias: vec![],
        adapter: None,
        ignore_eos: false,
        ..request("ret in", 16, sampled(3))
    };
    let generation = run(&mut engine, &req);
    let model = engine.model();
    for sample in &generation.samples {
        let ids: Vec<u32> = generation
            .prompt_tokens
            .iter()
            .copied()
            .chain(sample.tokens.iter().map(|t| t.id))
            .collect();
        let logits = model.forward_all(&ids, None).expect("forward");
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1).expect("log_softmax");
        let n_prompt = generation.prompt_tokens.len();
        for (step, token) in sample.tokens.iter().enumerate() {
            let row = log_probs
                .i(n_prompt + step - 1)
                .expect("row")
                .to_vec1::<f32>()
                .expect("vec");
            assert!(
                (row[token.id as usize] - token.logprob).abs() < 1e-4,
                "step {step}"
            );
            assert!(token.logprob <= 0.0 && token.logprob.is_finite());
            assert_eq!(token.top.len(), 5);
            assert!(
                token.top.windows(2).all(|w| w[0].1 >= w[1].1),
                "top logprobs sorted"
            );
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!((token.top[0].1 - best).abs() < 1e-4);
        }
    }
}

#[test]
fn stop_string_split_across_tokens_stops_and_is_trimmed() {
    let (_dir, mut engine) = engine(Arch::Llama);
    // Pick a stop string made of the end of one token and the start of the next, from the
    // first seed whose free-running sample has two adjacent printable tokens.
    let (seed, sample, pieces, idx, stop) = (8..64)
        .find_map(|seed| {
            let sample = run(&mut engine, &request("def h(z):", 40, sampled(seed)))
                .samples
                .remove(0);
            let tokenizer = engine.tokenizer();
            let pieces: Vec<String> = sample
                .tokens
                .iter()
                .map(|t| String::from_utf8_lossy(tokenizer.token_bytes(t.id)).into_owned())
                .collect();
            let (idx, stop) = (1..pieces.len().saturating_sub(1)).find_map(|i| {
                let (a, b) = (&pieces[i], &pieces[i + 1]);
                (!a.is_empty() && !b.is_empty())
                    .then(|| (i, format!("{}{}", &a[a.len() - 1..], &b[..1])))
            })?;
            Some((seed, sample, pieces, idx, stop))
        })
        .expect("some seed yields two adjacent non-empty tokens");
    let expected_end = pieces[..idx].concat().len() + pieces[idx].len() - 1;
    let expected = sample.text[..expected_end].to_string();
    // The stop string may occur earlier than the place it was cut from.
    let expected = match expected.find(&stop) {
        Some(pos) => expected[..pos].to_string(),
        None => expected,
    };
    let mut streamed = String::new();
    let stopped = engine
        .generate(
            &GenerateRequest {
                stop: vec![stop.clone()],
                ..request("def h(z):", 40, sampled(seed))
            },
            &mut |_, d| {
                streamed.push_str(d);
                true
            },
        )
        .expect("generate");
    let sample = &stopped.samples[0];
    assert_eq!(sample.finish_reason, FinishReason::Stop, "stop {stop:?}");
    assert_eq!(sample.text, expected);
    assert_eq!(streamed, expected, "the stream never shows the stop string");
    assert!(!sample.text.contains(&stop));
}

#[test]
fn streaming_concatenates_to_the_text_and_cancellation_stops_early() {
    let (_dir, mut engine) = engine(Arch::Qwen2);
    let mut streamed = vec![String::new(); 2];
    let generation = engine
        .generate(
            &GenerateRequest {
                n: 2,
                ..request("def k(", 30, sampled(4))
            },
            &mut |i, d| {
                streamed[i].push_str(d);
                true
            },
        )
        .expect("generate");
    for (sample, text) in generation.samples.iter().zip(&streamed) {
        assert_eq!(&sample.text, text);
    }
    let mut deltas = 0;
    let cancelled = engine
        .generate(&request("def k(", 100, sampled(4)), &mut |_, _| {
            deltas += 1;
            deltas < 3
        })
        .expect("generate");
    assert_eq!(cancelled.samples[0].finish_reason, FinishReason::Cancelled);
    assert!(cancelled.samples[0].tokens.len() < 100);
}

#[test]
fn max_tokens_and_end_of_generation_finish_reasons() {
    let (_dir, mut engine) = engine(Arch::Llama);
    let generation = run(
        &mut engine,
        &GenerateRequest {
            n: 8,
            ..request("x", 12, sampled(21))
        },
    );
    for sample in &generation.samples {
        match sample.finish_reason {
            FinishReason::Length => assert_eq!(sample.tokens.len(), 12),
            FinishReason::EndOfGeneration => {
                let last = sample.tokens.last().expect("token").id;
                assert!(engine.tokenizer().is_end_of_generation(last));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let zero = run(&mut engine, &request("x", 0, sampled(1)));
    assert!(zero.samples[0].tokens.is_empty() && zero.samples[0].text.is_empty());
}

#[test]
fn prefix_cache_reuses_a_shared_prefix_without_changing_output() {
    let (_dir, mut cached) = engine(Arch::Qwen2);
    let (_dir2, mut uncached) = support::tiny_engine(
        Tiny::small(Arch::Qwen2),
        11,
        &hexacoder_engine::load::LoadOptions {
            prefix_cache_bytes: 0,
            ..support::options()
        },
    );
    let base = "def compute(values):\n    total = 0\n    for v in values:\n";
    let greedy = SamplingParams::greedy();
    let first = run(&mut cached, &request(base, 8, greedy.clone()));
    assert_eq!(first.cached_prompt_tokens, 0);
    // An editor keystroke: the same prompt plus a few characters.
    let edited = format!("{base}        total");
    let second = run(&mut cached, &request(&edited, 8, greedy.clone()));
    assert!(
        second.cached_prompt_tokens >= first.prompt_tokens.len() - 1,
        "reused {}",
        second.cached_prompt_tokens
    );
    let reference = run(&mut uncached, &request(&edited, 8, greedy));
    assert_eq!(second.samples[0].text, reference.samples[0].text);
    assert_eq!(
        second.samples[0]
            .tokens
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>(),
        reference.samples[0]
            .tokens
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    );
    let stats = cached.prefix_cache_stats();
    assert_eq!((stats.queries, stats.hits), (2, 1));
    assert_eq!(stats.hit_tokens, second.cached_prompt_tokens as u64);
    assert_eq!(uncached.prefix_cache_stats().hits, 0);
}

#[test]
fn prefix_cache_stays_within_its_byte_budget() {
    let tiny = Tiny::small(Arch::Llama);
    let bytes_per_token = tiny.layers * 2 * tiny.kv_heads * tiny.head_dim() * 4;
    let budget = 40 * bytes_per_token;
    let options = hexacoder_engine::load::LoadOptions {
        prefix_cache_bytes: budget,
        ..support::options()
    };
    let (_dir, mut engine) = support::tiny_engine(tiny, 11, &options);
    for i in 0..6 {
        run(
            &mut engine,
            &request(
                &format!("prompt number {i} with some text"),
                2,
                SamplingParams::greedy(),
            ),
        );
        assert!(engine.prefix_cache_stats().bytes as usize <= budget);
    }
    assert!(engine.prefix_cache_stats().entries >= 1);
}

#[test]
fn fill_in_the_middle_uses_the_template_and_refuses_without_one() {
    let (_dir, mut engine) = engine(Arch::Qwen2);
    let fim = engine
        .fim()
        .expect("tiny vocab has Qwen-style FIM tokens")
        .ids();
    let req = GenerateRequest {
        suffix: Some("\n    return y".into()),
        ..request("def f(x):\n    y = ", 6, SamplingParams::greedy())
    };
    let generation = run(&mut engine, &req);
    let prompt = &generation.prompt_tokens;
    assert_eq!(prompt[0], fim.0);
    assert_eq!(*prompt.last().expect("token"), fim.2);
    assert!(prompt.contains(&fim.1));
    // User text cannot forge template tokens.
    let forged = engine
        .prompt_tokens("<|fim_middle|>", Some(""), false, &[])
        .expect("prompt");
    assert_eq!(forged.iter().filter(|&&id| id == fim.2).count(), 1);

    let options = hexacoder_engine::load::LoadOptions {
        fim: FimSetting::Off,
        ..support::options()
    };
    let (_dir2, mut no_fim) = support::tiny_engine(Tiny::small(Arch::Qwen2), 11, &options);
    let err = no_fim
        .generate(&req, &mut |_, _| true)
        .expect_err("suffix without FIM");
    assert!(matches!(err, Error::NoFim), "{err}");
}

#[test]
fn invalid_requests_are_errors_that_say_what_is_wrong() {
    let (_dir, mut engine) = engine(Arch::Llama);
    let long = "a".repeat(300);
    let err = engine
        .generate(
            &request(&long, 10, SamplingParams::greedy()),
            &mut |_, _| true,
        )
        .expect_err("too long");
    match err {
        Error::ContextOverflow {
            context, excess, ..
        } => {
            assert_eq!(context, 256);
            assert!(excess > 0);
        }
        other => panic!("unexpected {other}"),
    }
    let bad = SamplingParams {
        temperature: -1.0,
        ..SamplingParams::greedy()
    };
    let err = engine
        .generate(&request("x", 5, bad), &mut |_, _| true)
        .expect_err("bad temperature");
    assert!(err.to_string().contains("temperature"), "{err}");
    let bad = SamplingParams {
        top_p: 0.0,
        ..SamplingParams::greedy()
    };
    assert!(
        engine
            .generate(&request("x", 5, bad), &mut |_, _| true)
            .is_err()
    );
    let err = engine.generate(
        &GenerateRequest {
            n: 0,
            ..request("x", 5, SamplingParams::greedy())
        },
        &mut |_, _| true,
    );
    assert!(err.is_err());
}

#[test]
fn a_follow_up_containing_the_completion_reuses_its_kv_state() {
    let (_dir, mut engine) = engine(Arch::Qwen2);
    let (_dir2, mut reference) = support::tiny_engine(
        Tiny::small(Arch::Qwen2),
        11,
        &hexacoder_engine::load::LoadOptions {
            prefix_cache_bytes: 0,
            ..support::options()
        },
    );
    // A completion whose re-tokenization is certain: twelve `x` (id 88), which never merge.
    let prompt = "def parse(line):\n";
    let first = run(
        &mut engine,
        &GenerateRequest {
            logit_bias: vec![(88, 100.0)],
            ..request(prompt, 12, SamplingParams::greedy())
        },
    );
    assert_eq!(first.samples[0].text, "x".repeat(12));
    // The editor accepted the suggestion and the user typed on.
    let follow_up = format!("{prompt}{}\n", first.samples[0].text);
    let second = run(
        &mut engine,
        &request(&follow_up, 6, SamplingParams::greedy()),
    );
    // The prompt and eleven of the twelve tokens (the last one was never fed back).
    assert_eq!(second.cached_prompt_tokens, first.prompt_tokens.len() + 11);
    let fresh = run(
        &mut reference,
        &request(&follow_up, 6, SamplingParams::greedy()),
    );
    let ids = |g: &hexacoder_engine::Generation| -> Vec<u32> {
        g.samples[0].tokens.iter().map(|t| t.id).collect()
    };
    assert_eq!(
        ids(&second),
        ids(&fresh),
        "reused KV state must give the same tokens"
    );
}
