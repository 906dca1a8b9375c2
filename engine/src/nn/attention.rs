use candle_core::{DType, Device, Tensor};

use crate::Result;
use crate::config::RopeStyle;

mod cpu;

/// Precomputed rotary-embedding tables.
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl Rope {
    /// Tables for positions `0..max_positions`.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f32,
        style: RopeStyle,
        device: &Device,
    ) -> Result<Self> {
        let inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / head_dim as f32))
            .collect();
        let n_freq = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, n_freq), device)?;
        let positions = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let freqs = positions.matmul(&inv_freq)?;
        Ok(Rope {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
            style,
        })
    }

    /// The `[max_positions, head_dim / 2]` cosine and sine tables.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// Positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Rotates `xs` (`[heads, n, head_dim]`) as positions `start..start + n`.
    pub fn apply(&self, xs: &Tensor, start: usize) -> Result<Tensor> {
        let n = xs.dim(1)?;
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        let xs = xs.unsqueeze(0)?.contiguous()?;
        let res = match self.style {
            RopeStyle::Half => candle_nn::rotary_emb::rope(&xs, &cos, &sin)?,
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&xs, &cos, &sin)?,
        };
        Ok(res.squeeze(0)?)
    }
}

/// The additive causal mask for `n` new queries after `past` cached positions: `[n, past + n]`.
/// `None` for a single query, which may see everything.
fn causal_mask(n: usize, past: usize, device: &Device) -> Result<Option<Tensor>> {
    if n <= 1 {
        return Ok(None);
    }
    let total = past + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|row| {
            (0..total).map(move |col| {
                if col <= past + row {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(mask, (n, total), device)?))
}

/// Causal scaled-dot-product attention of one sequence's `n` new queries over all its keys.
///
/// `queries` is `[heads, n, head_dim]` for positions `past..past + n`; `keys`/`values` are
/// `[kv_heads, past + n, head_dim]`. Returns `[n, heads * head_dim]`. On the CPU a query's
/// result does not depend on `n` ([`cpu`]); elsewhere it is matmuls with a mask.
pub fn attend(queries: &Tensor, keys: &Tensor, values: &Tensor) -> Result<Tensor> {
    attend_parts(queries, &[(keys.clone(), values.clone())])
}

/// [`attend`] over keys and values held in parts, in order of position (a shared prefix,
/// then a sequence's own positions: [`KvLayer`](super::kv_cache::KvLayer)). On the CPU each
/// part is read where it is, and the result has the bits the parts would give as one tensor.
pub fn attend_parts(queries: &Tensor, parts: &[(Tensor, Tensor)]) -> Result<Tensor> {
    // Keys and values kept in f32 or f16 (`KvDtype`), every part alike.
    let stored = parts.first().map(|(k, _)| k.dtype());
    let on_cpu = matches!(stored, Some(DType::F32 | DType::F16))
        && parts.iter().all(|(k, v)| {
            k.device().is_cpu() && Some(k.dtype()) == stored && Some(v.dtype()) == stored
        });
    if on_cpu {
        return cpu::attend(queries, parts);
    }
    let (keys, values) = super::kv_cache::concatenate_parts(parts)?;
    attend_with_matmuls(queries, &keys, &values)
}

/// [`attend`] as candle matmuls with an additive causal mask: how devices other than the CPU
/// run it (and the reference the CPU kernel is tested and benchmarked against). Grouped-query
/// attention folds the query heads of a group into the row dimension, so the shared keys are
/// used in place rather than repeated per head.
pub fn attend_with_matmuls(queries: &Tensor, keys: &Tensor, values: &Tensor) -> Result<Tensor> {
    let (n, total) = (queries.dim(1)?, keys.dim(1)?);
    let mask = causal_mask(n, total.saturating_sub(n), queries.device())?;
    attend_masked(queries, keys, values, mask.as_ref())
}

fn attend_masked(
    queries: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (n_heads, n, head_dim) = queries.dims3()?;
    let (n_kv_heads, total, _) = keys.dims3()?;
    let group = n_heads / n_kv_heads;
    let queries = queries
        .contiguous()?
        .reshape((n_kv_heads, group * n, head_dim))?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut scores = (queries.matmul(&keys.t()?)? * scale)?;
    if let Some(mask) = mask {
        scores = scores
            .reshape((n_kv_heads, group, n, total))?
            .broadcast_add(mask)?
            .reshape((n_kv_heads, group * n, total))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(values)?; // [kv_heads, group * n, head_dim]
    Ok(out
        .reshape((n_heads, n, head_dim))?
        .transpose(0, 1)?
        .reshape((n, n_heads * head_dim))?)
}

#[cfg(test)]
mod tests;
