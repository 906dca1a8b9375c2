//! Matrix multiplies on the 4- and 5-bit legacy GGUF types (Q4_0, Q4_1, Q5_0, Q5_1) for
//! x86-64 CPUs with AVX2 and FMA, without re-quantizing them.
//!
//! candle has no fast kernel for these types (its batched path is 50-70x slower than for
//! Q8_0), and they make up most of the catalogue's default GGUFs: Qwen2.5-Coder-0.5B's
//! "Q4_K_M" is mostly Q5_0, SmolLM2-135M is Q4_1. They used to be re-quantized to Q8_0 at
//! load, which took seconds and made every decoded token read 8.5 bits per weight instead of
//! 5.5 or 5. Here the nibbles stay as the file holds them; a weight row is widened to a byte
//! per value when a thread first needs it (once per prefill tile of 64 activation rows) and
//! multiplied against Q8_0-quantized activations as in [`super::Q8Matrix`].

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::q8::{ActivationRows, WeightRow, block_dots};
use super::simd::Isa;
use crate::Result;

const BLOCK: usize = 32;
/// Activation rows per tile, as for Q8_0.
const ROW_TILE: usize = 64;
/// Weight rows per work item.
const COL_TILE: usize = 16;
/// From this many activation rows on, the whole weight is widened once per call instead of
/// row by row in each tile: a prefill chunk then multiplies at the speed of Q8_0.
const WIDEN_ALL_ROWS: usize = 16;

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// The weight row this thread widened last, `((matrix, row), bytes)`: a prefill tile
    /// multiplies one weight row against up to 64 activation rows in groups of four, and
    /// widens it once instead of once per group.
    static WIDENED: std::cell::RefCell<((u64, usize), Vec<i8>)> =
        const { std::cell::RefCell::new(((0, 0), Vec::new())) };
}

/// Which legacy type a [`LegacyMatrix`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `d · (q - 8)`, `q` 4 bits.
    Q4_0,
    /// `d · q + m`, `q` 4 bits.
    Q4_1,
    /// `d · (q - 16)`, `q` 5 bits.
    Q5_0,
    /// `d · q + m`, `q` 5 bits.
    Q5_1,
}

impl Kind {
    fn of(dtype: GgmlDType) -> Option<Kind> {
        Some(match dtype {
            GgmlDType::Q4_0 => Kind::Q4_0,
            GgmlDType::Q4_1 => Kind::Q4_1,
            GgmlDType::Q5_0 => Kind::Q5_0,
            GgmlDType::Q5_1 => Kind::Q5_1,
            _ => return None,
        })
    }

    /// Bytes of one block in a GGUF: f16 scale, f16 minimum (`_1` types), 32 high bits
    /// (5-bit types), 16 bytes of nibbles.
    fn block_bytes(self) -> usize {
        2 + 16 + if self.has_min() { 2 } else { 0 } + if self.five_bits() { 4 } else { 0 }
    }

    fn has_min(self) -> bool {
        matches!(self, Kind::Q4_1 | Kind::Q5_1)
    }

    fn five_bits(self) -> bool {
        matches!(self, Kind::Q5_0 | Kind::Q5_1)
    }

    /// What is subtracted from the unsigned quant in the `_0` types.
    fn offset(self) -> i32 {
        match self {
            Kind::Q4_0 => 8,
            Kind::Q5_0 => 16,
            Kind::Q4_1 | Kind::Q5_1 => 0,
        }
    }
}

/// A legacy-type weight `[rows, cols]`: per 32-value block its 16 bytes of nibbles, its high
/// bits (5-bit types), and its scale and minimum (`_1` types) as f32.
#[derive(Debug)]
pub struct LegacyMatrix {
    /// Never reused: names this matrix in a thread's cache of its last widened row.
    id: u64,
    kind: Kind,
    rows: usize,
    cols: usize,
    nibbles: Vec<u8>,
    high_bits: Vec<u32>,
    scales: Vec<f32>,
    mins: Vec<f32>,
    isa: Isa,
}

impl LegacyMatrix {
    /// Whether this CPU can run the kernels.
    pub fn supported() -> bool {
        Isa::best().is_some()
    }

    /// Whether `dtype` is one of the types this matrix holds.
    pub fn handles(dtype: GgmlDType) -> bool {
        Kind::of(dtype).is_some()
    }

    /// Lays out a CPU tensor of a legacy type; `None` for other types or devices.
    pub fn from_qtensor(tensor: &QTensor) -> Result<Option<Self>> {
        let (Some(kind), Some(isa)) = (Kind::of(tensor.dtype()), Isa::best()) else {
            return Ok(None);
        };
        if !matches!(tensor.device(), Device::Cpu) {
            return Ok(None);
        }
        let (rows, cols) = tensor.shape().dims2()?;
        let data = tensor.data()?;
        let n_blocks = rows * cols / BLOCK;
        if !cols.is_multiple_of(BLOCK) || data.len() != n_blocks * kind.block_bytes() {
            return Ok(None);
        }
        let mut matrix = LegacyMatrix {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            kind,
            rows,
            cols,
            nibbles: Vec::with_capacity(n_blocks * 16),
            high_bits: Vec::with_capacity(if kind.five_bits() { n_blocks } else { 0 }),
            scales: Vec::with_capacity(n_blocks),
            mins: Vec::with_capacity(if kind.has_min() { n_blocks } else { 0 }),
            isa,
        };
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        for block in data.chunks_exact(kind.block_bytes()) {
            matrix.scales.push(f16(&block[0..2]));
            let mut rest = &block[2..];
            if kind.has_min() {
                matrix.mins.push(f16(&rest[0..2]));
                rest = &rest[2..];
            }
            if kind.five_bits() {
                matrix
                    .high_bits
                    .push(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]));
                rest = &rest[4..];
            }
            matrix.nibbles.extend_from_slice(&rest[..16]);
        }
        Ok(Some(matrix))
    }

    /// This matrix multiplied by the kernel written for `isa`, or `None` where this CPU
    /// cannot run it.
    pub fn with_isa(self, isa: Isa) -> Option<Self> {
        isa.supported().then_some(LegacyMatrix { isa, ..self })
    }

    /// `(rows, cols)`, i.e. `(out_features, in_features)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The unsigned quants of block `b` (0..16 or 0..32), in element order.
    fn quants(&self, b: usize) -> [u8; BLOCK] {
        let mut q = [0u8; BLOCK];
        let nibbles = &self.nibbles[b * 16..(b + 1) * 16];
        for j in 0..16 {
            q[j] = nibbles[j] & 0x0F;
            q[j + 16] = nibbles[j] >> 4;
        }
        if self.kind.five_bits() {
            let high = self.high_bits[b];
            for (j, v) in q.iter_mut().enumerate() {
                *v |= (((high >> j) & 1) as u8) << 4;
            }
        }
        q
    }

    /// The weights as f32 `[rows, cols]`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let n_blocks = self.scales.len();
        let mut values = Vec::with_capacity(n_blocks * BLOCK);
        for b in 0..n_blocks {
            let (d, m) = (self.scales[b], self.mins.get(b).copied().unwrap_or(0.0));
            let offset = self.kind.offset();
            values.extend(
                self.quants(b)
                    .iter()
                    .map(|&q| d * (q as i32 - offset) as f32 + m),
            );
        }
        Ok(Tensor::from_vec(values, (self.rows, self.cols), device)?)
    }

    /// `xs · Wᵀ` for `xs` of shape `[m, cols]`: `[m, rows]`.
    pub fn matmul(&self, xs: &Tensor) -> Result<Tensor> {
        let (m, xs) = super::tiles::activations(xs, self.rows, self.cols, "legacy_matmul")?;
        let (x_quants, x_scales) = super::q8::quantize_rows(&xs);
        let k = self.cols;
        let kb = k / BLOCK;
        // The `_1` types add `m · Σx` per block: each activation block's sum, scaled.
        let x_sums: Vec<f32> = if self.kind.has_min() {
            x_quants
                .chunks_exact(BLOCK)
                .zip(&x_scales)
                .map(|(q, &d)| d * q.iter().map(|&v| v as i32).sum::<i32>() as f32)
                .collect()
        } else {
            Vec::new()
        };
        let dot = |col: usize, widened: &[i8], row: usize, n_rows: usize, sums: &mut [f32; 4]| {
            let rows = row..row + n_rows;
            // SAFETY: `supported()` was checked when this matrix was chosen; `widened` holds
            // one row and the activation slices `kb` blocks per row.
            unsafe {
                self.dot_rows(
                    col,
                    widened,
                    &x_quants[rows.start * k..rows.end * k],
                    &x_scales[rows.start * kb..rows.end * kb],
                    x_sums.get(rows.start * kb..rows.end * kb),
                    n_rows,
                    sums,
                )
            }
        };
        let out = if m >= WIDEN_ALL_ROWS {
            // A prefill chunk: widen every weight row once, on all threads, then multiply.
            let mut widened = vec![0i8; self.rows * k];
            let widened_ptr = widened.as_mut_ptr() as usize;
            candle_core::utils::barrier_pool().execute_chunked(self.rows, |cols| {
                for col in cols {
                    // SAFETY: as above; each row of `widened` is written by one work item.
                    unsafe {
                        let row = std::slice::from_raw_parts_mut(
                            (widened_ptr as *mut i8).add(col * k),
                            k,
                        );
                        self.widen_row(col, row)
                    }
                }
            });
            super::tiles::tiled_product(
                (m, self.rows, k),
                ROW_TILE,
                COL_TILE,
                |col, row, n_rows, sums| {
                    dot(col, &widened[col * k..(col + 1) * k], row, n_rows, sums)
                },
            )
        } else {
            super::tiles::tiled_product(
                (m, self.rows, k),
                ROW_TILE,
                COL_TILE,
                |col, row, n_rows, sums| {
                    WIDENED.with(|cell| {
                        let (key, widened) = &mut *cell.borrow_mut();
                        if *key != (self.id, col) || widened.len() != k {
                            widened.resize(k, 0);
                            // SAFETY: as above.
                            unsafe { self.widen_row(col, widened) };
                            *key = (self.id, col);
                        }
                        dot(col, widened, row, n_rows, sums)
                    })
                },
            )
        };
        Ok(Tensor::from_vec(out, (m, self.rows), &Device::Cpu)?)
    }

    /// Widens weight row `col` into one byte per value: `q - 8` or `q - 16` for the `_0`
    /// types, the unsigned `q` for the `_1` types.
    ///
    /// # Safety
    /// The CPU must support AVX2; `out` holds `cols` bytes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn widen_row(&self, col: usize, out: &mut [i8]) {
        use std::arch::x86_64::*;
        let kb = self.cols / BLOCK;
        let low_nibble = _mm256_set1_epi8(0x0F);
        for b in 0..kb {
            let block = col * kb + b;
            // SAFETY: block `block` has 16 bytes of nibbles, and `out` 32 bytes at `b * 32`.
            let packed =
                unsafe { _mm_loadu_si128(self.nibbles.as_ptr().add(block * 16) as *const __m128i) };
            let wide = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
            // Bytes 0..16: elements 0..16 (low nibbles); bytes 16..32: elements 16..32.
            let mut w = _mm256_and_si256(wide, low_nibble);
            if self.kind.five_bits() {
                let high = expand_bits(self.high_bits[block]);
                w = match self.kind {
                    // q - 16 as a signed byte: the top bits set where the fifth bit is clear.
                    Kind::Q5_0 => _mm256_or_si256(
                        w,
                        _mm256_andnot_si256(high, _mm256_set1_epi8(0xF0u8 as i8)),
                    ),
                    _ => _mm256_or_si256(w, _mm256_and_si256(high, _mm256_set1_epi8(0x10))),
                };
            } else if self.kind == Kind::Q4_0 {
                w = _mm256_sub_epi8(w, _mm256_set1_epi8(8));
            }
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(b * BLOCK) as *mut __m256i, w) };
        }
    }

    /// Dot products of widened weight row `col` with up to four Q8_0-quantized activation
    /// rows: the block products as for Q8_0 ([`super::q8::block_dots`]), then (`_1` types)
    /// the minimum terms as one dot product over the blocks. A row's result does not depend
    /// on how many rows come with it.
    ///
    /// # Safety
    /// The CPU must support `self.isa`; `w` holds `cols` bytes, `x` holds `n_rows` rows of
    /// `cols` quants, `x_scales` (and `x_sums`, for the `_1` types) `n_rows` rows of
    /// `cols / 32` values.
    #[allow(clippy::too_many_arguments)]
    unsafe fn dot_rows(
        &self,
        col: usize,
        w: &[i8],
        x: &[i8],
        x_scales: &[f32],
        x_sums: Option<&[f32]>,
        n_rows: usize,
        sums: &mut [f32; 4],
    ) {
        let kb = self.cols / BLOCK;
        let weights = WeightRow {
            quants: w,
            scales: &self.scales[col * kb..(col + 1) * kb],
            signed: !self.kind.has_min(),
        };
        let activations = ActivationRows {
            quants: x,
            scales: x_scales,
            count: n_rows,
        };
        // SAFETY: the caller's contract.
        unsafe { block_dots(self.isa, &weights, &activations, sums) };
        let (Some(x_sums), true) = (x_sums, self.kind.has_min()) else {
            return;
        };
        let mins = &self.mins[col * kb..(col + 1) * kb];
        for j in 0..n_rows {
            // The `_1` types' minimum terms: `Σ_b m_b · d_x · Σx` over the blocks.
            // SAFETY: both hold `kb` values for this row; the CPU has AVX2 and FMA.
            sums[j] += unsafe { super::simd::dot(mins, &x_sums[j * kb..(j + 1) * kb]) };
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn widen_row(&self, _: usize, _: &mut [i8]) {
        unreachable!("LegacyMatrix is only built where supported() holds")
    }
}

/// The 32 bits of `bits` as 32 bytes, `0xFF` where bit `i` is set in byte `i`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn expand_bits(bits: u32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // Byte i takes byte i / 8 of `bits` (every 32-bit lane holds all four)...
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    // ...and is all ones once every bit but bit i % 8 is forced on, exactly when bit i is set.
    let others = _mm256_set1_epi64x(0x7FBF_DFEF_F7FB_FDFEu64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1))
}

#[cfg(test)]
mod tests;
