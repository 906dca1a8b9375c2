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
