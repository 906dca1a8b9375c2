use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::*;

/// Projections of a two-layer model with hidden size 8, 2 KV heads of 2 dims, MLP 16.
struct Shapes;

impl BaseModel for Shapes {
    fn n_layers(&self) -> usize {
        2
    }

    fn projection_shape(
        &self,
        _layer: usize,
        parent: &str,
        module: &str,
    ) -> Option<(usize, usize)> {
        match (parent, module) {
            ("self_attn", "q_proj" | "o_proj") => Some((8, 8)),
            ("self_attn", "k_proj" | "v_proj") => Some((8, 4)),
            ("mlp", "gate_proj" | "up_proj") => Some((8, 16)),
            ("mlp", "down_proj") => Some((16, 8)),
            _ => None,
        }
    }
}

fn config(extra: serde_json::Value) -> serde_json::Value {
    let mut base = json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"],
                          "bias": "none", "base_model_name_or_path": "tiny"});
    for (k, v) in extra.as_object().expect("object") {
        base[k] = v.clone();
    }
    base
}

fn ramp(shape: &[usize], offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| offset + i as f32 * 0.01).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor")
}

fn write_adapter(dir: &Path, config: &serde_json::Value, tensors: &[(&str, Tensor)]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(CONFIG_FILE), config.to_string()).expect("config");
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, dir.join(WEIGHTS_FILE)).expect("weights");
}

fn key(layer: usize, parent: &str, module: &str, half: &str) -> String {
    format!("base_model.model.model.layers.{layer}.{parent}.{module}.{half}.weight")
}

fn valid_tensors() -> Vec<(String, Tensor)> {
    vec![
        (key(0, "self_attn", "q_proj", "lora_A"), ramp(&[2, 8], 0.1)),
        (key(0, "self_attn", "q_proj", "lora_B"), ramp(&[8, 2], -0.1)),
        (key(1, "self_attn", "v_proj", "lora_A"), ramp(&[2, 8], 0.2)),
        (key(1, "self_attn", "v_proj", "lora_B"), ramp(&[4, 2], 0.3)),
    ]
}

fn load_with(config: serde_json::Value, tensors: Vec<(String, Tensor)>) -> Result<Adapter> {
    let dir = tempfile::tempdir().expect("tempdir");
    let refs: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (k.as_str(), t.clone()))
        .collect();
    write_adapter(dir.path(), &config, &refs);
    Adapter::load(dir.path(), &Shapes)
}

#[test]
fn loads_a_peft_adapter_with_scales() {
    let adapter = load_with(config(json!({})), valid_tensors()).expect("load");
    assert_eq!(adapter.modules().len(), 2);
    let q = adapter.module(0, "self_attn", "q_proj").expect("q");
    assert_eq!(q.a.dims(), &[2, 8]);
    assert_eq!(q.scale, 2.0);
    assert!(adapter.module(0, "self_attn", "v_proj").is_none());
    let rs = load_with(config(json!({"use_rslora": true})), valid_tensors()).expect("load");
    assert!(
        (rs.module(0, "self_attn", "q_proj").expect("q").scale - 4.0 / 2f64.sqrt()).abs() < 1e-12
    );
}

#[test]
fn rank_and_alpha_patterns_apply_per_module() {
    let cfg = config(
        json!({"rank_pattern": {"v_proj": 1}, "alpha_pattern": {"layers.1.self_attn.v_proj": 3}}),
    );
    let mut tensors = valid_tensors();
    tensors[2].1 = ramp(&[1, 8], 0.2);
    tensors[3].1 = ramp(&[4, 1], 0.3);
    let adapter = load_with(cfg, tensors).expect("load");
    assert_eq!(
        adapter.module(1, "self_attn", "v_proj").expect("v").scale,
        3.0
    );
    assert_eq!(
        adapter.module(0, "self_attn", "q_proj").expect("q").scale,
        2.0
    );
}

#[test]
fn regex_target_modules_match_whole_paths() {
    let adapter = load_with(
        config(json!({"target_modules": r".*\.(q|v)_proj"})),
        valid_tensors(),
    )
    .expect("load");
    assert_eq!(adapter.modules().len(), 2);
    let err = load_with(
        config(json!({"target_modules": r"layers\.0\..*"})),
        valid_tensors(),
    )
    .expect_err("v_proj of layer 1 untargeted");
    assert!(err.to_string().contains("target_modules"), "{err}");
}

#[test]
fn refuses_unsupported_features_by_name() {
    for (extra, field) in [
        (json!({"use_dora": true}), "use_dora"),
        (json!({"modules_to_save": ["lm_head"]}), "modules_to_save"),
        (json!({"peft_type": "IA3"}), "peft_type"),
        (json!({"bias": "all"}), "bias"),
        (json!({"lora_bias": true}), "lora_bias"),
        (json!({"use_qalora": true}), "use_qalora"),
        (json!({"init_lora_weights": "pissa"}), "init_lora_weights"),
        (
            json!({"alora_invocation_tokens": [7, 8]}),
            "alora_invocation_tokens",
        ),
        (json!({"layer_replication": [[0, 2]]}), "layer_replication"),
        (json!({"use_bdlora": {"nblocks": 2}}), "use_bdlora"),
        (
            json!({"target_parameters": ["experts.gate_up_proj"]}),
            "target_parameters",
        ),
        (
            json!({"trainable_token_indices": [5]}),
            "trainable_token_indices",
        ),
    ] {
        let err = load_with(config(extra), valid_tensors()).expect_err(field);
        assert!(err.to_string().contains(field), "{err}");
    }
    // What PEFT 0.21 writes for a plain adapter loads.
    let peft_defaults = json!({
        "lora_bias": false, "use_qalora": false, "init_lora_weights": false,
        "alora_invocation_tokens": null, "layer_replication": null, "use_bdlora": null,
        "target_parameters": null, "trainable_token_indices": null, "loftq_config": {},
    });
    load_with(config(peft_defaults), valid_tensors()).expect("plain PEFT 0.21 config");
    load_with(
        config(json!({"init_lora_weights": "gaussian"})),
        valid_tensors(),
    )
    .expect("gaussian init only seeds the adapter");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(CONFIG_FILE), config(json!({})).to_string()).expect("config");
    std::fs::write(dir.path().join("adapter_model.bin"), b"\x80\x02pickle").expect("bin");
    let err = Adapter::load(dir.path(), &Shapes).expect_err("pickle");
    assert!(err.to_string().contains("adapter_model.bin"), "{err}");
}

#[test]
fn refuses_bad_tensors_with_their_names() {
    let mut wrong_shape = valid_tensors();
    wrong_shape[1].1 = ramp(&[8, 3], 0.0);
    let err = load_with(config(json!({})), wrong_shape).expect_err("shape");
    assert!(
        err.to_string().contains("q_proj.lora_B") && err.to_string().contains("[8, 2]"),
        "{err}"
    );

    let mut nan = valid_tensors();
    nan[0].1 = Tensor::from_vec(vec![f32::NAN; 16], (2, 8), &Device::Cpu).expect("nan");
    let err = load_with(config(json!({})), nan).expect_err("nan");
    assert!(err.to_string().contains("NaN"), "{err}");

    let mut unknown = valid_tensors();
    unknown.push((key(0, "self_attn", "rotary", "lora_A"), ramp(&[2, 8], 0.0)));
    let err = load_with(
        config(json!({"target_modules": ["q_proj", "v_proj", "rotary"]})),
        unknown,
    )
    .expect_err("unknown module");
    assert!(err.to_string().contains("no module"), "{err}");

    let mut deep = valid_tensors();
    deep.push((key(5, "self_attn", "q_proj", "lora_A"), ramp(&[2, 8], 0.0)));
    let err = load_with(config(json!({})), deep).expect_err("layer 5");
    assert!(err.to_string().contains("layer 5"), "{err}");

    let half = valid_tensors()[..3].to_vec();
    let err = load_with(config(json!({})), half).expect_err("half a pair");
    assert!(err.to_string().contains("only one"), "{err}");
}

#[test]
fn truncated_or_corrupt_weights_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refs: Vec<(String, Tensor)> = valid_tensors();
    let refs: Vec<(&str, Tensor)> = refs.iter().map(|(k, t)| (k.as_str(), t.clone())).collect();
    write_adapter(dir.path(), &config(json!({})), &refs);
    let path = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).expect("read");
    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).expect("truncate");
        let err = Adapter::load(dir.path(), &Shapes).expect_err("truncated");
        assert!(err.to_string().contains("safetensors"), "cut {cut}: {err}");
    }
    // A header length far beyond the file.
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&path, &huge).expect("write");
    assert!(Adapter::load(dir.path(), &Shapes).is_err());
}

#[test]
fn fifos_devices_and_gigabytes_of_zeros_are_refused_without_reading_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refs: Vec<(String, Tensor)> = valid_tensors();
    let refs: Vec<(&str, Tensor)> = refs.iter().map(|(k, t)| (k.as_str(), t.clone())).collect();
    write_adapter(dir.path(), &config(json!({})), &refs);
    let weights = dir.path().join(WEIGHTS_FILE);
    let config_path = dir.path().join(CONFIG_FILE);
    let mkfifo = |path: &Path| {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo");
        assert!(status.success());
    };
    // Opening a FIFO for reading blocks until a writer comes: it must not be opened.
    std::fs::remove_file(&weights).expect("rm");
    mkfifo(&weights);
    let err = Adapter::load(dir.path(), &Shapes).expect_err("fifo");
    assert!(err.to_string().contains("a FIFO"), "{err}");
    std::fs::remove_file(&weights).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", &weights).expect("symlink");
    let err = Adapter::load(dir.path(), &Shapes).expect_err("device");
    assert!(err.to_string().contains("a device"), "{err}");
    std::fs::remove_file(&weights).expect("rm");
    std::fs::create_dir(&weights).expect("dir");
    let err = Adapter::load(dir.path(), &Shapes).expect_err("directory");
    assert!(err.to_string().contains("a directory"), "{err}");
    std::fs::remove_dir(&weights).expect("rmdir");
    // A sparse 1 GiB file of zeros: refused on its first eight bytes.
    std::fs::File::create(&weights)
        .and_then(|f| f.set_len(1 << 30))
        .expect("sparse file");
    let err = Adapter::load(dir.path(), &Shapes).expect_err("zeros");
    assert!(err.to_string().contains("header length 0"), "{err}");
    // The config too.
    std::fs::remove_file(&config_path).expect("rm");
    mkfifo(&config_path);
    let err = Adapter::load(dir.path(), &Shapes).expect_err("fifo config");
    assert!(err.to_string().contains("a FIFO"), "{err}");
}

#[test]
fn saved_adapters_reload_bit_identically() {
    let original = load_with(config(json!({"rank_pattern": {}})), valid_tensors())
        .expect("load")
        .with_metadata(TWO_STEP_METADATA, "true");
    assert_eq!(original.two_step_default(), Some(true));
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("out");
    original.save(&target).expect("save");
    original
        .save(&target)
        .expect("save over an existing adapter");
    let reloaded = Adapter::load(&target, &Shapes).expect("reload");
    assert_eq!(reloaded.config(), original.config());
    assert_eq!(reloaded.metadata(), original.metadata());
    assert_eq!(reloaded.two_step_default(), Some(true));
    for ((k1, m1), (k2, m2)) in original.modules().iter().zip(reloaded.modules()) {
        assert_eq!(k1, k2);
        assert_eq!(m1.scale, m2.scale);
        for (a, b) in [(&m1.a, &m2.a), (&m1.b, &m2.b)] {
            let a = a
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec");
            let b = b
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec");
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }
    let metadata = std::fs::read(target.join(WEIGHTS_FILE)).expect("read");
    let (_, meta) = SafeTensors::read_metadata(&metadata).expect("header");
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("out")],
        "no staging directories left behind"
    );
    #[cfg(unix)]
    {
        // The server may run as another user: the files get the umask's mode, not 0600.
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(target.join(name))
                .expect("stat")
                .permissions()
                .mode()
        };
        assert_eq!(mode(WEIGHTS_FILE), mode(CONFIG_FILE));
    }
}

#[test]
fn adapters_saved_as_f16_hold_each_value_rounded_to_nearest_f16() {
    let original = load_with(config(json!({})), valid_tensors()).expect("load");
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("f16");
    original
        .save_as(&target, WeightDtype::F16)
        .expect("save as f16");
    let bytes = std::fs::read(target.join(WEIGHTS_FILE)).expect("read");
    let file = SafeTensors::deserialize(&bytes).expect("safetensors");
    for (name, view) in file.tensors() {
        assert_eq!(view.dtype(), Dtype::F16, "{name}");
    }
    let reloaded = Adapter::load(&target, &Shapes).expect("reload");
    for (m1, m2) in original.modules().values().zip(reloaded.modules().values()) {
        for (a, b) in [(&m1.a, &m2.a), (&m1.b, &m2.b)] {
            let a = a
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("vec");
            let b = b
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("vec");
            let rounded: Vec<u32> = a
                .iter()
                .map(|&x| half::f16::from_f32(x).to_f32().to_bits())
                .collect();
            assert_eq!(rounded, b.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
    }

    let f32_dir = dir.path().join("f32");
    original
        .save_as(&f32_dir, WeightDtype::F32)
        .expect("save as f32");
    let f32_len = std::fs::metadata(f32_dir.join(WEIGHTS_FILE))
        .expect("stat")
        .len();
    let f16_len = bytes.len() as u64;
    assert!(f16_len < f32_len, "f16 {f16_len} bytes, f32 {f32_len}");

    // A value f16 cannot hold is an error naming the tensor, and nothing is written.
    let mut huge = valid_tensors();
    huge[0].1 = (huge[0].1.clone() * 1e6).expect("scale");
    let huge = load_with(config(json!({})), huge).expect("load");
    let refused = dir.path().join("refused");
    let err = huge
        .save_as(&refused, WeightDtype::F16)
        .expect_err("out of f16's range");
    assert!(err.to_string().contains("beyond f16's range"), "{err}");
    assert!(err.to_string().contains(&valid_tensors()[0].0), "{err}");
    assert!(!refused.exists());

    assert_eq!("F16".parse::<WeightDtype>(), Ok(WeightDtype::F16));
    assert_eq!("f32".parse::<WeightDtype>(), Ok(WeightDtype::F32));
    assert!("bf16".parse::<WeightDtype>().is_err());
}
