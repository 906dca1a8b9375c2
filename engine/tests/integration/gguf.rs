//! A GGUF file written by the test, with quantized tensors of every supported type, loads
//! and matches the f32 checkpoint within quantization tolerance.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, IndexOp, Tensor};
use hexacoder_engine::LoadedAdapter;
use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::gguf::gguf_name;
use hexacoder_engine::load::{self, Requantize};
use hexacoder_engine::nn::Q8Kernel;
use hexacoder_testkit::Arch;

use crate::support::{self, Tiny, max_abs_diff};

const PROMPT: &[u32] = &[5, 17, 42, 3, 64, 90, 11, 7, 33, 2];

/// llama.cpp's converter reorders LLaMA's q/k rows so that RoPE pairs adjacent dimensions.
fn permute_for_interleaved_rope(w: &Tensor, n_heads: usize) -> Tensor {
    let (out, inp) = w.dims2().expect("2-D");
    let head_dim = out / n_heads;
    w.reshape((n_heads, 2, head_dim / 2, inp))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape((out, inp)))
        .expect("permute")
}

/// Every 2-D weight gets one of these types in turn, so each type is exercised.
pub(crate) const TYPES: &[GgmlDType] = &[
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::F16,
    GgmlDType::F32,
];

/// Writes the GGUF and returns the weights as the file holds them (dequantized, HF order).
pub(crate) fn write_gguf(
    tiny: Tiny,
    weights: &HashMap<String, Tensor>,
    types: &[GgmlDType],
    path: &std::path::Path,
) -> HashMap<String, Tensor> {
    let (tokens, merges) = support::vocab();
    let arch = tiny.arch.name();
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String("tiny".into())),
        (
            format!("{arch}.context_length"),
            Value::U32(tiny.max_positions as u32),
        ),
        (
            format!("{arch}.embedding_length"),
            Value::U32(tiny.hidden as u32),
        ),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(tiny.intermediate as u32),
        ),
        (
            format!("{arch}.block_count"),
            Value::U32(tiny.layers as u32),
        ),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(tiny.heads as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(tiny.kv_heads as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(10_000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().cloned().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                tokens
                    .iter()
                    .map(|t| {
                        Value::I32(if support::SPECIAL.contains(&t.as_str()) {
                            3
                        } else {
                            1
                        })
                    })
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                merges
                    .iter()
                    .map(|(a, b)| Value::String(format!("{a} {b}")))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(
                tokens
                    .iter()
                    .position(|t| t == "<|endoftext|>")
                    .expect("eos") as u32,
            ),
        ),
    ];
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut tensors = Vec::new();
    let mut stored = HashMap::new();
    for (idx, name) in names.into_iter().enumerate() {
        let mut tensor = weights[name].clone();
        let permuted_heads = (tiny.arch == Arch::Llama && name.contains("_proj.weight"))
            .then(|| {
                if name.contains("q_proj") {
                    Some(tiny.heads)
                } else if name.contains("k_proj") {
                    Some(tiny.kv_heads)
                } else {
                    None
                }
            })
            .flatten();
        if let Some(heads) = permuted_heads {
            tensor = permute_for_interleaved_rope(&tensor, heads);
        }
        let dtype = if tensor.rank() == 2 {
            types[idx % types.len()]
        } else {
            GgmlDType::F32
        };
        let q = QTensor::quantize(&tensor, dtype).expect("quantize");
        let mut dequantized = q.dequantize(&Device::Cpu).expect("dequantize");
        if let Some(heads) = permuted_heads {
            dequantized = unpermute(&dequantized, heads);
        }
        stored.insert(name.clone(), dequantized);
        tensors.push((gguf_name(name).expect("gguf name"), q));
    }
    let mut file = std::fs::File::create(path).expect("create");
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &metadata, &tensors).expect("write gguf");
    stored
}

fn unpermute(w: &Tensor, n_heads: usize) -> Tensor {
    let (out, inp) = w.dims2().expect("2-D");
    let head_dim = out / n_heads;
    w.reshape((n_heads, head_dim / 2, 2, inp))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape((out, inp)))
        .expect("unpermute")
}

fn all_logits(engine: &hexacoder_engine::Engine) -> Tensor {
    let model = engine.model();
    model.forward_all(PROMPT, None).expect("forward")
}

/// With f32 tensors the GGUF path (name map, llama's q/k permutation with interleaved RoPE)
/// must agree with the safetensors path exactly.
#[test]
fn f32_gguf_matches_safetensors_exactly() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let tiny = Tiny::quantizable(arch);
        let (dir, reference) = support::tiny_engine(tiny, 3, &support::exact_options());
        let path = dir.path().join("tiny.gguf");
        write_gguf(tiny, &tiny.weights(3), &[GgmlDType::F32], &path);
        let engine =
            load::load(&ModelFiles::Gguf(path), &support::exact_options()).expect("load gguf");
        let diff = max_abs_diff(&all_logits(&engine), &all_logits(&reference));
        assert!(diff < 1e-4, "{arch:?}: max diff {diff}");
    }
}

/// PEFT adapters are in HF row order, and a GGUF LLaMA stores q and k rows permuted: the
/// engine must reorder `B`, so one adapter acts the same on both files (side branch and merged).
#[test]
fn an_adapter_acts_the_same_on_a_gguf_llama_as_on_its_safetensors() {
    let tiny = Tiny::quantizable(Arch::Llama);
    let (dir, reference) = support::tiny_engine(tiny, 3, &support::exact_options());
    let path = dir.path().join("tiny.gguf");
    write_gguf(tiny, &tiny.weights(3), &[GgmlDType::F32], &path);
    let mut engine =
        load::load(&ModelFiles::Gguf(path), &support::exact_options()).expect("load gguf");
    let adapter = crate::lora::adapter_for(&tiny, 7, false);
    let logits = |engine: &hexacoder_engine::Engine| {
        let loaded = LoadedAdapter::new("a", 1, &adapter, engine.model()).expect("prepare");
        engine
            .model()
            .forward_all(PROMPT, Some(&loaded))
            .expect("forward")
    };
    let (want, got) = (logits(&reference), logits(&engine));
    let base_gap = max_abs_diff(&want, &all_logits(&reference));
    assert!(base_gap > 1e-2, "the adapter must matter");
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-4, "side branch: max diff {diff}");
    // Merging re-quantizes the GGUF's projections to Q8_0, so only closeness is asked.
    engine
        .merge_adapter(&adapter, Q8Kernel::Fastest)
        .expect("merge");
    let merged_gap = max_abs_diff(&all_logits(&engine), &want);
    assert!(
        merged_gap < base_gap / 10.0,
        "merged: {merged_gap} from the side branch's logits, base {base_gap}"
    );
}

/// `Requantize::Dequantize` (the GPU default) multiplies the stored weights exactly: only
/// float rounding separates it from the f32 checkpoint of the same values.
#[test]
fn dequantized_gguf_matches_the_f32_checkpoint_of_its_values() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let tiny = Tiny::quantizable(arch);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tiny.gguf");
        let stored = write_gguf(tiny, &tiny.weights(3), TYPES, &path);
        let hf_dir = tiny.write_hf_dir_with(&dir.path().join("hf"), &stored);
        let reference =
            load::load(&ModelFiles::HfDir(hf_dir), &support::exact_options()).expect("reference");
        let options = hexacoder_engine::load::LoadOptions {
            requantize: Requantize::Dequantize,
            ..support::exact_options()
        };
        let engine = load::load(&ModelFiles::Gguf(path), &options).expect("load gguf");
        let diff = max_abs_diff(&all_logits(&engine), &all_logits(&reference));
        assert!(diff < 1e-4, "{arch:?}: max diff {diff}");
    }
}

#[test]
fn quantized_gguf_matches_f32_checkpoint_within_tolerance() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        for requantize in [Requantize::Keep, Requantize::LegacyToQ8_0] {
            let tiny = Tiny::quantizable(arch);
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("tiny.gguf");
            let stored = write_gguf(tiny, &tiny.weights(3), TYPES, &path);
            // The reference is the f32 checkpoint of exactly the weights the file holds, so
            // what remains is the quantization of activations inside the quantized matmuls
            // (plus the Q8_0 re-quantization with LegacyToQ8_0). Both candle's kernels and ours
            // land at 2-3% of the logit scale here.
            let hf_dir = tiny.write_hf_dir_with(&dir.path().join("hf"), &stored);
            let reference = load::load(&ModelFiles::HfDir(hf_dir), &support::exact_options())
                .expect("load reference");
            let options = hexacoder_engine::load::LoadOptions {
                requantize,
                ..support::exact_options()
            };
            let engine = load::load(&ModelFiles::Gguf(path), &options).expect("load gguf");
            assert_eq!(engine.model().config().arch.name(), arch.name());
            assert_eq!(engine.name(), "tiny");
            let ours = all_logits(&engine);
            let expected = all_logits(&reference);
            let diff = max_abs_diff(&ours, &expected);
            let scale = max_abs_diff(&expected, &expected.zeros_like().expect("zeros"));
            assert!(
                diff < 0.04 * scale,
                "{arch:?} {requantize:?}: max diff {diff} against logit scale {scale}"
            );
            // Greedy choices mostly agree (random weights leave the top logits nearly tied).
            let agree = (0..PROMPT.len())
                .filter(|&p| {
                    let a = ours
                        .i(p)
                        .and_then(|r| r.argmax(0))
                        .and_then(|t| t.to_scalar::<u32>())
                        .expect("argmax");
                    let b = expected
                        .i(p)
                        .and_then(|r| r.argmax(0))
                        .and_then(|t| t.to_scalar::<u32>())
                        .expect("argmax");
                    a == b
                })
                .count();
            assert!(
                agree * 10 >= PROMPT.len() * 7,
                "{arch:?}: argmax agrees on only {agree}/{}",
                PROMPT.len()
            );
            // The GGUF-built tokenizer equals the tokenizer.json one.
            for text in ["def f(x):\n    return x+1", "  in  ret 42"] {
                assert_eq!(
                    engine.tokenizer().encode(text).expect("gguf encode"),
                    reference.tokenizer().encode(text).expect("json encode"),
                    "{text:?}"
                );
            }
        }
    }
}

#[test]
fn a_truncated_gguf_is_an_error_not_a_crash() {
    let tiny = Tiny::quantizable(Arch::Qwen2);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiny.gguf");
    write_gguf(tiny, &tiny.weights(1), TYPES, &path);
    let bytes = std::fs::read(&path).expect("read");
    for keep in [0, 3, 100, bytes.len() / 2] {
        std::fs::write(&path, &bytes[..keep]).expect("truncate");
        let res = load::load(&ModelFiles::Gguf(path.clone()), &support::exact_options());
        assert!(res.is_err(), "a GGUF cut at {keep} bytes loaded");
    }
    let _ = Device::Cpu;
}

/// Inputs the `gguf` fuzz target (`fuzz/`) crashed on: each must be refused as a bad model.
#[test]
fn files_the_fuzzer_crashed_on_are_refused_as_bad_models() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/gguf");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let result = load::load(&ModelFiles::Gguf(path.clone()), &load::LoadOptions::cpu());
        match result {
            Err(hexacoder_engine::Error::InvalidModel { reason, .. }) => {
                eprintln!("{}: {reason}", path.display());
            }
            Err(other) => panic!("{}: not refused as a bad model: {other}", path.display()),
            Ok(_) => panic!("{} loaded", path.display()),
        }
        seen += 1;
    }
    assert!(seen >= 1, "no fixtures in {}", dir.display());
}

/// An alignment of 0 made candle's reader divide by zero; other non-powers of two are as wrong.
#[test]
fn a_gguf_alignment_that_is_not_a_power_of_two_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for alignment in [0u32, 3, 48] {
        let path = dir.path().join(format!("align-{alignment}.gguf"));
        let metadata = [
            ("general.architecture", Value::String("qwen2".into())),
            ("general.alignment", Value::U32(alignment)),
        ];
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let mut file = std::fs::File::create(&path).expect("create");
        gguf_file::write(&mut file, &metadata, &[]).expect("write gguf");
        drop(file);
        let error = hexacoder_engine::load::gguf::GgufFile::open(&path)
            .err()
            .unwrap_or_else(|| panic!("alignment {alignment} was accepted"));
        assert!(
            error.to_string().contains("power of two"),
            "alignment {alignment}: {error}"
        );
    }
}
