//! Logits of our decoder against candle-transformers' `llama`/`qwen2` on the same random
//! weights, for every position.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::VarBuilder;
use hexacoder_engine::models::llama::{Outputs, SeqInput};
use hexacoder_testkit::Arch;

use crate::support::{self, Tiny, max_abs_diff};

const PROMPT: &[u32] = &[5, 17, 42, 3, 64, 90, 11, 7, 33, 2, 71, 60];

/// Our logits for every position of `PROMPT`, in one forward pass: `[len, vocab]`.
fn ours_all_positions(tiny: Tiny) -> (tempfile::TempDir, Tensor) {
    let (dir, engine) = support::tiny_engine(tiny, 1, &support::exact_options());
    let model = engine.model();
    let logits = model.forward_all(PROMPT, None).expect("forward");
    (dir, logits)
}

fn reference_vb(dir: &std::path::Path) -> VarBuilder<'static> {
    let path = dir.join("model/model.safetensors");
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu).expect("vb") }
}

#[test]
fn qwen2_matches_candle_transformers_at_every_position() {
    let tiny = Tiny::small(Arch::Qwen2);
    let (dir, ours) = ours_all_positions(tiny);
    let config: candle_transformers::models::qwen2::Config =
        serde_json::from_value(tiny.config_json()).expect("reference config");
    let vb = reference_vb(dir.path());
    let mut model = candle_transformers::models::qwen2::Model::new(&config, vb.clone())
        .expect("reference model");
    let ids = Tensor::new(PROMPT, &Device::Cpu)
        .expect("ids")
        .unsqueeze(0)
        .expect("batch");
    let hidden = model
        .forward(&ids, 0, None)
        .expect("reference forward")
        .squeeze(0)
        .expect("squeeze");
    let lm_head = candle_nn::Linear::new(
        vb.get((tiny.vocab_size(), tiny.hidden), "lm_head.weight")
            .expect("head"),
        None,
    );
    let reference = lm_head.forward(&hidden).expect("head forward");
    assert_eq!(ours.dims(), reference.dims());
    let diff = max_abs_diff(&ours, &reference);
    assert!(diff < 1e-4, "max |ours - candle-transformers| = {diff}");
}

#[test]
fn llama_matches_candle_transformers_at_every_position() {
    for tied in [false, true] {
        let tiny = Tiny {
            tied,
            ..Tiny::small(Arch::Llama)
        };
        let (dir, ours) = ours_all_positions(tiny);
        let config: candle_transformers::models::llama::LlamaConfig =
            serde_json::from_value(tiny.config_json()).expect("reference config");
        let config = config.into_config(false);
        let model =
            candle_transformers::models::llama::Llama::load(reference_vb(dir.path()), &config)
                .expect("reference");
        // The reference returns the last position only: run every prefix without a cache.
        for end in 1..=PROMPT.len() {
            let mut cache = candle_transformers::models::llama::Cache::new(
                false,
                DType::F32,
                &config,
                &Device::Cpu,
            )
            .expect("cache");
            let ids = Tensor::new(&PROMPT[..end], &Device::Cpu)
                .expect("ids")
                .unsqueeze(0)
                .expect("batch");
            let reference = model
                .forward(&ids, 0, &mut cache)
                .expect("reference forward")
                .squeeze(0)
                .expect("squeeze");
            let diff = max_abs_diff(&ours.i(end - 1).expect("row"), &reference);
            assert!(
                diff < 1e-4,
                "tied={tied} position {}: max diff {diff}",
                end - 1
            );
        }
    }
}

/// Decoding with the KV cache one token at a time, and a ragged batch of two sequences,
/// give the same logits as one full forward pass.
#[test]
fn incremental_and_ragged_batch_match_full_forward() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let tiny = Tiny::small(arch);
        let (_dir, full) = ours_all_positions(tiny);
        let (_dir2, engine) = support::tiny_engine(tiny, 1, &support::exact_options());
        let model = engine.model();
        // Prefill 5, then one token at a time.
        let mut cache = model.new_cache();
        let first = model
            .forward(
                &PROMPT[..5],
                &mut [SeqInput {
                    cache: &mut cache,
                    n_tokens: 5,
                }],
                Outputs::LastOfEachSeq,
                None,
            )
            .expect("prefill")
            .expect("logits");
        assert!(max_abs_diff(&first.i(0).expect("row"), &full.i(4).expect("row")) < 1e-4);
        for pos in 5..PROMPT.len() {
            let step = model
                .forward(
                    &PROMPT[pos..pos + 1],
                    &mut [SeqInput {
                        cache: &mut cache,
                        n_tokens: 1,
                    }],
                    Outputs::LastOfEachSeq,
                    None,
                )
                .expect("step")
                .expect("logits");
            let diff = max_abs_diff(&step.i(0).expect("row"), &full.i(pos).expect("row"));
            assert!(diff < 1e-4, "{arch:?} position {pos}: {diff}");
        }
        // A ragged batch: sequence A continues from 3 cached tokens, B starts fresh.
        let mut cache_a = model.new_cache();
        model
            .forward(
                &PROMPT[..3],
                &mut [SeqInput {
                    cache: &mut cache_a,
                    n_tokens: 3,
                }],
                Outputs::None,
                None,
            )
            .expect("prefill a");
        let mut cache_b = model.new_cache();
        let tokens: Vec<u32> = PROMPT[3..7].iter().chain(&PROMPT[..2]).copied().collect();
        let both = model
            .forward(
                &tokens,
                &mut [
                    SeqInput {
                        cache: &mut cache_a,
                        n_tokens: 4,
                    },
                    SeqInput {
                        cache: &mut cache_b,
                        n_tokens: 2,
                    },
                ],
                Outputs::LastOfEachSeq,
                None,
            )
            .expect("ragged")
            .expect("logits");
        assert!(
            max_abs_diff(&both.i(0).expect("a"), &full.i(6).expect("row")) < 1e-4,
            "{arch:?} ragged a"
        );
        assert!(
            max_abs_diff(&both.i(1).expect("b"), &full.i(1).expect("row")) < 1e-4,
            "{arch:?} ragged b"
        );
    }
}

/// A checkpoint split into shards by `model.safetensors.index.json`, stored as bf16 or f16,
/// loads and gives the f32 checkpoint's logits within half-precision rounding.
#[test]
fn sharded_half_precision_checkpoints_load() {
    use std::collections::HashMap;

    use hexacoder_engine::ModelFiles;
    use hexacoder_engine::load;

    let tiny = Tiny::small(Arch::Qwen2);
    let (_dir, reference) = ours_all_positions(tiny);
    for dtype in [DType::BF16, DType::F16] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tiny.write_hf_dir(&tmp.path().join("m"), 1);
        std::fs::remove_file(dir.join("model.safetensors")).expect("remove single file");
        // Two shards: layers in one, everything else in the other, as HF's sharding does.
        let weights = tiny.weights(1);
        let (layers, rest): (HashMap<_, _>, HashMap<_, _>) = weights
            .into_iter()
            .partition(|(name, _)| name.starts_with("model.layers."));
        let mut weight_map = serde_json::Map::new();
        for (file, part) in [
            ("model-00001-of-00002.safetensors", layers),
            ("model-00002-of-00002.safetensors", rest),
        ] {
            let part: HashMap<String, Tensor> = part
                .into_iter()
                .map(|(name, t)| (name, t.to_dtype(dtype).expect("cast")))
                .collect();
            for name in part.keys() {
                weight_map.insert(name.clone(), serde_json::json!(file));
            }
            candle_core::safetensors::save(&part, dir.join(file)).expect("save shard");
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
        let engine =
            load::load(&ModelFiles::HfDir(dir), &support::exact_options()).expect("load shards");
        let logits = engine.model().forward_all(PROMPT, None).expect("forward");
        let diff = max_abs_diff(&logits, &reference);
        let scale = max_abs_diff(&reference, &reference.zeros_like().expect("zeros"));
        assert!(diff < 0.05 * scale, "{dtype:?}: diff {diff} scale {scale}");
    }
}

/// A low-rank side branch added through the hook on all seven projections gives the same
/// logits as a checkpoint whose weights have it merged in: `W + s·B·A`.
#[test]
fn linear_hook_side_branch_equals_merged_weights() {
    use std::collections::HashMap;

    use hexacoder_engine::ModelFiles;
    use hexacoder_engine::load;
    use hexacoder_engine::nn::{LinearHook, Proj};

    struct LowRank {
        // (layer, projection) -> (A [r, in], B [out, r])
        factors: HashMap<(usize, Proj), (Tensor, Tensor)>,
        scale: f64,
    }
    impl LinearHook for LowRank {
        fn delta(
            &self,
            layer_idx: usize,
            proj: Proj,
            xs: &Tensor,
        ) -> hexacoder_engine::Result<Option<Tensor>> {
            let Some((a, b)) = self.factors.get(&(layer_idx, proj)) else {
                return Ok(None);
            };
            Ok(Some((xs.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scale)?))
        }
    }

    let tiny = Tiny::small(Arch::Qwen2);
    let rank = 4;
    let scale = 2.0;
    let mut weights = tiny.weights(1);
    let mut factors = HashMap::new();
    for layer in 0..tiny.layers {
        for proj in Proj::ALL {
            let name = format!(
                "model.layers.{layer}.{}.{}.weight",
                proj.parent(),
                proj.module_name()
            );
            let (out, inp) = weights[&name].dims2().expect("2-D");
            let a = Tensor::randn(0f32, 0.1, (rank, inp), &Device::Cpu).expect("a");
            let b = Tensor::randn(0f32, 0.1, (out, rank), &Device::Cpu).expect("b");
            let merged = (&weights[&name] + (b.matmul(&a).expect("ba") * scale).expect("scale"))
                .expect("merge");
            weights.insert(name, merged);
            factors.insert((layer, proj), (a, b));
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let merged_dir = tiny.write_hf_dir_with(&tmp.path().join("merged"), &weights);
    let merged =
        load::load(&ModelFiles::HfDir(merged_dir), &support::exact_options()).expect("load merged");
    let (_dir, base) = support::tiny_engine(tiny, 1, &support::exact_options());
    let hook = LowRank { factors, scale };
    let hooked = base
        .model()
        .forward_all(PROMPT, Some(&hook))
        .expect("hooked forward");
    let expected = merged
        .model()
        .forward_all(PROMPT, None)
        .expect("merged forward");
    let diff = max_abs_diff(&hooked, &expected);
    assert!(diff < 1e-4, "hooked vs merged: {diff}");
    // And the side branch really changes the output.
    let plain = base
        .model()
        .forward_all(PROMPT, None)
        .expect("plain forward");
    assert!(max_abs_diff(&plain, &expected) > 1e-2);
}
