//! An f32 matrix multiply for x86-64 CPUs with AVX2 and FMA in which every output is one dot
//! product taken in a fixed order.
//!
//! candle hands dense products to gemm, which picks its kernel and blocking from the matrix
//! shapes: one row (a decode step) and the same row inside a prefill chunk came out with
//! different rounding, so an f32 model's greedy output changed with how its prompt was split
//! or cached. Here the result for a row depends on that row and the weights alone.

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Activation rows per tile: 16 rows of a 4864-wide input are 311 KB, within L2.
const ROW_TILE: usize = 16;
/// Weight rows per work item.
const COL_TILE: usize = 16;

/// A dense f32 weight `[rows, cols]`, row-major.
#[derive(Debug)]
pub struct DenseMatrix {
    rows: usize,
    cols: usize,
    values: Vec<f32>,
}

impl DenseMatrix {
    /// Whether this CPU can run the kernel.
    pub fn supported() -> bool {
        super::simd::avx2_fma()
    }

    /// Copies a 2-D weight of any float type into f32.
    pub fn new(weight: &Tensor) -> Result<Self> {
        let (rows, cols) = weight.dims2()?;
        let values = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(DenseMatrix { rows, cols, values })
    }

    /// `(rows, cols)`, i.e. `(out_features, in_features)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The weight as a tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.values,
            (self.rows, self.cols),
            &Device::Cpu,
        )?)
    }

    /// `xs · Wᵀ` for `xs` of shape `[m, cols]`: `[m, rows]`.
    pub fn matmul(&self, xs: &Tensor) -> Result<Tensor> {
        let (m, xs) = super::tiles::activations(xs, self.rows, self.cols, "dense_matmul")?;
        let k = self.cols;
        let out = super::tiles::tiled_product(
            (m, self.rows, k),
            ROW_TILE,
            COL_TILE,
            |col, row, n_rows, sums| {
                // SAFETY: `supported()` was checked when this matrix was chosen; the slices hold
                // one weight row and `n_rows` activation rows of `k` values.
                unsafe {
                    dot_rows(
                        &self.values[col * k..(col + 1) * k],
                        &xs[row * k..(row + n_rows) * k],
                        n_rows,
                        sums,
                    )
                }
            },
        );
        Ok(Tensor::from_vec(out, (m, self.rows), &Device::Cpu)?)
    }
}

/// Dot products of one weight row with up to four activation rows: eight lanes with FMA over
/// the multiple of 8, the lanes summed in a fixed tree, then the remaining values in order.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x` holds `n_rows` rows of `w.len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows(w: &[f32], x: &[f32], n_rows: usize, sums: &mut [f32; 4]) {
    use std::arch::x86_64::*;
    let k = w.len();
    let k8 = k - k % 8;
    let mut acc = [_mm256_setzero_ps(); 4];
    for c in (0..k8).step_by(8) {
        // SAFETY: `c + 8 <= k8 <= k`, and each activation row holds `k` values.
        let wv = unsafe { _mm256_loadu_ps(w.as_ptr().add(c)) };
        for (j, a) in acc.iter_mut().enumerate().take(n_rows) {
            let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add(j * k + c)) };
            *a = _mm256_fmadd_ps(xv, wv, *a);
        }
    }
    for (j, (sum, a)) in sums.iter_mut().zip(acc).enumerate().take(n_rows) {
        let row = &x[j * k..(j + 1) * k];
        *sum = (k8..k).fold(super::simd::lane_sum(a), |s, c| s + row[c] * w[c]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_rows(_: &[f32], _: &[f32], _: usize, _: &mut [f32; 4]) {
    unreachable!("DenseMatrix is only built where supported() holds")
}
