//! Batch- and cache-invariant decoding: a token's logits do not depend on how its prompt was
//! split into chunks, on how much of it came from the prefix cache, or on which other
//! sequences share its forward pass; so a greedy request gives the same text and logprobs
//! every time, on f32 and on quantized weights, with and without an adapter.

use hexacoder_engine::load::{self, LoadOptions, Requantize};
use hexacoder_engine::models::llama::{Outputs, SeqInput};
use hexacoder_engine::nn::LinearHook;
use hexacoder_engine::{
    Engine, GenerateRequest, Generation, LoadedAdapter, ModelFiles, SamplingParams, Scheduler,
};
use hexacoder_testkit::Arch;

use crate::support::{self, Tiny, request};

/// The engines to check: f32 checkpoints of both architectures, and a GGUF holding every
/// quantized type, kept as stored and with the legacy types re-quantized to Q8_0 (the serving
/// default).
const KINDS: [&str; 4] = ["Llama f32", "Qwen2 f32", "GGUF Keep", "GGUF LegacyToQ8_0"];

struct Loaded {
    name: &'static str,
    _dir: tempfile::TempDir,
    engine: Engine,
    tiny: Tiny,
}

fn load_engine(name: &'static str, cache_bytes: usize) -> Loaded {
    let options = LoadOptions {
        prefix_cache_bytes: cache_bytes,
        ..support::options()
    };
    let (arch, requantize) = match name {
        "Llama f32" => (Arch::Llama, None),
        "Qwen2 f32" => (Arch::Qwen2, None),
        "GGUF Keep" => (Arch::Qwen2, Some(Requantize::Keep)),
        _ => (Arch::Qwen2, Some(Requantize::LegacyToQ8_0)),
    };
    let Some(requantize) = requantize else {
        let tiny = Tiny::small(arch);
        let (dir, engine) = support::tiny_engine(tiny, 7, &options);
        return Loaded {
            name,
            _dir: dir,
            engine,
            tiny,
        };
    };
    let tiny = Tiny::quantizable(arch);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiny.gguf");
    crate::gguf::write_gguf(tiny, &tiny.weights(7), crate::gguf::TYPES, &path);
    let options = LoadOptions {
        requantize,
        ..options
    };
    let engine = load::load(&ModelFiles::Gguf(path), &options).expect("load gguf");
    Loaded {
        name,
        _dir: dir,
        engine,
        tiny,
    }
}

fn engines(cache_bytes: usize) -> impl Iterator<Item = Loaded> {
    KINDS
        .into_iter()
        .map(move |name| load_engine(name, cache_bytes))
}

fn adapter(engine: &Engine, tiny: &Tiny) -> LoadedAdapter {
    let adapter = crate::lora::adapter_for(tiny, 4, false);
    LoadedAdapter::new("a", 1, &adapter, engine.model()).expect("prepare adapter")
}

/// The logits of every position of `tokens`, fed in chunks of the given lengths, with
/// `neighbours` (other sequences' chunks of these lengths) in the same forward pass.
fn logits_by_chunks(
    engine: &Engine,
    tokens: &[u32],
    chunks: &[usize],
    neighbours: &[usize],
    hook: Option<&dyn LinearHook>,
) -> Vec<Vec<f32>> {
    let model = engine.model();
    let mut cache = model.new_cache();
    let mut others: Vec<_> = neighbours.iter().map(|_| model.new_cache()).collect();
    let mut rows = Vec::new();
    let mut start = 0;
    for &len in chunks {
        let mut batch_tokens: Vec<u32> = Vec::new();
        let mut seqs = Vec::new();
        // Neighbours first and last, so the sequence sits in the middle of the rows.
        let (before, after) = others.split_at_mut(neighbours.len() / 2);
        let mut rows_before = 0;
        for (cache, &n) in before.iter_mut().zip(neighbours) {
            batch_tokens.extend((0..n as u32).map(|t| (t * 13 + 1) % 90 + 3));
            rows_before += n;
            seqs.push(SeqInput { cache, n_tokens: n });
        }
        batch_tokens.extend_from_slice(&tokens[start..start + len]);
        seqs.push(SeqInput {
            cache: &mut cache,
            n_tokens: len,
        });
        for (cache, &n) in after.iter_mut().zip(&neighbours[neighbours.len() / 2..]) {
            batch_tokens.extend((0..n as u32).map(|t| (t * 7 + 2) % 90 + 3));
            seqs.push(SeqInput { cache, n_tokens: n });
        }
        let logits = model
            .forward(&batch_tokens, &mut seqs, Outputs::All, hook)
            .expect("forward")
            .expect("logits")
            .to_vec2::<f32>()
            .expect("rows");
        rows.extend(logits.into_iter().skip(rows_before).take(len));
        start += len;
    }
    rows
}

#[test]
fn a_tokens_logits_do_not_depend_on_chunking_or_batch_neighbours() {
    let tokens: Vec<u32> = (0..37u32).map(|i| (i * 37 + 5) % 100).collect();
    for Loaded {
        name, engine, tiny, ..
    } in engines(0)
    {
        let adapter = adapter(&engine, &tiny);
        for (hook_name, hook) in [
            ("base", None),
            ("adapter", Some(&adapter as &dyn LinearHook)),
        ] {
            let whole = logits_by_chunks(&engine, &tokens, &[37], &[], hook);
            for (chunks, neighbours) in [
                (&[1usize; 37][..], &[][..]),
                (&[20, 17], &[]),
                (&[3, 1, 30, 3], &[5, 1, 2]),
                (&[36, 1], &[1, 1, 1, 1, 1, 1, 1, 1]),
                (&[37], &[19, 1]),
            ] {
                let split = logits_by_chunks(&engine, &tokens, chunks, neighbours, hook);
                for (position, (a, b)) in whole.iter().zip(&split).enumerate() {
                    assert!(
                        a == b,
                        "{name}, {hook_name}: position {position} differs with chunks \
                         {chunks:?} and neighbours {neighbours:?}"
                    );
                }
            }
        }
    }
}

/// Whether two generations have the same text, token ids and logprobs, to the bit.
pub(crate) fn same_output(a: &Generation, b: &Generation) -> Result<(), String> {
    for (x, y) in a.samples.iter().zip(&b.samples) {
        if x.text != y.text {
            return Err(format!("text {:?} vs {:?}", x.text, y.text));
        }
        for (i, (s, t)) in x.tokens.iter().zip(&y.tokens).enumerate() {
            let top = |g: &hexacoder_engine::GeneratedToken| {
                g.top
                    .iter()
                    .map(|(id, p)| (*id, p.to_bits()))
                    .collect::<Vec<_>>()
            };
            if s.id != t.id || s.logprob.to_bits() != t.logprob.to_bits() || top(s) != top(t) {
                return Err(format!("token {i}: {s:?} vs {t:?}"));
            }
        }
    }
    Ok(())
}

fn greedy_request(prompt: &str) -> GenerateRequest {
    GenerateRequest {
        top_logprobs: 3,
        ..request(prompt, 24, SamplingParams::greedy())
    }
}

#[test]
fn a_greedy_request_repeats_exactly_cold_and_cached() {
    let prompt = "import os\n\ndef list_files(path):\n";
    for Loaded {
        name, mut engine, ..
    } in engines(64 << 20)
    {
        let cold = engine
            .generate(&greedy_request(prompt), &mut |_, _| true)
            .expect("cold");
        assert_eq!(cold.cached_prompt_tokens, 0, "{name}");
        for attempt in 1..5 {
            let again = engine
                .generate(&greedy_request(prompt), &mut |_, _| true)
                .expect("again");
            assert!(
                again.cached_prompt_tokens > 0,
                "{name}: attempt {attempt} missed the cache"
            );
            if let Err(diff) = same_output(&cold, &again) {
                panic!("{name}: attempt {attempt} after a cache hit: {diff}");
            }
        }
        // A keystroke later: most of the prompt (and the first answer) comes from the cache,
        // and the answer is what an engine without a cache gives.
        let edited = format!("{prompt}    fi");
        let cached = engine
            .generate(&greedy_request(&edited), &mut |_, _| true)
            .expect("cached");
        assert!(cached.cached_prompt_tokens > 0, "{name}");
        let uncached = load_engine(name, 0)
            .engine
            .generate(&greedy_request(&edited), &mut |_, _| true)
            .expect("uncached");
        if let Err(diff) = same_output(&uncached, &cached) {
            panic!("{name}: the edited prompt with and without the cache: {diff}");
        }
    }
}

#[test]
fn a_request_alone_and_among_eight_others_gives_the_same_text_and_logprobs() {
    let others = [
        "def add(a, b):\n",
        "class Config:\n    def __init__(self):\n",
        "x",
        "import sys\nimport re\n\n",
        "for i in range(10):\n",
        "return",
        "def total(xs):\n    s = 0\n    for x in xs:\n",
        "while True:\n    line = input()\n",
    ];
    let target = greedy_request("import os\n\ndef list_files(path):\n");
    for Loaded {
        name,
        engine: mut alone,
        tiny,
        ..
    } in engines(0)
    {
        let adapter = std::sync::Arc::new(adapter(&alone, &tiny));
        for with_adapter in [false, true] {
            let target = GenerateRequest {
                adapter: with_adapter.then(|| adapter.clone()),
                ..target.clone()
            };
            let expected = alone.generate(&target, &mut |_, _| true).expect("alone");
            let Loaded {
                engine,
                _dir: _dir2,
                ..
            } = load_engine(name, 0);
            let adapter = std::sync::Arc::new(
                LoadedAdapter::new(
                    "a",
                    1,
                    &crate::lora::adapter_for(&tiny, 4, false),
                    engine.model(),
                )
                .expect("adapter"),
            );
            let target = GenerateRequest {
                adapter: with_adapter.then(|| adapter.clone()),
                ..target
            };
            let scheduler =
                Scheduler::start(engine, crate::scheduler::options(9, 0)).expect("start");
            let mut receivers = Vec::new();
            for (i, prompt) in others.iter().enumerate() {
                let other = GenerateRequest {
                    // Every other neighbour on the adapter, so rows of both kinds surround it.
                    adapter: (i % 2 == 0).then(|| adapter.clone()),
                    ..request(prompt, 20 + i, SamplingParams::greedy())
                };
                receivers.push(crate::scheduler::submit(&scheduler, other));
                if i == 3 {
                    receivers.push(crate::scheduler::submit(&scheduler, target.clone()));
                }
            }
            let results: Vec<Generation> = receivers
                .iter()
                .map(|r| crate::scheduler::finish(r, 1))
                .collect();
            if let Err(diff) = same_output(&expected, &results[4]) {
                panic!("{name}, adapter {with_adapter}: alone and in a batch of 9: {diff}");
            }
        }
    }
}
