//! LoRA as a per-request side branch: exact with B = 0, equal to merged weights, mixed in one
//! batch, and never sharing KV state across adapters or adapter versions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use hexacoder_adapters::{Adapter, LoraConfig, LoraModule, ModuleKey, TargetModules};
use hexacoder_engine::ModelFiles;
use hexacoder_engine::nn::Proj;
use hexacoder_engine::{
    GenerateRequest, LoadedAdapter, SamplingParams, Scheduler, SchedulerOptions, load,
};
use hexacoder_testkit::{Arch, Tiny};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{self, max_abs_diff};

const RANK: usize = 4;
const ALPHA: f64 = 8.0;

fn random(rng: &mut StdRng, shape: (usize, usize), scale: f32) -> Tensor {
    let values: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| rng.random_range(-scale..scale))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor")
}

/// An r=4 adapter on all seven projections of every layer; `zero_b` makes it a no-op.
pub(crate) fn adapter_for(tiny: &Tiny, seed: u64, zero_b: bool) -> Adapter {
    let mut rng = StdRng::seed_from_u64(seed);
    let (h, i, hd) = (tiny.hidden, tiny.intermediate, tiny.head_dim());
    let mut modules = BTreeMap::new();
    for layer in 0..tiny.layers {
        for proj in Proj::ALL {
            let (n_in, n_out) = match proj {
                Proj::Q => (h, tiny.heads * hd),
                Proj::K | Proj::V => (h, tiny.kv_heads * hd),
                Proj::O => (tiny.heads * hd, h),
                Proj::Gate | Proj::Up => (h, i),
                Proj::Down => (i, h),
            };
            let b = if zero_b {
                Tensor::zeros((n_out, RANK), candle_core::DType::F32, &Device::Cpu).expect("zeros")
            } else {
                random(&mut rng, (n_out, RANK), 0.3)
            };
            modules.insert(
                ModuleKey {
                    layer,
                    parent: proj.parent().into(),
                    module: proj.module_name().into(),
                },
                LoraModule {
                    a: random(&mut rng, (RANK, n_in), 0.3),
                    b,
                    scale: ALPHA / RANK as f64,
                },
            );
        }
    }
    let config = LoraConfig {
        r: RANK,
        lora_alpha: ALPHA,
        use_rslora: false,
        target_modules: TargetModules::Names(
            Proj::ALL
                .iter()
                .map(|p| p.module_name().to_string())
                .collect(),
        ),
        rank_pattern: BTreeMap::new(),
        alpha_pattern: BTreeMap::new(),
        base_model_name_or_path: Some("tiny".into()),
    };
    Adapter::new(config, modules)
}

fn tiny() -> Tiny {
    Tiny::small(Arch::Qwen2)
}

#[test]
fn zero_b_gives_exactly_the_base_logits() {
    let (_dir, engine) = support::tiny_engine(tiny(), 3, &support::exact_options());
    let adapter = LoadedAdapter::new("zero", 1, &adapter_for(&tiny(), 1, true), engine.model())
        .expect("prepare");
    let tokens: Vec<u32> = (0..12).collect();
    let base = engine.model().forward_all(&tokens, None).expect("base");
    let with = engine
        .model()
        .forward_all(&tokens, Some(&adapter))
        .expect("adapter");
    assert_eq!(max_abs_diff(&base, &with), 0.0);
}

#[test]
fn side_branch_equals_merged_weights_and_survives_a_save_and_load() {
    let tiny = tiny();
    let (dir, engine) = support::tiny_engine(tiny, 3, &support::exact_options());
    let adapter = adapter_for(&tiny, 2, false);
    // Through the files, as a server loads it.
    let adapter_dir = dir.path().join("adapter");
    adapter.save(&adapter_dir).expect("save");
    let adapter = Adapter::load(&adapter_dir, engine.model()).expect("load back");
    let loaded = LoadedAdapter::new("a", 1, &adapter, engine.model()).expect("prepare");

    let mut merged: HashMap<String, Tensor> = tiny.weights(3);
    for (key, module) in adapter.modules() {
        let name = format!("{}.weight", key.path());
        let delta = (module.b.matmul(&module.a).expect("BA") * module.scale).expect("scale");
        let w = merged.remove(&name).expect("base weight");
        merged.insert(name, (w + delta).expect("merge"));
    }
    let merged_dir = tiny.write_hf_dir_with(&dir.path().join("merged"), &merged);
    let merged_engine = load::load(
        &ModelFiles::HfDir(merged_dir.clone()),
        &support::exact_options(),
    )
    .expect("merged");

    let tokens: Vec<u32> = (3..40).collect();
    let side = engine
        .model()
        .forward_all(&tokens, Some(&loaded))
        .expect("side branch");
    let reference = merged_engine
        .model()
        .forward_all(&tokens, None)
        .expect("merged");
    let base = engine.model().forward_all(&tokens, None).expect("base");
    assert!(
        max_abs_diff(&side, &reference) < 1e-4,
        "{}",
        max_abs_diff(&side, &reference)
    );
    // And an implementation that shares no code with ours: candle-transformers' qwen2 on
    // the merged weights.
    let config: candle_transformers::models::qwen2::Config =
        serde_json::from_value(tiny.config_json()).expect("reference config");
    let weights = merged_dir.join("model.safetensors");
    // SAFETY: the file was written above and is not modified while mapped.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[weights],
            candle_core::DType::F32,
            &Device::Cpu,
        )
    }
    .expect("vb");
    let mut model =
        candle_transformers::models::qwen2::Model::new(&config, vb.clone()).expect("reference");
    let ids = Tensor::new(tokens.as_slice(), &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    let hidden = model
        .forward(&ids, 0, None)
        .and_then(|h| h.squeeze(0))
        .expect("reference forward");
    let head = candle_nn::Linear::new(
        vb.get((tiny.vocab_size(), tiny.hidden), "lm_head.weight")
            .expect("head"),
        None,
    );
    let independent = candle_core::Module::forward(&head, &hidden).expect("head forward");
    assert!(
        max_abs_diff(&side, &independent) < 1e-4,
        "side branch vs candle-transformers on merged weights: {}",
        max_abs_diff(&side, &independent)
    );
    // Few rows take the host path (decode steps); it must agree too.
    let short = &tokens[..10];
    let side_short = engine
        .model()
        .forward_all(short, Some(&loaded))
        .expect("short side");
    let merged_short = merged_engine
        .model()
        .forward_all(short, None)
        .expect("short merged");
    assert!(
        max_abs_diff(&side_short, &merged_short) < 1e-4,
        "host path: {}",
        max_abs_diff(&side_short, &merged_short)
    );
    assert!(
        max_abs_diff(&side, &base) > 1e-2,
        "the adapter must change the logits"
    );
}

fn request(prompt: &str, adapter: Option<Arc<LoadedAdapter>>) -> GenerateRequest {
    GenerateRequest {
        adapter,
        ignore_eos: true,
        ..support::request(prompt, 20, SamplingParams::greedy())
    }
}

#[test]
fn requests_for_different_adapters_share_a_batch_and_give_what_they_give_alone() {
    let tiny = tiny();
    let (_dir, mut engine) = support::tiny_engine(tiny, 3, &support::exact_options());
    let x = Arc::new(
        LoadedAdapter::new("x", 1, &adapter_for(&tiny, 5, false), engine.model()).expect("x"),
    );
    let y = Arc::new(
        LoadedAdapter::new("y", 1, &adapter_for(&tiny, 6, false), engine.model()).expect("y"),
    );
    let requests = [
        request("def f(a):\n", None),
        request("def f(a):\n", Some(Arc::clone(&x))),
        request("class Point:\n", Some(Arc::clone(&y))),
        request("class Point:\n", Some(Arc::clone(&x))),
    ];
    let alone: Vec<Vec<u32>> = requests
        .iter()
        .map(|r| {
            engine.generate(r, &mut |_, _| true).expect("alone").samples[0]
                .tokens
                .iter()
                .map(|t| t.id)
                .collect()
        })
        .collect();
    assert_ne!(alone[0], alone[1], "the adapter changes the output");

    let (_dir2, engine) = support::tiny_engine(tiny, 3, &support::exact_options());
    let scheduler = Scheduler::start(
        engine,
        SchedulerOptions {
            max_running: 8,
            max_waiting: 8,
            batch: Default::default(),
        },
    )
    .expect("start");
    let receivers: Vec<_> = requests
        .iter()
        .map(|r| {
            let (tx, rx) = std::sync::mpsc::channel();
            scheduler
                .submit(
                    r.clone(),
                    Box::new(crate::scheduler::ChannelSinkForTests(tx)),
                )
                .expect("submit");
            rx
        })
        .collect();
    for (rx, expected) in receivers.iter().zip(&alone) {
        let generation = crate::scheduler::wait_finished(rx);
        let got: Vec<u32> = generation.samples[0].tokens.iter().map(|t| t.id).collect();
        assert_eq!(&got, expected);
    }
}

#[test]
fn prefix_cache_never_serves_another_adapter_or_version() {
    let tiny = tiny();
    let (_dir, mut engine) = support::tiny_engine(tiny, 3, &support::exact_options());
    let weights = adapter_for(&tiny, 5, false);
    let v1 = Arc::new(LoadedAdapter::new("sec", 1, &weights, engine.model()).expect("v1"));
    let v2 = Arc::new(LoadedAdapter::new("sec", 2, &weights, engine.model()).expect("v2"));
    let prompt = "import subprocess\n\ndef run(cmd):\n";
    let mut run = |adapter: Option<Arc<LoadedAdapter>>| {
        engine
            .generate(&request(prompt, adapter), &mut |_, _| true)
            .expect("generate")
            .cached_prompt_tokens
    };
    assert_eq!(run(None), 0);
    assert!(run(None) > 0, "the base model reuses its own prompt");
    assert_eq!(
        run(Some(Arc::clone(&v1))),
        0,
        "the adapter must not reuse the base model's KV"
    );
    assert!(
        run(Some(Arc::clone(&v1))) > 0,
        "an adapter reuses its own prompt"
    );
    assert_eq!(
        run(Some(Arc::clone(&v2))),
        0,
        "a new generation must not reuse the old one's KV"
    );
}

#[test]
fn merged_mode_matches_the_side_branch() {
    let tiny = tiny();
    let (_dir, engine) = support::tiny_engine(tiny, 3, &support::exact_options());
    let (_dir2, mut merged) = support::tiny_engine(tiny, 3, &support::exact_options());
    let adapter = adapter_for(&tiny, 9, false);
    let loaded = LoadedAdapter::new("m", 1, &adapter, engine.model()).expect("prepare");
    merged
        .merge_adapter(&adapter, hexacoder_engine::nn::Q8Kernel::Fastest)
        .expect("merge");
    let tokens: Vec<u32> = (5..30).collect();
    let side = engine
        .model()
        .forward_all(&tokens, Some(&loaded))
        .expect("side");
    let folded = merged.model().forward_all(&tokens, None).expect("merged");
    assert!(
        max_abs_diff(&side, &folded) < 1e-4,
        "{}",
        max_abs_diff(&side, &folded)
    );
    let _shared = merged.shared_model();
    assert!(
        merged
            .merge_adapter(&adapter, hexacoder_engine::nn::Q8Kernel::Fastest)
            .is_err(),
        "a shared model cannot change"
    );
}
