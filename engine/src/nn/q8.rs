//! A Q8_0 matrix multiply for x86-64 CPUs with AVX2 and FMA, and a wider one for CPUs with
//! AVX-512 VNNI, chosen from CPUID when the matrix is built.
//!
//! candle 0.11's Q8_0 kernel on AVX2-only CPUs converts two f16 scales per 32-value block
//! and computes every (activation row, weight row) dot product on its own; for a batch of
//! rows (prefill) that was no faster per row than decoding. Here, as in llama.cpp's and
//! candle's repacked kernels, weight rows are interleaved at load in tiles of sixteen: for
//! each 32-value block, four bytes of each of the sixteen rows side by side, then the next
//! four, and the sixteen scales as f32. One 512-bit vector (two 256-bit ones with AVX2) then
//! holds a slice of sixteen rows; four activation bytes are broadcast against it, and one
//! scale multiply and one FMA serve sixteen outputs. Each tile is reused across four
//! activation rows held in registers, and the work is blocked so that a tile of activations
//! stays in L2. Threads come from candle's own pool, so the two never compete for cores.
//!
//! Each output is `Σ_b (w_b · x_b) · (d_w · d_x)`, the integer block products exact and the
//! blocks added one after another into that output's own lane, whatever the row count: a row
//! gives the same result alone as in a batch, and both kernels give the same bits.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::simd::Isa;
use super::tiles::{PREFETCH_BLOCKS, QuantizedRows, TILE_ROWS, TileDot, prefetch_block};
use crate::Result;

const BLOCK: usize = 32;
/// Bytes of one tile's block: 32 values of each of its rows.
const TILE_BLOCK_BYTES: usize = BLOCK * TILE_ROWS;

/// A Q8_0 weight `[rows, cols]`, interleaved in tiles of [`TILE_ROWS`] rows.
#[derive(Debug)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    /// Per tile, per block: for each group of four values, those four of each of the tile's
    /// rows (`[group][row][4]`). Rows past `rows` in the last tile are zero.
    quants: Vec<i8>,
    /// Per tile, per block: the tile's sixteen row scales (zero past `rows`).
    scales: Vec<f32>,
    isa: Isa,
}

impl Q8Matrix {
    /// Whether this CPU can run the kernel.
    pub fn supported() -> bool {
        Isa::best().is_some()
    }

    /// Re-lays out a CPU Q8_0 tensor, for the widest kernel this CPU runs; `None` for other
    /// types or devices, or where the CPU runs none of ours.
    pub fn from_qtensor(tensor: &QTensor) -> Result<Option<Self>> {
        super::tiles::from_cpu_qtensor(tensor, Self::from_file_bytes)
    }

    /// Lays out a `[rows, cols]` weight from its bytes as a GGUF file stores them; `None` for
    /// other types, a size that does not match, or where the CPU runs none of our kernels.
    pub fn from_file_bytes(
        dtype: GgmlDType,
        (rows, cols): (usize, usize),
        data: &[u8],
    ) -> Option<Self> {
        let isa = Isa::best()?;
        if dtype != GgmlDType::Q8_0 || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let block_bytes = 2 + BLOCK;
        let kb = cols / BLOCK;
        if data.len() != rows * kb * block_bytes {
            return None;
        }
        let tiles = rows.div_ceil(TILE_ROWS);
        let mut quants = vec![0i8; tiles * kb * TILE_BLOCK_BYTES];
        let mut scales = vec![0f32; tiles * kb * TILE_ROWS];
        // One tile per work item on candle's pool: a 151,936-row LM head takes a while.
        let tile_quants = kb * TILE_BLOCK_BYTES;
        let tile_scales = kb * TILE_ROWS;
        let lay_out = |tile: usize, quants: &mut [i8], scales: &mut [f32]| {
            let first_row = tile * TILE_ROWS;
            let tile_rows = &data[first_row * kb * block_bytes..]
                [..(rows - first_row).min(TILE_ROWS) * kb * block_bytes];
            let blocks = tile_rows.chunks_exact(block_bytes);
            let lanes_and_blocks = (0..TILE_ROWS).flat_map(|lane| (0..kb).map(move |b| (lane, b)));
            for ((lane, b), block) in lanes_and_blocks.zip(blocks) {
                scales[b * TILE_ROWS + lane] =
                    half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                for (group, values) in block[2..].chunks_exact(4).enumerate() {
                    let at = b * TILE_BLOCK_BYTES + (group * TILE_ROWS + lane) * 4;
                    let four: [u8; 4] = [values[0], values[1], values[2], values[3]];
                    quants[at..at + 4].copy_from_slice(&four.map(|v| v as i8));
                }
            }
        };
        let (quants_ptr, scales_ptr) = (quants.as_mut_ptr() as usize, scales.as_mut_ptr() as usize);
        candle_core::utils::barrier_pool().execute_chunked(tiles, |range| {
            for tile in range {
                // SAFETY: tile `tile`'s parts of `quants` and `scales` are written by this work
                // item alone, and both outlive the pool's call.
                let (quants, scales) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(
                            (quants_ptr as *mut i8).add(tile * tile_quants),
                            tile_quants,
                        ),
                        std::slice::from_raw_parts_mut(
                            (scales_ptr as *mut f32).add(tile * tile_scales),
                            tile_scales,
                        ),
                    )
                };
                lay_out(tile, quants, scales);
            }
        });
        Some(Q8Matrix {
            rows,
            cols,
            quants,
            scales,
            isa,
        })
    }

    /// This matrix multiplied by the kernel written for `isa` (benchmarks and tests compare
    /// them), or `None` where this CPU cannot run it.
    pub fn with_isa(self, isa: Isa) -> Option<Self> {
        isa.supported().then_some(Q8Matrix { isa, ..self })
    }

    /// The instruction set of the kernel that multiplies this matrix.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `(rows, cols)`, i.e. `(out_features, in_features)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Row `row` as f32 into `out` (`cols` long): an embedding lookup on a tied head.
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        let kb = self.cols / BLOCK;
        let lane = row % TILE_ROWS;
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let tile_block = (row / TILE_ROWS) * kb + b;
            let d = self.scales[tile_block * TILE_ROWS + lane];
            for (group, out) in out.chunks_exact_mut(4).enumerate() {
                let at = tile_block * TILE_BLOCK_BYTES + (group * TILE_ROWS + lane) * 4;
                for (o, &q) in out.iter_mut().zip(&self.quants[at..at + 4]) {
                    *o = q as f32 * d;
                }
            }
        }
    }

    /// The weights as f32 `[rows, cols]`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let mut values = vec![0f32; self.rows * self.cols];
        for (row, out) in values.chunks_exact_mut(self.cols).enumerate() {
            self.row_into(row, out);
        }
        Ok(Tensor::from_vec(values, (self.rows, self.cols), device)?)
    }

    /// `xs · Wᵀ` for `xs` of shape `[m, cols]` (f32): `[m, rows]`.
    pub fn matmul(&self, xs: &Tensor) -> Result<Tensor> {
        let x = QuantizedRows::new(xs, self.rows, self.cols, "q8_matmul")?;
        let out = super::tiles::tiled_products(x.m, self.cols, &[(self.rows, self.tile_dot(&x))]);
        let out = out.into_iter().next().unwrap_or_default();
        Ok(Tensor::from_vec(out, (x.m, self.rows), &Device::Cpu)?)
    }

    /// The kernel against `x` (of `self.cols` values per row), one tile at a time.
    pub(crate) fn tile_dot<'a>(&'a self, x: &'a QuantizedRows) -> TileDot<'a> {
        let k = self.cols;
        let kb = k / BLOCK;
        // The AVX-512 kernel multiplies `w + 128` (unsigned) by `x` and takes `128 · Σx` back.
        let x_offsets: Vec<i32> = x
            .quants
            .chunks_exact(BLOCK)
            .map(|q| 128 * q.iter().map(|&v| v as i32).sum::<i32>())
            .collect();
        Box::new(move |tile, row, n_rows, sums| {
            let w = WeightTile {
                quants: &self.quants[tile * kb * TILE_BLOCK_BYTES..][..kb * TILE_BLOCK_BYTES],
                scales: &self.scales[tile * kb * TILE_ROWS..][..kb * TILE_ROWS],
            };
            let xr = ActivationRows::of(x, row, n_rows, k);
            let offsets = &x_offsets[row * kb..(row + n_rows) * kb];
            // SAFETY: `self.isa` was checked against CPUID when it was set; the tile holds
            // `kb` blocks and the activations `kb` blocks per row.
            // The narrowest build that holds the rows (`ROW_GROUP`).
            unsafe {
                match (self.isa, n_rows) {
                    (Isa::Avx2, ..=4) => tile_dots_avx2::<4>(&w, &xr, kb, sums),
                    (Isa::Avx2, ..=8) => tile_dots_avx2::<8>(&w, &xr, kb, sums),
                    (Isa::Avx2, _) => tile_dots_avx2::<16>(&w, &xr, kb, sums),
                    (Isa::Avx512Vnni, ..=8) => tile_dots_avx512::<8>(&w, &xr, offsets, kb, sums),
                    (Isa::Avx512Vnni, _) => tile_dots_avx512::<16>(&w, &xr, offsets, kb, sums),
                }
            }
        })
    }
}

/// Q8_0-quantizes each 32-value block: scale `amax / 127`, values rounded half away from
/// zero to [-127, 127]. With AVX2, eight values at a time and the same bits: `f32::round`
/// alone was a call to libm's `roundf` per value.
pub(super) fn quantize_rows(xs: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut quants = vec![0i8; xs.len()];
    let mut scales = Vec::with_capacity(xs.len() / BLOCK);
    #[cfg(target_arch = "x86_64")]
    let vector = super::simd::avx2_fma();
    for (block, out) in xs.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)) {
        #[cfg(target_arch = "x86_64")]
        if vector {
            // SAFETY: AVX2 and FMA checked above; both blocks hold `BLOCK` values.
            scales.push(unsafe { quantize_block_avx2(block, out) });
            continue;
        }
        scales.push(quantize_block(block, out));
    }
    (quants, scales)
}

fn quantize_block(block: &[f32], out: &mut [i8]) -> f32 {
    let amax = block.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in out.iter_mut().zip(block) {
        *q = (v * inv).round() as i8;
    }
    d
}

/// [`quantize_block`] in 256-bit vectors, with its bits: the maximum is exact in any order
/// (a NaN value is passed over, as `f32::max` does), rounding half away from zero is
/// truncation plus one where the dropped fraction is at least a half (both exact below 2^23),
/// and `as i8`'s saturation and NaN-to-zero are the packs' saturation and a mask.
///
/// # Safety
/// AVX2 and FMA; `block` and `out` hold [`BLOCK`] values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block_avx2(block: &[f32], out: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(block.len() == BLOCK && out.len() == BLOCK);
    let sign_bit = _mm256_set1_ps(-0.0);
    // SAFETY: the block holds four vectors.
    let v: [__m256; 4] =
        std::array::from_fn(|i| unsafe { _mm256_loadu_ps(block.as_ptr().add(8 * i)) });
    let mut amax = _mm256_setzero_ps();
    for &v in &v {
        // `maxps` keeps its second operand when the first is NaN: `amax.max(|v|)`.
        amax = _mm256_max_ps(_mm256_andnot_ps(sign_bit, v), amax);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: eight floats of room.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), amax) };
    let amax = lanes.into_iter().fold(0f32, f32::max);
    let d = amax / 127.0;
    let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let rounded: [__m256i; 4] = std::array::from_fn(|i| {
        let y = _mm256_mul_ps(v[i], inv);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
        let dropped = _mm256_andnot_ps(sign_bit, _mm256_sub_ps(y, t));
        let away = _mm256_or_ps(_mm256_and_ps(y, sign_bit), one);
        let bump = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(dropped, half), away);
        let r = _mm256_add_ps(t, bump);
        // NaN becomes 0 (as `as i8` makes it); out-of-range values saturate in the packs.
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
        let r = _mm256_max_ps(
            _mm256_min_ps(r, _mm256_set1_ps(127.0)),
            _mm256_set1_ps(-128.0),
        );
        _mm256_cvtps_epi32(r)
    });
    // i32 → i16 → i8 with saturation; the packs interleave 128-bit lanes, undone by a permute.
    let words_low = _mm256_packs_epi32(rounded[0], rounded[1]);
    let words_high = _mm256_packs_epi32(rounded[2], rounded[3]);
    let bytes = _mm256_packs_epi16(words_low, words_high);
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `out` holds 32 bytes.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, bytes) };
    d
}

/// One interleaved tile of [`Q8Matrix`]: `kb` blocks of [`TILE_BLOCK_BYTES`] and their
/// [`TILE_ROWS`] scales each.
struct WeightTile<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
}

/// `sums[j][r]`: row `r` of the tile against activation row `j`, with 256-bit vectors (eight
/// tile rows each): per four-value group, the activation bytes broadcast, their signs moved
/// onto them from the weights, `vpmaddubsw` with the weights' magnitudes, `vpmaddwd` to 32
/// bits. The products are exact: at most 2 · 128 · 127 per 16-bit pair.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `w` holds `kb` tile blocks, `x` `x.count <= R` rows of
/// `kb` blocks, and `sums` at least `x.count` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_dots_avx2<const R: usize>(
    w: &WeightTile,
    x: &ActivationRows,
    kb: usize,
    sums: &mut [[f32; TILE_ROWS]],
) {
    use std::arch::x86_64::*;
    debug_assert!(w.quants.len() >= kb * TILE_BLOCK_BYTES && w.scales.len() >= kb * TILE_ROWS);
    debug_assert!(x.count <= R && sums.len() >= x.count);
    debug_assert!(x.quants.len() >= x.count * kb * BLOCK);
    let k = kb * BLOCK;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..kb {
        // SAFETY (all loads): block `b` of the tile is `TILE_BLOCK_BYTES` bytes at
        // `b * TILE_BLOCK_BYTES`, its scales `TILE_ROWS` values at `b * TILE_ROWS`, and each
        // activation row has `BLOCK` bytes at `b * BLOCK`.
        let wq = unsafe { w.quants.as_ptr().add(b * TILE_BLOCK_BYTES) };
        prefetch_block(w.quants.as_ptr(), b + PREFETCH_BLOCKS, TILE_BLOCK_BYTES);
        prefetch_block(w.scales.as_ptr(), b + PREFETCH_BLOCKS, 4 * TILE_ROWS);
        for half in 0..2 {
            let ws = unsafe { _mm256_loadu_ps(w.scales.as_ptr().add(b * TILE_ROWS + half * 8)) };
            // Over all `R` accumulators with a bound check, so that the loop unrolls.
            for (j, acc) in acc.iter_mut().enumerate() {
                if j < x.count {
                    let xp = unsafe { x.quants.as_ptr().add(j * k + b * BLOCK) };
                    let mut isum = _mm256_setzero_si256();
                    for group in 0..BLOCK / 4 {
                        let wv = unsafe {
                            _mm256_loadu_si256(
                                wq.add(group * TILE_ROWS * 4 + half * 32) as *const __m256i
                            )
                        };
                        let x4 = _mm256_set1_epi32(unsafe {
                            (xp.add(group * 4) as *const i32).read_unaligned()
                        });
                        let (w_unsigned, x_signed) = unsigned_by_signed(wv, x4);
                        let pairs = _mm256_maddubs_epi16(w_unsigned, x_signed);
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, ones));
                    }
                    let scale = _mm256_mul_ps(ws, _mm256_set1_ps(x.scales[j * kb + b]));
                    acc[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[half]);
                }
            }
        }
    }
    for (sums, acc) in sums.iter_mut().zip(&acc).take(x.count) {
        // SAFETY: each row of `sums` has room for two vectors of eight.
        unsafe {
            _mm256_storeu_ps(sums.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(sums.as_mut_ptr().add(8), acc[1]);
        }
    }
}

/// [`tile_dots_avx2`] with one 512-bit vector for the sixteen tile rows and `vpdpbusd`, which
/// multiplies unsigned by signed bytes: the weights are flipped to `w + 128` in registers and
/// `offsets[j * kb + b] = 128 · Σx` is taken back from each block's sum, which leaves it
/// exact and equal to the AVX2 kernel's; so are the scaling and the order of the additions.
///
/// # Safety
/// As for [`tile_dots_avx2`], with [`Isa::Avx512Vnni`]; `offsets` holds `x.count` rows of `kb`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_dots_avx512<const R: usize>(
    w: &WeightTile,
    x: &ActivationRows,
    offsets: &[i32],
    kb: usize,
    sums: &mut [[f32; TILE_ROWS]],
) {
    use std::arch::x86_64::*;
    debug_assert!(w.quants.len() >= kb * TILE_BLOCK_BYTES && w.scales.len() >= kb * TILE_ROWS);
    debug_assert!(x.count <= R && sums.len() >= x.count);
    debug_assert!(x.quants.len() >= x.count * kb * BLOCK);
    debug_assert!(offsets.len() >= x.count * kb);
    let k = kb * BLOCK;
    let flip = _mm512_set1_epi8(i8::MIN);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..kb {
        // SAFETY (all loads): as in `tile_dots_avx2`.
        let wq = unsafe { w.quants.as_ptr().add(b * TILE_BLOCK_BYTES) };
        prefetch_block(w.quants.as_ptr(), b + PREFETCH_BLOCKS, TILE_BLOCK_BYTES);
        prefetch_block(w.scales.as_ptr(), b + PREFETCH_BLOCKS, 4 * TILE_ROWS);
        let mut wv = [_mm512_setzero_si512(); BLOCK / 4];
        for (group, wv) in wv.iter_mut().enumerate() {
            let raw = unsafe { _mm512_loadu_si512(wq.add(group * TILE_ROWS * 4) as *const _) };
            *wv = _mm512_xor_si512(raw, flip);
        }
        let ws = unsafe { _mm512_loadu_ps(w.scales.as_ptr().add(b * TILE_ROWS)) };
        for (j, acc) in acc.iter_mut().enumerate() {
            if j < x.count {
                let xp = unsafe { x.quants.as_ptr().add(j * k + b * BLOCK) };
                // Two chains of `vpdpbusd` (its latency is five cycles): exact, so the sum
                // is the same in any order.
                let mut halves = [_mm512_setzero_si512(); 2];
                for (group, wv) in wv.iter().enumerate() {
                    let x4 = _mm512_set1_epi32(unsafe {
                        (xp.add(group * 4) as *const i32).read_unaligned()
                    });
                    halves[group % 2] = _mm512_dpbusd_epi32(halves[group % 2], *wv, x4);
                }
                let isum = _mm512_add_epi32(halves[0], halves[1]);
                let isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(offsets[j * kb + b]));
                let scale = _mm512_mul_ps(ws, _mm512_set1_ps(x.scales[j * kb + b]));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, *acc);
            }
        }
    }
    for (sums, acc) in sums.iter_mut().zip(&acc).take(x.count) {
        // SAFETY: each row of `sums` has room for sixteen values.
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), *acc) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_dots_avx2<const R: usize>(
    _: &WeightTile,
    _: &ActivationRows,
    _: usize,
    _: &mut [[f32; 16]],
) {
    unreachable!("no kernel of ours runs off x86-64: Isa::best() is None there")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_dots_avx512<const R: usize>(
    _: &WeightTile,
    _: &ActivationRows,
    _: &[i32],
    _: usize,
    _: &mut [[f32; 16]],
) {
    unreachable!("no kernel of ours runs off x86-64: Isa::best() is None there")
}

/// Up to [`ROW_GROUP`] Q8_0-quantized activation rows of as many blocks as the weight row.
pub(super) struct ActivationRows<'a> {
    pub quants: &'a [i8],
    pub scales: &'a [f32],
    pub count: usize,
}

impl<'a> ActivationRows<'a> {
    /// Rows `row..row + count` of `x`, of `k` values each.
    pub fn of(x: &'a QuantizedRows, row: usize, count: usize, k: usize) -> ActivationRows<'a> {
        ActivationRows {
            quants: &x.quants[row * k..(row + count) * k],
            scales: &x.scales[row * k / BLOCK..(row + count) * k / BLOCK],
            count,
        }
    }
}

/// Operands for an unsigned-by-signed byte multiply (`vpmaddubsw`) whose products are `w · x`
/// for signed `w`: its magnitudes, and `x` with its signs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn unsigned_by_signed(
    w: std::arch::x86_64::__m256i,
    x: std::arch::x86_64::__m256i,
) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    (_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

#[cfg(test)]
mod tests;
