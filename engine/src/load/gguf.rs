//! GGUF v2/v3 files (llama.cpp's format): metadata, tensors, and the HF-to-GGUF name map.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::gguf_check;
use crate::config::{Arch, RopeStyle, TransformerConfig};
use crate::models::WeightSource;
use crate::nn::{Embedding, Linear, Q8Kernel};
use crate::{Error, Result};

/// A parsed GGUF header: metadata and tensor directory, not yet the tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

impl GgufFile {
    /// Reads the header of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let unreadable = |reason: String| {
            Error::invalid_model(path, format!("not a readable GGUF file: {reason}"))
        };
        // Checked first: candle's reader divides by this.
        gguf_check::declared_alignment(&mut file).map_err(unreadable)?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        // Read from a mapping rather than a `BufReader`: candle's reader asks for the stream
        // position before every string, which a `BufReader` over a file answers with a
        // system call (300,000 of them, 0.15 s, for Qwen's vocabulary and merges).
        // SAFETY: as in `load_tensors`: only read, and only while the header is parsed.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let content = Content::read(&mut std::io::Cursor::new(&map[..]))
            .map_err(|e| unreadable(e.to_string()))?;
        gguf_check::check_tensors(&content, size).map_err(unreadable)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value, or `None` when the key is absent.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| Error::invalid_model(&self.path, format!("missing metadata key {key}")))
    }

    /// A required integer (any GGUF integer type).
    pub fn usize(&self, key: &str) -> Result<usize> {
        value_to_usize(self.required(key)?).ok_or_else(|| self.bad_type(key, "an integer"))
    }

    /// An optional integer.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| value_to_usize(v).ok_or_else(|| self.bad_type(key, "an integer")))
            .transpose()
    }

    /// An optional float.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key)
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                other => value_to_usize(other)
                    .map(|x| x as f32)
                    .ok_or_else(|| self.bad_type(key, "a number")),
            })
            .transpose()
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| {
                v.to_string()
                    .map(|s| s.as_str())
                    .map_err(|_| self.bad_type(key, "a string"))
            })
            .transpose()
    }

    /// An optional bool.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.to_bool().map_err(|_| self.bad_type(key, "a bool")))
            .transpose()
    }

    /// A required array.
    pub fn array(&self, key: &str) -> Result<&Vec<Value>> {
        self.required(key)?
            .to_vec()
            .map_err(|_| self.bad_type(key, "an array"))
    }

    fn bad_type(&self, key: &str, expected: &str) -> Error {
        Error::invalid_model(&self.path, format!("metadata key {key} is not {expected}"))
    }

    /// The architecture named by `general.architecture`.
    pub fn arch(&self) -> Result<Arch> {
        match self.opt_str("general.architecture")? {
            Some("llama") => Ok(Arch::Llama),
            Some("qwen2") => Ok(Arch::Qwen2),
            Some(other) => Err(Error::Unsupported(format!(
                "GGUF architecture {other:?} in {}; supported: llama, qwen2",
                self.path.display()
            ))),
            None => Err(Error::invalid_model(
                &self.path,
                "missing metadata key general.architecture",
            )),
        }
    }

    /// Hyper-parameters from `{arch}.*` metadata and tensor shapes.
    pub fn config(&self) -> Result<TransformerConfig> {
        let arch = self.arch()?;
        let a = arch.name();
        let hidden_size = self.usize(&format!("{a}.embedding_length"))?;
        let num_attention_heads = self.usize(&format!("{a}.attention.head_count"))?;
        let num_key_value_heads = self
            .opt_usize(&format!("{a}.attention.head_count_kv"))?
            .unwrap_or(num_attention_heads);
        let head_dim = self
            .opt_usize(&format!("{a}.attention.key_length"))?
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        let embd = self.tensor_info("token_embd.weight")?;
        let vocab_size = embd.0;
        let config = TransformerConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: self.usize(&format!("{a}.feed_forward_length"))?,
            num_hidden_layers: self.usize(&format!("{a}.block_count"))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self
                .opt_f32(&format!("{a}.attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6) as f64,
            rope_theta: self
                .opt_f32(&format!("{a}.rope.freq_base"))?
                .unwrap_or(10_000.0),
            // llama.cpp's converter permutes LLaMA's q/k rows for interleaved RoPE; not Qwen2's.
            rope_style: match arch {
                Arch::Llama => RopeStyle::Interleaved,
                Arch::Qwen2 => RopeStyle::Half,
            },
            max_position_embeddings: self.usize(&format!("{a}.context_length"))?,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        };
        config
            .validate()
            .map_err(|reason| Error::invalid_model(&self.path, reason))?;
        // The layer count is the one size no tensor shape bounds: hold it to the tensor table
        // before anything is sized by it.
        let last = format!("blk.{}.attn_norm.weight", config.num_hidden_layers - 1);
        if !self.content.tensor_infos.contains_key(&last) {
            return Err(Error::invalid_model(
                &self.path,
                format!(
                    "{a}.block_count is {} but the tensor table has no {last}",
                    config.num_hidden_layers
                ),
            ));
        }
        Ok(config)
    }

    /// `(rows, cols)` of a 2-D tensor as candle sees it (`[out, in]`).
    fn tensor_info(&self, name: &str) -> Result<(usize, usize)> {
        let info =
            self.content.tensor_infos.get(name).ok_or_else(|| {
                Error::invalid_model(&self.path, format!("missing tensor {name}"))
            })?;
        info.shape
            .dims2()
            .map_err(|_| Error::invalid_model(&self.path, format!("tensor {name} is not 2-D")))
    }

    /// Maps the file's tensor data for loading: tensors are read from the mapping as the
    /// model asks for them, and our kernels lay their tiles out straight from it.
    pub fn load_tensors(
        &self,
        device: &Device,
        requantize: Requantize,
        q8_kernel: Q8Kernel,
    ) -> Result<GgufWeights> {
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        // SAFETY: the mapping is only read, and only while the model loads (every tensor is
        // copied out of it); as with any memory-mapped weights, a file truncated or rewritten
        // underneath in those moments is outside what we guard against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&self.path, e))?;
        let tensors = self
            .content
            .tensor_infos
            .iter()
            .map(|(name, info)| {
                let stored = StoredTensor {
                    dtype: info.ggml_dtype,
                    dims: info.shape.dims().to_vec(),
                    offset: self.content.tensor_data_offset.saturating_add(info.offset),
                };
                (name.clone(), stored)
            })
            .collect();
        Ok(GgufWeights {
            path: self.path.clone(),
            map,
            requantize,
            q8_kernel,
            tensors: RefCell::new(tensors),
            device: device.clone(),
        })
    }
}

/// What to do with tensor types that candle multiplies slowly on CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requantize {
    /// Keep every tensor as stored (the CPU default where the CPU has AVX2 and FMA). The
    /// legacy 4/5-bit types are multiplied by [`crate::nn::LegacyMatrix`] on their own
    /// nibbles: against `LegacyToQ8_0`, 15-25% less memory, half the load time, 13-16% faster
    /// decoding, prefill within a few percent (`benches/RESULTS.md`). Without AVX2, candle's
    /// kernels, which are slow for these types.
    Keep,
    /// Convert Q4_0/Q4_1/Q5_0/Q5_1 to Q8_0 at load, for [`crate::nn::Q8Matrix`] (or candle's
    /// Q8_0 kernel where the CPU lacks AVX2, where this is the default): 8.5 bits a weight
    /// instead of 5-6. Q8_0 holds them almost exactly.
    LegacyToQ8_0,
    /// Convert every quantized matrix (k-quants too) to Q8_0, so that all projections use
    /// HexaCoder's Q8_0 kernels. Costs memory bandwidth in decoding, saves prefill time.
    AllToQ8_0,
    /// Dequantize every matrix to dense f32 at load: the GPU default. A GPU has the memory
    /// and the bandwidth, cuBLAS multiplies the exact weights (parity with f32 references),
    /// and candle 0.11's quantized CUDA kernels gave NaN logits for 9 to 16 rows on an H200.
    Dequantize,
}

fn is_quantized_not_q8_0(dtype: GgmlDType) -> bool {
    !matches!(
        dtype,
        GgmlDType::Q8_0 | GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
    )
}

fn is_slow_legacy(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
    )
}

fn value_to_usize(value: &Value) -> Option<usize> {
    match *value {
        Value::U8(x) => Some(x as usize),
        Value::U16(x) => Some(x as usize),
        Value::U32(x) => Some(x as usize),
        Value::U64(x) => usize::try_from(x).ok(),
        Value::I8(x) => usize::try_from(x).ok(),
        Value::I16(x) => usize::try_from(x).ok(),
        Value::I32(x) => usize::try_from(x).ok(),
        Value::I64(x) => usize::try_from(x).ok(),
        _ => None,
    }
}

/// The GGUF name of an HF checkpoint tensor name.
pub fn gguf_name(hf_name: &str) -> Option<String> {
    let fixed = match hf_name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let gguf_module = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf_module}.{suffix}"))
}

/// Where a tensor lies in the file, and what it is.
struct StoredTensor {
    dtype: GgmlDType,
    dims: Vec<usize>,
    /// From the start of the file.
    offset: u64,
}

/// The tensors of a GGUF file, read from a memory mapping of it as they are handed out.
///
/// Projections are handed out once (their entry is removed), and the mapping is dropped with
/// this value when the model is built, so the file's pages are not held after loading.
pub struct GgufWeights {
    path: PathBuf,
    map: memmap2::Mmap,
    requantize: Requantize,
    q8_kernel: Q8Kernel,
    tensors: RefCell<HashMap<String, StoredTensor>>,
    device: Device,
}

impl GgufWeights {
    /// The GGUF name of `hf_name` and its type, shape and bytes, checked against `shape`.
    fn stored(&self, hf_name: &str, shape: &[usize]) -> Result<(String, GgmlDType, &[u8])> {
        let name = gguf_name(hf_name).ok_or_else(|| {
            Error::invalid_model(&self.path, format!("no GGUF name for {hf_name}"))
        })?;
        let tensors = self.tensors.borrow();
        let stored = tensors
            .get(&name)
            .ok_or_else(|| Error::invalid_model(&self.path, format!("missing tensor {name}")))?;
        if stored.dims != shape {
            return Err(Error::invalid_model(
                &self.path,
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    stored.dims
                ),
            ));
        }
        let elements: usize = stored.dims.iter().product();
        let block = stored.dtype.block_size();
        let bytes = (elements / block).checked_mul(stored.dtype.type_size());
        let start = usize::try_from(stored.offset).ok();
        let data = match (bytes, start) {
            (Some(bytes), Some(start)) if elements.is_multiple_of(block) => start
                .checked_add(bytes)
                .and_then(|end| self.map.get(start..end)),
            _ => None,
        }
        .ok_or_else(|| {
            Error::invalid_model(
                &self.path,
                format!("tensor {name} does not fit in the file"),
            )
        })?;
        Ok((name, stored.dtype, data))
    }

    /// A tensor as candle's [`QTensor`] (a copy of its bytes), converted as `requantize` says.
    fn get(&self, hf_name: &str, shape: &[usize]) -> Result<Arc<QTensor>> {
        let (name, dtype, data) = self.stored(hf_name, shape)?;
        let tensor = crate::nn::qtensor_from_file_bytes(dtype, shape, data, &self.device)
            .map_err(|e| Error::invalid_model(&self.path, format!("tensor {name}: {e}")))?;
        Ok(Arc::new(if self.converts(dtype, shape.len()) {
            QTensor::quantize(&tensor.dequantize(&self.device)?, GgmlDType::Q8_0)?
        } else {
            tensor
        }))
    }

    /// Whether `requantize` converts a tensor of this type and rank to Q8_0.
    fn converts(&self, dtype: GgmlDType, rank: usize) -> bool {
        match self.requantize {
            Requantize::Keep | Requantize::Dequantize => false,
            Requantize::LegacyToQ8_0 => is_slow_legacy(dtype),
            Requantize::AllToQ8_0 => rank == 2 && is_quantized_not_q8_0(dtype),
        }
    }

    /// Forgets a tensor handed out for good, and lets its pages of the mapping go: they
    /// counted in our resident memory beside the copy made of them (the page cache keeps
    /// them for the next load).
    fn hand_out(&self, hf_name: &str, shape: &[usize]) {
        let Ok((name, _, data)) = self.stored(hf_name, shape) else {
            return;
        };
        let offset = data.as_ptr() as usize - self.map.as_ptr() as usize;
        #[cfg(unix)]
        // SAFETY: the mapping is shared and read-only, so dropped pages read back as the
        // file's bytes on the next access; nothing is written or zeroed. Failing leaves the
        // pages mapped, which only costs memory.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, data.len())
        };
        self.tensors.borrow_mut().remove(&name);
    }
}

impl WeightSource for GgufWeights {
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .get(name, shape)?
            .dequantize(&self.device)?
            .to_dtype(DType::F32)?)
    }

    fn linear(
        &self,
        prefix: &str,
        out_features: usize,
        in_features: usize,
        bias: bool,
    ) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let shape = [out_features, in_features];
        let bias = if bias {
            Some(self.dense(&format!("{prefix}.bias"), &[out_features])?)
        } else {
            None
        };
        let (_, dtype, data) = self.stored(&name, &shape)?;
        let linear = if self.requantize == Requantize::Dequantize {
            let weight = self.get(&name, &shape)?;
            Linear::dense(weight.dequantize(&self.device)?.to_dtype(DType::F32)?, bias)
        } else if self.device.is_cpu() && !self.converts(dtype, shape.len()) {
            Linear::quantized_from_file_bytes(
                dtype,
                (out_features, in_features),
                data,
                bias,
                self.q8_kernel,
            )
        } else {
            Linear::quantized(self.get(&name, &shape)?, bias, self.q8_kernel)
        };
        self.hand_out(&name, &shape);
        linear
    }

    fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        let (_, dtype, data) = self.stored(name, &[vocab, hidden])?;
        if self.device.is_cpu()
            && self.requantize != Requantize::Dequantize
            && !self.converts(dtype, 2)
        {
            let table =
                Embedding::quantized_from_file_bytes(dtype, (vocab, hidden), data, self.q8_kernel);
            self.hand_out(name, &[vocab, hidden]);
            return table;
        }
        let table = self.get(name, &[vocab, hidden])?;
        // Handed out like the projections.
        self.hand_out(name, &[vocab, hidden]);
        Ok(match table.dtype() {
            _ if self.requantize == Requantize::Dequantize => {
                Embedding::Dense(table.dequantize(&self.device)?.to_dtype(DType::F32)?)
            }
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                Embedding::Dense(table.dequantize(&self.device)?.to_dtype(DType::F32)?)
            }
            _ => Embedding::Quantized(table),
        })
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|name| self.tensors.borrow().contains_key(&name))
    }

    fn q8_kernel(&self) -> Q8Kernel {
        self.q8_kernel
    }
}
