//! The training forward pass against the serving one, its gradients against finite
//! differences, and the loss mask.

use candle_core::{Device, IndexOp, Tensor, Var};
use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions};
use hexacoder_testkit::{Arch, Tiny};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::data::{self, Row};
use super::model::{self, Lora, LoraSettings, TrainModel};
use super::optim;

fn engine(tiny: Tiny, seed: u64) -> (tempfile::TempDir, hexacoder_engine::Engine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny.write_hf_dir(&dir.path().join("m"), seed);
    // Keys and values exact: the training pass computes in f32 and keeps no KV cache.
    let options = LoadOptions {
        kv_dtype: hexacoder_engine::nn::KvDtype::F32,
        ..LoadOptions::cpu()
    };
    let engine = load::load(&ModelFiles::HfDir(path), &options).expect("load");
    (dir, engine)
}

fn settings(targets: &[&str]) -> LoraSettings {
    LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

/// Random `B`s, so that every LoRA pair changes the output and `A` gets a gradient.
fn randomize_b(lora: &Lora, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for pair in lora.pairs.values() {
        let dims = pair.b.as_tensor().dims2().expect("2-D");
        let values: Vec<f32> = (0..dims.0 * dims.1)
            .map(|_| rng.random_range(-0.2..0.2))
            .collect();
        pair.b
            .set(&Tensor::from_vec(values, dims, &Device::Cpu).expect("tensor"))
            .expect("set");
    }
}

const IDS: &[u32] = &[5, 17, 42, 3, 64, 90, 11, 7, 33, 2, 19, 28];

#[test]
fn training_logits_equal_serving_logits() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let (_dir, engine) = engine(Tiny::small(arch), 3);
        let serving = engine.model().forward_all(IDS, None).expect("serving");
        let model = TrainModel::new(engine.model(), &Device::Cpu).expect("train model");
        let hidden = model.hidden(IDS, None, None).expect("hidden");
        let positions: Vec<u32> = (0..IDS.len() as u32).collect();
        let training = model.logits_at(&hidden, &positions).expect("logits");
        let diff = max_abs_diff(&training, &serving);
        assert!(diff < 1e-4, "{arch:?}: max diff {diff}");
    }
}

#[test]
fn composed_rope_equals_candles_fused_kernels() {
    // Both pairings: HF's halves, and the interleaved order of GGUF LLaMA checkpoints.
    let mut rng = StdRng::seed_from_u64(1);
    let (heads, n, d) = (3, 5, 8);
    let xs: Vec<f32> = (0..heads * n * d)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let xs = Tensor::from_vec(xs, (heads, n, d), &Device::Cpu).expect("xs");
    let angles: Vec<f32> = (0..n * d / 2)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let angles = Tensor::from_vec(angles, (n, d / 2), &Device::Cpu).expect("angles");
    let (cos, sin) = (angles.cos().expect("cos"), angles.sin().expect("sin"));
    let batched = xs.unsqueeze(0).expect("unsqueeze");
    for (style, fused) in [
        (
            hexacoder_engine::config::RopeStyle::Half,
            candle_nn_rope(&batched, &cos, &sin, false),
        ),
        (
            hexacoder_engine::config::RopeStyle::Interleaved,
            candle_nn_rope(&batched, &cos, &sin, true),
        ),
    ] {
        let ours = model::rope_for_tests(&xs, &cos, &sin, style).expect("rope");
        let diff = max_abs_diff(&ours, &fused.i(0).expect("index"));
        assert!(diff < 1e-6, "{style:?}: {diff}");
    }
}

/// candle's fused RoPE kernels, which the serving path uses.
fn candle_nn_rope(xs: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Tensor {
    if interleaved {
        candle_nn::rotary_emb::rope_i(xs, cos, sin).expect("fused rope")
    } else {
        candle_nn::rotary_emb::rope(xs, cos, sin).expect("fused rope")
    }
}

#[test]
fn lora_gradients_match_finite_differences() {
    let (_dir, engine) = engine(Tiny::small(Arch::Qwen2), 5);
    let model = TrainModel::new(engine.model(), &Device::Cpu).expect("train model");
    let lora = Lora::new(&model, &settings(&["q", "v", "down"]), 2).expect("lora");
    randomize_b(&lora, 3);
    let mask: Vec<bool> = (0..IDS.len()).map(|i| i % 3 != 0).collect();
    let loss = |lora: &Lora| -> Tensor {
        model
            .masked_nll(IDS, &mask, Some(lora), None)
            .expect("loss")
            .0
    };
    let grads = model::gradients(&lora, &loss(&lora).backward().expect("backward"))
        .expect("every var has a gradient");
    let mut rng = StdRng::seed_from_u64(9);
    let vars = lora.named_vars();
    let mut checked = 0;
    for (k, (name, var)) in vars.iter().enumerate() {
        let original = var
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("values");
        let shape = var.as_tensor().shape().clone();
        let grad = grads[k]
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
        for _ in 0..2 {
            let i = rng.random_range(0..original.len());
            let eps = 1e-2f32;
            let shifted = |delta: f32| -> f32 {
                let mut values = original.clone();
                values[i] += delta;
                let set = |v: Vec<f32>| {
                    var.set(&Tensor::from_vec(v, &shape, &Device::Cpu).expect("tensor"))
                        .expect("set")
                };
                set(values);
                let l = loss(&lora).to_scalar::<f32>().expect("scalar");
                set(original.clone());
                l
            };
            let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
            let analytic = grad[i];
            let tolerance = 2e-3 + 2e-2 * analytic.abs().max(numeric.abs());
            assert!(
                (numeric - analytic).abs() <= tolerance,
                "{name}[{i}]: finite difference {numeric}, backward {analytic}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * vars.len());
}

#[test]
fn fused_cpu_branches_equal_the_composed_ones_a_gpu_runs_dropout_included() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let (_dir, engine) = engine(Tiny::small(arch), 6);
        let fused = TrainModel::new(engine.model(), &Device::Cpu).expect("train model");
        let composed =
            TrainModel::with_composed_projections(engine.model()).expect("composed train model");
        let all = ["q", "k", "v", "o", "gate", "up", "down"];
        let lora = Lora::new(&fused, &settings(&all), 2).expect("lora");
        randomize_b(&lora, 8);
        let mask: Vec<bool> = (0..IDS.len()).map(|i| i % 4 != 1).collect();
        let dropout = model::Dropout { p: 0.3, seed: 17 };
        let run = |model: &TrainModel| {
            let (nll, _) = model
                .masked_nll(IDS, &mask, Some(&lora), Some(&dropout))
                .expect("loss");
            let grads = model::gradients(&lora, &nll.backward().expect("backward")).expect("grads");
            (nll.to_scalar::<f32>().expect("scalar"), grads)
        };
        let ((fused_loss, fused_grads), (composed_loss, composed_grads)) =
            (run(&fused), run(&composed));
        assert!(
            (fused_loss - composed_loss).abs() < 1e-4 * composed_loss.abs(),
            "{arch:?}: loss {fused_loss} fused, {composed_loss} composed"
        );
        for ((name, _), (f, c)) in lora
            .named_vars()
            .iter()
            .zip(fused_grads.iter().zip(&composed_grads))
        {
            let scale = c
                .abs()
                .and_then(|a| a.max_all())
                .and_then(|m| m.to_scalar::<f32>());
            let diff = max_abs_diff(f, c);
            assert!(
                diff <= 1e-4 * (1.0 + scale.expect("scale")),
                "{arch:?} {name}: gradients differ by {diff}"
            );
        }
    }
}

#[test]
fn every_var_gets_a_nonzero_gradient_and_b_alone_at_the_start() {
    let (_dir, engine) = engine(Tiny::small(Arch::Llama), 7);
    let model = TrainModel::new(engine.model(), &Device::Cpu).expect("train model");
    let all = ["q", "k", "v", "o", "gate", "up", "down"];
    let lora = Lora::new(&model, &settings(&all), 2).expect("lora");
    assert_eq!(lora.pairs.len(), 7 * 2);
    let mask = vec![true; IDS.len()];
    let norms = |lora: &Lora| -> Vec<(String, f32)> {
        let (nll, _) = model
            .masked_nll(IDS, &mask, Some(lora), None)
            .expect("loss");
        let grads = model::gradients(lora, &nll.backward().expect("backward")).expect("grads");
        lora.named_vars()
            .into_iter()
            .zip(grads)
            .map(|((name, _), g)| {
                let norm = g
                    .sqr()
                    .and_then(|s| s.sum_all())
                    .and_then(|s| s.to_scalar::<f32>());
                (name, norm.expect("norm"))
            })
            .collect()
    };
    // B = 0 at the start (PEFT's initialization): only B can move first.
    for (name, norm) in norms(&lora) {
        assert_eq!(name.ends_with("lora_A"), norm == 0.0, "{name}: {norm}");
    }
    randomize_b(&lora, 4);
    for (name, norm) in norms(&lora) {
        assert!(norm > 0.0, "{name} got a zero gradient");
    }
}

#[test]
fn only_masked_targets_count() {
    let (_dir, engine) = engine(Tiny::small(Arch::Qwen2), 11);
    let model = TrainModel::new(engine.model(), &Device::Cpu).expect("train model");
    let lora = Lora::new(&model, &settings(&["q", "k", "v", "o"]), 2).expect("lora");
    randomize_b(&lora, 5);
    let mut mask = vec![false; IDS.len()];
    mask[4..8].fill(true);
    let run = |ids: &[u32]| -> (f32, Vec<Vec<f32>>) {
        let (nll, count) = model
            .masked_nll(ids, &mask, Some(&lora), None)
            .expect("loss");
        assert_eq!(count, 4);
        let grads = model::gradients(&lora, &nll.backward().expect("backward")).expect("grads");
        (
            nll.to_scalar::<f32>().expect("scalar"),
            grads
                .iter()
                .map(|g| g.flatten_all().and_then(|g| g.to_vec1()).expect("vec"))
                .collect(),
        )
    };
    let base = run(IDS);
    // The last token is an unmasked target and feeds no masked prediction.
    let mut changed = IDS.to_vec();
    *changed.last_mut().expect("last") = 77;
    assert_eq!(
        run(&changed),
        base,
        "an unmasked target changed the loss or gradients"
    );
    let mut masked_changed = IDS.to_vec();
    masked_changed[7] = 77;
    assert_ne!(run(&masked_changed).0, base.0, "a masked target must count");
}

#[test]
fn exported_b_rows_are_in_hf_order_for_interleaved_models() {
    let (_dir, engine) = engine(Tiny::small(Arch::Llama), 13);
    let model = TrainModel::new(engine.model(), &Device::Cpu).expect("train model");
    let lora = Lora::new(&model, &settings(&["q", "k", "v"]), 2).expect("lora");
    randomize_b(&lora, 6);
    let mut config = model.config().clone();
    config.rope_style = hexacoder_engine::config::RopeStyle::Interleaved;
    for proj in [hexacoder_engine::nn::Proj::Q, hexacoder_engine::nn::Proj::K] {
        let rows = config.hf_rows(proj).expect("permuted");
        let mut sorted = rows.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..rows.len() as u32).collect::<Vec<_>>(),
            "a permutation"
        );
    }
    assert!(config.hf_rows(hexacoder_engine::nn::Proj::V).is_none());
    // HF checkpoints need no reordering: export is the identity.
    let adapter = lora.to_adapter(&model, "tiny").expect("adapter");
    for (key, module) in adapter.modules() {
        let p = hexacoder_engine::nn::Proj::ALL
            .iter()
            .position(|p| p.module_name() == key.module)
            .expect("proj");
        let pair = &lora.pairs[&(key.layer, p)];
        assert_eq!(max_abs_diff(&module.b, pair.b.as_tensor()), 0.0);
    }
}

#[test]
fn spans_map_to_the_tokens_they_touch() {
    let (_dir, engine) = engine(Tiny::small(Arch::Qwen2), 1);
    let tokenizer = engine.tokenizer();
    let text = "def f(x):\n    return x + 1\n";
    let start = text.find("x + 1").expect("span");
    let row = Row::Spans {
        text: text.into(),
        changes: std::iter::once(start..start + 5).collect(),
    };
    let example = data::tokenize(tokenizer, &row, "t:1", 512)
        .expect("tokenize")
        .expect("trainable");
    let ids = tokenizer.encode_plain(text).expect("ids");
    // Cut after the last masked token; every masked token's bytes overlap the span.
    let mut at = 0;
    let mut masked_text = String::new();
    for (i, &id) in ids.iter().enumerate().take(example.ids.len()) {
        let bytes = tokenizer.token_bytes(id);
        let (s, e) = (at, at + bytes.len());
        let overlaps = s < start + 5 && start < e;
        assert_eq!(
            example.mask[i],
            overlaps && i > 0,
            "token {i} {:?}",
            String::from_utf8_lossy(bytes)
        );
        if example.mask[i] {
            masked_text.push_str(&String::from_utf8_lossy(bytes));
        }
        at = e;
    }
    assert!(masked_text.contains("x + 1"), "{masked_text:?}");
    let last = example.mask.iter().rposition(|&m| m).expect("masked");
    assert_eq!(last + 1, example.ids.len(), "cut after the last change");
    assert!(example.ids.len() < ids.len(), "the trailing newline is cut");
}

#[test]
fn pairs_mask_what_the_fix_inserted_or_replaced() {
    let (_dir, engine) = engine(Tiny::small(Arch::Qwen2), 1);
    let tokenizer = engine.tokenizer();
    let row = Row::Pair {
        vulnerable: "print(1)\nos.system(cmd)\n".into(),
        fixed: "print(1)\nsubprocess.run(cmd)\n".into(),
        language: "python".into(),
    };
    let example = data::tokenize(tokenizer, &row, "t:1", 512)
        .expect("tokenize")
        .expect("trainable");
    // The changed second line carries the loss, the unchanged first line none. (A byte-level
    // vocabulary shares single letters between the two calls, so not every token of the new
    // call is masked.)
    let unchanged = tokenizer.encode_plain("print(1)\n").expect("ids").len();
    assert!(
        example.mask[..unchanged].iter().all(|&m| !m),
        "the unchanged line is masked"
    );
    let changed = &example.mask[unchanged..];
    let masked = changed.iter().filter(|&&m| m).count();
    assert!(masked * 2 >= changed.len(), "{masked} of {}", changed.len());
}

#[test]
fn bad_rows_are_errors_that_say_why() {
    let parse = |s: &str| data::parse_row(&serde_json::from_str(s).expect("json"));
    assert!(
        parse(r#"{"text": "abc", "changes": [{"char_start": 2, "char_end": 9}]}"#)
            .expect_err("out of range")
            .contains("outside")
    );
    // "é" is one code point and two bytes: offsets count code points.
    assert!(
        parse(r#"{"text": "éa", "changes": [{"char_start": 1, "char_end": 2, "chars": "a"}]}"#)
            .is_ok()
    );
    assert!(
        parse(r#"{"text": "éa", "changes": [{"char_start": 1, "char_end": 2, "chars": "é"}]}"#)
            .expect_err("mismatch")
            .contains("code points")
    );
    assert_eq!(parse(r#"{"text": "abc", "changes": []}"#), Ok(None));
    assert!(
        parse(r#"{"fixed": "a"}"#)
            .expect_err("pair")
            .contains("vulnerable")
    );
    assert!(
        parse(r#"{"code": "a"}"#)
            .expect_err("neither")
            .contains("neither")
    );
    assert!(model::parse_module("qq").is_err());
    assert_eq!(
        model::parse_module("gate_proj").expect("module"),
        hexacoder_engine::nn::Proj::Gate
    );
}

#[test]
fn the_schedule_warms_up_then_decays_to_zero() {
    assert!((optim::learning_rate(1.0, 0, 4, 20) - 0.25).abs() < 1e-12);
    assert!((optim::learning_rate(1.0, 3, 4, 20) - 1.0).abs() < 1e-12);
    assert!(optim::learning_rate(1.0, 12, 4, 20) < 1.0);
    assert!(optim::learning_rate(1.0, 20, 4, 20).abs() < 1e-12);
    let grads = vec![Tensor::new(&[3f32, 4.0], &Device::Cpu).expect("t")];
    let (norm, clipped) = optim::clip(grads, 1.0).expect("clip");
    assert!((norm - 5.0).abs() < 1e-6);
    let v = clipped[0].to_vec1::<f32>().expect("vec");
    assert!(
        (v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5,
        "{v:?}"
    );
}

#[test]
fn adamw_moves_a_var_downhill() {
    let var = Var::new(&[1f32, -2.0], &Device::Cpu).expect("var");
    let settings = optim::AdamWSettings {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut adam = optim::AdamW::new(settings, &[&var]).expect("adam");
    for _ in 0..50 {
        let loss = var
            .as_tensor()
            .sqr()
            .and_then(|s| s.sum_all())
            .expect("loss");
        let grad = loss
            .backward()
            .expect("backward")
            .get(var.as_tensor())
            .cloned()
            .expect("grad");
        adam.step(&[&var], &[grad], 0.1).expect("step");
    }
    let v = var.as_tensor().to_vec1::<f32>().expect("vec");
    assert!(v.iter().all(|x| x.abs() < 0.2), "{v:?}");
}

/// On real rows of the shared set, with the default model's tokenizer: a token is masked
/// exactly when its bytes overlap a changed span, and the masked tokens cover every span.
#[test]
fn masks_on_the_shared_set_cover_exactly_the_changed_spans() {
    let shared = hexacoder_testkit::shared_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        shared.join("reference/tokenizers/qwen2.5-coder.tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("reference tokenizer (../shared)");
    let tokenizer =
        hexacoder_engine::tokenizer::Tokenizer::from_hf_dir(dir.path()).expect("tokenizer");
    let (rows, stats) =
        data::read_rows(&[shared.join("bench/hexacoder/dataset/hexacoder_train.jsonl")])
            .expect("read the shared set");
    assert_eq!(
        (stats.lines, stats.no_changes, rows.len()),
        (1686, 11, 1675)
    );
    for (row, origin) in rows.iter().step_by(7) {
        let Row::Spans { text, changes } = row else {
            panic!("{origin}: not format A");
        };
        let example = data::tokenize(&tokenizer, row, origin, 1 << 20)
            .expect("tokenize")
            .expect("trainable");
        let offset = usize::from(tokenizer.bos_to_add().is_some());
        let mut at = 0;
        let mut covered = vec![false; text.len()];
        for (i, &id) in example.ids.iter().enumerate().skip(offset) {
            let len = tokenizer.token_bytes(id).len();
            let (s, e) = (at, at + len);
            let overlaps = changes.iter().any(|c| c.start < e && s < c.end);
            assert_eq!(example.mask[i], overlaps && i > 0, "{origin}: token {i}");
            if example.mask[i] {
                covered[s..e].fill(true);
            }
            at = e;
        }
        for change in changes {
            let first_token_change = change.start == 0 && offset == 0;
            assert!(
                first_token_change || covered[change.clone()].iter().all(|&c| c),
                "{origin}: {:?} not covered by masked tokens",
                &text[change.clone()]
            );
        }
    }
}
