//! Causal attention on the CPU with every sum taken in one fixed order.
//!
//! candle's batched matmul picks its kernel and blocking from the matrix shapes, so a query's
//! scores came out with different float rounding when its prompt was prefilled in one chunk,
//! in several, or decoded token by token after a prefix-cache hit; on a quantized model the
//! 8-bit activation rounding of the next projection turned that into different greedy text.
//! Here the query at position `p` reduces over keys `0..=p` with the same instructions in the
//! same order however its prompt was split and whatever shares its batch. Masked keys are
//! skipped rather than added as minus infinity, which also halves a prefill's work.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};

use crate::Result;

/// Queries per work item: enough to amortize a dispatch, few enough to spread a decode step's
/// heads and a short chunk over the threads.
const QUERY_TILE: usize = 8;

/// Calls with fewer multiply-adds than this run on the calling thread.
const INLINE_WORK: usize = 1 << 16;

/// The rows of a `[kv_heads, positions, head_dim]` buffer, borrowed from its storage.
#[derive(Clone, Copy)]
struct HeadRows<'a> {
    data: &'a [f32],
    head_stride: usize,
    head_dim: usize,
}

impl HeadRows<'_> {
    fn row(&self, head: usize, position: usize) -> &[f32] {
        let start = head * self.head_stride + position * self.head_dim;
        &self.data[start..start + self.head_dim]
    }
}

/// Calls `f` with the rows of `t` (`[kv_heads, positions, head_dim]`, f32 on the CPU, each
/// row contiguous: a narrowed view of a KV buffer), without copying them.
fn with_rows<R>(t: &Tensor, f: impl FnOnce(HeadRows<'_>) -> R) -> Result<R> {
    let (heads, positions, head_dim) = t.dims3()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Err(
            candle_core::Error::Msg("CPU attention needs f32 keys and values".into()).into(),
        );
    };
    let stride = layout.stride();
    let contiguous_rows = stride[2] == 1 && (positions <= 1 || stride[1] == head_dim);
    let head_stride = if heads > 1 {
        stride[0]
    } else {
        positions * head_dim
    };
    let end = layout.start_offset() + (heads.max(1) - 1) * head_stride + positions * head_dim;
    if !contiguous_rows || end > data.len() {
        return Err(candle_core::Error::Msg(format!(
            "CPU attention needs contiguous key and value rows, got strides {stride:?}"
        ))
        .into());
    }
    Ok(f(HeadRows {
        data: &data[layout.start_offset()..end],
        head_stride,
        head_dim,
    }))
}

/// Which instructions the two reductions use; chosen once per call from CPUID and the head
/// size, so every query of a model on one machine takes the same path.
#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    fn detect(head_dim: usize) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if head_dim.is_multiple_of(8) && crate::nn::simd::avx2_fma() {
            return Kernel::Avx2;
        }
        let _ = head_dim;
        Kernel::Portable
    }

    /// `scores[j] = scale · query · key_j` for every `j < scores.len()`.
    fn scores(
        self,
        query: &[f32],
        keys: HeadRows<'_>,
        head: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        match self {
            // SAFETY: `detect` saw AVX2 and FMA, and the head size is a multiple of 8.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::scores(query, keys, head, scale, scores) },
            Kernel::Portable => {
                for (j, score) in scores.iter_mut().enumerate() {
                    let key = keys.row(head, j);
                    *score = query.iter().zip(key).fold(0f32, |acc, (q, k)| acc + q * k) * scale;
                }
            }
        }
    }

    /// `out = Σ_j weights[j] · value_j`, summed in order of `j`.
    fn weighted_sum(self, weights: &[f32], values: HeadRows<'_>, head: usize, out: &mut [f32]) {
        match self {
            // SAFETY: as for `scores`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::weighted_sum(weights, values, head, out) },
            Kernel::Portable => {
                out.fill(0.0);
                for (j, &w) in weights.iter().enumerate() {
                    for (o, v) in out.iter_mut().zip(values.row(head, j)) {
                        *o += w * v;
                    }
                }
            }
        }
    }
}

/// Causal attention of one sequence's `n` new queries (`[heads, n, head_dim]`, positions
/// `past..past + n`) over its keys and values (`[kv_heads, past + n, head_dim]`, f32 on the
/// CPU): `[n, heads * head_dim]`.
pub(super) fn attend(queries: &Tensor, keys: &Tensor, values: &Tensor) -> Result<Tensor> {
    let (n_heads, n, head_dim) = queries.dims3()?;
    let (n_kv_heads, total, key_dim) = keys.dims3()?;
    if values.dims3()? != (n_kv_heads, total, key_dim)
        || key_dim != head_dim
        || n > total
        || n_kv_heads == 0
        || !n_heads.is_multiple_of(n_kv_heads)
    {
        return Err(candle_core::Error::Msg(format!(
            "attention shapes do not fit: queries {:?}, keys {:?}, values {:?}",
            queries.dims(),
            keys.dims(),
            values.dims()
        ))
        .into());
    }
    let past = total - n;
    let group = n_heads / n_kv_heads;
    let queries = queries
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
    let kernel = Kernel::detect(head_dim);
    let mut out = vec![0f32; n * n_heads * head_dim];
    let out_ptr = out.as_mut_ptr() as usize;
    let tiles = n.div_ceil(QUERY_TILE);
    // One work item is one query head over a tile of queries: a decode step still spreads its
    // heads over the threads.
    let run = |items: std::ops::Range<usize>, keys: HeadRows<'_>, values: HeadRows<'_>| {
        let mut weights = Vec::with_capacity(total);
        for item in items {
            let (head, tile) = (item / tiles, item % tiles);
            let kv_head = head / group;
            for i in tile * QUERY_TILE..((tile + 1) * QUERY_TILE).min(n) {
                let query = &queries[(head * n + i) * head_dim..][..head_dim];
                weights.clear();
                weights.resize(past + i + 1, 0.0);
                kernel.scores(query, keys, kv_head, scale, &mut weights);
                let max = max_in_lanes(&weights);
                for w in weights.iter_mut() {
                    *w = (*w - max).exp();
                }
                let sum = sum_in_lanes(&weights);
                // SAFETY: each (query, head) row of `out` is written by exactly one work
                // item, and `out` outlives the pool's call.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out_ptr as *mut f32).add((i * n_heads + head) * head_dim),
                        head_dim,
                    )
                };
                kernel.weighted_sum(&weights, values, kv_head, dst);
                let inv = 1.0 / sum;
                for d in dst.iter_mut() {
                    *d *= inv;
                }
            }
        }
    };
    // Multiply-adds of the whole call; below this, waking the other threads costs more.
    let work = n_heads * n * (past + n.div_ceil(2)) * head_dim * 2;
    with_rows(keys, |keys| {
        with_rows(values, |values| {
            if work < INLINE_WORK {
                run(0..n_heads * tiles, keys, values);
            } else {
                candle_core::utils::barrier_pool()
                    .execute_chunked(n_heads * tiles, |items| run(items, keys, values));
            }
        })
    })??;
    Ok(Tensor::from_vec(
        out,
        (n, n_heads * head_dim),
        &Device::Cpu,
    )?)
}

/// Eight independent running maxima, then their maximum: the serial chain of one was a
/// tenth of a warm prompt's time. The maximum does not depend on the order.
fn max_in_lanes(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    lanes
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Eight running sums (element `j` into lane `j % 8`), added pairwise, then the tail in
/// order: an order fixed by the length alone, so a query's sum is the same however its
/// prompt was split.
fn sum_in_lanes(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    let [a, b, c, d, e, f, g, h] = lanes;
    let sum = ((a + b) + (c + d)) + ((e + f) + (g + h));
    tail.iter().fold(sum, |acc, &v| acc + v)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::HeadRows;
    use crate::nn::simd::lane_sum;

    /// One key's dot product: eight lanes over the head, then [`lane_sum`].
    ///
    /// # Safety
    /// AVX2 and FMA; `query` and `key` hold the same multiple of 8 values.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot(query: &[f32], key: &[f32]) -> __m256 {
        let mut acc = _mm256_setzero_ps();
        for c in (0..query.len()).step_by(8) {
            // SAFETY: `c + 8 <= len` for both slices.
            let (q, k) = unsafe {
                (
                    _mm256_loadu_ps(query.as_ptr().add(c)),
                    _mm256_loadu_ps(key.as_ptr().add(c)),
                )
            };
            acc = _mm256_fmadd_ps(q, k, acc);
        }
        acc
    }

    /// # Safety
    /// AVX2 and FMA; the head size is a multiple of 8 and `keys` holds `scores.len()` rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(
        query: &[f32],
        keys: HeadRows<'_>,
        head: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let len = scores.len();
        let mut j = 0;
        // Four keys at a time for four independent chains; each key's own sum runs exactly
        // as it does alone below, so where a key falls does not change its score.
        while j + 4 <= len {
            let mut acc = [_mm256_setzero_ps(); 4];
            let rows = [
                keys.row(head, j),
                keys.row(head, j + 1),
                keys.row(head, j + 2),
                keys.row(head, j + 3),
            ];
            for c in (0..query.len()).step_by(8) {
                // SAFETY: `c + 8 <= len` for the query and every key row.
                let q = unsafe { _mm256_loadu_ps(query.as_ptr().add(c)) };
                for (a, row) in acc.iter_mut().zip(rows) {
                    let k = unsafe { _mm256_loadu_ps(row.as_ptr().add(c)) };
                    *a = _mm256_fmadd_ps(q, k, *a);
                }
            }
            for (s, a) in scores[j..j + 4].iter_mut().zip(acc) {
                *s = lane_sum(a) * scale;
            }
            j += 4;
        }
        for (offset, s) in scores[j..].iter_mut().enumerate() {
            // SAFETY: as above.
            *s = lane_sum(unsafe { dot(query, keys.row(head, j + offset)) }) * scale;
        }
    }

    /// # Safety
    /// AVX2 and FMA; `out.len()` is the head size, a multiple of 8, and `values` holds
    /// `weights.len()` rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_sum(
        weights: &[f32],
        values: HeadRows<'_>,
        head: usize,
        out: &mut [f32],
    ) {
        // Up to 64 values of the head at a time, kept in eight registers across all keys.
        for start in (0..out.len()).step_by(64) {
            let vectors = ((out.len() - start) / 8).min(8);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, &w) in weights.iter().enumerate() {
                let w = _mm256_set1_ps(w);
                let row = values.row(head, j);
                for (c, a) in acc.iter_mut().enumerate().take(vectors) {
                    // SAFETY: `start + 8 * c + 8 <= head size`.
                    let v = unsafe { _mm256_loadu_ps(row.as_ptr().add(start + 8 * c)) };
                    *a = _mm256_fmadd_ps(w, v, *a);
                }
            }
            for (c, a) in acc.iter().enumerate().take(vectors) {
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(start + 8 * c), *a) };
            }
        }
    }
}
