//! Layers shared by every architecture: linear projections with a LoRA hook point,
//! RMSNorm, rotary embeddings, the KV cache and ragged-batch attention.

mod activation;
mod attention;
mod dense;
mod exp;
mod kquant;
mod kv_cache;
mod legacy;
mod low_rank;
mod q8;
mod simd;
mod tiles;

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

pub(crate) use activation::with_values as with_f32_values;
pub use activation::{silu_mul, silu_mul_into};
pub use attention::{Rope, attend, attend_parts, attend_with_matmuls};
pub use dense::DenseMatrix;
pub use exp::{exp_in_place, exp_shifted_in_place};
pub use kquant::KQuantMatrix;
pub use kv_cache::{KvCache, KvDtype, KvLayer};
pub use legacy::LegacyMatrix;
pub use low_rank::LowRankDelta;
pub use q8::Q8Matrix;
pub use simd::Isa;

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;

use crate::Result;

/// The threads candle's pool runs work on, read once: finding the CPU count reads the
/// cgroup files, which cost more than a short decode step's attention.
pub(crate) fn pool_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}

/// The seven projections of a decoder layer, named as PEFT's `target_modules` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proj {
    /// Attention query.
    Q,
    /// Attention key.
    K,
    /// Attention value.
    V,
    /// Attention output.
    O,
    /// MLP gate.
    Gate,
    /// MLP up.
    Up,
    /// MLP down.
    Down,
}

impl Proj {
    /// Every projection, in checkpoint order.
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The module name in HF checkpoints and PEFT configs (`q_proj`, …).
    pub fn module_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// The parent module in HF checkpoints (`self_attn` or `mlp`).
    pub fn parent(self) -> &'static str {
        match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            Proj::Gate | Proj::Up | Proj::Down => "mlp",
        }
    }
}

/// A side branch added to a projection's output, chosen per forward call.
///
/// This is where LoRA plugs in: the model stays shared and unmerged, and each forward call
/// passes the hook of the adapter (or mix of adapters, one per batch row) it wants.
pub trait LinearHook {
    /// The value to add to projection `proj` of layer `layer_idx` for input `xs`
    /// (`[tokens, in_features]`), or `None` where this hook does not touch that projection.
    fn delta(&self, layer_idx: usize, proj: Proj, xs: &Tensor) -> Result<Option<Tensor>>;

    /// `ys`, projection `proj`'s output for `xs`, plus [`LinearHook::delta`]. A hook that can
    /// add its delta in place overrides this to skip a tensor and a pass over it.
    fn add_delta(&self, layer_idx: usize, proj: Proj, xs: &Tensor, ys: Tensor) -> Result<Tensor> {
        plus_delta(ys, self.delta(layer_idx, proj, xs)?)
    }
}

/// `ys` plus `delta`, where a hook gave one.
pub(crate) fn plus_delta(ys: Tensor, delta: Option<Tensor>) -> Result<Tensor> {
    Ok(match delta {
        Some(delta) => (ys + delta)?,
        None => ys,
    })
}

/// A projection `y = W·x + b`, with `W` quantized or dense.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    out_features: usize,
    in_features: usize,
}

#[derive(Clone, Debug)]
enum Weight {
    Candle(QMatMul),
    Q8(Arc<Q8Matrix>),
    Dense(Arc<DenseMatrix>),
    Legacy(Arc<LegacyMatrix>),
    KQuant(Arc<KQuantMatrix>),
}

/// Which CPU kernel multiplies Q8_0 weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q8Kernel {
    /// [`Q8Matrix`] where the CPU has AVX2 and FMA, candle's elsewhere.
    Fastest,
    /// Always candle's.
    Candle,
}

impl Linear {
    /// A dense f32 weight of shape `[out, in]`: [`DenseMatrix`] on a CPU that runs it,
    /// candle's matmul elsewhere.
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        let weight = if weight.device().is_cpu() && DenseMatrix::supported() {
            Weight::Dense(Arc::new(DenseMatrix::new(&weight)?))
        } else {
            Weight::Candle(QMatMul::Tensor(weight))
        };
        Ok(Linear {
            weight,
            bias,
            out_features,
            in_features,
        })
    }

    /// A quantized weight of shape `[out, in]`.
    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>, kernel: Q8Kernel) -> Result<Self> {
        use candle_core::quantized::GgmlDType;
        if matches!(
            weight.dtype(),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        ) {
            // A float tensor in a GGUF: candle would dequantize it into its own dense matmul.
            return Linear::dense(weight.dequantize(&weight.device())?, bias);
        }
        let (out_features, in_features) = weight.shape().dims2()?;
        let tiled = match kernel {
            Q8Kernel::Fastest if weight.device().is_cpu() => {
                tiled_weight(weight.dtype(), (out_features, in_features), &weight.data()?)
            }
            _ => None,
        };
        let weight = match tiled {
            Some(weight) => weight,
            None => Weight::Candle(QMatMul::from_arc(weight)?),
        };
        Ok(Linear {
            weight,
            bias,
            out_features,
            in_features,
        })
    }

    /// A quantized CPU weight of shape `[out, in]` from its bytes as a GGUF file stores them:
    /// our kernels lay their tiles out from these bytes directly (a memory-mapped file is
    /// read once); other types, or candle's kernels, get a copy as a [`QTensor`].
    pub fn quantized_from_file_bytes(
        dtype: candle_core::quantized::GgmlDType,
        (out_features, in_features): (usize, usize),
        data: &[u8],
        bias: Option<Tensor>,
        kernel: Q8Kernel,
    ) -> Result<Self> {
        let tiled = match kernel {
            Q8Kernel::Fastest => tiled_weight(dtype, (out_features, in_features), data),
            Q8Kernel::Candle => None,
        };
        match tiled {
            Some(weight) => Ok(Linear {
                weight,
                bias,
                out_features,
                in_features,
            }),
            None => {
                let tensor = qtensor_from_file_bytes(
                    dtype,
                    &[out_features, in_features],
                    data,
                    &Device::Cpu,
                )?;
                Linear::quantized(Arc::new(tensor), bias, kernel)
            }
        }
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The weight as f32 `[out, in]` (for merging adapters and for tests).
    pub fn dequantized_weight(&self) -> Result<Tensor> {
        Ok(match &self.weight {
            Weight::Candle(QMatMul::QTensor(q)) => q.dequantize(&q.device())?,
            Weight::Candle(QMatMul::Tensor(t)) => t.clone(),
            Weight::Candle(QMatMul::TensorF16(t)) => t.to_dtype(candle_core::DType::F32)?,
            Weight::Q8(matrix) => matrix.dequantize(&Device::Cpu)?,
            Weight::Dense(matrix) => matrix.to_tensor()?,
            Weight::Legacy(matrix) => matrix.dequantize(&Device::Cpu)?,
            Weight::KQuant(matrix) => matrix.dequantize(&Device::Cpu)?,
        })
    }

    /// This projection with `delta` (`[out, in]`, f32) added to its weight: a merged LoRA.
    /// Quantized weights are re-quantized to Q8_0, whose error is far below a 4-bit type's.
    pub fn with_weight_delta(&self, delta: &Tensor, kernel: Q8Kernel) -> Result<Linear> {
        let merged = (self.dequantized_weight()? + delta.to_device(&self.device())?)?;
        match &self.weight {
            Weight::Candle(QMatMul::Tensor(_))
            | Weight::Candle(QMatMul::TensorF16(_))
            | Weight::Dense(_) => Linear::dense(merged, self.bias.clone()),
            _ => {
                let q = QTensor::quantize(&merged, candle_core::quantized::GgmlDType::Q8_0)?;
                Linear::quantized(Arc::new(q), self.bias.clone(), kernel)
            }
        }
    }

    fn device(&self) -> Device {
        match &self.weight {
            Weight::Candle(QMatMul::QTensor(q)) => q.device(),
            Weight::Candle(QMatMul::Tensor(t)) | Weight::Candle(QMatMul::TensorF16(t)) => {
                t.device().clone()
            }
            Weight::Q8(_) | Weight::Dense(_) | Weight::Legacy(_) | Weight::KQuant(_) => Device::Cpu,
        }
    }

    /// `xs` is `[tokens, in]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = match &self.weight {
            Weight::Candle(weight) => candle_forward(weight, xs)?,
            Weight::Q8(matrix) => matrix.matmul(xs)?,
            Weight::Dense(matrix) => matrix.matmul(xs)?,
            Weight::Legacy(matrix) => matrix.matmul(xs)?,
            Weight::KQuant(matrix) => matrix.matmul(xs)?,
        };
        Ok(match &self.bias {
            Some(bias) => ys.broadcast_add(bias)?,
            None => ys,
        })
    }

    /// This projection's tiled integer kernel against `x`, where its weight has one.
    fn tile_dot<'a>(&'a self, x: &'a tiles::QuantizedRows) -> Option<tiles::TileDot<'a>> {
        match &self.weight {
            Weight::Q8(matrix) => Some(matrix.tile_dot(x)),
            Weight::Legacy(matrix) => Some(matrix.tile_dot(x)),
            Weight::KQuant(matrix) => Some(matrix.tile_dot(x)),
            Weight::Candle(_) | Weight::Dense(_) => None,
        }
    }

    /// [`Linear::forward`] of several projections of the same `xs` (a layer's query, key and
    /// value): where all of them run on our integer kernels, the activations are quantized
    /// once and every product runs in one call on the thread pool, each giving exactly what
    /// it gives alone.
    pub fn forward_each(linears: &[&Linear], xs: &Tensor) -> Result<Vec<Tensor>> {
        let tiled = linears.len() > 1
            && linears
                .iter()
                .all(|l| l.has_tile_dot() && l.in_features == linears[0].in_features);
        if !tiled {
            return linears.iter().map(|l| l.forward(xs)).collect();
        }
        let first = linears[0];
        let x = tiles::QuantizedRows::new(xs, first.out_features, first.in_features, "linear")?;
        let products: Vec<(usize, tiles::TileDot<'_>)> = linears
            .iter()
            .filter_map(|l| Some((l.out_features, l.tile_dot(&x)?)))
            .collect();
        let outs = tiles::tiled_products(x.m, first.in_features, &products);
        linears
            .iter()
            .zip(outs)
            .map(|(l, out)| {
                let ys = Tensor::from_vec(out, (x.m, l.out_features), &Device::Cpu)?;
                Ok(match &l.bias {
                    Some(bias) => ys.broadcast_add(bias)?,
                    None => ys,
                })
            })
            .collect()
    }

    /// Whether [`Linear::tile_dot`] gives a kernel.
    fn has_tile_dot(&self) -> bool {
        matches!(
            self.weight,
            Weight::Q8(_) | Weight::Legacy(_) | Weight::KQuant(_)
        )
    }

    /// [`Linear::forward_each`] with each projection's side branch from the hook, if any.
    pub(crate) fn forward_each_hooked(
        linears: &[(&Linear, Proj)],
        xs: &Tensor,
        hook: Option<&dyn LinearHook>,
        layer_idx: usize,
    ) -> Result<Vec<Tensor>> {
        let plain: Vec<&Linear> = linears.iter().map(|&(l, _)| l).collect();
        let outs = Linear::forward_each(&plain, xs)?;
        linears
            .iter()
            .zip(outs)
            .map(|(&(_, proj), ys)| with_hook_delta(ys, xs, hook, layer_idx, proj))
            .collect()
    }

    /// The projection plus the hook's side branch, if any.
    pub(crate) fn forward_hooked(
        &self,
        xs: &Tensor,
        hook: Option<&dyn LinearHook>,
        layer_idx: usize,
        proj: Proj,
    ) -> Result<Tensor> {
        with_hook_delta(self.forward(xs)?, xs, hook, layer_idx, proj)
    }
}

/// `ys`, the output of projection `proj` of layer `layer_idx` for `xs`, plus the hook's side
/// branch there, if any.
fn with_hook_delta(
    ys: Tensor,
    xs: &Tensor,
    hook: Option<&dyn LinearHook>,
    layer_idx: usize,
    proj: Proj,
) -> Result<Tensor> {
    match hook {
        Some(hook) => hook.add_delta(layer_idx, proj, xs, ys),
        None => Ok(ys),
    }
}

/// A [`QTensor`] of `dims` from its bytes as a GGUF file stores them. candle views the bytes
/// as blocks in place, which must be aligned for them; bytes from a memory-mapped file are
/// aligned as the file's tensor offsets are, which a file may declare as 1 (only powers of
/// two are checked), so such bytes are copied to an aligned buffer first.
pub(crate) fn qtensor_from_file_bytes(
    dtype: candle_core::quantized::GgmlDType,
    dims: &[usize],
    data: &[u8],
    device: &Device,
) -> Result<QTensor> {
    use candle_core::quantized::ggml_file::qtensor_from_ggml;
    // The largest alignment of candle's block types (`f32`, `f16` and byte arrays).
    const ALIGN: usize = std::mem::align_of::<u64>();
    if (data.as_ptr() as usize).is_multiple_of(ALIGN) {
        return Ok(qtensor_from_ggml(dtype, data, dims.to_vec(), device)?);
    }
    let mut words = vec![0u64; data.len().div_ceil(ALIGN)];
    // SAFETY: `words` holds at least `data.len()` bytes, and the two do not overlap; the view
    // covers bytes of `words` just written.
    let aligned = unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), words.as_mut_ptr() as *mut u8, data.len());
        std::slice::from_raw_parts(words.as_ptr() as *const u8, data.len())
    };
    Ok(qtensor_from_ggml(dtype, aligned, dims.to_vec(), device)?)
}

/// Our tiles for a `[rows, cols]` weight of type `dtype` stored as `data`, where one of our
/// kernels takes the type and this CPU runs it.
fn tiled_weight(
    dtype: candle_core::quantized::GgmlDType,
    dims: (usize, usize),
    data: &[u8],
) -> Option<Weight> {
    if let Some(matrix) = Q8Matrix::from_file_bytes(dtype, dims, data) {
        Some(Weight::Q8(Arc::new(matrix)))
    } else if let Some(matrix) = LegacyMatrix::from_file_bytes(dtype, dims, data) {
        Some(Weight::Legacy(Arc::new(matrix)))
    } else {
        KQuantMatrix::from_file_bytes(dtype, dims, data).map(|m| Weight::KQuant(Arc::new(m)))
    }
}

/// `xs · Wᵀ` through candle, with a row's result independent of the other rows.
///
/// For a single row candle takes its own path on the CPU for Q6_K (the compact GEMV), which
/// rounds differently from its tiled path for several rows: a decode step would not reproduce
/// the prefill of the same token. A single row goes through as two; the cost is one extra
/// row's arithmetic on a step that is bound by reading the weights. (Every other type candle
/// multiplies the same way for any row count: `tests::a_rows_projection_…`.)
///
/// From 32 rows on, candle multiplies Q4_K with AMX tiles where the OS grants them. AMX
/// faults on some of the machines we run on although CPUID and the kernel allow it
/// (`../shared/machine-notes.md`), and candle keeps the AMX copy of the weights beside its
/// VNNI copy and the file's (65 MB of the default model's 29 MB of Q4_K). Rows go to it in
/// groups of fewer than 32, which its VNNI tiles multiply to the same bits.
fn candle_forward(weight: &QMatMul, xs: &Tensor) -> Result<Tensor> {
    use candle_core::quantized::GgmlDType;
    let dtype = match weight {
        QMatMul::QTensor(q) if xs.device().is_cpu() => Some(q.dtype()),
        _ => None,
    };
    let rows = xs.dims().first().copied().unwrap_or(0);
    if dtype == Some(GgmlDType::Q6K) && rows == 1 {
        let twice = Tensor::cat(&[xs, xs], 0)?;
        return Ok(weight.forward(&twice)?.narrow(0, 0, 1)?);
    }
    if dtype == Some(GgmlDType::Q4K) && rows >= AMX_MIN_ROWS {
        let groups = (0..rows)
            .step_by(NO_AMX_ROWS)
            .map(|start| weight.forward(&xs.narrow(0, start, NO_AMX_ROWS.min(rows - start))?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        return Ok(Tensor::cat(&groups, 0)?);
    }
    Ok(weight.forward(xs)?)
}

/// The row count from which candle 0.11 multiplies Q4_K with AMX.
const AMX_MIN_ROWS: usize = 32;
/// Rows per call below that: a multiple of candle's 4-row tile.
const NO_AMX_ROWS: usize = 28;

/// Root-mean-square layer norm with a learned scale.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// `weight` is the `[hidden]` scale.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm {
            weight,
            eps: eps as f32,
        }
    }

    /// The `[hidden]` scale.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Epsilon.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Normalizes over the last dimension.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(xs, &self.weight, self.eps)?)
    }
}

/// The token embedding table, kept quantized when the checkpoint is.
#[derive(Clone, Debug)]
pub enum Embedding {
    /// A dense `[vocab, hidden]` table.
    Dense(Tensor),
    /// A quantized table; rows are dequantized on lookup.
    Quantized(Arc<QTensor>),
    /// The tied output head's Q8_0 tiles: one copy of the table serves both.
    Q8(Arc<Q8Matrix>),
    /// The tied output head's 4/5-bit tiles.
    Legacy(Arc<LegacyMatrix>),
    /// The tied output head's Q4_K/Q6_K tiles.
    KQuant(Arc<KQuantMatrix>),
}

impl Embedding {
    /// A quantized CPU table `[vocab, hidden]` from its bytes as a GGUF file stores them: in
    /// our kernels' tiles where one takes the type (lookups read the tiles, and a tied head
    /// shares them), otherwise a copy as a [`QTensor`].
    pub fn quantized_from_file_bytes(
        dtype: candle_core::quantized::GgmlDType,
        dims: (usize, usize),
        data: &[u8],
        kernel: Q8Kernel,
    ) -> Result<Self> {
        use candle_core::quantized::GgmlDType;
        let tiled = match (kernel, dtype) {
            (_, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) => None,
            (Q8Kernel::Fastest, _) => tiled_weight(dtype, dims, data),
            (Q8Kernel::Candle, _) => None,
        };
        Ok(match tiled {
            Some(Weight::Q8(table)) => Embedding::Q8(table),
            Some(Weight::Legacy(table)) => Embedding::Legacy(table),
            Some(Weight::KQuant(table)) => Embedding::KQuant(table),
            _ => {
                let table = qtensor_from_file_bytes(dtype, &[dims.0, dims.1], data, &Device::Cpu)?;
                match dtype {
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        Embedding::Dense(table.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?)
                    }
                    _ => Embedding::Quantized(Arc::new(table)),
                }
            }
        })
    }

    /// Rows for `ids`, as `[ids.len(), hidden]` f32.
    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let gather = |(rows, cols): (usize, usize), row_into: &dyn Fn(usize, &mut [f32])| {
            let mut values = vec![0f32; ids.len() * cols];
            for (&id, out) in ids.iter().zip(values.chunks_exact_mut(cols)) {
                let row = id as usize;
                if row >= rows {
                    return Err(crate::Error::InvalidRequest(format!(
                        "token id {id} is outside the vocabulary of {rows}"
                    )));
                }
                row_into(row, out);
            }
            Ok(Tensor::from_vec(values, (ids.len(), cols), device)?)
        };
        match self {
            Embedding::Dense(table) => {
                let ids = Tensor::new(ids, device)?;
                Ok(table.index_select(&ids, 0)?.to_dtype(DType::F32)?)
            }
            Embedding::Quantized(table) => Ok(table.embedding(&Tensor::new(ids, device)?)?),
            Embedding::Q8(table) => gather(table.dims(), &|row, out| table.row_into(row, out)),
            Embedding::Legacy(table) => gather(table.dims(), &|row, out| table.row_into(row, out)),
            Embedding::KQuant(table) => gather(table.dims(), &|row, out| table.row_into(row, out)),
        }
    }

    /// The whole table as f32 `[vocab, hidden]`.
    pub fn dequantized(&self) -> Result<Tensor> {
        Ok(match self {
            Embedding::Dense(table) => table.to_dtype(DType::F32)?,
            Embedding::Quantized(table) => table.dequantize(&table.device())?,
            Embedding::Q8(table) => table.dequantize(&Device::Cpu)?,
            Embedding::Legacy(table) => table.dequantize(&Device::Cpu)?,
            Embedding::KQuant(table) => table.dequantize(&Device::Cpu)?,
        })
    }

    /// `(vocab, hidden)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Embedding::Dense(table) => table.dims2()?,
            Embedding::Quantized(table) => table.shape().dims2()?,
            Embedding::Q8(table) => table.dims(),
            Embedding::Legacy(table) => table.dims(),
            Embedding::KQuant(table) => table.dims(),
        })
    }

    /// The same matrix as an output projection (tied embeddings).
    pub fn as_linear(&self, kernel: Q8Kernel) -> Result<Linear> {
        let (out_features, in_features) = self.dims()?;
        let shared = |weight| Linear {
            weight,
            bias: None,
            out_features,
            in_features,
        };
        match self {
            Embedding::Dense(table) => Linear::dense(table.clone(), None),
            Embedding::Quantized(table) => Linear::quantized(table.clone(), None, kernel),
            Embedding::Q8(table) => Ok(shared(Weight::Q8(table.clone()))),
            Embedding::Legacy(table) => Ok(shared(Weight::Legacy(table.clone()))),
            Embedding::KQuant(table) => Ok(shared(Weight::KQuant(table.clone()))),
        }
    }

    /// A tied model's embedding and output head over one copy of the table: where the head's
    /// kernel re-lays the table out in its tiles, lookups read those tiles and the file's
    /// layout is dropped.
    pub fn tied_with_head(self, kernel: Q8Kernel) -> Result<(Embedding, Linear)> {
        let head = self.as_linear(kernel)?;
        let embedding = match &head.weight {
            Weight::Q8(table) => Embedding::Q8(table.clone()),
            Weight::Legacy(table) => Embedding::Legacy(table.clone()),
            Weight::KQuant(table) => Embedding::KQuant(table.clone()),
            Weight::Candle(_) | Weight::Dense(_) => self,
        };
        Ok((embedding, head))
    }
}
