//! A Q8_0 matrix multiply for x86-64 CPUs with AVX2 and FMA.
//!
//! candle 0.11's Q8_0 kernel on AVX2-only CPUs converts two f16 scales per 32-value block
//! and computes every (activation row, weight row) dot product on its own; for a batch of
//! rows (prefill) that was no faster per row than decoding (measured: 8 prompt tokens took
//! 256 ms on Qwen2.5-Coder-0.5B). Here scales are converted to f32 once at load, each
//! weight block is reused across four activation rows held in registers, and the work is
//! blocked so that a tile of activations stays in L2 while weight rows stream through L1.
//! Threads come from candle's own pool, so the two never compete for cores.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::Result;

const BLOCK: usize = 32;
/// Activation rows per tile: 64 rows of a 4864-wide input are 311 KB of i8, within L2.
const ROW_TILE: usize = 64;
/// Weight rows per work item.
const COL_TILE: usize = 16;

/// A Q8_0 weight `[rows, cols]` with quants and f32 scales in separate arrays.
#[derive(Debug)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    quants: Vec<i8>,
    scales: Vec<f32>,
}

impl Q8Matrix {
    /// Whether this CPU can run the kernel.
    pub fn supported() -> bool {
        super::simd::avx2_fma()
    }

    /// Re-lays out a CPU Q8_0 tensor; `None` for other types or devices.
    pub fn from_qtensor(tensor: &QTensor) -> Result<Option<Self>> {
        if tensor.dtype() != GgmlDType::Q8_0 || !matches!(tensor.device(), Device::Cpu) {
            return Ok(None);
        }
        let (rows, cols) = tensor.shape().dims2()?;
        if !cols.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let data = tensor.data()?;
        let block_bytes = 2 + BLOCK;
        let n_blocks = rows * cols / BLOCK;
        if data.len() != n_blocks * block_bytes {
            return Ok(None);
        }
        let mut quants = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(n_blocks);
        for block in data.chunks_exact(block_bytes) {
            scales.push(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
            quants.extend(block[2..].iter().map(|&b| b as i8));
        }
        Ok(Some(Q8Matrix {
            rows,
            cols,
            quants,
            scales,
        }))
    }

    /// `(rows, cols)`, i.e. `(out_features, in_features)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The weights as f32 `[rows, cols]`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let values: Vec<f32> = self
            .quants
            .chunks_exact(BLOCK)
            .zip(&self.scales)
            .flat_map(|(q, &d)| q.iter().map(move |&v| v as f32 * d))
            .collect();
        Ok(Tensor::from_vec(values, (self.rows, self.cols), device)?)
    }

    /// `xs · Wᵀ` for `xs` of shape `[m, cols]` (f32): `[m, rows]`.
    pub fn matmul(&self, xs: &Tensor) -> Result<Tensor> {
        let (m, xs) = super::tiles::activations(xs, self.rows, self.cols, "q8_matmul")?;
        let k = self.cols;
        let (x_quants, x_scales) = quantize_rows(&xs);
        let kb = k / BLOCK;
        let out = super::tiles::tiled_product(
            (m, self.rows, k),
            ROW_TILE,
            COL_TILE,
            |col, row, n_rows, sums| {
                // SAFETY: `supported()` was checked when this matrix was chosen, and every slice
                // below holds `kb` whole blocks.
                unsafe {
                    dot_rows(
                        &self.quants[col * k..(col + 1) * k],
                        &self.scales[col * kb..(col + 1) * kb],
                        &x_quants[row * k..(row + n_rows) * k],
                        &x_scales[row * kb..(row + n_rows) * kb],
                        n_rows,
                        kb,
                        sums,
                    )
                }
            },
        );
        Ok(Tensor::from_vec(out, (m, self.rows), &Device::Cpu)?)
    }
}

/// Q8_0-quantizes each 32-value block: scale `amax / 127`, values rounded to [-127, 127].
pub(super) fn quantize_rows(xs: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut quants = vec![0i8; xs.len()];
    let mut scales = Vec::with_capacity(xs.len() / BLOCK);
    for (block, out) in xs.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)) {
        let amax = block.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in out.iter_mut().zip(block) {
            *q = (v * inv).round() as i8;
        }
        scales.push(d);
    }
    (quants, scales)
}

/// Dot products of one weight row with up to four activation rows.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `w` holds `kb` blocks, `x` holds `n_rows * kb` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows(
    w: &[i8],
    w_scales: &[f32],
    x: &[i8],
    x_scales: &[f32],
    n_rows: usize,
    kb: usize,
    sums: &mut [f32; 4],
) {
    use std::arch::x86_64::*;
    let k = kb * BLOCK;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    for b in 0..kb {
        let wv = unsafe { _mm256_loadu_si256(w.as_ptr().add(b * BLOCK) as *const __m256i) };
        // maddubs multiplies unsigned by signed: move w's sign onto x and use |w|.
        let w_abs = _mm256_sign_epi8(wv, wv);
        let ws = w_scales[b];
        for j in 0..4 {
            if j < n_rows {
                let xv = unsafe {
                    _mm256_loadu_si256(x.as_ptr().add(j * k + b * BLOCK) as *const __m256i)
                };
                let products =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(xv, wv)), ones);
                let scale = _mm256_set1_ps(ws * x_scales[j * kb + b]);
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(products), scale, acc[j]);
            }
        }
    }
    for j in 0..n_rows {
        sums[j] = super::simd::lane_sum(acc[j]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_rows(_: &[i8], _: &[f32], _: &[i8], _: &[f32], _: usize, _: usize, _: &mut [f32; 4]) {
    unreachable!("Q8Matrix is only built where supported() holds")
}

#[cfg(test)]
mod tests;
