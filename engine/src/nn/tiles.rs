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
    let mut out = vec![0f32; m * n];
    let out_ptr = out.as_mut_ptr() as usize;
    let groups = n.div_ceil(G);
    let row_tiles = m.div_ceil(row_tile);
    let group_tiles = groups.div_ceil(group_tile);
    let run = |items: std::ops::Range<usize>| {
        for item in items {
            let (row_tile_idx, group_tile_idx) = (item / group_tiles, item % group_tiles);
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
                            // SAFETY: each (row, col) is written by exactly one work item,
                            // and `out` outlives the pool's call.
                            unsafe { *(out_ptr as *mut f32).add((row + j) * n + col) = *sum };
                        }
                    }
                    row += n_rows;
                }
            }
        }
    };
    if m * n * k < INLINE_WORK {
        run(0..row_tiles * group_tiles);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(row_tiles * group_tiles, run);
    }
    out
}

/// Products with fewer multiply-adds than this run on the calling thread: waking the pool
/// costs more than they do, and far more when other processes hold the cores.
const INLINE_WORK: usize = 1 << 17;

/// Activation rows per call of the AVX-512 integer kernels: a block of weights unpacked once
/// in registers serves eight rows (32 vector registers hold the weights and eight sums).
pub(crate) const ROW_GROUP: usize = 8;

/// Runs `kernel`, which takes at most four rows (the AVX2 kernels: 16 registers), over the
/// first `count` of up to [`ROW_GROUP`] rows: `kernel(from, rows, sums)` for each four.
pub(crate) fn in_fours<const G: usize>(
    count: usize,
    sums: &mut [[f32; G]; ROW_GROUP],
    mut kernel: impl FnMut(usize, usize, &mut [[f32; G]; 4]),
) {
    for from in (0..count).step_by(4) {
        let rows = (count - from).min(4);
        let mut part = [[0f32; G]; 4];
        kernel(from, rows, &mut part);
        sums[from..from + rows].copy_from_slice(&part[..rows]);
    }
}
