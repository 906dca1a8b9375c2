//! LoRA against Python `transformers` + `peft`, the independent reference: fixtures made once
//! by `tests/fixtures/peft/make_fixtures.py` (bases, PEFT-made adapters, and the logits PEFT
//! computed, also for adapters HexaCoder's writer made) and committed with it.
//!
//! To remake them: `HEXACODER_WRITE_PEFT_FIXTURES=DIR cargo test -p hexacoder-engine --test
//! integration peft::` writes our adapters into DIR; then, where torch is installed,
//! `python make_fixtures.py OUT --ours DIR`; copy OUT and DIR into the fixtures folder and run
//! `python to_text.py` there.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hexacoder_adapters::{
    Adapter, LoraConfig, LoraModule, ModuleKey, TWO_STEP_METADATA, TargetModules,
};
use hexacoder_engine::ModelFiles;
use hexacoder_engine::nn::Proj;
use hexacoder_engine::{Engine, LoadedAdapter, load};
use hexacoder_testkit::{Arch, Tiny};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{self, max_abs_diff};

const ARCHS: [(&str, Arch); 2] = [("llama", Arch::Llama), ("qwen2", Arch::Qwen2)];
/// f32 on both sides, different summation orders.
const TOLERANCE: f32 = 1e-4;

fn fixture_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft")
}

/// The fixtures as the tools wrote them: git holds each `.safetensors` file as text
/// (`to_text.py`: its exact header and its values), rebuilt here byte for byte.
fn fixtures() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        materialize(&fixture_source(), dir.path());
        dir
    })
    .path()
    .to_path_buf()
}

fn materialize(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixtures") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            materialize(&path, &to.join(&name));
        } else if let Some(binary) = name
            .strip_suffix(".json")
            .filter(|n| n.ends_with(".safetensors"))
        {
            std::fs::write(to.join(binary), safetensors_from_text(&path)).expect("write");
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy");
        }
    }
}

fn safetensors_from_text(path: &Path) -> Vec<u8> {
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    let header = text["header"].as_str().expect("header");
    let dtypes: serde_json::Value = serde_json::from_str(header).expect("header json");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for tensor in text["tensors"].as_array().expect("tensors") {
        let name = tensor["name"].as_str().expect("name");
        let values = tensor["values"].as_array().expect("values");
        for value in values {
            match dtypes[name]["dtype"].as_str().expect("dtype") {
                "F32" => bytes.extend((value.as_f64().expect("f32") as f32).to_le_bytes()),
                "I64" => bytes.extend(value.as_i64().expect("i64").to_le_bytes()),
                other => panic!("{path:?}: dtype {other} in fixtures"),
            }
        }
    }
    bytes
}

/// The fixture models' sizes (`base_model` in the script).
fn tiny(arch: Arch) -> Tiny {
    Tiny {
        hidden: 32,
        intermediate: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        max_positions: 128,
        ..Tiny::small(arch)
    }
}

/// The base transformers saved, with testkit's tokenizer beside it (logits are compared on
/// token ids, so only the vocabulary size matters).
fn base_engine(name: &str, arch: Arch) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = fixtures().join(name).join("base");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(base.join(file), dir.path().join(file)).expect("copy fixture");
    }
    std::fs::write(
        dir.path().join("tokenizer.json"),
        hexacoder_testkit::tokenizer_json().to_string(),
    )
    .expect("tokenizer");
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<|endoftext|>"}"#,
    )
    .expect("tokenizer config");
    let engine = load::load(
        &ModelFiles::HfDir(dir.path().to_path_buf()),
        &support::exact_options(),
    )
    .expect("load the transformers checkpoint");
    assert_eq!(engine.model().config().vocab_size, tiny(arch).vocab_size());
    (dir, engine)
}

struct Expected {
    input_ids: Vec<u32>,
    logits: HashMap<String, Tensor>,
}

fn expected(name: &str) -> Expected {
    let mut logits = candle_core::safetensors::load(
        fixtures().join(name).join("logits.safetensors"),
        &Device::Cpu,
    )
    .expect("logits fixture");
    let input_ids = logits
        .remove("input_ids")
        .expect("input_ids")
        .to_vec1::<i64>()
        .expect("ids")
        .into_iter()
        .map(|id| u32::try_from(id).expect("id"))
        .collect();
    Expected { input_ids, logits }
}

fn logits_with(engine: &Engine, ids: &[u32], adapter: Option<&LoadedAdapter>) -> Tensor {
    let hook = adapter.map(|a| a as &dyn hexacoder_engine::nn::LinearHook);
    engine.model().forward_all(ids, hook).expect("forward")
}

#[test]
fn our_loader_computes_the_base_logits_transformers_computed() {
    for (name, arch) in ARCHS {
        let (_dir, engine) = base_engine(name, arch);
        let expected = expected(name);
        let ours = logits_with(&engine, &expected.input_ids, None);
        let diff = max_abs_diff(&ours, &expected.logits["base"]);
        assert!(diff < TOLERANCE, "{name}: {diff}");
    }
}

#[test]
fn adapters_peft_wrote_give_the_logits_peft_computed() {
    for (name, arch) in ARCHS {
        let (_dir, engine) = base_engine(name, arch);
        let expected = expected(name);
        for adapter_name in ["plain", "patterns"] {
            let dir = fixtures().join(name).join("adapters").join(adapter_name);
            let adapter = Adapter::load(&dir, engine.model()).expect("load PEFT's adapter");
            let loaded =
                LoadedAdapter::new(adapter_name, 1, &adapter, engine.model()).expect("prepare");
            let ours = logits_with(&engine, &expected.input_ids, Some(&loaded));
            let reference = &expected.logits[adapter_name];
            let diff = max_abs_diff(&ours, reference);
            assert!(diff < TOLERANCE, "{name}/{adapter_name}: {diff}");
            // The adapter must matter, or the comparison proves nothing.
            assert!(max_abs_diff(reference, &expected.logits["base"]) > 0.1);
        }
    }
}

/// Adapters made by our writer: every projection at one rank, and a subset with rsLoRA,
/// per-module rank and alpha, and HexaCoder metadata (which PEFT must ignore).
fn our_adapters(arch: Arch) -> Vec<(&'static str, Adapter)> {
    let tiny = tiny(arch);
    let shape = |proj: Proj| -> (usize, usize) {
        let (h, i, hd) = (tiny.hidden, tiny.intermediate, tiny.head_dim());
        match proj {
            Proj::Q => (h, tiny.heads * hd),
            Proj::K | Proj::V => (h, tiny.kv_heads * hd),
            Proj::O => (tiny.heads * hd, h),
            Proj::Gate | Proj::Up => (h, i),
            Proj::Down => (i, h),
        }
    };
    let build = |seed: u64, config: LoraConfig, projs: &[Proj]| -> Adapter {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut random = |rows: usize, cols: usize| {
            let values: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-0.5..0.5))
                .collect();
            Tensor::from_vec(values, (rows, cols), &Device::Cpu).expect("tensor")
        };
        let mut modules = BTreeMap::new();
        for layer in 0..tiny.layers {
            for &proj in projs {
                let key = ModuleKey {
                    layer,
                    parent: proj.parent().into(),
                    module: proj.module_name().into(),
                };
                let (rank, _) = config.rank_and_alpha(&key.path());
                let (n_in, n_out) = shape(proj);
                let module = LoraModule {
                    a: random(rank, n_in),
                    b: random(n_out, rank),
                    scale: config.scale(&key.path()),
                };
                modules.insert(key, module);
            }
        }
        Adapter::new(config, modules)
    };
    let names = |projs: &[Proj]| {
        TargetModules::Names(projs.iter().map(|p| p.module_name().to_string()).collect())
    };
    let subset = [Proj::Q, Proj::O, Proj::Up];
    vec![
        (
            "plain",
            build(
                21,
                LoraConfig {
                    r: 4,
                    lora_alpha: 8.0,
                    use_rslora: false,
                    target_modules: names(&Proj::ALL),
                    rank_pattern: BTreeMap::new(),
                    alpha_pattern: BTreeMap::new(),
                    base_model_name_or_path: Some("hexacoder-peft-fixture".into()),
                },
                &Proj::ALL,
            ),
        ),
        (
            "patterns",
            build(
                22,
                LoraConfig {
                    r: 4,
                    lora_alpha: 16.0,
                    use_rslora: true,
                    target_modules: names(&subset),
                    rank_pattern: BTreeMap::from([("o_proj".to_string(), 2)]),
                    alpha_pattern: BTreeMap::from([("up_proj".to_string(), 5.0)]),
                    base_model_name_or_path: Some("hexacoder-peft-fixture".into()),
                },
                &subset,
            )
            .with_metadata(TWO_STEP_METADATA, "true"),
        ),
    ]
}

#[test]
fn peft_loads_what_our_writer_writes_and_computes_what_we_compute() {
    if let Some(out) = std::env::var_os("HEXACODER_WRITE_PEFT_FIXTURES") {
        for (name, arch) in ARCHS {
            for (adapter_name, adapter) in our_adapters(arch) {
                let dir = Path::new(&out).join(name).join(adapter_name);
                adapter.save(&dir).expect("write our adapter");
            }
        }
        eprintln!("wrote our adapters under {}", Path::new(&out).display());
        return;
    }
    for (name, arch) in ARCHS {
        let (_dir, engine) = base_engine(name, arch);
        let expected = expected(name);
        for (adapter_name, adapter) in our_adapters(arch) {
            // The committed files are what the writer writes today.
            let committed = fixtures().join("ours").join(name).join(adapter_name);
            let scratch = tempfile::tempdir().expect("tempdir");
            let fresh = scratch.path().join("adapter");
            adapter.save(&fresh).expect("write");
            let json = |dir: &Path| -> serde_json::Value {
                serde_json::from_str(
                    &std::fs::read_to_string(dir.join(hexacoder_adapters::CONFIG_FILE))
                        .expect("config"),
                )
                .expect("json")
            };
            assert_eq!(
                json(&committed),
                json(&fresh),
                "{name}/{adapter_name} config"
            );
            let reloaded = Adapter::load(&committed, engine.model()).expect("load committed");
            assert_eq!(reloaded.metadata(), adapter.metadata());
            for (key, module) in adapter.modules() {
                let other = &reloaded.modules()[key];
                assert_eq!(max_abs_diff(&module.a, &other.a), 0.0, "{key:?}");
                assert_eq!(max_abs_diff(&module.b, &other.b), 0.0, "{key:?}");
            }
            // And PEFT, loading those files, computed what we compute.
            let loaded =
                LoadedAdapter::new(adapter_name, 1, &reloaded, engine.model()).expect("prepare");
            let ours = logits_with(&engine, &expected.input_ids, Some(&loaded));
            let reference = &expected.logits[&format!("ours.{adapter_name}")];
            let diff = max_abs_diff(&ours, reference);
            assert!(diff < TOLERANCE, "{name}/ours.{adapter_name}: {diff}");
            assert!(max_abs_diff(reference, &expected.logits["base"]) > 0.1);
        }
    }
}
