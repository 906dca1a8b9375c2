//! Matrix multiplies on the 4- and 5-bit legacy GGUF types (Q4_0, Q4_1, Q5_0, Q5_1) for
//! x86-64 CPUs with AVX2 (or AVX-512 VNNI), on the file's own nibbles.
//!
//! candle has no fast kernel for these types (its batched path is 50-70x slower than for
//! Q8_0), and they make up most of the catalogue's default GGUFs: Qwen2.5-Coder-0.5B's
//! "Q4_K_M" is mostly Q5_0, SmolLM2-135M is Q4_1. Converting them to Q8_0 at load took seconds
//! and made every decoded token read 8.5 bits per weight instead of 5.5 or 5.
//!
//! The layout is [`super::Q8Matrix`]'s, at 4 or 5 bits: weight rows interleaved in tiles of
//! sixteen, so that one 512-bit vector holds four values of each of the sixteen rows. Per
//! 32-value block a tile keeps four vectors of nibbles (vector `v` holds, in each byte, value
//! `4v + i` in its low nibble and value `16 + 4v + i` in its high one, which is how the file
//! pairs them), one vector of fifth bits for the 5-bit types (bit `g` of byte `(row, i)` is
//! the fifth bit of value `4g + i`), and sixteen f16 scales (and minimums): exactly the file's
//! bits per weight. The kernels unpack a block into eight vectors of unsigned quants in
//! registers and reuse them for up to sixteen activation rows, as the Q8_0 kernels do.
//!
//! Products are `Σ q · x` on unsigned quants (`vpdpbusd`, or `vpmaddubsw` and `vpmaddwd`),
//! exact in 32 bits; the `_0` types take `offset · Σx` back (`q - 8`, `q - 16`) and the `_1`
//! types add `m · d_x · Σx`. Each output adds its blocks one after another in its own lane,
//! so a row gives the same bits alone as in a batch, and both kernels give the same bits.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::q8::ActivationRows;
use super::simd::Isa;
use super::tiles::{PREFETCH_BLOCKS, QuantizedRows, TILE_ROWS, TileDot, prefetch_block};
use crate::Result;

const BLOCK: usize = 32;
/// Bytes of nibbles per tile block: sixteen for each row.
const TILE_NIBBLE_BYTES: usize = TILE_ROWS * 16;
/// Bytes of fifth bits per tile block: four for each row.
const TILE_HIGH_BYTES: usize = TILE_ROWS * 4;

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

/// A legacy-type weight `[rows, cols]`, interleaved in tiles of [`TILE_ROWS`] rows.
#[derive(Debug)]
pub struct LegacyMatrix {
    kind: Kind,
    rows: usize,
    cols: usize,
    /// Per tile, per block: four vectors of `[row][4]` bytes (see the module's comment).
    /// Rows past `rows` in the last tile are zero.
    nibbles: Vec<u8>,
    /// 5-bit types, per tile, per block: `[row][4]` bytes of fifth bits.
    high_bits: Vec<u8>,
    /// Per tile, per block: the sixteen rows' scales (zero past `rows`).
    scales: Vec<half::f16>,
    /// `_1` types, as `scales`: the minimums.
    mins: Vec<half::f16>,
    isa: Isa,
}

/// One tile's part of a [`LegacyMatrix`]: `kb` blocks.
struct LegacyTile<'a> {
    kind: Kind,
    nibbles: &'a [u8],
    high_bits: &'a [u8],
    scales: &'a [half::f16],
    mins: &'a [half::f16],
}

/// Per activation row and block: `-offset · Σx` (`_0` types; negated, so that the kernels add
/// a broadcast of it from memory) and `d_x · Σx` (`_1` types).
struct ActivationSums<'a> {
    negated_offsets: &'a [i32],
    scaled: &'a [f32],
}

/// Bits 0, 4, 8, …, 28 of `bits` as bits 0 to 7 of a byte: the fifth bits of values `4g + i`
/// (for `bits` shifted right by `i`) gathered into one byte, bit `g` for value `4g + i`.
fn every_fourth_bit(bits: u32) -> u8 {
    // Each step halves the gaps: pairs of bits 4 apart, then pairs of pairs 8 apart, then the
    // two nibbles 16 apart.
    let x = bits & 0x1111_1111;
    let x = (x | x >> 3) & 0x0303_0303;
    let x = (x | x >> 6) & 0x000F_000F;
    ((x | x >> 12) & 0xFF) as u8
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
        super::tiles::from_cpu_qtensor(tensor, Self::from_file_bytes)
    }

    /// Lays out a `[rows, cols]` weight from its bytes as a GGUF file stores them; `None` for
    /// other types, a size that does not match, or where the CPU runs none of our kernels.
    pub fn from_file_bytes(
        dtype: GgmlDType,
        (rows, cols): (usize, usize),
        data: &[u8],
    ) -> Option<Self> {
        let (kind, isa) = (Kind::of(dtype)?, Isa::best()?);
        let kb = cols / BLOCK;
        let block_bytes = kind.block_bytes();
        if !cols.is_multiple_of(BLOCK) || data.len() != rows * kb * block_bytes {
            return None;
        }
        let tiles = rows.div_ceil(TILE_ROWS);
        let high_bytes = if kind.five_bits() { TILE_HIGH_BYTES } else { 0 };
        let mut matrix = LegacyMatrix {
            kind,
            rows,
            cols,
            nibbles: vec![0; tiles * kb * TILE_NIBBLE_BYTES],
            high_bits: vec![0; tiles * kb * high_bytes],
            scales: vec![half::f16::ZERO; tiles * kb * TILE_ROWS],
            mins: vec![
                half::f16::ZERO;
                if kind.has_min() {
                    tiles * kb * TILE_ROWS
                } else {
                    0
                }
            ],
            isa,
        };
        let min_values = if kind.has_min() { TILE_ROWS } else { 0 };
        let lay_out = |tile: usize,
                       nibbles: &mut [u8],
                       high_bits: &mut [u8],
                       scales: &mut [half::f16],
                       mins: &mut [half::f16]| {
            let first_row = tile * TILE_ROWS;
            let tile_rows = &data[first_row * kb * block_bytes..]
                [..(rows - first_row).min(TILE_ROWS) * kb * block_bytes];
            let blocks = tile_rows.chunks_exact(block_bytes);
            let lanes_and_blocks = (0..TILE_ROWS).flat_map(|lane| (0..kb).map(move |b| (lane, b)));
            for ((lane, b), block) in lanes_and_blocks.zip(blocks) {
                let f16 = |at: usize| half::f16::from_le_bytes([block[at], block[at + 1]]);
                scales[b * TILE_ROWS + lane] = f16(0);
                let mut at = 2;
                if kind.has_min() {
                    mins[b * TILE_ROWS + lane] = f16(at);
                    at += 2;
                }
                if kind.five_bits() {
                    let high = u32::from_le_bytes([
                        block[at],
                        block[at + 1],
                        block[at + 2],
                        block[at + 3],
                    ]);
                    at += 4;
                    for i in 0..4 {
                        high_bits[b * TILE_HIGH_BYTES + lane * 4 + i] = every_fourth_bit(high >> i);
                    }
                }
                for (v, four) in block[at..at + 16].chunks_exact(4).enumerate() {
                    let to = b * TILE_NIBBLE_BYTES + v * TILE_ROWS * 4 + lane * 4;
                    nibbles[to..to + 4].copy_from_slice(four);
                }
            }
        };
        let parts = [
            (matrix.nibbles.as_mut_ptr() as usize, kb * TILE_NIBBLE_BYTES),
            (matrix.high_bits.as_mut_ptr() as usize, kb * high_bytes),
        ];
        let halves = [
            (matrix.scales.as_mut_ptr() as usize, kb * TILE_ROWS),
            (matrix.mins.as_mut_ptr() as usize, kb * min_values),
        ];
        // One tile per work item on candle's pool.
        candle_core::utils::barrier_pool().execute_chunked(tiles, |range| {
            for tile in range {
                // SAFETY: tile `tile`'s parts of the four buffers are written by this work
                // item alone, and the buffers outlive the pool's call.
                unsafe {
                    let bytes = |(ptr, len): (usize, usize)| {
                        std::slice::from_raw_parts_mut((ptr as *mut u8).add(tile * len), len)
                    };
                    let f16s = |(ptr, len): (usize, usize)| {
                        std::slice::from_raw_parts_mut((ptr as *mut half::f16).add(tile * len), len)
                    };
                    lay_out(
                        tile,
                        bytes(parts[0]),
                        bytes(parts[1]),
                        f16s(halves[0]),
                        f16s(halves[1]),
                    );
                }
            }
        });
        Some(matrix)
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

    fn tile(&self, tile: usize) -> LegacyTile<'_> {
        let kb = self.cols / BLOCK;
        let high_bytes = if self.kind.five_bits() {
            TILE_HIGH_BYTES
        } else {
            0
        };
        let min_values = if self.kind.has_min() { TILE_ROWS } else { 0 };
        LegacyTile {
            kind: self.kind,
            nibbles: &self.nibbles[tile * kb * TILE_NIBBLE_BYTES..][..kb * TILE_NIBBLE_BYTES],
            high_bits: &self.high_bits[tile * kb * high_bytes..][..kb * high_bytes],
            scales: &self.scales[tile * kb * TILE_ROWS..][..kb * TILE_ROWS],
            mins: &self.mins[tile * kb * min_values..][..kb * min_values],
        }
    }

    /// Row `row` as f32 into `out` (`cols` long): an embedding lookup on a tied head.
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        let offset = self.kind.offset();
        let (tile, lane) = (self.tile(row / TILE_ROWS), row % TILE_ROWS);
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let d = tile.scales[b * TILE_ROWS + lane].to_f32();
            let m = tile
                .mins
                .get(b * TILE_ROWS + lane)
                .map_or(0.0, |m| m.to_f32());
            for (index, out) in out.iter_mut().enumerate() {
                let (g, i) = (index / 4, index % 4);
                let byte =
                    tile.nibbles[b * TILE_NIBBLE_BYTES + (g % 4) * TILE_ROWS * 4 + lane * 4 + i];
                let mut q = if g < 4 { byte & 0x0F } else { byte >> 4 };
                if self.kind.five_bits() {
                    let high = tile.high_bits[b * TILE_HIGH_BYTES + lane * 4 + i];
                    q |= ((high >> g) & 1) << 4;
                }
                *out = d * (q as i32 - offset) as f32 + m;
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

    /// `xs · Wᵀ` for `xs` of shape `[m, cols]`: `[m, rows]`.
    pub fn matmul(&self, xs: &Tensor) -> Result<Tensor> {
        let x = QuantizedRows::new(xs, self.rows, self.cols, "legacy_matmul")?;
        let out = super::tiles::tiled_products(x.m, self.cols, &[(self.rows, self.tile_dot(&x))]);
        let out = out.into_iter().next().unwrap_or_default();
        Ok(Tensor::from_vec(out, (x.m, self.rows), &Device::Cpu)?)
    }

    /// The kernel against `x` (of `self.cols` values per row), one tile at a time.
    pub(crate) fn tile_dot<'a>(&'a self, x: &'a QuantizedRows) -> TileDot<'a> {
        let k = self.cols;
        let kb = k / BLOCK;
        let block_sums: Vec<i32> = x
            .quants
            .chunks_exact(BLOCK)
            .map(|q| q.iter().map(|&v| v as i32).sum())
            .collect();
        let negated_offsets: Vec<i32> =
            block_sums.iter().map(|s| -self.kind.offset() * s).collect();
        let scaled: Vec<f32> = if self.kind.has_min() {
            block_sums
                .iter()
                .zip(&x.scales)
                .map(|(&s, &d)| d * s as f32)
                .collect()
        } else {
            Vec::new()
        };
        Box::new(move |tile, row, n_rows, sums| {
            let w = self.tile(tile);
            let xr = ActivationRows::of(x, row, n_rows, k);
            let rows = row * kb..(row + n_rows) * kb;
            let x_sums = ActivationSums {
                negated_offsets: &negated_offsets[rows.clone()],
                scaled: scaled.get(rows).unwrap_or(&[]),
            };
            // SAFETY: `self.isa` was checked against CPUID when it was set; the tile holds
            // `kb` blocks and the activations `kb` blocks per row.
            // The narrowest build that holds the rows (`ROW_GROUP`).
            unsafe {
                match (self.isa, n_rows) {
                    (Isa::Avx2, ..=4) => tile_dots_avx2::<4>(&w, &xr, &x_sums, kb, sums),
                    (Isa::Avx2, ..=8) => tile_dots_avx2::<8>(&w, &xr, &x_sums, kb, sums),
                    (Isa::Avx2, _) => tile_dots_avx2::<16>(&w, &xr, &x_sums, kb, sums),
                    (Isa::Avx512Vnni, ..=8) => tile_dots_avx512::<8>(&w, &xr, &x_sums, kb, sums),
                    (Isa::Avx512Vnni, _) => tile_dots_avx512::<16>(&w, &xr, &x_sums, kb, sums),
                }
            }
        })
    }
}

/// `sums[j][r]`: row `r` of the tile against activation row `j`, with 256-bit vectors (eight
/// tile rows each): a block's nibbles unpacked to unsigned quants, `vpmaddubsw` against the
/// broadcast activation bytes, four of those added in 16 bits, `vpmaddwd` to 32 bits. Exact:
/// at most 2 · 31 · 128 per pair, four times that per 16-bit sum.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds `kb` blocks, `x` `x.count <= R` rows of
/// `kb` blocks, `x_sums` `x.count` rows of `kb` values (`scaled`: for the `_1` types), and
/// `sums` at least `x.count` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_dots_avx2<const R: usize>(
    w: &LegacyTile,
    x: &ActivationRows,
    x_sums: &ActivationSums,
    kb: usize,
    sums: &mut [[f32; TILE_ROWS]],
) {
    use std::arch::x86_64::*;
    debug_assert!(w.nibbles.len() >= kb * TILE_NIBBLE_BYTES && w.scales.len() >= kb * TILE_ROWS);
    debug_assert!(x.count <= R && x.quants.len() >= x.count * kb * BLOCK);
    debug_assert!(x_sums.negated_offsets.len() >= x.count * kb && sums.len() >= x.count);
    debug_assert!(x.scales.len() >= x.count * kb);
    let k = kb * BLOCK;
    let (five_bits, has_min) = (w.kind.five_bits(), w.kind.has_min());
    debug_assert!(!has_min || (x_sums.scaled.len() >= x.count * kb && w.mins.len() >= kb * 16));
    let low = _mm256_set1_epi8(0x0F);
    let fifth = _mm256_set1_epi8(0x10);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..kb {
        prefetch_ahead(w, b);
        for half in 0..2 {
            // SAFETY (all loads): block `b` of the tile has `TILE_NIBBLE_BYTES` of nibbles,
            // `TILE_HIGH_BYTES` of fifth bits (5-bit types) and `TILE_ROWS` scales (and
            // minimums); each activation row has `BLOCK` bytes at `b * BLOCK`.
            let np = unsafe { w.nibbles.as_ptr().add(b * TILE_NIBBLE_BYTES + half * 32) };
            let mut q = [_mm256_setzero_si256(); 8];
            for v in 0..4 {
                let raw =
                    unsafe { _mm256_loadu_si256(np.add(v * TILE_ROWS * 4) as *const __m256i) };
                q[v] = _mm256_and_si256(raw, low);
                q[v + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
            }
            if five_bits {
                let high = unsafe {
                    _mm256_loadu_si256(
                        w.high_bits.as_ptr().add(b * TILE_HIGH_BYTES + half * 32) as *const __m256i
                    )
                };
                // Bit `g` of each byte moved to bit 4 (a 16-bit shift moves bit 4 of each byte
                // within that byte) and or-ed onto the nibble, whose bit 4 is clear.
                let moved = [
                    _mm256_slli_epi16(high, 4),
                    _mm256_slli_epi16(high, 3),
                    _mm256_slli_epi16(high, 2),
                    _mm256_slli_epi16(high, 1),
                    high,
                    _mm256_srli_epi16(high, 1),
                    _mm256_srli_epi16(high, 2),
                    _mm256_srli_epi16(high, 3),
                ];
                for (q, moved) in q.iter_mut().zip(moved) {
                    *q = _mm256_or_si256(*q, _mm256_and_si256(moved, fifth));
                }
            }
            let at = b * TILE_ROWS + half * 8;
            let ws = unsafe {
                _mm256_cvtph_ps(_mm_loadu_si128(w.scales.as_ptr().add(at) as *const __m128i))
            };
            let wm = if has_min {
                unsafe {
                    _mm256_cvtph_ps(_mm_loadu_si128(w.mins.as_ptr().add(at) as *const __m128i))
                }
            } else {
                _mm256_setzero_ps()
            };
            for (j, acc) in acc.iter_mut().enumerate().take(x.count) {
                let xp = unsafe { x.quants.as_ptr().add(j * k + b * BLOCK) };
                // Four pair sums add in 16 bits before one widening: each is at most
                // 2 · 31 · 128 = 7,936 in magnitude, four 31,744, below 2^15.
                let mut words = [_mm256_setzero_si256(); 2];
                for (g, q) in q.iter().enumerate() {
                    let x4 = _mm256_set1_epi32(unsafe {
                        (xp.add(g * 4) as *const i32).read_unaligned()
                    });
                    let pairs = _mm256_maddubs_epi16(*q, x4);
                    words[g / 4] = _mm256_add_epi16(words[g / 4], pairs);
                }
                let isum = _mm256_add_epi32(
                    _mm256_madd_epi16(words[0], ones),
                    _mm256_madd_epi16(words[1], ones),
                );
                let jb = j * kb + b;
                // SAFETY: `jb < x.count * kb`, the length of both (asserted above).
                let (negated_offset, x_scale) = unsafe {
                    (
                        *x_sums.negated_offsets.get_unchecked(jb),
                        *x.scales.get_unchecked(jb),
                    )
                };
                let isum = _mm256_add_epi32(isum, _mm256_set1_epi32(negated_offset));
                let scale = _mm256_mul_ps(ws, _mm256_set1_ps(x_scale));
                acc[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[half]);
                if has_min {
                    acc[half] = _mm256_fmadd_ps(wm, _mm256_set1_ps(x_sums.scaled[jb]), acc[half]);
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

/// [`tile_dots_avx2`] with one 512-bit vector for the sixteen tile rows and `vpdpbusd`; the
/// fifth bits are added under a byte mask. The integer sums, the scaling and the order of the
/// additions are the AVX2 kernel's, so the results are its bits.
///
/// # Safety
/// As for [`tile_dots_avx2`], with [`Isa::Avx512Vnni`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_dots_avx512<const R: usize>(
    w: &LegacyTile,
    x: &ActivationRows,
    x_sums: &ActivationSums,
    kb: usize,
    sums: &mut [[f32; TILE_ROWS]],
) {
    use std::arch::x86_64::*;
    debug_assert!(w.nibbles.len() >= kb * TILE_NIBBLE_BYTES && w.scales.len() >= kb * TILE_ROWS);
    debug_assert!(x.count <= R && x.quants.len() >= x.count * kb * BLOCK);
    debug_assert!(x_sums.negated_offsets.len() >= x.count * kb && sums.len() >= x.count);
    debug_assert!(x.scales.len() >= x.count * kb);
    let k = kb * BLOCK;
    let (five_bits, has_min) = (w.kind.five_bits(), w.kind.has_min());
    debug_assert!(!has_min || (x_sums.scaled.len() >= x.count * kb && w.mins.len() >= kb * 16));
    let low = _mm512_set1_epi8(0x0F);
    let fifth = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..kb {
        // SAFETY (all loads): as in `tile_dots_avx2`.
        let np = unsafe { w.nibbles.as_ptr().add(b * TILE_NIBBLE_BYTES) };
        prefetch_ahead(w, b);
        let mut q = [_mm512_setzero_si512(); 8];
        for v in 0..4 {
            let raw = unsafe { _mm512_loadu_si512(np.add(v * TILE_ROWS * 4) as *const _) };
            q[v] = _mm512_and_si512(raw, low);
            q[v + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
        }
        if five_bits {
            let high = unsafe {
                _mm512_loadu_si512(w.high_bits.as_ptr().add(b * TILE_HIGH_BYTES) as *const _)
            };
            for (g, q) in q.iter_mut().enumerate() {
                let set = _mm512_test_epi8_mask(high, _mm512_set1_epi8((1u8 << g) as i8));
                // Bit 4 of an unpacked nibble is clear: adding 16 sets it.
                *q = _mm512_mask_add_epi8(*q, set, *q, fifth);
            }
        }
        let ws = unsafe {
            _mm512_cvtph_ps(_mm256_loadu_si256(
                w.scales.as_ptr().add(b * TILE_ROWS) as *const __m256i
            ))
        };
        let wm = if has_min {
            unsafe {
                _mm512_cvtph_ps(_mm256_loadu_si256(
                    w.mins.as_ptr().add(b * TILE_ROWS) as *const __m256i
                ))
            }
        } else {
            _mm512_setzero_ps()
        };
        for (j, acc) in acc.iter_mut().enumerate().take(x.count) {
            let xp = unsafe { x.quants.as_ptr().add(j * k + b * BLOCK) };
            // Two chains of `vpdpbusd` (its latency is five cycles): exact, so the sum
            // is the same in any order.
            let mut halves = [_mm512_setzero_si512(); 2];
            for (g, q) in q.iter().enumerate() {
                let x4 =
                    _mm512_set1_epi32(unsafe { (xp.add(g * 4) as *const i32).read_unaligned() });
                halves[g % 2] = _mm512_dpbusd_epi32(halves[g % 2], *q, x4);
            }
            let isum = _mm512_add_epi32(halves[0], halves[1]);
            let jb = j * kb + b;
            // SAFETY: as in `tile_dots_avx2`.
            let (negated_offset, x_scale) = unsafe {
                (
                    *x_sums.negated_offsets.get_unchecked(jb),
                    *x.scales.get_unchecked(jb),
                )
            };
            let isum = _mm512_add_epi32(isum, _mm512_set1_epi32(negated_offset));
            let scale = _mm512_mul_ps(ws, _mm512_set1_ps(x_scale));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, *acc);
            if has_min {
                *acc = _mm512_fmadd_ps(wm, _mm512_set1_ps(x_sums.scaled[jb]), *acc);
            }
        }
    }
    for (sums, acc) in sums.iter_mut().zip(&acc).take(x.count) {
        // SAFETY: each row of `sums` has room for sixteen values.
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), *acc) };
    }
}

/// Asks for block `b + PREFETCH_BLOCKS` of a tile's nibbles, fifth bits and scales.
#[inline(always)]
fn prefetch_ahead(w: &LegacyTile, b: usize) {
    let ahead = b + PREFETCH_BLOCKS;
    prefetch_block(w.nibbles.as_ptr(), ahead, TILE_NIBBLE_BYTES);
    if !w.high_bits.is_empty() {
        prefetch_block(w.high_bits.as_ptr(), ahead, TILE_HIGH_BYTES);
    }
    // Scales (and minimums) of two blocks share a line.
    if ahead.is_multiple_of(2) {
        prefetch_block(w.scales.as_ptr(), ahead, 2 * TILE_ROWS);
        if !w.mins.is_empty() {
            prefetch_block(w.mins.as_ptr(), ahead, 2 * TILE_ROWS);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_dots_avx2<const R: usize>(
    _: &LegacyTile,
    _: &ActivationRows,
    _: &ActivationSums,
    _: usize,
    _: &mut [[f32; TILE_ROWS]],
) {
    unreachable!("no kernel of ours runs off x86-64: Isa::best() is None there")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_dots_avx512<const R: usize>(
    _: &LegacyTile,
    _: &ActivationRows,
    _: &ActivationSums,
    _: usize,
    _: &mut [[f32; TILE_ROWS]],
) {
    unreachable!("no kernel of ours runs off x86-64: Isa::best() is None there")
}

#[cfg(test)]
mod tests;
