//! LoRA adapters in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`):
//! reading with full validation against a base model, and writing files PEFT and vLLM load.
//!
//! An adapter here is data: per projection, `A` (`[r, in]`), `B` (`[out, r]`) and the scale
//! `s`, so that the projection computes `W·x + s·B(A·x)`. Applying it is the engine's job; the
//! trainer writes through [`Adapter::save`].
#![deny(missing_docs)]

mod config;
mod error;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

pub use config::{LoraConfig, TargetModules};
pub use error::{Error, Result};

/// The config file name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Safetensors metadata key saying whether requests on this adapter default to two-step
/// generation (`"true"` / `"false"`). HexaCoder's trainer sets it; PEFT and vLLM ignore it.
pub const TWO_STEP_METADATA: &str = "hexacoder.two_step";
/// Larger weight files are refused before they are read.
pub const MAX_WEIGHTS_BYTES: u64 = 4 << 30;

/// Fills a sibling temporary directory with `fill`, then swaps it in as `dir`: readers see
/// the old directory or the new one, never a half-written one, and a failure leaves `dir`
/// as it was. (Adapters are written this way, and the trainer copies its best one so.)
///
/// # Errors
/// `fill`'s error, or I/O failures.
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".adapter-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    fill(staging.path())?;
    // Swap the finished directory into place; the old one survives until the new one is in.
    let staged = staging.keep();
    let old = parent.join(format!(
        ".{}.old",
        dir.file_name()
            .map_or("adapter".into(), |n| n.to_string_lossy())
    ));
    let had_old = dir.exists();
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = std::fs::rename(&staged, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&staged);
        return Err(Error::io(dir, e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// What an adapter is checked against: the base model's projections.
pub trait BaseModel {
    /// Decoder layers.
    fn n_layers(&self) -> usize;
    /// `(in_features, out_features)` of `parent.module` (e.g. `self_attn`, `q_proj`) in
    /// `layer`, or `None` if the model has no such projection.
    fn projection_shape(&self, layer: usize, parent: &str, module: &str) -> Option<(usize, usize)>;
}

/// Where a LoRA pair sits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleKey {
    /// Decoder layer.
    pub layer: usize,
    /// `self_attn` or `mlp`.
    pub parent: String,
    /// e.g. `q_proj`.
    pub module: String,
}

impl ModuleKey {
    /// The module's path in HF checkpoints, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn path(&self) -> String {
        format!(
            "model.layers.{}.{}.{}",
            self.layer, self.parent, self.module
        )
    }
}

/// One projection's LoRA weights, as f32.
#[derive(Clone, Debug)]
pub struct LoraModule {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    /// `alpha / r` (or `alpha / sqrt(r)`).
    pub scale: f64,
}

/// A validated adapter.
#[derive(Clone, Debug)]
pub struct Adapter {
    config: LoraConfig,
    modules: BTreeMap<ModuleKey, LoraModule>,
    /// The weights file's string metadata other than `format`.
    metadata: BTreeMap<String, String>,
}

impl Adapter {
    /// An adapter from weights in memory (the trainer's path).
    pub fn new(config: LoraConfig, modules: BTreeMap<ModuleKey, LoraModule>) -> Self {
        Adapter {
            config,
            modules,
            metadata: BTreeMap::new(),
        }
    }

    /// Sets a metadata entry written into the weights file (e.g. [`TWO_STEP_METADATA`]).
    pub fn with_metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.insert(key.to_string(), value.to_string());
        self
    }

    /// The weights file's metadata other than `format`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Whether requests on this adapter default to two-step generation, from
    /// [`TWO_STEP_METADATA`]; `None` when unset or not a boolean.
    pub fn two_step_default(&self) -> Option<bool> {
        match self.metadata.get(TWO_STEP_METADATA)?.as_str() {
            "true" | "on" | "1" => Some(true),
            "false" | "off" | "0" => Some(false),
            _ => None,
        }
    }

    /// Reads `dir` and checks every tensor against `base`.
    ///
    /// # Errors
    /// Unsupported PEFT features, a pickled `adapter_model.bin`, a malformed safetensors
    /// file, a tensor for a module the config does not target or the base does not have,
    /// wrong shapes, missing halves of a pair, and non-finite values.
    pub fn load(dir: &Path, base: &dyn BaseModel) -> Result<Self> {
        let config = LoraConfig::read(&dir.join(CONFIG_FILE))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.exists() && dir.join("adapter_model.bin").exists() {
            return Err(Error::unsupported(
                "adapter_model.bin",
                "is a pickle, which is never loaded; save the adapter with safetensors",
            ));
        }
        let size = Error::regular_file(&weights_path)?;
        if size > MAX_WEIGHTS_BYTES {
            return Err(Error::Safetensors {
                path: weights_path,
                reason: format!("{size} bytes is more than the {MAX_WEIGHTS_BYTES}-byte limit"),
            });
        }
        check_header_length(&weights_path, size)?;
        let bytes = std::fs::read(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
            path: weights_path.clone(),
            reason: e.to_string(),
        })?;
        let metadata: BTreeMap<String, String> = SafeTensors::read_metadata(&bytes)
            .ok()
            .and_then(|(_, header)| header.metadata().clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(key, _)| key != "format")
            .collect();
        let mut halves: HashMap<ModuleKey, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
        for (key, view) in tensors.tensors() {
            let (module, is_a) = parse_key(&key)?;
            let path = module.path();
            if !config.targets(&path) {
                return Err(Error::tensor(
                    &key,
                    format!("`{path}` is not in the config's target_modules"),
                ));
            }
            if module.layer >= base.n_layers() {
                return Err(Error::tensor(
                    &key,
                    format!(
                        "layer {} does not exist; the base model has {}",
                        module.layer,
                        base.n_layers()
                    ),
                ));
            }
            let Some((n_in, n_out)) =
                base.projection_shape(module.layer, &module.parent, &module.module)
            else {
                return Err(Error::tensor(
                    &key,
                    format!("the base model has no module `{path}`"),
                ));
            };
            let (r, _) = config.rank_and_alpha(&path);
            let expected = if is_a { [r, n_in] } else { [n_out, r] };
            if view.shape() != expected {
                return Err(Error::tensor(
                    &key,
                    format!(
                        "shape {:?}, expected {expected:?} (rank {r}, base {n_in}→{n_out})",
                        view.shape()
                    ),
                ));
            }
            let tensor = to_f32_tensor(&key, view.dtype(), view.data(), &expected)?;
            let finite = tensor
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .is_finite();
            if !finite {
                return Err(Error::tensor(&key, "contains NaN or infinite values"));
            }
            let entry = halves.entry(module).or_default();
            let slot = if is_a { &mut entry.0 } else { &mut entry.1 };
            if slot.replace(tensor).is_some() {
                return Err(Error::tensor(&key, "appears twice"));
            }
        }
        if halves.is_empty() {
            return Err(Error::Safetensors {
                path: weights_path,
                reason: "holds no LoRA tensors".into(),
            });
        }
        let mut modules = BTreeMap::new();
        for (key, pair) in halves {
            let path = key.path();
            let (Some(a), Some(b)) = pair else {
                return Err(Error::tensor(&path, "has only one of lora_A and lora_B"));
            };
            let scale = config.scale(&path);
            modules.insert(key, LoraModule { a, b, scale });
        }
        Ok(Adapter {
            config,
            modules,
            metadata,
        })
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32, metadata
    /// `{"format": "pt"}` plus [`Adapter::metadata`], PEFT's key names) into `dir`, replacing it atomically: the files
    /// are written into a sibling temporary directory that is then renamed into place.
    ///
    /// # Errors
    /// I/O failures; `dir` is then unchanged.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_as(dir, WeightDtype::F32)
    }

    /// [`Adapter::save`] with the tensors stored as `dtype`. f16 halves the file, and the
    /// engine keeps an adapter whose values are all f16 values in f16, which halves what its
    /// side branch reads per token.
    ///
    /// # Errors
    /// I/O failures, or (f16) a value beyond f16's range, named by tensor; `dir` is then
    /// unchanged.
    pub fn save_as(&self, dir: &Path, dtype: WeightDtype) -> Result<()> {
        write_dir_atomically(dir, |staging| {
            let config = serde_json::to_string_pretty(&self.config.to_json())
                .map_err(|e| Error::io(dir, std::io::Error::other(e)))?;
            std::fs::write(staging.join(CONFIG_FILE), config)
                .map_err(|e| Error::io(staging.join(CONFIG_FILE), e))?;
            let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
            for (key, module) in &self.modules {
                for (half, tensor) in [("lora_A", &module.a), ("lora_B", &module.b)] {
                    let name = format!("base_model.model.{}.{half}.weight", key.path());
                    let values = tensor
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let bytes = encode(&name, &values, dtype)?;
                    data.push((name, bytes, tensor.dims().to_vec()));
                }
            }
            let views = data
                .iter()
                .map(|(name, bytes, shape)| {
                    safetensors::tensor::TensorView::new(dtype.safetensors(), shape.clone(), bytes)
                        .map(|view| (name.clone(), view))
                        .map_err(|e| Error::tensor(name, e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            let mut metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
            metadata.insert("format".to_string(), "pt".to_string());
            let weights = staging.join(WEIGHTS_FILE);
            safetensors::serialize_to_file(views, Some(metadata), &weights)
                .map_err(|e| Error::io(&weights, std::io::Error::other(e.to_string())))?;
            // safetensors writes through a private (0600) temp file; give the weights the mode
            // the umask gave the config, so a server running as another user can read them.
            let config_mode = std::fs::metadata(staging.join(CONFIG_FILE))
                .map_err(|e| Error::io(staging.join(CONFIG_FILE), e))?
                .permissions();
            std::fs::set_permissions(&weights, config_mode).map_err(|e| Error::io(&weights, e))
        })
    }

    /// The config.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Every LoRA pair.
    pub fn modules(&self) -> &BTreeMap<ModuleKey, LoraModule> {
        &self.modules
    }

    /// The pair on `parent.module` of `layer`, if the adapter has one.
    pub fn module(&self, layer: usize, parent: &str, module: &str) -> Option<&LoraModule> {
        self.modules.get(&ModuleKey {
            layer,
            parent: parent.to_string(),
            module: module.to_string(),
        })
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        self.modules
            .values()
            .map(|m| (m.a.elem_count() + m.b.elem_count()) * 4)
            .sum()
    }
}

/// `base_model.model.model.layers.N.PARENT.MODULE.lora_{A,B}[.ADAPTER].weight` → key, is A.
fn parse_key(key: &str) -> Result<(ModuleKey, bool)> {
    let bad = || {
        Error::tensor(
            key,
            "is not a LoRA weight of a decoder layer projection (expected `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` and the like)",
        )
    };
    let rest = key.strip_prefix("base_model.model.").unwrap_or(key);
    let rest = rest.strip_prefix("model.layers.").ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('.').collect();
    let (layer, parent, module, half) = match parts.as_slice() {
        [layer, parent, module, half, "weight"] => (layer, parent, module, half),
        [layer, parent, module, half, _adapter, "weight"] => (layer, parent, module, half),
        _ => return Err(bad()),
    };
    let layer: usize = layer.parse().map_err(|_| bad())?;
    let is_a = match *half {
        "lora_A" => true,
        "lora_B" => false,
        _ => return Err(bad()),
    };
    Ok((
        ModuleKey {
            layer,
            parent: parent.to_string(),
            module: module.to_string(),
        },
        is_a,
    ))
}

/// How [`Adapter::save_as`] stores the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// Exactly the values in memory.
    #[default]
    F32,
    /// Rounded to nearest f16: half the bytes, and the engine's f16 side branch.
    F16,
}

impl WeightDtype {
    fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "f16" | "float16" => Ok(WeightDtype::F16),
            _ => Err(format!("`{s}` is not a weight dtype (use f16 or f32)")),
        }
    }
}

impl std::fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
        })
    }
}

/// Little-endian bytes of `values` as `dtype`. A finite f32 that f16 cannot hold is an error,
/// not an infinity the loader would then refuse.
fn encode(name: &str, values: &[f32], dtype: WeightDtype) -> Result<Vec<u8>> {
    match dtype {
        WeightDtype::F32 => Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        WeightDtype::F16 => {
            let mut bytes = Vec::with_capacity(values.len() * 2);
            for &v in values {
                let h = half::f16::from_f32(v);
                if h.is_infinite() && v.is_finite() {
                    return Err(Error::tensor(
                        name,
                        format!("{v} is beyond f16's range (±65504); save it as f32"),
                    ));
                }
                bytes.extend_from_slice(&h.to_le_bytes());
            }
            Ok(bytes)
        }
    }
}

fn to_f32_tensor(key: &str, dtype: Dtype, data: &[u8], shape: &[usize]) -> Result<Tensor> {
    let values: Vec<f32> = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::tensor(
                key,
                format!("dtype {other:?} is not supported (use f32, f16 or bf16)"),
            ));
        }
    };
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// Checks the 8-byte header length a safetensors file starts with before the file is read
/// whole: gigabytes of zeros (or of anything) are refused after eight bytes.
fn check_header_length(path: &Path, size: u64) -> Result<()> {
    use std::io::Read;
    /// safetensors' own limit on the JSON header.
    const MAX_HEADER_BYTES: u64 = 100 << 20;
    let mut prefix = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut prefix))
        .map_err(|e| Error::io(path, e))?;
    let length = u64::from_le_bytes(prefix);
    if !(2..=MAX_HEADER_BYTES).contains(&length) || length > size - 8 {
        return Err(Error::Safetensors {
            path: path.to_path_buf(),
            reason: format!(
                "its header length {length} does not fit a {size}-byte file (at most {MAX_HEADER_BYTES})"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
