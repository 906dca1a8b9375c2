//! `adapter_config.json`: what we read, what we refuse, and what we write.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// `target_modules`: module names matched against the end of a module path, or one regex
/// matched against the whole path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// e.g. `["q_proj", "v_proj"]`.
    Names(Vec<String>),
    /// e.g. `".*\\.(q|v)_proj"`.
    Regex(String),
}

/// The LoRA fields of a PEFT config that change the computation.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    pub lora_alpha: f64,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Which modules carry LoRA weights.
    pub target_modules: TargetModules,
    /// Per-module ranks, keyed by a pattern matched against the end of the module path.
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alphas, keyed the same way.
    pub alpha_pattern: BTreeMap<String, f64>,
    /// The base model the adapter was trained on.
    pub base_model_name_or_path: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: Option<usize>,
    #[serde(default)]
    lora_alpha: Option<f64>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    target_modules: Option<TargetModules>,
    #[serde(default)]
    rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    layers_to_transform: Option<Value>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    // Newer PEFT features that change what the adapter computes; refused, never ignored.
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    use_qalora: bool,
    #[serde(default)]
    init_lora_weights: Option<Value>,
    #[serde(default)]
    alora_invocation_tokens: Option<Value>,
    #[serde(default)]
    layer_replication: Option<Value>,
    #[serde(default)]
    use_bdlora: Option<Value>,
    #[serde(default)]
    target_parameters: Option<Value>,
    #[serde(default)]
    trainable_token_indices: Option<Value>,
}

/// `null`, `false`, `[]` and `{}` leave a feature off.
fn is_set(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Object(entries)) => !entries.is_empty(),
        Some(_) => true,
    }
}

/// Initializations that only seed the adapter's weights; the others (PiSSA, OLoRA, CorDA,
/// LoftQ) also rewrite the base weights when PEFT loads the adapter.
/// The largest `adapter_config.json` read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

const PLAIN_INITS: [&str; 5] = ["gaussian", "eva", "orthogonal", "mica", "lora_ga"];

impl LoraConfig {
    /// Reads and checks `adapter_config.json`.
    ///
    /// # Errors
    /// Bad JSON, a missing rank, and features we refuse: DoRA, `modules_to_save`, trained
    /// biases, `layers_to_transform`, and any `peft_type` but `LORA`.
    pub fn read(path: &Path) -> Result<Self> {
        // A config is a few hundred bytes; a bigger file (or a FIFO) is not one.
        if Error::regular_file(path)? > MAX_CONFIG_BYTES {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!("more than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        match raw.peft_type.as_deref() {
            Some("LORA") => {}
            Some(other) => {
                return Err(Error::unsupported(
                    "peft_type",
                    format!("is {other:?}; only \"LORA\" adapters are served"),
                ));
            }
            None => {
                return Err(Error::unsupported(
                    "peft_type",
                    "is missing; expected \"LORA\"",
                ));
            }
        }
        if raw.use_dora {
            return Err(Error::unsupported(
                "use_dora",
                "is true; DoRA adapters are not supported",
            ));
        }
        if raw.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(Error::unsupported(
                "modules_to_save",
                "lists fully trained modules; only LoRA weights can be applied per request",
            ));
        }
        if let Some(bias) = raw.bias.as_deref()
            && bias != "none"
        {
            return Err(Error::unsupported(
                "bias",
                format!("is {bias:?}; adapters with trained biases are not supported"),
            ));
        }
        if raw
            .layers_to_transform
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return Err(Error::unsupported(
                "layers_to_transform",
                "is set; it is not supported",
            ));
        }
        if raw.lora_bias {
            return Err(Error::unsupported(
                "lora_bias",
                "is true; adapters with a trained LoRA bias are not supported",
            ));
        }
        if raw.use_qalora {
            return Err(Error::unsupported(
                "use_qalora",
                "is true; QALoRA is not supported",
            ));
        }
        if let Some(Value::String(init)) = &raw.init_lora_weights
            && !PLAIN_INITS.contains(&init.to_lowercase().as_str())
        {
            return Err(Error::unsupported(
                "init_lora_weights",
                format!(
                    "is {init:?}, which changes the base weights when loaded; convert the \
                     adapter to plain LoRA first"
                ),
            ));
        }
        for (field, value, what) in [
            (
                "alora_invocation_tokens",
                &raw.alora_invocation_tokens,
                "activated LoRA",
            ),
            (
                "layer_replication",
                &raw.layer_replication,
                "layer replication",
            ),
            ("use_bdlora", &raw.use_bdlora, "block-diagonal LoRA"),
            (
                "target_parameters",
                &raw.target_parameters,
                "LoRA on raw parameters (such as MoE experts)",
            ),
            (
                "trainable_token_indices",
                &raw.trainable_token_indices,
                "trained token embeddings",
            ),
        ] {
            if is_set(value.as_ref()) {
                return Err(Error::unsupported(
                    field,
                    format!("is set; {what} is not supported"),
                ));
            }
        }
        if raw.fan_in_fan_out {
            // What PEFT itself does for `nn.Linear` targets, which are all our models have.
            tracing::warn!(
                "fan_in_fan_out is true but the targets are linear layers; using false, as PEFT does"
            );
        }
        let r = raw.r.filter(|&r| r > 0).ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            reason: "`r` must be a positive integer".into(),
        })?;
        let target_modules = raw.target_modules.ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            reason: "`target_modules` is missing".into(),
        })?;
        if let TargetModules::Regex(pattern) = &target_modules {
            Regex::new(pattern).map_err(|e| Error::Config {
                path: path.to_path_buf(),
                reason: format!("`target_modules` is not a valid regex: {e}"),
            })?;
        }
        Ok(LoraConfig {
            r,
            lora_alpha: raw.lora_alpha.unwrap_or(8.0),
            use_rslora: raw.use_rslora,
            target_modules,
            rank_pattern: raw.rank_pattern,
            alpha_pattern: raw.alpha_pattern,
            base_model_name_or_path: raw.base_model_name_or_path,
        })
    }

    /// Whether `module_path` (e.g. `model.layers.3.self_attn.q_proj`) is targeted.
    pub fn targets(&self, module_path: &str) -> bool {
        match &self.target_modules {
            TargetModules::Names(names) => names
                .iter()
                .any(|n| module_path == n || module_path.ends_with(&format!(".{n}"))),
            TargetModules::Regex(pattern) => {
                Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(module_path))
            }
        }
    }

    /// Rank and alpha of `module_path`, after `rank_pattern` and `alpha_pattern`.
    pub fn rank_and_alpha(&self, module_path: &str) -> (usize, f64) {
        let matches = |pattern: &str| {
            Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$"))
                .is_ok_and(|re| re.is_match(module_path))
        };
        let r = self
            .rank_pattern
            .iter()
            .find(|(p, _)| matches(p))
            .map_or(self.r, |(_, &r)| r);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(p, _)| matches(p))
            .map_or(self.lora_alpha, |(_, &a)| a);
        (r, alpha)
    }

    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self, module_path: &str) -> f64 {
        let (r, alpha) = self.rank_and_alpha(module_path);
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// The JSON PEFT and vLLM load.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "revision": null,
            "inference_mode": true,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": 0.0,
            "use_rslora": self.use_rslora,
            "use_dora": false,
            "fan_in_fan_out": false,
            "bias": "none",
            "target_modules": self.target_modules,
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": self.alpha_pattern,
            "modules_to_save": null,
            "init_lora_weights": true,
            "layers_to_transform": null,
            "layers_pattern": null,
        })
    }
}
