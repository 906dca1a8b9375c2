//! Causal attention on the CPU with every sum taken in one fixed order.
//!
//! candle's batched matmul picks its kernel and blocking from the matrix shapes, so a query's
//! scores came out with different float rounding when its prompt was prefilled in one chunk,
//! in several, or decoded token by token after a prefix-cache hit; on a quantized model the
//! 8-bit activation rounding of the next projection turned that into different greedy text.
//! Here the query at position `p` reduces over keys `0..=p` with the same instructions in the
//! same order however its prompt was split and whatever shares its batch. Masked keys are
//! skipped rather than added as minus infinity, which also halves a prefill's work.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use half::f16;

use crate::Result;
use crate::nn::pool_threads;

/// Queries per work item: enough to amortize a dispatch, few enough to spread a decode step's
/// heads and a short chunk over the threads.
const QUERY_TILE: usize = 8;

/// Calls with fewer multiply-adds than this run on the calling thread.
const INLINE_WORK: usize = 1 << 16;

/// A key or value as the KV cache keeps it: f32, or f16 (half the bytes to read; a warm
/// edit's attention is bound by reading them). Kernels widen each to f32 exactly as they load
/// it, so f16 values give the bits their f32 widening would.
pub(super) trait Stored: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;

    /// The values of a CPU storage, if it holds this type.
    fn values(storage: &CpuStorage) -> Option<&[Self]>;

    /// Eight values at `p`, in f32.
    ///
    /// # Safety
    /// AVX2 and F16C; eight values readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> __m256;

    /// Sixteen values at `p`, in f32.
    ///
    /// # Safety
    /// AVX-512F; sixteen values readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Stored for f32 {
    fn to_f32(self) -> f32 {
        self
    }

    fn values(storage: &CpuStorage) -> Option<&[f32]> {
        match storage {
            CpuStorage::F32(data) => Some(data),
            _ => None,
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the caller's.
        unsafe { _mm256_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: the caller's.
        unsafe { _mm512_loadu_ps(p) }
    }
}

impl Stored for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn values(storage: &CpuStorage) -> Option<&[f16]> {
        match storage {
            CpuStorage::F16(data) => Some(data),
            _ => None,
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: the caller's.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f16) -> __m512 {
        // SAFETY: the caller's.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

/// The rows of a `[kv_heads, positions, head_dim]` buffer, borrowed from its storage.
#[derive(Clone, Copy)]
struct HeadRows<'a, T> {
    data: &'a [T],
    head_stride: usize,
    head_dim: usize,
}

// Not derived: a derive would ask `T: Copy` of the slice's element for nothing.
impl<'a, T> HeadRows<'a, T> {
    fn row(&self, head: usize, position: usize) -> &'a [T] {
        let start = head * self.head_stride + position * self.head_dim;
        &self.data[start..start + self.head_dim]
    }

    /// Rows `position..position + count` of one head, back to back.
    fn block(&self, head: usize, position: usize, count: usize) -> &'a [T] {
        let start = head * self.head_stride + position * self.head_dim;
        &self.data[start..start + count * self.head_dim]
    }

    /// The same heads from position `positions` on.
    fn skip(self, positions: usize) -> HeadRows<'a, T> {
        HeadRows {
            data: &self.data[positions * self.head_dim..],
            ..self
        }
    }
}

/// The rows of `t` (`[kv_heads, positions, head_dim]`, `T` on the CPU, each row contiguous:
/// a narrowed view of a KV buffer) in `storage`, its storage, without copying them.
fn head_rows<'a, T: Stored>(
    t: &Tensor,
    storage: &'a Storage,
    layout: &candle_core::Layout,
) -> Result<HeadRows<'a, T>> {
    let (heads, positions, head_dim) = t.dims3()?;
    let Some(data) = (match storage {
        Storage::Cpu(storage) => T::values(storage),
        _ => None,
    }) else {
        return Err(candle_core::Error::Msg(format!(
            "CPU attention needs keys and values of one type (f32 or f16) on the CPU, got {:?}",
            t.dtype()
        ))
        .into());
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
    Ok(HeadRows {
        data: &data[layout.start_offset()..end],
        head_stride,
        head_dim,
    })
}

/// One part of a sequence's keys and values: positions `start..start + len`.
#[derive(Clone, Copy)]
struct Part<'a, T> {
    keys: HeadRows<'a, T>,
    values: HeadRows<'a, T>,
    start: usize,
    len: usize,
}

/// Which instructions the two reductions use; chosen once per call from CPUID and the head
/// size, so every query of a model on one machine takes the same path.
///
/// `Avx2` defines the order of every sum: a score is eight lanes of fused multiply-adds
/// over the head, in order, then [`lane_sum`](crate::nn::simd::lane_sum)'s tree; a weighted
/// sum is one fused multiply-add chain per output element, in order of the keys. `Avx512`
/// takes two queries at a time (one per 256-bit half), up to eight per key and value load,
/// and gives the same bits, so results do not depend on the CPU either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

impl Kernel {
    pub(super) fn detect(head_dim: usize) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if head_dim.is_multiple_of(8) && crate::nn::simd::avx2_fma() {
            use crate::nn::simd::Isa;
            if head_dim.is_multiple_of(16)
                && head_dim <= avx512::MAX_HEAD_DIM
                && Isa::best() == Some(Isa::Avx512Vnni)
            {
                return Kernel::Avx512;
            }
            return Kernel::Avx2;
        }
        let _ = head_dim;
        Kernel::Portable
    }

    /// Whether [`Kernel::scores_pair`] and [`Kernel::weighted_sum_pair`] do two queries for
    /// the price of about one.
    fn pairs(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx512 {
            return true;
        }
        false
    }

    /// How many queries [`Kernel::scores_group`] and [`Kernel::weighted_sum_group`] take at
    /// once for the price of about one: with AVX-512 two per 512-bit vector, four such pairs;
    /// with AVX2 four, sharing each key and value load.
    fn group_width(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => 8,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => 4,
            Kernel::Portable => 1,
        }
    }

    /// [`Kernel::scores`] of one to eight queries over the same keys (`out[0].len()` of
    /// them): eight, four or two together where [`Kernel::group_width`] allows.
    fn scores_group<T: Stored>(
        self,
        queries: &[&[f32]],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        out: &mut [&mut [f32]],
    ) {
        match (queries, out) {
            // SAFETY: `group_width` gave 8 only for `Avx512` (so `detect` saw AVX-512, AVX2
            // and FMA, and a head of a multiple of 16 up to `MAX_HEAD_DIM`).
            #[cfg(target_arch = "x86_64")]
            ([a, b, c, d, e, f, g, h], [o0, o1, o2, o3, o4, o5, o6, o7])
                if self.group_width() == 8 =>
            unsafe {
                avx512::scores_oct(
                    [a, b, c, d, e, f, g, h],
                    keys,
                    head,
                    scale,
                    [o0, o1, o2, o3, o4, o5, o6, o7],
                )
            },
            // SAFETY: as above; four queries stay in registers only up to `MAX_QUAD_HEAD_DIM`.
            #[cfg(target_arch = "x86_64")]
            ([a, b, c, d], [w, x, y, z])
                if self == Kernel::Avx512 && a.len() <= avx512::MAX_QUAD_HEAD_DIM =>
            unsafe { avx512::scores_quad([a, b, c, d], keys, head, scale, [w, x, y, z]) },
            // SAFETY: `group_width` gave 4 for `Avx2` (so `detect` saw AVX2, FMA and a head of
            // a multiple of 8).
            #[cfg(target_arch = "x86_64")]
            ([a, b, c, d], [w, x, y, z]) if self == Kernel::Avx2 => unsafe {
                avx2::scores_quad([a, b, c, d], keys, head, scale, [w, x, y, z])
            },
            ([a, b], [x, y]) if self.pairs() => self.scores_pair([a, b], keys, head, scale, x, y),
            (queries, out) => {
                for (query, out) in queries.iter().zip(out.iter_mut()) {
                    self.scores(query, keys, head, scale, out);
                }
            }
        }
    }

    /// [`Kernel::weighted_sum`] of one to eight queries' weights over the same values.
    fn weighted_sum_group<T: Stored>(
        self,
        weights: &[&[f32]],
        values: HeadRows<'_, T>,
        head: usize,
        out: &mut [&mut [f32]],
    ) {
        match (weights, out) {
            // SAFETY: as for `scores_group`.
            #[cfg(target_arch = "x86_64")]
            ([a, b, c, d, e, f, g, h], [o0, o1, o2, o3, o4, o5, o6, o7])
                if self.group_width() == 8 =>
            unsafe {
                avx512::weighted_sum_oct(
                    [a, b, c, d, e, f, g, h],
                    values,
                    head,
                    [o0, o1, o2, o3, o4, o5, o6, o7],
                )
            },
            #[cfg(target_arch = "x86_64")]
            ([a, b, c, d], [w, x, y, z])
                if self == Kernel::Avx512 && w.len() <= avx512::MAX_QUAD_HEAD_DIM =>
            unsafe { avx512::weighted_sum_quad([a, b, c, d], values, head, [w, x, y, z]) },
            // SAFETY: as for `scores_group`.
            #[cfg(target_arch = "x86_64")]
            ([a, b, c, d], [w, x, y, z]) if self == Kernel::Avx2 => unsafe {
                avx2::weighted_sum_quad([a, b, c, d], values, head, [w, x, y, z])
            },
            ([a, b], [x, y]) if self.pairs() => {
                self.weighted_sum_pair([a, b], values, head, [&mut **x, &mut **y])
            }
            (weights, out) => {
                for (weights, out) in weights.iter().zip(out.iter_mut()) {
                    self.weighted_sum(weights, values, head, out);
                }
            }
        }
    }

    /// [`Kernel::scores`] of two queries over the same keys (`first.len()` of them).
    #[allow(clippy::too_many_arguments)]
    fn scores_pair<T: Stored>(
        self,
        queries: [&[f32]; 2],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        first: &mut [f32],
        second: &mut [f32],
    ) {
        match self {
            // SAFETY: `detect` saw AVX-512 (through `Isa::best`), AVX2 and FMA, and a head
            // size that is a multiple of 16 and at most `MAX_HEAD_DIM`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                avx512::scores_pair(queries, keys, head, scale, first, second)
            },
            _ => {
                self.scores(queries[0], keys, head, scale, first);
                self.scores(queries[1], keys, head, scale, second);
            }
        }
    }

    /// Adds one more key's `weight · value` to a [`Kernel::weighted_sum`], as the sum would
    /// have had it been one key longer.
    fn add_weighted<T: Stored>(self, weight: f32, value: &[T], out: &mut [f32]) {
        match self {
            // The vector kernels' chains are fused multiply-adds.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => {
                for (o, &v) in out.iter_mut().zip(value) {
                    *o = weight.mul_add(v.to_f32(), *o);
                }
            }
            Kernel::Portable => {
                for (o, &v) in out.iter_mut().zip(value) {
                    *o += weight * v.to_f32();
                }
            }
        }
    }

    /// [`Kernel::weighted_sum`] of two queries' weights over the same values.
    fn weighted_sum_pair<T: Stored>(
        self,
        weights: [&[f32]; 2],
        values: HeadRows<'_, T>,
        head: usize,
        out: [&mut [f32]; 2],
    ) {
        let [first, second] = out;
        match self {
            // SAFETY: as for `scores_pair`; both outputs are one head long.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                avx512::weighted_sum_pair(weights, values, head, first, second)
            },
            _ => {
                self.weighted_sum(weights[0], values, head, first);
                self.weighted_sum(weights[1], values, head, second);
            }
        }
    }

    /// `scores[j] = scale · query · key_j` for every `j < scores.len()`.
    fn scores<T: Stored>(
        self,
        query: &[f32],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        match self {
            // SAFETY: `detect` saw AVX2 and FMA, and the head size is a multiple of 8.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => unsafe {
                avx2::scores(query, keys, head, scale, scores)
            },
            Kernel::Portable => {
                for (j, score) in scores.iter_mut().enumerate() {
                    let key = keys.row(head, j);
                    *score = query
                        .iter()
                        .zip(key)
                        .fold(0f32, |acc, (q, k)| acc + q * k.to_f32())
                        * scale;
                }
            }
        }
    }

    /// `out += Σ_j weights[j] · value_j`, added in order of `j` onto `out`'s values (so a
    /// sum over keys in two parts is two calls with the bits of one).
    fn weighted_sum<T: Stored>(
        self,
        weights: &[f32],
        values: HeadRows<'_, T>,
        head: usize,
        out: &mut [f32],
    ) {
        match self {
            // SAFETY: as for `scores`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => unsafe {
                avx2::weighted_sum(weights, values, head, out)
            },
            Kernel::Portable => {
                for (j, &w) in weights.iter().enumerate() {
                    for (o, v) in out.iter_mut().zip(values.row(head, j)) {
                        *o += w * v.to_f32();
                    }
                }
            }
        }
    }
}

impl Kernel {
    /// Softmax's numerators in place (`exp(score - max)`), and their sum: three passes, the
    /// subtraction within `exp`'s. The vector kernels take the same maximum (it does not
    /// depend on the order) and add in [`sum_in_lanes`]'s order, so every kernel gives the
    /// same bits.
    pub(super) fn softmax_numerators(self, weights: &mut [f32]) -> f32 {
        match self {
            // SAFETY: `detect` saw AVX2 and FMA for both.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => unsafe {
                let max = avx2::max_in_lanes(weights);
                crate::nn::exp::exp_shifted_in_place(weights, max);
                avx2::sum_in_lanes(weights)
            },
            Kernel::Portable => {
                let max = max_in_lanes(weights);
                crate::nn::exp::exp_shifted_in_place(weights, max);
                sum_in_lanes(weights)
            }
        }
    }
}

fn normalize(out: &mut [f32], sum: f32) {
    let inv = 1.0 / sum;
    for d in out.iter_mut() {
        *d *= inv;
    }
}

/// Causal attention of one sequence's `n` new queries (`[heads, n, head_dim]`, positions
/// `past..past + n`) over its keys and values, in parts in order of position (each
/// `[kv_heads, positions, head_dim]`, f32 on the CPU; the last holds at least the `n` new
/// positions): `[n, heads * head_dim]`. A part boundary does not change a bit: scores are
/// per key, and each weighted sum's chain runs on from one part into the next.
pub(super) fn attend(queries: &Tensor, parts: &[(Tensor, Tensor)]) -> Result<Tensor> {
    attend_with(Kernel::detect(queries.dim(2)?), queries, parts)
}

pub(super) fn attend_with(
    kernel: Kernel,
    queries: &Tensor,
    parts: &[(Tensor, Tensor)],
) -> Result<Tensor> {
    match parts.first().map(|(keys, _)| keys.dtype()) {
        Some(DType::F16) => attend_stored::<f16>(kernel, queries, parts),
        _ => attend_stored::<f32>(kernel, queries, parts),
    }
}

/// [`attend_with`] over keys and values kept as `T`.
fn attend_stored<T: Stored>(
    kernel: Kernel,
    queries: &Tensor,
    parts: &[(Tensor, Tensor)],
) -> Result<Tensor> {
    let (n_heads, n, head_dim) = queries.dims3()?;
    let shape_error = || {
        candle_core::Error::Msg(format!(
            "attention shapes do not fit: queries {:?}, keys and values {:?}",
            queries.dims(),
            parts
                .iter()
                .map(|(k, v)| (k.dims().to_vec(), v.dims().to_vec()))
                .collect::<Vec<_>>()
        ))
    };
    let (mut total, mut n_kv_heads) = (0, None);
    for (keys, values) in parts {
        let (heads, len, key_dim) = keys.dims3()?;
        if values.dims3()? != (heads, len, key_dim)
            || key_dim != head_dim
            || n_kv_heads.is_some_and(|h| h != heads)
        {
            return Err(shape_error().into());
        }
        n_kv_heads = Some(heads);
        total += len;
    }
    let n_kv_heads = n_kv_heads.unwrap_or(0);
    let last_len = parts.last().map_or(0, |(k, _)| k.dim(1).unwrap_or(0));
    if n > last_len || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(shape_error().into());
    }
    let past = total - n;
    let group = n_heads / n_kv_heads;
    let queries = queries
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
    let mut out = vec![0f32; n * n_heads * head_dim];
    let out_ptr = out.as_mut_ptr() as usize;
    // A KV head's queries in order of position, then head: the heads of a group at one
    // position see the same keys, so a group of queries shares every key and value load.
    let per_kv_head = n * group;
    // Up to `QUERY_TILE` queries per work item, in whole groups of eight or four where a
    // thread gets that many; fewer where there are threads to spare (a decode step on many
    // cores).
    let threads = pool_threads();
    let chunk = (n_kv_heads * per_kv_head / threads).clamp(1, QUERY_TILE);
    let chunk = if (4..8).contains(&chunk) {
        chunk / 4 * 4
    } else {
        chunk
    };
    let chunks = per_kv_head.div_ceil(chunk);
    // SAFETY (for callers): each (query, head) row of `out` is written by exactly one work
    // item, and `out` outlives the pool's call.
    let out_row = |i: usize, head: usize| unsafe {
        std::slice::from_raw_parts_mut(
            (out_ptr as *mut f32).add((i * n_heads + head) * head_dim),
            head_dim,
        )
    };
    let query = |head: usize, i: usize| &queries[(head * n + i) * head_dim..][..head_dim];
    let width = kernel.group_width();
    let run = |items: std::ops::Range<usize>, parts: &[Part<'_, T>]| {
        // The new positions' own keys (each query's last ones) are all in the last part.
        let Some(&last) = parts.last() else {
            return;
        };
        let mut weights: [Vec<f32>; 8] = Default::default();
        for item in items {
            let (kv_head, chunk_index) = (item / chunks, item % chunks);
            let end = ((chunk_index + 1) * chunk).min(per_kv_head);
            let mut next = chunk_index * chunk;
            while next < end {
                // Eight, four, two or one at a time: a kernel takes a whole group or none.
                let count = [8, 4, 2, 1]
                    .into_iter()
                    .find(|&c| c <= width && c <= end - next)
                    .unwrap_or(1);
                // (head, position, keys seen) of each query in the group.
                let members: Vec<(usize, usize, usize)> = (next..next + count)
                    .map(|s| {
                        let (i, h) = (s / group, s % group);
                        (kv_head * group + h, i, past + i + 1)
                    })
                    .collect();
                // The first has the fewest keys: all share those, and each adds its own last
                // ones after them, as its single kernel would.
                let shared = members[0].2;
                let group_queries: Vec<&[f32]> =
                    members.iter().map(|&(h, i, _)| query(h, i)).collect();
                let weights = &mut weights[..count];
                for (w, &(_, _, seen)) in weights.iter_mut().zip(&members) {
                    w.clear();
                    w.resize(seen, 0.0);
                }
                // The shared keys part by part: a key's score does not depend on its part.
                for part in parts.iter().take_while(|p| p.start < shared) {
                    let until = (part.start + part.len).min(shared);
                    let mut heads: Vec<&mut [f32]> = weights
                        .iter_mut()
                        .map(|w| &mut w[part.start..until])
                        .collect();
                    kernel.scores_group(&group_queries, part.keys, kv_head, scale, &mut heads);
                }
                for (w, &(h, i, seen)) in weights.iter_mut().zip(&members) {
                    if seen > shared {
                        kernel.scores(
                            query(h, i),
                            last.keys.skip(shared - last.start),
                            kv_head,
                            scale,
                            &mut w[shared..],
                        );
                    }
                }
                let sums: Vec<f32> = weights
                    .iter_mut()
                    .map(|w| kernel.softmax_numerators(w))
                    .collect();
                let mut outs: Vec<&mut [f32]> =
                    members.iter().map(|&(h, i, _)| out_row(i, h)).collect();
                // Each sum's chain runs on from one part into the next (the rows start at 0).
                for part in parts.iter().take_while(|p| p.start < shared) {
                    let until = (part.start + part.len).min(shared);
                    let part_weights: Vec<&[f32]> =
                        weights.iter().map(|w| &w[part.start..until]).collect();
                    kernel.weighted_sum_group(&part_weights, part.values, kv_head, &mut outs);
                }
                for ((out, w), sum) in outs.into_iter().zip(weights.iter()).zip(sums) {
                    for (j, &weight) in w.iter().enumerate().skip(shared) {
                        kernel.add_weighted(weight, last.values.row(kv_head, j - last.start), out);
                    }
                    normalize(out, sum);
                }
                next += count;
            }
        }
    };
    // Multiply-adds of the whole call; below this, waking the other threads costs more.
    let work = n_heads * n * (past + n.div_ceil(2)) * head_dim * 2;
    let storages: Vec<_> = parts
        .iter()
        .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()))
        .collect();
    let mut rows = Vec::with_capacity(parts.len());
    let mut start = 0;
    for ((keys, values), ((k_storage, k_layout), (v_storage, v_layout))) in
        parts.iter().zip(&storages)
    {
        let len = keys.dim(1)?;
        if len > 0 {
            rows.push(Part {
                keys: head_rows(keys, k_storage, k_layout)?,
                values: head_rows(values, v_storage, v_layout)?,
                start,
                len,
            });
        }
        start += len;
    }
    if work < INLINE_WORK {
        run(0..n_kv_heads * chunks, &rows);
    } else {
        candle_core::utils::barrier_pool()
            .execute_chunked(n_kv_heads * chunks, |items| run(items, &rows));
    }
    drop(rows);
    drop(storages);
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

    use super::{HeadRows, Stored};
    use crate::nn::simd::{lane_sum, lane_sums};

    /// [`super::max_in_lanes`] eight lanes to a vector. `vmaxps` returns its second operand
    /// when the first is NaN, so a NaN score is passed over as `f32::max` passes it over.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn max_in_lanes(values: &[f32]) -> f32 {
        let mut lanes = _mm256_set1_ps(f32::NEG_INFINITY);
        let chunks = values.chunks_exact(8);
        let tail = chunks.remainder();
        for chunk in chunks {
            // SAFETY: the chunk holds eight values.
            lanes = _mm256_max_ps(unsafe { _mm256_loadu_ps(chunk.as_ptr()) }, lanes);
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds eight values.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), lanes) };
        out.into_iter()
            .chain(tail.iter().copied())
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// [`super::sum_in_lanes`] eight lanes to a vector: the same additions in the same order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn sum_in_lanes(values: &[f32]) -> f32 {
        let mut lanes = _mm256_setzero_ps();
        let chunks = values.chunks_exact(8);
        let tail = chunks.remainder();
        for chunk in chunks {
            // SAFETY: the chunk holds eight values.
            lanes = _mm256_add_ps(lanes, unsafe { _mm256_loadu_ps(chunk.as_ptr()) });
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds eight values.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), lanes) };
        let [a, b, c, d, e, f, g, h] = out;
        let sum = ((a + b) + (c + d)) + ((e + f) + (g + h));
        tail.iter().fold(sum, |acc, &v| acc + v)
    }

    /// One key's dot product: eight lanes over the head, then [`lane_sum`].
    ///
    /// # Safety
    /// AVX2 and FMA; `query` and `key` hold the same multiple of 8 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot<T: Stored>(query: &[f32], key: &[T]) -> __m256 {
        let mut acc = _mm256_setzero_ps();
        for c in (0..query.len()).step_by(8) {
            // SAFETY: `c + 8 <= len` for both slices.
            let (q, k) = unsafe {
                (
                    _mm256_loadu_ps(query.as_ptr().add(c)),
                    T::load8(key.as_ptr().add(c)),
                )
            };
            acc = _mm256_fmadd_ps(q, k, acc);
        }
        acc
    }

    /// # Safety
    /// AVX2 and FMA; the head size is a multiple of 8 and `keys` holds `scores.len()` rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores<T: Stored>(
        query: &[f32],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let len = scores.len();
        let mut j = 0;
        // Eight keys at a time: eight independent chains keep both FMA units busy, and
        // `lane_sums` finishes the eight scores together. Each key's own sum runs exactly as
        // it does alone below, so where a key falls does not change its score.
        while j + 8 <= len {
            let mut acc = [_mm256_setzero_ps(); 8];
            let dim = query.len();
            let block = keys.block(head, j, 8).as_ptr();
            for c in (0..dim).step_by(8) {
                // SAFETY: `c + 8 <= dim`; the block holds eight rows of `dim` values.
                let q = unsafe { _mm256_loadu_ps(query.as_ptr().add(c)) };
                for (r, a) in acc.iter_mut().enumerate() {
                    let k = unsafe { T::load8(block.add(r * dim + c)) };
                    *a = _mm256_fmadd_ps(q, k, *a);
                }
            }
            let sums = _mm256_mul_ps(lane_sums(acc), _mm256_set1_ps(scale));
            // SAFETY: `j + 8 <= scores.len()`.
            unsafe { _mm256_storeu_ps(scores.as_mut_ptr().add(j), sums) };
            j += 8;
        }
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
                    let k = unsafe { T::load8(row.as_ptr().add(c)) };
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

    /// [`scores`] of four queries over the same keys: each key piece is loaded (and widened
    /// from f16) once for four queries, where alone the widening took one instruction per
    /// multiply-add. A score's eight lanes are the same chains, finished by the same tree.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; the queries hold the head size, a multiple of 8; `keys` holds
    /// `out[0].len()` rows, and every `out` is as long.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores_quad<T: Stored>(
        queries: [&[f32]; 4],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        mut out: [&mut [f32]; 4],
    ) {
        let dim = queries[0].len();
        let len = out[0].len();
        debug_assert!(queries.iter().all(|q| q.len() == dim) && dim.is_multiple_of(8));
        debug_assert!(out.iter().all(|o| o.len() == len));
        let scale_v = _mm256_set1_ps(scale);
        let mut j = 0;
        while j + 8 <= len {
            let block = keys.block(head, j, 8).as_ptr();
            // Per query, the eight keys' chains; two keys at a time are eight chains in
            // registers beside the two key pieces.
            let mut chains = [[_mm256_setzero_ps(); 8]; 4];
            for r in (0..8).step_by(2) {
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                for c in (0..dim).step_by(8) {
                    // SAFETY: the block holds eight rows of `dim` values; `c + 8 <= dim`.
                    let k = [r, r + 1].map(|r| unsafe { T::load8(block.add(r * dim + c)) });
                    for (acc, query) in acc.iter_mut().zip(queries) {
                        // SAFETY: `c + 8 <= dim`.
                        let q = unsafe { _mm256_loadu_ps(query.as_ptr().add(c)) };
                        acc[0] = _mm256_fmadd_ps(q, k[0], acc[0]);
                        acc[1] = _mm256_fmadd_ps(q, k[1], acc[1]);
                    }
                }
                for (chains, [first, second]) in chains.iter_mut().zip(acc) {
                    chains[r] = first;
                    chains[r + 1] = second;
                }
            }
            for (out, chains) in out.iter_mut().zip(chains) {
                let sums = _mm256_mul_ps(lane_sums(chains), scale_v);
                // SAFETY: `j + 8 <= len` for every output.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j), sums) };
            }
            j += 8;
        }
        if j < len {
            for (query, out) in queries.into_iter().zip(out) {
                // SAFETY: as above; the single kernel gives each key the same bits.
                unsafe { scores(query, keys.skip(j), head, scale, &mut out[j..]) };
            }
        }
    }

    /// [`weighted_sum`] of four queries' weights over the same values: each value piece is
    /// loaded (and widened) once for four sums. Each element is the same chain over the keys.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; every `out` holds the head size, a multiple of 8; `values` holds
    /// as many rows as there are weights, the same for all four.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum_quad<T: Stored>(
        weights: [&[f32]; 4],
        values: HeadRows<'_, T>,
        head: usize,
        mut out: [&mut [f32]; 4],
    ) {
        let dim = out[0].len();
        debug_assert!(out.iter().all(|o| o.len() == dim) && dim.is_multiple_of(8));
        debug_assert!(weights.iter().all(|w| w.len() == weights[0].len()));
        // Sixteen values of the head at a time: four queries' two vectors are eight chains.
        for start in (0..dim).step_by(16) {
            let end = (start + 16).min(dim);
            let [a, b, c, d] = &mut out;
            let parts = [
                &mut a[start..end],
                &mut b[start..end],
                &mut c[start..end],
                &mut d[start..end],
            ];
            // SAFETY: passed on; each part holds 16 values, or 8 at the head's end.
            unsafe {
                if dim - start >= 16 {
                    weighted_sum_quad_slice::<T, 2>(weights, values, head, start, parts);
                } else {
                    weighted_sum_quad_slice::<T, 1>(weights, values, head, start, parts);
                }
            }
        }
    }

    /// [`weighted_sum_quad`] on head values `start..start + 8 * VECTORS`, held in `out`.
    ///
    /// # Safety
    /// As [`weighted_sum_quad`]; every `out` holds `8 * VECTORS` values and the rows of
    /// `values` at least `start + 8 * VECTORS`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_sum_quad_slice<T: Stored, const VECTORS: usize>(
        weights: [&[f32]; 4],
        values: HeadRows<'_, T>,
        head: usize,
        start: usize,
        out: [&mut [f32]; 4],
    ) {
        let mut acc = [[_mm256_setzero_ps(); VECTORS]; 4];
        for (acc, out) in acc.iter_mut().zip(&out) {
            for (c, a) in acc.iter_mut().enumerate() {
                // SAFETY: each output holds `8 * VECTORS` values.
                *a = unsafe { _mm256_loadu_ps(out.as_ptr().add(8 * c)) };
            }
        }
        for j in 0..weights[0].len() {
            let row = values.row(head, j).as_ptr();
            // SAFETY: the row holds at least `start + 8 * VECTORS` values.
            let v: [__m256; VECTORS] =
                std::array::from_fn(|c| unsafe { T::load8(row.add(start + 8 * c)) });
            for (acc, w) in acc.iter_mut().zip(&weights) {
                // SAFETY: every weight slice holds `weights[0].len()` values.
                let w = _mm256_set1_ps(unsafe { *w.get_unchecked(j) });
                for (a, &v) in acc.iter_mut().zip(&v) {
                    *a = _mm256_fmadd_ps(w, v, *a);
                }
            }
        }
        for (out, acc) in out.into_iter().zip(acc) {
            for (c, a) in acc.into_iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), a) };
            }
        }
    }

    /// # Safety
    /// AVX2 and FMA; `out.len()` is the head size, a multiple of 8, and `values` holds
    /// `weights.len()` rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum<T: Stored>(
        weights: &[f32],
        values: HeadRows<'_, T>,
        head: usize,
        out: &mut [f32],
    ) {
        // Up to 64 values of the head at a time, kept in eight registers across all keys.
        for start in (0..out.len()).step_by(64) {
            let vectors = ((out.len() - start) / 8).min(8);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (c, a) in acc.iter_mut().enumerate().take(vectors) {
                // SAFETY: `start + 8 * c + 8 <= head size`.
                *a = unsafe { _mm256_loadu_ps(out.as_ptr().add(start + 8 * c)) };
            }
            for (j, &w) in weights.iter().enumerate() {
                let w = _mm256_set1_ps(w);
                let row = values.row(head, j);
                for (c, a) in acc.iter_mut().enumerate().take(vectors) {
                    // SAFETY: `start + 8 * c + 8 <= head size`.
                    let v = unsafe { T::load8(row.as_ptr().add(start + 8 * c)) };
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

/// Two queries at a time in 512-bit vectors, one per 256-bit half, with the same bits as
/// [`avx2`] gives each alone: a score's eight lanes are the same eight fused chains, finished
/// by the same tree, and a weighted sum's elements the same chains over the keys.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{HeadRows, Stored};
    use crate::nn::simd::lane_sums;

    /// The largest head whose two queries stay in registers.
    pub(super) const MAX_HEAD_DIM: usize = 128;

    /// `low` in the low 256 bits, `high` in the high ones.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn join(low: __m256, high: __m256) -> __m512 {
        let low = _mm512_castpd256_pd512(_mm256_castps_pd(low));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(low, _mm256_castps_pd(high)))
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn low_half(v: __m512) -> __m256 {
        _mm512_castps512_ps256(v)
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn high_half(v: __m512) -> __m256 {
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
    }

    /// # Safety
    /// AVX-512F, AVX2 and FMA; both queries hold the head size, a multiple of 16 and at most
    /// [`MAX_HEAD_DIM`]; `keys` holds `first.len()` rows and `second` is as long as `first`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn scores_pair<T: Stored>(
        queries: [&[f32]; 2],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        first: &mut [f32],
        second: &mut [f32],
    ) {
        // SAFETY: passed on from the caller; the const is the head size's eighth.
        unsafe {
            match queries[0].len() / 8 {
                2 => scores_pair_n::<T, 2>(queries, keys, head, scale, first, second),
                4 => scores_pair_n::<T, 4>(queries, keys, head, scale, first, second),
                6 => scores_pair_n::<T, 6>(queries, keys, head, scale, first, second),
                8 => scores_pair_n::<T, 8>(queries, keys, head, scale, first, second),
                10 => scores_pair_n::<T, 10>(queries, keys, head, scale, first, second),
                12 => scores_pair_n::<T, 12>(queries, keys, head, scale, first, second),
                14 => scores_pair_n::<T, 14>(queries, keys, head, scale, first, second),
                _ => scores_pair_n::<T, 16>(queries, keys, head, scale, first, second),
            }
        }
    }

    /// `CHUNKS` eight-value pieces of a head.
    ///
    /// # Safety
    /// As [`scores_pair`], with a head of `8 * CHUNKS` values.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn scores_pair_n<T: Stored, const CHUNKS: usize>(
        queries: [&[f32]; 2],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        first: &mut [f32],
        second: &mut [f32],
    ) {
        debug_assert!(queries.iter().all(|q| q.len() == 8 * CHUNKS));
        debug_assert_eq!(first.len(), second.len());
        let [a, b] = queries;
        let mut q = [_mm512_setzero_ps(); CHUNKS];
        for (c, q) in q.iter_mut().enumerate() {
            // SAFETY: both queries hold `8 * CHUNKS` values.
            *q = unsafe {
                join(
                    _mm256_loadu_ps(a.as_ptr().add(8 * c)),
                    _mm256_loadu_ps(b.as_ptr().add(8 * c)),
                )
            };
        }
        let len = first.len();
        let scale_v = _mm256_set1_ps(scale);
        let mut j = 0;
        while j + 8 <= len {
            let mut acc = [_mm512_setzero_ps(); 8];
            let block = keys.block(head, j, 8).as_ptr();
            for (c, &qc) in q.iter().enumerate() {
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: the block holds eight rows of `8 * CHUNKS` values.
                    let k = unsafe { T::load8(block.add(r * 8 * CHUNKS + 8 * c)) };
                    let k = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(k)));
                    *acc = _mm512_fmadd_ps(qc, k, *acc);
                }
            }
            let mut lows = [_mm256_setzero_ps(); 8];
            let mut highs = [_mm256_setzero_ps(); 8];
            for ((low, high), &v) in lows.iter_mut().zip(&mut highs).zip(&acc) {
                *low = low_half(v);
                *high = high_half(v);
            }
            let firsts = _mm256_mul_ps(lane_sums(lows), scale_v);
            let seconds = _mm256_mul_ps(lane_sums(highs), scale_v);
            // SAFETY: `j + 8 <= len` for both.
            unsafe {
                _mm256_storeu_ps(first.as_mut_ptr().add(j), firsts);
                _mm256_storeu_ps(second.as_mut_ptr().add(j), seconds);
            }
            j += 8;
        }
        if j < len {
            // SAFETY: as above; the single kernel gives each key the same bits.
            unsafe {
                super::avx2::scores(a, keys.skip(j), head, scale, &mut first[j..]);
                super::avx2::scores(b, keys.skip(j), head, scale, &mut second[j..]);
            }
        }
    }

    /// # Safety
    /// AVX-512F, AVX2 and FMA; both outputs hold the head size, a multiple of 16 and at most
    /// [`MAX_HEAD_DIM`]; `values` holds as many rows as there are weights, the same for both.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum_pair<T: Stored>(
        weights: [&[f32]; 2],
        values: HeadRows<'_, T>,
        head: usize,
        first: &mut [f32],
        second: &mut [f32],
    ) {
        // SAFETY: passed on from the caller; the const is the head size's sixteenth.
        unsafe {
            match first.len() / 16 {
                1 => weighted_sum_pair_n::<T, 1>(weights, values, head, first, second),
                2 => weighted_sum_pair_n::<T, 2>(weights, values, head, first, second),
                3 => weighted_sum_pair_n::<T, 3>(weights, values, head, first, second),
                4 => weighted_sum_pair_n::<T, 4>(weights, values, head, first, second),
                5 => weighted_sum_pair_n::<T, 5>(weights, values, head, first, second),
                6 => weighted_sum_pair_n::<T, 6>(weights, values, head, first, second),
                7 => weighted_sum_pair_n::<T, 7>(weights, values, head, first, second),
                _ => weighted_sum_pair_n::<T, 8>(weights, values, head, first, second),
            }
        }
    }

    /// # Safety
    /// As [`weighted_sum_pair`], with a head of `16 * VECTORS` values.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn weighted_sum_pair_n<T: Stored, const VECTORS: usize>(
        weights: [&[f32]; 2],
        values: HeadRows<'_, T>,
        head: usize,
        first: &mut [f32],
        second: &mut [f32],
    ) {
        debug_assert!(first.len() == 16 * VECTORS && second.len() == 16 * VECTORS);
        debug_assert_eq!(weights[0].len(), weights[1].len());
        // Both queries' sums share every value load; 2 × VECTORS independent chains, each
        // starting from what its output holds.
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; 2];
        for (acc, out) in acc.iter_mut().zip([&*first, &*second]) {
            for (c, a) in acc.iter_mut().enumerate() {
                // SAFETY: the output holds `16 * VECTORS` values.
                *a = unsafe { _mm512_loadu_ps(out.as_ptr().add(16 * c)) };
            }
        }
        for (j, (&wa, &wb)) in weights[0].iter().zip(weights[1]).enumerate() {
            let (wa, wb) = (_mm512_set1_ps(wa), _mm512_set1_ps(wb));
            let row = values.row(head, j);
            let [acc_a, acc_b] = &mut acc;
            for (c, (a, b)) in acc_a.iter_mut().zip(acc_b.iter_mut()).enumerate() {
                // SAFETY: the row holds `16 * VECTORS` values.
                let v = unsafe { T::load16(row.as_ptr().add(16 * c)) };
                *a = _mm512_fmadd_ps(wa, v, *a);
                *b = _mm512_fmadd_ps(wb, v, *b);
            }
        }
        for (out, acc) in [first, second].into_iter().zip(acc) {
            for (c, v) in acc.into_iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), v) };
            }
        }
    }

    /// [`lane_sums`] of the low halves of `v` and of its high halves at once: the same
    /// additions of the same values, a 512-bit shuffle in place of the 256-bit one and every
    /// later step within 128-bit blocks. Block 0 holds the sums of `v[0..4]`'s low halves,
    /// block 1 of their high halves, blocks 2 and 3 the same for `v[4..8]`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn lane_sums_x2(v: [__m512; 8]) -> __m512 {
        // `[a.0 + a.1, a.2 + a.3, b.0 + b.1, b.2 + b.3]` in 128-bit blocks: each 256-bit
        // half's two blocks added, as `lane_sums` adds them.
        let halves = |a: __m512, b: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            )
        };
        let (t04, t15, t26, t37) = (
            halves(v[0], v[4]),
            halves(v[1], v[5]),
            halves(v[2], v[6]),
            halves(v[3], v[7]),
        );
        let pairs = |a: __m512, b: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
            )
        };
        let (x01, x23) = (pairs(t04, t15), pairs(t26, t37));
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(x01, x23),
            _mm512_shuffle_ps::<0b11_01_11_01>(x01, x23),
        )
    }

    /// Queries `2p` and `2p + 1` in pair `p`, one per 256-bit half, in `CHUNKS` vectors.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn query_pairs<const CHUNKS: usize, const PAIRS: usize>(
        queries: &[&[f32]],
    ) -> [[__m512; CHUNKS]; PAIRS] {
        assert!(queries.len() == 2 * PAIRS && queries.iter().all(|q| q.len() == 8 * CHUNKS));
        std::array::from_fn(|p| {
            std::array::from_fn(|c| {
                // SAFETY: every query holds `8 * CHUNKS` values (asserted above).
                unsafe {
                    join(
                        _mm256_loadu_ps(queries[2 * p].as_ptr().add(8 * c)),
                        _mm256_loadu_ps(queries[2 * p + 1].as_ptr().add(8 * c)),
                    )
                }
            })
        })
    }

    /// The scores of two pairs of queries for four keys (`acc[p][r]`: pair `p`, key `r`),
    /// finished by one [`lane_sums_x2`], scaled and stored at `j` in each query's output.
    ///
    /// # Safety
    /// Every output holds at least `j + 4` values.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn store_four_scores(
        acc: [[__m512; 4]; 2],
        scale: __m512,
        out: [&mut [f32]; 4],
        j: usize,
    ) {
        let [a, b] = acc;
        let sums = _mm512_mul_ps(
            lane_sums_x2([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]),
            scale,
        );
        let blocks = [
            _mm512_extractf32x4_ps::<0>(sums),
            _mm512_extractf32x4_ps::<1>(sums),
            _mm512_extractf32x4_ps::<2>(sums),
            _mm512_extractf32x4_ps::<3>(sums),
        ];
        for (out, block) in out.into_iter().zip(blocks) {
            debug_assert!(out.len() >= j + 4);
            // SAFETY: the caller's.
            unsafe { _mm_storeu_ps(out.as_mut_ptr().add(j), block) };
        }
    }

    /// The largest head whose four queries stay in registers beside their sums.
    pub(super) const MAX_QUAD_HEAD_DIM: usize = 64;

    /// [`scores_pair`] for two pairs of queries: every key load serves four queries.
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA; the queries hold the head size, a multiple of 16 and at most
    /// [`MAX_QUAD_HEAD_DIM`]; `keys` holds `out[0].len()` rows, and every `out` is as long.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn scores_quad<T: Stored>(
        queries: [&[f32]; 4],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        out: [&mut [f32]; 4],
    ) {
        // SAFETY: passed on from the caller; the const is the head size's eighth.
        unsafe {
            match queries[0].len() / 8 {
                2 => scores_quad_n::<T, 2>(queries, keys, head, scale, out),
                4 => scores_quad_n::<T, 4>(queries, keys, head, scale, out),
                6 => scores_quad_n::<T, 6>(queries, keys, head, scale, out),
                _ => scores_quad_n::<T, 8>(queries, keys, head, scale, out),
            }
        }
    }

    /// # Safety
    /// As [`scores_quad`], with a head of `8 * CHUNKS` values.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn scores_quad_n<T: Stored, const CHUNKS: usize>(
        queries: [&[f32]; 4],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        mut out: [&mut [f32]; 4],
    ) {
        debug_assert!(queries.iter().all(|q| q.len() == 8 * CHUNKS));
        let len = out[0].len();
        debug_assert!(out.iter().all(|o| o.len() == len));
        // Pair `p` holds queries `2p` and `2p + 1`, one per half.
        let q: [[__m512; CHUNKS]; 2] = query_pairs(&queries);
        let scale_v = _mm512_set1_ps(scale);
        let mut j = 0;
        // Four keys at a time: eight chains, and one `lane_sums` per pair finishes a pair's
        // eight scores (four keys of each query).
        while j + 4 <= len {
            let [mut acc_a, mut acc_b] = [[_mm512_setzero_ps(); 4]; 2];
            let block = keys.block(head, j, 4).as_ptr();
            for (c, (&qa, &qb)) in q[0].iter().zip(&q[1]).enumerate() {
                for (r, (a, b)) in acc_a.iter_mut().zip(&mut acc_b).enumerate() {
                    // SAFETY: the block holds four rows of `8 * CHUNKS` values.
                    let k = unsafe { T::load8(block.add(r * 8 * CHUNKS + 8 * c)) };
                    let k = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(k)));
                    *a = _mm512_fmadd_ps(qa, k, *a);
                    *b = _mm512_fmadd_ps(qb, k, *b);
                }
            }
            // SAFETY: `j + 4 <= len` for every output.
            let [o0, o1, o2, o3] = &mut out;
            // SAFETY: as above.
            unsafe { store_four_scores([acc_a, acc_b], scale_v, [o0, o1, o2, o3], j) };
            j += 4;
        }
        if j < len {
            for (query, out) in queries.into_iter().zip(out) {
                // SAFETY: as above; the single kernel gives each key the same bits.
                unsafe { super::avx2::scores(query, keys.skip(j), head, scale, &mut out[j..]) };
            }
        }
    }

    /// [`weighted_sum_pair`] for four queries: every value load serves four sums.
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA; the outputs hold the head size, a multiple of 16 and at most
    /// [`MAX_QUAD_HEAD_DIM`]; `values` holds as many rows as there are weights, the same for all.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum_quad<T: Stored>(
        weights: [&[f32]; 4],
        values: HeadRows<'_, T>,
        head: usize,
        out: [&mut [f32]; 4],
    ) {
        // SAFETY: passed on from the caller; the const is the head size's sixteenth.
        unsafe {
            match out[0].len() / 16 {
                1 => weighted_sum_quad_n::<T, 1>(weights, values, head, out),
                2 => weighted_sum_quad_n::<T, 2>(weights, values, head, out),
                3 => weighted_sum_quad_n::<T, 3>(weights, values, head, out),
                _ => weighted_sum_quad_n::<T, 4>(weights, values, head, out),
            }
        }
    }

    /// # Safety
    /// As [`weighted_sum_quad`], with a head of `16 * VECTORS` values.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn weighted_sum_quad_n<T: Stored, const VECTORS: usize>(
        weights: [&[f32]; 4],
        values: HeadRows<'_, T>,
        head: usize,
        out: [&mut [f32]; 4],
    ) {
        debug_assert!(out.iter().all(|o| o.len() == 16 * VECTORS));
        let len = weights[0].len();
        debug_assert!(weights.iter().all(|w| w.len() == len));
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; 4];
        for (acc, out) in acc.iter_mut().zip(&out) {
            for (c, a) in acc.iter_mut().enumerate() {
                // SAFETY: each output holds `16 * VECTORS` values.
                *a = unsafe { _mm512_loadu_ps(out.as_ptr().add(16 * c)) };
            }
        }
        for j in 0..len {
            let row = values.row(head, j);
            for c in 0..VECTORS {
                // SAFETY: the row holds `16 * VECTORS` values.
                let v = unsafe { T::load16(row.as_ptr().add(16 * c)) };
                for (acc, w) in acc.iter_mut().zip(&weights) {
                    acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(w[j]), v, acc[c]);
                }
            }
        }
        for (out, acc) in out.into_iter().zip(acc) {
            for (c, v) in acc.into_iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), v) };
            }
        }
    }

    /// [`scores_quad`] for four pairs of queries: every key load serves eight queries, which
    /// halves the keys read from cache per multiply-add (at four, the loads from L2 bounded
    /// the kernel). The pairs are read from L1 rather than held in registers.
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA; the queries hold the head size, a multiple of 16 and at most
    /// [`MAX_HEAD_DIM`]; `keys` holds `out[0].len()` rows, and every `out` is as long.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn scores_oct<T: Stored>(
        queries: [&[f32]; 8],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        out: [&mut [f32]; 8],
    ) {
        // SAFETY: passed on from the caller; the const is the head size's eighth.
        unsafe {
            match queries[0].len() / 8 {
                2 => scores_oct_n::<T, 2>(queries, keys, head, scale, out),
                4 => scores_oct_n::<T, 4>(queries, keys, head, scale, out),
                6 => scores_oct_n::<T, 6>(queries, keys, head, scale, out),
                8 => scores_oct_n::<T, 8>(queries, keys, head, scale, out),
                10 => scores_oct_n::<T, 10>(queries, keys, head, scale, out),
                12 => scores_oct_n::<T, 12>(queries, keys, head, scale, out),
                14 => scores_oct_n::<T, 14>(queries, keys, head, scale, out),
                _ => scores_oct_n::<T, 16>(queries, keys, head, scale, out),
            }
        }
    }

    /// # Safety
    /// As [`scores_oct`], with a head of `8 * CHUNKS` values.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn scores_oct_n<T: Stored, const CHUNKS: usize>(
        queries: [&[f32]; 8],
        keys: HeadRows<'_, T>,
        head: usize,
        scale: f32,
        mut out: [&mut [f32]; 8],
    ) {
        assert!(queries.iter().all(|q| q.len() == 8 * CHUNKS));
        let len = out[0].len();
        assert!(out.iter().all(|o| o.len() == len));
        // Pair `p` holds queries `2p` and `2p + 1`, one per half.
        let q: [[__m512; CHUNKS]; 4] = query_pairs(&queries);
        let scale_v = _mm512_set1_ps(scale);
        let mut j = 0;
        // Four keys at a time: sixteen chains, whose sixteen scores are finished together.
        while j + 4 <= len {
            let mut acc = [[_mm512_setzero_ps(); 4]; 4];
            let block = keys.block(head, j, 4).as_ptr();
            for c in 0..CHUNKS {
                for r in 0..4 {
                    // SAFETY: the block holds four rows of `8 * CHUNKS` values.
                    let k = unsafe { T::load8(block.add(r * 8 * CHUNKS + 8 * c)) };
                    let k = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(k)));
                    for (acc, pair) in acc.iter_mut().zip(&q) {
                        acc[r] = _mm512_fmadd_ps(pair[c], k, acc[r]);
                    }
                }
            }
            // Two pairs at a time: sixteen scores (four keys of four queries).
            for p in [0, 2] {
                let [a, b, c, d] = &mut out[2 * p..2 * p + 4] else {
                    unreachable!("eight outputs")
                };
                // SAFETY: `j + 4 <= len` for every output.
                unsafe { store_four_scores([acc[p], acc[p + 1]], scale_v, [a, b, c, d], j) };
            }
            j += 4;
        }
        if j < len {
            for (query, out) in queries.into_iter().zip(out) {
                // SAFETY: as above; the single kernel gives each key the same bits.
                unsafe { super::avx2::scores(query, keys.skip(j), head, scale, &mut out[j..]) };
            }
        }
    }

    /// [`weighted_sum_quad`] for eight queries, over the head in slices of 32 values: every
    /// value load serves eight sums. A slice's sixteen chains run over all keys before the
    /// next slice starts; each output element's chain is the one it has alone.
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA; the outputs hold the head size, a multiple of 16; `values`
    /// holds as many rows as there are weights, the same for all.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum_oct<T: Stored>(
        weights: [&[f32]; 8],
        values: HeadRows<'_, T>,
        head: usize,
        out: [&mut [f32]; 8],
    ) {
        let head_dim = out[0].len();
        let len = weights[0].len();
        assert!(head_dim.is_multiple_of(16) && out.iter().all(|o| o.len() == head_dim));
        assert!(weights.iter().all(|w| w.len() == len));
        let weights = weights.map(<[f32]>::as_ptr);
        let out = out.map(<[f32]>::as_mut_ptr);
        for start in (0..head_dim).step_by(32) {
            // SAFETY: every output and value row holds `start + 16 * VECTORS` values, and
            // every weight row `len`.
            unsafe {
                if head_dim - start >= 32 {
                    weighted_sum_oct_slice::<T, 2>(weights, len, values, head, out, start);
                } else {
                    weighted_sum_oct_slice::<T, 1>(weights, len, values, head, out, start);
                }
            }
        }
    }

    /// # Safety
    /// As [`weighted_sum_oct`]; every output holds `start + 16 * VECTORS` values, and every
    /// weight row `len`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn weighted_sum_oct_slice<T: Stored, const VECTORS: usize>(
        weights: [*const f32; 8],
        len: usize,
        values: HeadRows<'_, T>,
        head: usize,
        out: [*mut f32; 8],
        start: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; 8];
        for (acc, &out) in acc.iter_mut().zip(&out) {
            for (c, a) in acc.iter_mut().enumerate() {
                // SAFETY: the caller's.
                *a = unsafe { _mm512_loadu_ps(out.add(start + 16 * c)) };
            }
        }
        for j in 0..len {
            let row = values.row(head, j)[start..].as_ptr();
            let mut v = [_mm512_setzero_ps(); VECTORS];
            for (c, v) in v.iter_mut().enumerate() {
                // SAFETY: the row holds `start + 16 * VECTORS` values.
                *v = unsafe { T::load16(row.add(16 * c)) };
            }
            for (acc, &w) in acc.iter_mut().zip(&weights) {
                // SAFETY: `j < len`, every weight row's length.
                let w = _mm512_set1_ps(unsafe { *w.add(j) });
                for (a, &v) in acc.iter_mut().zip(&v) {
                    *a = _mm512_fmadd_ps(w, v, *a);
                }
            }
        }
        for (acc, &out) in acc.iter().zip(&out) {
            for (c, &a) in acc.iter().enumerate() {
                // SAFETY: the caller's.
                unsafe { _mm512_storeu_ps(out.add(start + 16 * c), a) };
            }
        }
    }
}
