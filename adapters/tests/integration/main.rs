//! The adapter format against PEFT itself.

use std::collections::BTreeMap;
use std::process::Command;

use candle_core::{Device, Tensor};
use hexacoder_adapters::{Adapter, LoraConfig, LoraModule, ModuleKey, TargetModules};

#[test]
fn written_config_is_one_peft_accepts() {
    let Ok(python) = std::env::var("HEXACODER_TEST_PYTHON") else {
        if std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() == Some("1") {
            panic!(
                "HEXACODER_TEST_PYTHON must name a Python with peft installed (scripts/test makes one)"
            );
        }
        eprintln!("skipping: set HEXACODER_TEST_PYTHON to a Python with peft (scripts/test does)");
        return;
    };
    let mut modules = BTreeMap::new();
    modules.insert(
        ModuleKey {
            layer: 0,
            parent: "self_attn".into(),
            module: "q_proj".into(),
        },
        LoraModule {
            a: Tensor::ones((2, 4), candle_core::DType::F32, &Device::Cpu).expect("a"),
            b: Tensor::ones((4, 2), candle_core::DType::F32, &Device::Cpu).expect("b"),
            scale: 2.0,
        },
    );
    let config = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        use_rslora: true,
        target_modules: TargetModules::Names(vec!["q_proj".into()]),
        rank_pattern: BTreeMap::from([("q_proj".to_string(), 2)]),
        alpha_pattern: BTreeMap::new(),
        base_model_name_or_path: Some("Qwen/Qwen2.5-Coder-0.5B".into()),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    Adapter::new(config, modules)
        .save(&dir.path().join("a"))
        .expect("save");
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peft_config_check.py"
        ))
        .arg(dir.path().join("a"))
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Adapters our writer makes, run through vLLM's own `PEFTHelper` and weight-name parser
/// (from the vLLM wheel's source; `scripts/test` extracts it): accepted, with the ranks and
/// scales we compute.
#[test]
fn written_adapters_are_ones_vllm_accepts_with_our_ranks_and_scales() {
    let (Ok(python), Ok(vllm_src)) = (
        std::env::var("HEXACODER_TEST_PYTHON"),
        std::env::var("HEXACODER_VLLM_SRC"),
    ) else {
        if std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() == Some("1") {
            panic!(
                "HEXACODER_TEST_PYTHON and HEXACODER_VLLM_SRC must be set (scripts/test sets both)"
            );
        }
        eprintln!("skipping: set HEXACODER_TEST_PYTHON and HEXACODER_VLLM_SRC (scripts/test does)");
        return;
    };
    let projections = [
        ("self_attn", "q_proj", 16, 16),
        ("self_attn", "k_proj", 16, 8),
        ("self_attn", "v_proj", 16, 8),
        ("self_attn", "o_proj", 16, 16),
        ("mlp", "gate_proj", 16, 32),
        ("mlp", "up_proj", 16, 32),
        ("mlp", "down_proj", 32, 16),
    ];
    let config = |use_rslora: bool,
                  targets: TargetModules,
                  ranks: &[(&str, usize)],
                  alphas: &[(&str, f64)]| {
        LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            use_rslora,
            target_modules: targets,
            rank_pattern: ranks.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            alpha_pattern: alphas.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            base_model_name_or_path: Some("Qwen/Qwen2.5-Coder-0.5B".into()),
        }
    };
    let all = TargetModules::Names(projections.iter().map(|p| p.1.to_string()).collect());
    let cases = [
        ("plain", config(false, all.clone(), &[], &[])),
        (
            "patterns",
            config(
                true,
                all,
                &[("o_proj", 2), ("down_proj", 8)],
                &[("v_proj", 3.0)],
            ),
        ),
        (
            "regex",
            config(
                false,
                TargetModules::Regex(r".*\.(q_proj|up_proj)".into()),
                &[],
                &[("up_proj", 32.0)],
            ),
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = serde_json::Map::new();
    for (name, config) in cases {
        let mut modules = BTreeMap::new();
        let mut ranks_and_scales = serde_json::Map::new();
        for layer in 0..2 {
            for (parent, module, n_in, n_out) in projections {
                let key = ModuleKey {
                    layer,
                    parent: parent.into(),
                    module: module.into(),
                };
                if !config.targets(&key.path()) {
                    continue;
                }
                let (rank, _) = config.rank_and_alpha(&key.path());
                let scale = config.scale(&key.path());
                let a = Tensor::ones((rank, n_in), candle_core::DType::F32, &Device::Cpu);
                let b = Tensor::ones((n_out, rank), candle_core::DType::F32, &Device::Cpu);
                ranks_and_scales.insert(key.path(), serde_json::json!([rank, scale]));
                modules.insert(
                    key,
                    LoraModule {
                        a: a.expect("a"),
                        b: b.expect("b"),
                        scale,
                    },
                );
            }
        }
        let path = dir.path().join(name);
        Adapter::new(config, modules).save(&path).expect("save");
        expected.insert(
            path.to_string_lossy().into_owned(),
            serde_json::Value::Object(ranks_and_scales),
        );
    }
    let expected_path = dir.path().join("expected.json");
    std::fs::write(
        &expected_path,
        serde_json::json!({"max_lora_rank": 16, "adapters": expected}).to_string(),
    )
    .expect("expected");
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vllm_peft_helper_check.py"
        ))
        .arg(vllm_src)
        .arg(&expected_path)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.matches("ok: vLLM's PEFTHelper accepts").count(),
        3,
        "{stdout}"
    );
}
