//! Matrix multiplies on the k-quant GGUF types of the catalogue's "Q4_K_M" files, Q4_K and
//! Q6_K, for x86-64 CPUs with AVX2 (or AVX-512 VNNI).
//!
//! candle multiplies them row against row after quantizing the activations to Q8_K with a
//! scalar `roundf` per value: in the default 0.5B model's 24 `ffn_down` matrices that was 17%
//! of a warm request, and the 1.5B model is nearly all Q4_K and Q6_K. Here they are laid out
//! in [`super::legacy`]'s tiles of sixteen interleaved rows, per 32-value block, and multiplied
//! against the same Q8_0 activations by kernels shaped like the legacy ones:
//!
//! - **Q4_K**: a 256-value super-block has an f16 scale `d` and minimum `dmin`, and each of its
//!   eight 32-value blocks a 6-bit scale `sc` and minimum `m`: `value = d·sc·q − dmin·m`, `q`
//!   4 bits. A tile keeps the nibbles as the legacy types do, `sc` and `m` as bytes per row
//!   and block, and `d`, `dmin` as f32 per row and super-block: 4.75 bits per weight against
//!   the file's 4.5. The kernel forms `d·sc` and `dmin·m` in f32 (both exact) and goes on as
//!   for Q4_1.
//! - **Q6_K**: an f16 `d` per super-block and a signed 8-bit scale per 16 values: `value =
//!   d·sc·(q − 32)`, `q` 6 bits. A tile keeps the low nibbles as above, the two high bits of
//!   each value in two more vectors, the two scales of each 32-value block as bytes and `d`
//!   as f32: 6.625 bits per weight against the file's 6.5625. Per block the kernel sums each
//!   16-value half on its own, takes `32·Σx` back, and weights the halves by their scales in
//!   32-bit integers (exact: at most 2 · 128 · 16 · 32 · 127, below 2^24), then scales by `d · d_x`.
//!
//! As in the other kernels, each output adds its blocks one after another in its own lane,
//! so a row gives the same bits alone as in a batch, and both kernels give the same bits.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::q8::ActivationRows;
use super::simd::Isa;
use super::tiles::{PREFETCH_BLOCKS, QuantizedRows, TILE_ROWS, TileDot, prefetch_block};
use crate::Result;

const BLOCK: usize = 32;
/// Values per super-block: one `d` (and `dmin`) per row.
const SUPER: usize = 256;
const BLOCKS_PER_SUPER: usize = SUPER / BLOCK;
/// Bytes of low nibbles per tile block: sixteen for each row.
const TILE_NIBBLE_BYTES: usize = TILE_ROWS * 16;
/// Q6_K: bytes of high bit pairs per tile block, eight for each row.
const TILE_HIGH_BYTES: usize = TILE_ROWS * 8;
/// Bytes of block scales per tile block: Q4_K's `sc` then `m` of each row, or Q6_K's scale of
/// each row's first 16 values, then of its second 16.
const TILE_SCALE_BYTES: usize = 2 * TILE_ROWS;

/// Which k-quant type a [`KQuantMatrix`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `d·sc·q − dmin·m`, `q` 4 bits, `sc` and `m` 6 bits per 32 values.
    Q4K,
    /// `d·sc·(q − 32)`, `q` 6 bits, `sc` signed 8 bits per 16 values.
    Q6K,
}

impl Kind {
    fn of(dtype: GgmlDType) -> Option<Kind> {
        match dtype {
            GgmlDType::Q4K => Some(Kind::Q4K),
            GgmlDType::Q6K => Some(Kind::Q6K),
            _ => None,
        }
    }

    /// Bytes of one super-block in a GGUF.
    fn super_bytes(self) -> usize {
        match self {
            // d, dmin, 12 bytes of packed scales and minimums, 128 of nibbles.
            Kind::Q4K => 2 + 2 + 12 + SUPER / 2,
            // 128 bytes of low nibbles, 64 of high bit pairs, 16 scales, d.
            Kind::Q6K => SUPER / 2 + SUPER / 4 + SUPER / 16 + 2,
        }
    }

    fn high_bytes(self) -> usize {
        match self {
            Kind::Q4K => 0,
            Kind::Q6K => TILE_HIGH_BYTES,
        }
    }

    /// f32 values per row and super-block: `d` and `dmin`, or `d`.
    fn super_values(self) -> usize {
        match self {
            Kind::Q4K => 2,
            Kind::Q6K => 1,
        }
    }
}

/// One row's 256-value super-block from the file: unsigned quants and per-block scales.
struct SuperBlock {
    quants: [u8; SUPER],
    /// Q4_K: `sc` of each block. Q6_K: the scale of each 16-value half (`as u8`).
    scales: [u8; 2 * BLOCKS_PER_SUPER],
    /// Q4_K: `m` of each block.
    mins: [u8; BLOCKS_PER_SUPER],
    d: f32,
    dmin: f32,
}

impl SuperBlock {
    fn parse(kind: Kind, bytes: &[u8]) -> SuperBlock {
        let f16 = |at: usize| half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32();
        let mut block = SuperBlock {
            quants: [0; SUPER],
            scales: [0; 2 * BLOCKS_PER_SUPER],
            mins: [0; BLOCKS_PER_SUPER],
            d: 0.0,
            dmin: 0.0,
        };
        match kind {
            Kind::Q4K => {
                block.d = f16(0);
                block.dmin = f16(2);
                let packed = &bytes[4..16];
                for j in 0..BLOCKS_PER_SUPER {
                    // ggml's `get_scale_min_k4`: six bits each, the high two of blocks 4-7
                    // kept in the top bits of the first eight bytes.
                    let (sc, m) = if j < 4 {
                        (packed[j] & 63, packed[j + 4] & 63)
                    } else {
                        (
                            (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4),
                            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
                        )
                    };
                    block.scales[j] = sc;
                    block.mins[j] = m;
                }
                // Each 64 values share 32 bytes: the first 32 in the low nibbles.
                let qs = &bytes[16..16 + SUPER / 2];
                for (chunk, qs) in qs.chunks_exact(32).enumerate() {
                    for (l, &byte) in qs.iter().enumerate() {
                        block.quants[64 * chunk + l] = byte & 0xF;
                        block.quants[64 * chunk + 32 + l] = byte >> 4;
                    }
                }
            }
            Kind::Q6K => {
                let (ql, rest) = bytes.split_at(SUPER / 2);
                let (qh, rest) = rest.split_at(SUPER / 4);
                for (scale, &byte) in block.scales.iter_mut().zip(&rest[..SUPER / 16]) {
                    *scale = byte;
                }
                block.d = f16(SUPER / 2 + SUPER / 4 + SUPER / 16);
                // Per 128 values, 64 bytes of nibbles and 32 of bit pairs: value `32s + l`
                // of the 128 has the low (s < 2) or high nibble of byte `l + 32(s % 2)` and
                // bits `2s..2s+2` of byte `l`.
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    for s in 0..4 {
                        for l in 0..32 {
                            let byte = ql[l + 32 * (s % 2)];
                            let low = if s < 2 { byte & 0xF } else { byte >> 4 };
                            let high = (qh[l] >> (2 * s)) & 3;
                            block.quants[128 * half + 32 * s + l] = low | (high << 4);
                        }
                    }
                }
            }
        }
        block
    }
}

/// A Q4_K or Q6_K weight `[rows, cols]`, interleaved in tiles of [`TILE_ROWS`] rows.
#[derive(Debug)]
pub struct KQuantMatrix {
    kind: Kind,
    rows: usize,
    cols: usize,
    /// Per tile, per block: four vectors of `[row][4]` bytes, value `4v + i` of the block in
    /// the low nibble of byte `(v, row, i)`, value `16 + 4v + i` in the high one.
    nibbles: Vec<u8>,
    /// Q6_K, per tile, per block: two vectors of `[row][4]` bytes; bits `2g..2g+2` of byte
    /// `(h, row, i)` are the high bits of value `4(4h + g) + i`.
    high_bits: Vec<u8>,
    /// Per tile, per block: [`TILE_SCALE_BYTES`] bytes.
    block_scales: Vec<u8>,
    /// Per tile, per super-block: `d` of each row (then `dmin` of each row, Q4_K).
    super_scales: Vec<f32>,
    isa: Isa,
}

/// One tile's part of a [`KQuantMatrix`]: `kb` blocks.
struct KQuantTile<'a> {
    nibbles: &'a [u8],
    high_bits: &'a [u8],
    block_scales: &'a [u8],
    super_scales: &'a [f32],
}

/// Asks for block `b + PREFETCH_BLOCKS` of a tile's nibbles, high bits (Q6_K) and scales.
#[inline(always)]
fn prefetch_ahead<const SIX: bool>(w: &KQuantTile, b: usize) {
    let ahead = b + PREFETCH_BLOCKS;
    prefetch_block(w.nibbles.as_ptr(), ahead, TILE_NIBBLE_BYTES);
    if SIX {
        prefetch_block(w.high_bits.as_ptr(), ahead, TILE_HIGH_BYTES);
    }
    // The scale bytes of two blocks share a line.
    if ahead.is_multiple_of(2) {
        prefetch_block(w.block_scales.as_ptr(), ahead, TILE_SCALE_BYTES);
    }
}

/// Per activation row and block: `d_x · Σx` (Q4_K), or `32 · Σx` of each 16-value half
/// (Q6_K, two per block).
struct ActivationSums<'a> {
    scaled: &'a [f32],
    half_offsets: &'a [i32],
}

impl KQuantMatrix {
    /// Whether this CPU can run the kernels.
    pub fn supported() -> bool {
        Isa::best().is_some()
    }

    /// Lays out a CPU tensor of type Q4_K or Q6_K; `None` for other types or devices.
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
        let (kb, ks) = (cols / BLOCK, cols / SUPER);
        let super_bytes = kind.super_bytes();
        if !cols.is_multiple_of(SUPER) || data.len() != rows * ks * super_bytes {
            return None;
        }
        let tiles = rows.div_ceil(TILE_ROWS);
        let sizes = TileSizes::of(kind, kb);
        let mut matrix = KQuantMatrix {
            kind,
            rows,
            cols,
            nibbles: vec![0; tiles * sizes.nibbles],
            high_bits: vec![0; tiles * sizes.high_bits],
            block_scales: vec![0; tiles * sizes.block_scales],
            super_scales: vec![0.0; tiles * sizes.super_scales],
            isa,
        };
        let lay_out = |tile: usize, part: KQuantTileMut| {
            let first_row = tile * TILE_ROWS;
            let tile_rows = &data[first_row * ks * super_bytes..]
                [..(rows - first_row).min(TILE_ROWS) * ks * super_bytes];
            for (i, bytes) in tile_rows.chunks_exact(super_bytes).enumerate() {
                let (lane, s) = (i / ks, i % ks);
                let block = SuperBlock::parse(kind, bytes);
                let per_row = kind.super_values();
                part.super_scales[s * per_row * TILE_ROWS + lane] = block.d;
                if kind == Kind::Q4K {
                    part.super_scales[(s * per_row + 1) * TILE_ROWS + lane] = block.dmin;
                }
                for j in 0..BLOCKS_PER_SUPER {
                    let b = s * BLOCKS_PER_SUPER + j;
                    let quants = &block.quants[j * BLOCK..][..BLOCK];
                    let scales = &mut part.block_scales[b * TILE_SCALE_BYTES..][..TILE_SCALE_BYTES];
                    match kind {
                        Kind::Q4K => {
                            scales[lane] = block.scales[j];
                            scales[TILE_ROWS + lane] = block.mins[j];
                        }
                        Kind::Q6K => {
                            scales[lane] = block.scales[2 * j];
                            scales[TILE_ROWS + lane] = block.scales[2 * j + 1];
                        }
                    }
                    for v in 0..4 {
                        let to = b * TILE_NIBBLE_BYTES + v * TILE_ROWS * 4 + lane * 4;
                        for i in 0..4 {
                            part.nibbles[to + i] =
                                (quants[4 * v + i] & 0xF) | ((quants[16 + 4 * v + i] & 0xF) << 4);
                        }
                    }
                    if kind == Kind::Q6K {
                        for h in 0..2 {
                            let to = b * TILE_HIGH_BYTES + h * TILE_ROWS * 4 + lane * 4;
                            for i in 0..4 {
                                part.high_bits[to + i] = (0..4)
                                    .map(|g| ((quants[4 * (4 * h + g) + i] >> 4) & 3) << (2 * g))
                                    .fold(0, |byte, bits| byte | bits);
                            }
                        }
                    }
                }
            }
        };
        let bases = [
            matrix.nibbles.as_mut_ptr() as usize,
            matrix.high_bits.as_mut_ptr() as usize,
            matrix.block_scales.as_mut_ptr() as usize,
            matrix.super_scales.as_mut_ptr() as usize,
        ];
        // One tile per work item on candle's pool: the 1.5B model has 1.8 billion such weights.
        candle_core::utils::barrier_pool().execute_chunked(tiles, |range| {
            for tile in range {
                // SAFETY: tile `tile`'s parts of the four buffers are written by this work
                // item alone, and the buffers outlive the pool's call.
                let part = unsafe {
                    let bytes = |base: usize, len: usize| {
                        std::slice::from_raw_parts_mut((base as *mut u8).add(tile * len), len)
                    };
                    KQuantTileMut {
                        nibbles: bytes(bases[0], sizes.nibbles),
                        high_bits: bytes(bases[1], sizes.high_bits),
                        block_scales: bytes(bases[2], sizes.block_scales),
                        super_scales: std::slice::from_raw_parts_mut(
                            (bases[3] as *mut f32).add(tile * sizes.super_scales),
                            sizes.super_scales,
                        ),
                    }
                };
                lay_out(tile, part);
            }
        });
        Some(matrix)
    }

    /// This matrix multiplied by the kernel written for `isa`, or `None` where this CPU
    /// cannot run it.
    pub fn with_isa(self, isa: Isa) -> Option<Self> {
        isa.supported().then_some(KQuantMatrix { isa, ..self })
    }

    /// `(rows, cols)`, i.e. `(out_features, in_features)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn tile(&self, tile: usize) -> KQuantTile<'_> {
        let sizes = TileSizes::of(self.kind, self.cols / BLOCK);
        KQuantTile {
            nibbles: &self.nibbles[tile * sizes.nibbles..][..sizes.nibbles],
            high_bits: &self.high_bits[tile * sizes.high_bits..][..sizes.high_bits],
            block_scales: &self.block_scales[tile * sizes.block_scales..][..sizes.block_scales],
            super_scales: &self.super_scales[tile * sizes.super_scales..][..sizes.super_scales],
        }
    }

    /// Row `row` as f32 into `out` (`cols` long), with the bits of candle's dequantization
    /// (the trainer's frozen base and merged adapters start from these values).
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        let (tile, lane) = (self.tile(row / TILE_ROWS), row % TILE_ROWS);
        let per_row = self.kind.super_values();
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let s = b / BLOCKS_PER_SUPER;
            let d = tile.super_scales[s * per_row * TILE_ROWS + lane];
            let scales = &tile.block_scales[b * TILE_SCALE_BYTES..];
            for (index, out) in out.iter_mut().enumerate() {
                let (g, i) = (index / 4, index % 4);
                let byte =
                    tile.nibbles[b * TILE_NIBBLE_BYTES + (g % 4) * TILE_ROWS * 4 + lane * 4 + i];
                let low = if g < 4 { byte & 0x0F } else { byte >> 4 };
                *out = match self.kind {
                    Kind::Q4K => {
                        let dmin = tile.super_scales[(s * per_row + 1) * TILE_ROWS + lane];
                        let sc = scales[lane] as f32;
                        let m = scales[TILE_ROWS + lane] as f32;
                        (d * sc) * low as f32 - dmin * m
                    }
                    Kind::Q6K => {
                        let high = tile.high_bits
                            [b * TILE_HIGH_BYTES + (g / 4) * TILE_ROWS * 4 + lane * 4 + i];
                        let q = (low | (((high >> (2 * (g % 4))) & 3) << 4)) as i32 - 32;
                        let sc = scales[(g / 4) * TILE_ROWS + lane] as i8 as f32;
                        d * sc * q as f32
                    }
                };
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
        let x = QuantizedRows::new(xs, self.rows, self.cols, "kquant_matmul")?;
        let out = super::tiles::tiled_products(x.m, self.cols, &[(self.rows, self.tile_dot(&x))]);
        let out = out.into_iter().next().unwrap_or_default();
        Ok(Tensor::from_vec(out, (x.m, self.rows), &Device::Cpu)?)
    }

    /// The kernel against `x` (of `self.cols` values per row), one tile at a time.
    pub(crate) fn tile_dot<'a>(&'a self, x: &'a QuantizedRows) -> TileDot<'a> {
        let k = self.cols;
        let kb = k / BLOCK;
        let half_sums: Vec<i32> = x
            .quants
            .chunks_exact(BLOCK / 2)
            .map(|q| q.iter().map(|&v| v as i32).sum())
            .collect();
        let (scaled, half_offsets): (Vec<f32>, Vec<i32>) = match self.kind {
            Kind::Q4K => (
                half_sums
                    .chunks_exact(2)
                    .zip(&x.scales)
                    .map(|(s, &d)| d * (s[0] + s[1]) as f32)
                    .collect(),
                Vec::new(),
            ),
            Kind::Q6K => (Vec::new(), half_sums.iter().map(|s| 32 * s).collect()),
        };
        Box::new(move |tile, row, n_rows, sums| {
            let w = self.tile(tile);
            let xr = ActivationRows::of(x, row, n_rows, k);
            let x_sums = ActivationSums {
                scaled: scaled.get(row * kb..(row + n_rows) * kb).unwrap_or(&[]),
                half_offsets: half_offsets
                    .get(2 * row * kb..2 * (row + n_rows) * kb)
                    .unwrap_or(&[]),
            };
            // SAFETY: `self.isa` was checked against CPUID when it was set; the tile holds
            // `kb` blocks, the activations `kb` blocks per row and `x_sums` the kind's sums.
            unsafe {
                match self.kind {
                    Kind::Q4K => tile_dots::<false>(self.isa, &w, &xr, &x_sums, kb, sums),
                    Kind::Q6K => tile_dots::<true>(self.isa, &w, &xr, &x_sums, kb, sums),
                }
            }
        })
    }
}

/// The kernel for `isa` in the narrowest build that holds `x.count` rows ([`ROW_GROUP`]).
///
/// # Safety
/// As for [`tile_dots_avx2`], with `isa` supported by this CPU.
///
/// [`ROW_GROUP`]: super::tiles::ROW_GROUP
unsafe fn tile_dots<const SIX: bool>(
    isa: Isa,
    w: &KQuantTile,
    x: &ActivationRows,
    x_sums: &ActivationSums,
    kb: usize,
    sums: &mut [[f32; TILE_ROWS]],
) {
    // SAFETY: as the caller promises.
    unsafe {
        match (isa, x.count) {
            (Isa::Avx2, ..=4) => tile_dots_avx2::<SIX, 4>(w, x, x_sums, kb, sums),
            (Isa::Avx2, ..=8) => tile_dots_avx2::<SIX, 8>(w, x, x_sums, kb, sums),
            (Isa::Avx2, _) => tile_dots_avx2::<SIX, 16>(w, x, x_sums, kb, sums),
            (Isa::Avx512Vnni, ..=8) => tile_dots_avx512::<SIX, 8>(w, x, x_sums, kb, sums),
            (Isa::Avx512Vnni, _) => tile_dots_avx512::<SIX, 16>(w, x, x_sums, kb, sums),
        }
    }
}

/// Lengths of one tile's part of each buffer.
#[derive(Clone, Copy)]
struct TileSizes {
    nibbles: usize,
    high_bits: usize,
    block_scales: usize,
    super_scales: usize,
}

impl TileSizes {
    fn of(kind: Kind, kb: usize) -> TileSizes {
        TileSizes {
            nibbles: kb * TILE_NIBBLE_BYTES,
            high_bits: kb * kind.high_bytes(),
            block_scales: kb * TILE_SCALE_BYTES,
            super_scales: kb / BLOCKS_PER_SUPER * kind.super_values() * TILE_ROWS,
        }
    }
}

/// One tile's part of each buffer, while it is laid out.
struct KQuantTileMut<'a> {
    nibbles: &'a mut [u8],
    high_bits: &'a mut [u8],
    block_scales: &'a mut [u8],
    super_scales: &'a mut [f32],
}

/// `sums[j][r]`: row `r` of the tile against activation row `j`, with 256-bit vectors (eight
/// tile rows each): a block's quants unpacked to unsigned bytes, `vpmaddubsw` against the
/// broadcast activation bytes, added in 16 bits as far as they cannot overflow (eight for
/// Q4_K, two for Q6_K), `vpmaddwd` to 32 bits: exact, at most 2 · 63 · 128 per pair.
/// `SIX` picks Q6_K, otherwise Q4_K.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `w` holds `kb` blocks (a multiple of eight), `x`
/// `x.count <= R` rows of `kb` blocks, `x_sums` `x.count` rows of the kind's sums, and `sums`
/// at least `x.count` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_dots_avx2<const SIX: bool, const R: usize>(
    w: &KQuantTile,
    x: &ActivationRows,
    x_sums: &ActivationSums,
    kb: usize,
    sums: &mut [[f32; TILE_ROWS]],
) {
    use std::arch::x86_64::*;
    debug_assert!(kb.is_multiple_of(BLOCKS_PER_SUPER));
    debug_assert!(w.nibbles.len() >= kb * TILE_NIBBLE_BYTES);
    debug_assert!(w.block_scales.len() >= kb * TILE_SCALE_BYTES);
    debug_assert!(x.count <= R && sums.len() >= x.count);
    debug_assert!(x.quants.len() >= x.count * kb * BLOCK);
    debug_assert!(if SIX {
        w.high_bits.len() >= kb * TILE_HIGH_BYTES && x_sums.half_offsets.len() >= 2 * x.count * kb
    } else {
        x_sums.scaled.len() >= x.count * kb
    });
    let k = kb * BLOCK;
    let per_row = if SIX { 1 } else { 2 };
    let low = _mm256_set1_epi8(0x0F);
    let pair = _mm256_set1_epi8(0x30);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..kb {
        let s = b / BLOCKS_PER_SUPER;
        prefetch_ahead::<SIX>(w, b);
        for half in 0..2 {
            // SAFETY (all loads): block `b` of the tile has `TILE_NIBBLE_BYTES` of nibbles,
            // `TILE_HIGH_BYTES` of high bits (Q6_K) and `2 · TILE_ROWS` scale bytes, super-block
            // `s` its f32 scales; each activation row has `BLOCK` bytes at `b * BLOCK`.
            let np = unsafe { w.nibbles.as_ptr().add(b * TILE_NIBBLE_BYTES + half * 32) };
            let mut q = [_mm256_setzero_si256(); 8];
            for v in 0..4 {
                let raw =
                    unsafe { _mm256_loadu_si256(np.add(v * TILE_ROWS * 4) as *const __m256i) };
                q[v] = _mm256_and_si256(raw, low);
                q[v + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
            }
            let bp = unsafe { w.block_scales.as_ptr().add(b * TILE_SCALE_BYTES + half * 8) };
            let first = unsafe { _mm_loadl_epi64(bp as *const __m128i) };
            let second = unsafe { _mm_loadl_epi64(bp.add(TILE_ROWS) as *const __m128i) };
            let d = unsafe {
                _mm256_loadu_ps(
                    w.super_scales
                        .as_ptr()
                        .add(s * per_row * TILE_ROWS + half * 8),
                )
            };
            if SIX {
                let hp = unsafe { w.high_bits.as_ptr().add(b * TILE_HIGH_BYTES + half * 32) };
                for h in 0..2 {
                    let raw =
                        unsafe { _mm256_loadu_si256(hp.add(h * TILE_ROWS * 4) as *const __m256i) };
                    // Bit pair `g` of each byte moved to bits 4-5 (the shifts cross bytes only
                    // outside the mask).
                    let pairs = [
                        _mm256_slli_epi16(raw, 4),
                        _mm256_slli_epi16(raw, 2),
                        raw,
                        _mm256_srli_epi16(raw, 2),
                    ];
                    for (g, bits) in pairs.into_iter().enumerate() {
                        q[4 * h + g] = _mm256_or_si256(q[4 * h + g], _mm256_and_si256(bits, pair));
                    }
                }
                let (sc_a, sc_b) = (_mm256_cvtepi8_epi32(first), _mm256_cvtepi8_epi32(second));
                for (j, acc) in acc.iter_mut().enumerate().take(x.count) {
                    let xp = unsafe { x.quants.as_ptr().add(j * k + b * BLOCK) };
                    // Two pair sums add in 16 bits before widening: each is at most
                    // 2 · 63 · 128 = 16,128 in magnitude, two 32,256, below 2^15.
                    let mut words = [_mm256_setzero_si256(); 4];
                    for (g, q) in q.iter().enumerate() {
                        let x4 = _mm256_set1_epi32(unsafe {
                            (xp.add(g * 4) as *const i32).read_unaligned()
                        });
                        words[g / 2] = _mm256_add_epi16(words[g / 2], _mm256_maddubs_epi16(*q, x4));
                    }
                    let halves = [
                        _mm256_add_epi32(
                            _mm256_madd_epi16(words[0], ones),
                            _mm256_madd_epi16(words[1], ones),
                        ),
                        _mm256_add_epi32(
                            _mm256_madd_epi16(words[2], ones),
                            _mm256_madd_epi16(words[3], ones),
                        ),
                    ];
                    let jb = j * kb + b;
                    let offsets = &x_sums.half_offsets[2 * jb..2 * jb + 2];
                    let a = _mm256_sub_epi32(halves[0], _mm256_set1_epi32(offsets[0]));
                    let c = _mm256_sub_epi32(halves[1], _mm256_set1_epi32(offsets[1]));
                    let isum =
                        _mm256_add_epi32(_mm256_mullo_epi32(a, sc_a), _mm256_mullo_epi32(c, sc_b));
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.scales[jb]));
                    acc[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[half]);
                }
            } else {
                let dmin = unsafe {
                    _mm256_loadu_ps(
                        w.super_scales
                            .as_ptr()
                            .add((s * per_row + 1) * TILE_ROWS + half * 8),
                    )
                };
                // `d·sc` and `−dmin·m`: exact in f32.
                let ws = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(first)));
                let wm = _mm256_sub_ps(
                    _mm256_setzero_ps(),
                    _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(second))),
                );
                for (j, acc) in acc.iter_mut().enumerate().take(x.count) {
                    let xp = unsafe { x.quants.as_ptr().add(j * k + b * BLOCK) };
                    // All eight pair sums add in 16 bits before one widening: each is at most
                    // 2 · 15 · 128 = 3,840 in magnitude, eight 30,720, below 2^15.
                    let mut words = _mm256_setzero_si256();
                    for (g, q) in q.iter().enumerate() {
                        let x4 = _mm256_set1_epi32(unsafe {
                            (xp.add(g * 4) as *const i32).read_unaligned()
                        });
                        words = _mm256_add_epi16(words, _mm256_maddubs_epi16(*q, x4));
                    }
                    let isum = _mm256_madd_epi16(words, ones);
                    let jb = j * kb + b;
                    let scale = _mm256_mul_ps(ws, _mm256_set1_ps(x.scales[jb]));
                    acc[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[half]);
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

/// [`tile_dots_avx2`] with one 512-bit vector for the sixteen tile rows and `vpdpbusd`. The
/// integer sums, the scaling and the order of the additions are the AVX2 kernel's, so the
/// results are its bits.
///
/// # Safety
/// As for [`tile_dots_avx2`], with [`Isa::Avx512Vnni`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_dots_avx512<const SIX: bool, const R: usize>(
    w: &KQuantTile,
    x: &ActivationRows,
    x_sums: &ActivationSums,
    kb: usize,
    sums: &mut [[f32; TILE_ROWS]],
) {
    use std::arch::x86_64::*;
    debug_assert!(kb.is_multiple_of(BLOCKS_PER_SUPER));
    debug_assert!(w.nibbles.len() >= kb * TILE_NIBBLE_BYTES);
    debug_assert!(w.block_scales.len() >= kb * TILE_SCALE_BYTES);
    debug_assert!(x.count <= R && sums.len() >= x.count);
    debug_assert!(x.quants.len() >= x.count * kb * BLOCK);
    debug_assert!(if SIX {
        w.high_bits.len() >= kb * TILE_HIGH_BYTES && x_sums.half_offsets.len() >= 2 * x.count * kb
    } else {
        x_sums.scaled.len() >= x.count * kb
    });
    let k = kb * BLOCK;
    let per_row = if SIX { 1 } else { 2 };
    let low = _mm512_set1_epi8(0x0F);
    let pair = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..kb {
        let s = b / BLOCKS_PER_SUPER;
        prefetch_ahead::<SIX>(w, b);
        // SAFETY (all loads): as in `tile_dots_avx2`.
        let np = unsafe { w.nibbles.as_ptr().add(b * TILE_NIBBLE_BYTES) };
        let mut q = [_mm512_setzero_si512(); 8];
        for v in 0..4 {
            let raw = unsafe { _mm512_loadu_si512(np.add(v * TILE_ROWS * 4) as *const _) };
            q[v] = _mm512_and_si512(raw, low);
            q[v + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
        }
        let bp = unsafe { w.block_scales.as_ptr().add(b * TILE_SCALE_BYTES) };
        let first = unsafe { _mm_loadu_si128(bp as *const __m128i) };
        let second = unsafe { _mm_loadu_si128(bp.add(TILE_ROWS) as *const __m128i) };
        let d = unsafe { _mm512_loadu_ps(w.super_scales.as_ptr().add(s * per_row * TILE_ROWS)) };
        if SIX {
            let hp = unsafe { w.high_bits.as_ptr().add(b * TILE_HIGH_BYTES) };
            for h in 0..2 {
                let raw = unsafe { _mm512_loadu_si512(hp.add(h * TILE_ROWS * 4) as *const _) };
                let pairs = [
                    _mm512_slli_epi16(raw, 4),
                    _mm512_slli_epi16(raw, 2),
                    raw,
                    _mm512_srli_epi16(raw, 2),
                ];
                for (g, bits) in pairs.into_iter().enumerate() {
                    q[4 * h + g] = _mm512_or_si512(q[4 * h + g], _mm512_and_si512(bits, pair));
                }
            }
            let (sc_a, sc_b) = (_mm512_cvtepi8_epi32(first), _mm512_cvtepi8_epi32(second));
            for (j, acc) in acc.iter_mut().enumerate().take(x.count) {
                let xp = unsafe { x.quants.as_ptr().add(j * k + b * BLOCK) };
                let mut halves = [_mm512_setzero_si512(); 2];
                for (g, q) in q.iter().enumerate() {
                    let x4 = _mm512_set1_epi32(unsafe {
                        (xp.add(g * 4) as *const i32).read_unaligned()
                    });
                    halves[g / 4] = _mm512_dpbusd_epi32(halves[g / 4], *q, x4);
                }
                let jb = j * kb + b;
                let offsets = &x_sums.half_offsets[2 * jb..2 * jb + 2];
                let a = _mm512_sub_epi32(halves[0], _mm512_set1_epi32(offsets[0]));
                let c = _mm512_sub_epi32(halves[1], _mm512_set1_epi32(offsets[1]));
                let isum =
                    _mm512_add_epi32(_mm512_mullo_epi32(a, sc_a), _mm512_mullo_epi32(c, sc_b));
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(x.scales[jb]));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, *acc);
            }
        } else {
            let dmin = unsafe {
                _mm512_loadu_ps(w.super_scales.as_ptr().add((s * per_row + 1) * TILE_ROWS))
            };
            let ws = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(first)));
            let wm = _mm512_sub_ps(
                _mm512_setzero_ps(),
                _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(second))),
            );
            for (j, acc) in acc.iter_mut().enumerate().take(x.count) {
                let xp = unsafe { x.quants.as_ptr().add(j * k + b * BLOCK) };
                // Two chains of `vpdpbusd` (its latency is five cycles), exact in any order.
                let mut halves = [_mm512_setzero_si512(); 2];
                for (g, q) in q.iter().enumerate() {
                    let x4 = _mm512_set1_epi32(unsafe {
                        (xp.add(g * 4) as *const i32).read_unaligned()
                    });
                    halves[g % 2] = _mm512_dpbusd_epi32(halves[g % 2], *q, x4);
                }
                let isum = _mm512_add_epi32(halves[0], halves[1]);
                let jb = j * kb + b;
                let scale = _mm512_mul_ps(ws, _mm512_set1_ps(x.scales[jb]));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, *acc);
                *acc = _mm512_fmadd_ps(wm, _mm512_set1_ps(x_sums.scaled[jb]), *acc);
            }
        }
    }
    for (sums, acc) in sums.iter_mut().zip(&acc).take(x.count) {
        // SAFETY: each row of `sums` has room for sixteen values.
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), *acc) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_dots_avx2<const SIX: bool, const R: usize>(
    _: &KQuantTile,
    _: &ActivationRows,
    _: &ActivationSums,
    _: usize,
    _: &mut [[f32; TILE_ROWS]],
) {
    unreachable!("no kernel of ours runs off x86-64: Isa::best() is None there")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_dots_avx512<const SIX: bool, const R: usize>(
    _: &KQuantTile,
    _: &ActivationRows,
    _: &ActivationSums,
    _: usize,
    _: &mut [[f32; TILE_ROWS]],
) {
    unreachable!("no kernel of ours runs off x86-64: Isa::best() is None there")
}

#[cfg(test)]
mod tests;
