//! What our CPU matmul kernels share: the activations as f32 rows, and the work split into
//! tiles of (activation rows × weight rows) on candle's thread pool, each output written by
//! exactly one work item.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::Result;

/// `build(dtype, (rows, cols), bytes)` on a 2-D CPU tensor's bytes as a GGUF file stores them
/// (our matrices' `from_qtensor`); `None` for other devices.
pub(crate) fn from_cpu_qtensor<T>(
    tensor: &QTensor,
    build: impl FnOnce(GgmlDType, (usize, usize), &[u8]) -> Option<T>,
) -> Result<Option<T>> {
    if !tensor.device().is_cpu() {
        return Ok(None);
    }
    let dims = tensor.shape().dims2()?;
    Ok(build(tensor.dtype(), dims, &tensor.data()?))
}

/// `[m, k]` activations quantized to Q8_0 blocks once, for every product that reads them.
pub(crate) struct QuantizedRows {
    pub m: usize,
    pub quants: Vec<i8>,
    pub scales: Vec<f32>,
}

impl QuantizedRows {
    /// `xs` (`[m, cols]`) quantized, or a shape error naming `op` against a `[rows, cols]`
    /// weight.
    pub fn new(xs: &Tensor, rows: usize, cols: usize, op: &'static str) -> Result<Self> {
        let (m, values) = activations(xs, rows, cols, op)?;
        let (quants, scales) = super::q8::quantize_rows(&values);
        Ok(QuantizedRows { m, quants, scales })
    }
}

/// A weight's kernel bound to quantized activations: `dot(tile, row, rows, sums)` as
/// [`grouped_product`] takes it, for tiles of [`TILE_ROWS`] weight rows.
pub(crate) type TileDot<'a> =
    Box<dyn Fn(usize, usize, usize, &mut [[f32; TILE_ROWS]; ROW_GROUP]) + Sync + 'a>;

/// Weight rows interleaved in one tile of every integer kernel: a 512-bit vector holds four
/// bytes of each.
pub(crate) const TILE_ROWS: usize = 16;

/// Activation rows per work item of the integer kernels: 64 rows of a 4864-wide input are
/// 311 KB of i8, within L2.
pub(crate) const ROW_TILE: usize = 64;

/// How far ahead of the block being multiplied the integer kernels ask for a tile's bytes.
/// Weights stream from memory once per product, and the hardware prefetcher stops at every
/// 4 KiB page: asking eight blocks (1-4 KiB) ahead took a Q5_0 product streaming from
/// memory from 14 to 17.5 GB/s for one row, and from 7-9 to 11-12 GB/s for eight.
pub(crate) const PREFETCH_BLOCKS: usize = 8;

/// Asks for the cache lines of `bytes` bytes at `block · bytes` past `start` (one block of
/// one of a tile's arrays): a hint, so an address past the array is harmless.
#[inline(always)]
pub(crate) fn prefetch_block<T>(start: *const T, block: usize, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let at = (start as *const i8).wrapping_add(block * bytes);
        for line in (0..bytes).step_by(64) {
            // SAFETY: a prefetch reads nothing into the program and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, block, bytes);
}

/// The `[m, n]` products of several weights (each `(n, dot)`) with the same activations, in
/// one call on the pool ([`grouped_products`]).
pub(crate) fn tiled_products(
    m: usize,
    k: usize,
    products: &[(usize, TileDot<'_>)],
) -> Vec<Vec<f32>> {
    let dots: Vec<GroupedDot<'_, TILE_ROWS, ROW_GROUP>> =
        products.iter().map(|(n, dot)| (*n, &**dot as _)).collect();
    grouped_products::<TILE_ROWS, ROW_GROUP>((m, k), ROW_TILE, 1, &dots)
}

/// `xs` (`[m, cols]`) as `m` and its f32 values row-major, or a shape error naming `op`
/// against a `[rows, cols]` weight.
pub(crate) fn activations(
    xs: &Tensor,
    rows: usize,
    cols: usize,
    op: &'static str,
) -> Result<(usize, Vec<f32>)> {
    let (m, k) = xs.dims2()?;
    if k != cols {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: xs.shape().clone(),
            rhs: (rows, cols).into(),
            op,
        }
        .into());
    }
    let values = xs
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((m, values))
}

/// Computes the `[m, n]` product (over `k` values) whose `(row, col)` entry `dot` yields: `dot(col, row, rows,
/// sums)` fills `sums[..rows]` with the entries of weight row `col` against activation rows
/// `row..row + rows` (at most four, so that a weight block is reused from registers).
///
/// Tiles are `row_tile` activation rows by `col_tile` weight rows, so that a tile of
/// activations stays in cache while weight rows stream through. An entry's value depends on
/// `dot` alone, never on the tiling or on `m`: a row gives the same result alone as in a batch.
pub(crate) fn tiled_product(
    dims: (usize, usize, usize),
    row_tile: usize,
    col_tile: usize,
    dot: impl Fn(usize, usize, usize, &mut [f32; 4]) + Sync,
) -> Vec<f32> {
    grouped_product::<1, 4>(dims, row_tile, col_tile, |col, row, rows, sums| {
        let mut flat = [0f32; 4];
        dot(col, row, rows, &mut flat);
        for (sum, value) in sums.iter_mut().zip(flat) {
            sum[0] = value;
        }
    })
}

/// [`tiled_product`] for kernels that produce `G` adjacent columns for up to `R` activation
/// rows at once: `dot(group, row, rows, sums)` fills `sums[j][c]` with entry `(row + j,
/// group * G + c)` for `j < rows` (entries past `n` are dropped), and tiles are `row_tile`
/// activation rows by `group_tile` groups.
pub(crate) fn grouped_product<const G: usize, const R: usize>(
    (m, n, k): (usize, usize, usize),
    row_tile: usize,
    group_tile: usize,
    dot: impl Fn(usize, usize, usize, &mut [[f32; G]; R]) + Sync,
) -> Vec<f32> {
    let mut outs = grouped_products::<G, R>((m, k), row_tile, group_tile, &[(n, &dot)]);
    outs.pop().unwrap_or_default()
}

/// One product of [`grouped_products`]: its width `n` and its `dot`, as for
/// [`grouped_product`].
pub(crate) type GroupedDot<'a, const G: usize, const R: usize> = (
    usize,
    &'a (dyn Fn(usize, usize, usize, &mut [[f32; G]; R]) + Sync),
);

/// [`grouped_product`] of several weights against the same `[m, k]` activations (a layer's
/// query, key and value projections) as one call on the pool: one wake-up and one wait
/// instead of one per weight. Each product's entries are exactly those it gets alone.
pub(crate) fn grouped_products<const G: usize, const R: usize>(
    (m, k): (usize, usize),
    row_tile: usize,
    group_tile: usize,
    products: &[GroupedDot<'_, G, R>],
) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = products.iter().map(|&(n, _)| vec![0f32; m * n]).collect();
    let out_ptrs: Vec<usize> = outs.iter_mut().map(|o| o.as_mut_ptr() as usize).collect();
    let row_tiles = m.div_ceil(row_tile);
    // Work items of product `p` are `first_item[p]..first_item[p + 1]`.
    let mut first_item = Vec::with_capacity(products.len() + 1);
    first_item.push(0);
    for &(n, _) in products {
        let group_tiles = n.div_ceil(G).div_ceil(group_tile);
        first_item.push(first_item.last().copied().unwrap_or(0) + row_tiles * group_tiles);
    }
    let run = |items: std::ops::Range<usize>| {
        for item in items {
            let p = first_item.partition_point(|&first| first <= item) - 1;
            let ((n, dot), out_ptr) = (products[p], out_ptrs[p]);
            let (groups, local) = (n.div_ceil(G), item - first_item[p]);
            let group_tiles = groups.div_ceil(group_tile);
            let (row_tile_idx, group_tile_idx) = (local / group_tiles, local % group_tiles);
            let rows = row_tile_idx * row_tile..((row_tile_idx + 1) * row_tile).min(m);
            let group_range =
                group_tile_idx * group_tile..((group_tile_idx + 1) * group_tile).min(groups);
            for group in group_range {
                let cols = group * G..((group + 1) * G).min(n);
                let mut row = rows.start;
                while row < rows.end {
                    let n_rows = (rows.end - row).min(R);
                    let mut sums = [[0f32; G]; R];
                    dot(group, row, n_rows, &mut sums);
                    for (j, sums) in sums.iter().take(n_rows).enumerate() {
                        for (col, sum) in cols.clone().zip(sums) {
                            // SAFETY: each (product, row, col) is written by exactly one work
                            // item, and `outs` outlives the pool's call.
                            unsafe { *(out_ptr as *mut f32).add((row + j) * n + col) = *sum };
                        }
                    }
                    row += n_rows;
                }
            }
        }
    };
    let items = first_item.last().copied().unwrap_or(0);
    let work: usize = products.iter().map(|&(n, _)| m * n * k).sum();
    if work < INLINE_WORK {
        run(0..items);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items, run);
    }
    outs
}

/// Products with fewer multiply-adds than this run on the calling thread: waking the pool
/// costs more than they do, and far more when other processes hold the cores.
const INLINE_WORK: usize = 1 << 17;

/// Activation rows per call of the integer kernels: a block of weights unpacked once in
/// registers serves up to sixteen rows, so a warm editor request's 9-10 new tokens take one
/// pass over the weights (it took two with AVX-512 and three with AVX2 at eight and four).
///
/// Each kernel is compiled for 4 (AVX2 only), 8 and 16 rows of sums and called with the
/// smallest that holds its rows: sixteen rows' sums do not fit in registers beside the
/// weights, and spilling them cost a decode step (one row) up to 30% with AVX2.
pub(crate) const ROW_GROUP: usize = 16;
