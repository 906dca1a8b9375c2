//! HF-layout checkpoints: `config.json` plus `*.safetensors` (sharded or not; f32/f16/bf16).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::TransformerConfig;
use crate::models::WeightSource;
use crate::models::llama::LlamaConfig;
use crate::models::qwen2::Qwen2Config;
use crate::nn::{Embedding, Linear};
use crate::{Error, Result};

/// Reads `config.json` and converts it for the architecture it names.
pub fn read_config(dir: &Path) -> Result<TransformerConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid_model(&path, format!("not JSON: {e}")))?;
    let model_type = json
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let parse_err = |e: serde_json::Error| Error::invalid_model(&path, e.to_string());
    let config = match model_type {
        "llama" | "mistral" => serde_json::from_value::<LlamaConfig>(json)
            .map_err(parse_err)?
            .into_config(),
        "qwen2" => serde_json::from_value::<Qwen2Config>(json)
            .map_err(parse_err)?
            .into_config(),
        other => {
            return Err(Error::Unsupported(format!(
                "model_type {other:?} in {}; supported: llama, qwen2",
                path.display()
            )));
        }
    }
    .map_err(|reason| Error::invalid_model(&path, reason))?;
    config
        .validate()
        .map_err(|reason| Error::invalid_model(&path, reason))?;
    Ok(config)
}

/// The safetensors files of a checkpoint directory: the shards named by
/// `model.safetensors.index.json`, or every `*.safetensors` file.
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid_model(&index, format!("not JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::invalid_model(&index, "no weight_map object"))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "safetensors"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("adapter_"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid_model(dir, "no *.safetensors files"));
    }
    Ok(files)
}

/// Tensors read through candle's `VarBuilder` (memory-mapped safetensors, or a test `VarMap`),
/// converted to f32.
pub struct VarBuilderWeights<'a> {
    vb: VarBuilder<'a>,
}

impl<'a> VarBuilderWeights<'a> {
    /// Wraps a var builder; tensors are read as f32.
    pub fn new(vb: VarBuilder<'a>) -> Self {
        VarBuilderWeights {
            vb: vb.set_dtype(DType::F32),
        }
    }

    /// Memory-maps `paths`.
    pub fn mmap(paths: &[PathBuf], device: &Device) -> Result<VarBuilderWeights<'static>> {
        for path in paths {
            if !path.exists() {
                return Err(Error::io(
                    path,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
        }
        // SAFETY: the files are not modified while mapped; like every mmap-based loader we
        // rely on the user not rewriting a checkpoint under a running server.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(paths, DType::F32, device)? };
        Ok(VarBuilderWeights::new(vb))
    }
}

impl WeightSource for VarBuilderWeights<'_> {
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.vb.get(shape, name)?)
    }

    fn linear(
        &self,
        prefix: &str,
        out_features: usize,
        in_features: usize,
        bias: bool,
    ) -> Result<Linear> {
        let weight = self
            .vb
            .get((out_features, in_features), &format!("{prefix}.weight"))?;
        let bias = if bias {
            Some(self.vb.get(out_features, &format!("{prefix}.bias"))?)
        } else {
            None
        };
        Linear::dense(weight, bias)
    }

    fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        Ok(Embedding::Dense(self.vb.get((vocab, hidden), name)?))
    }

    fn contains(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }
}
