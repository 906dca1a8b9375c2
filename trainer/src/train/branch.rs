//! A frozen projection and its LoRA branch as one CPU node:
//! `y = x·Wᵀ + s·((x ⊙ m)·Aᵀ)·Bᵀ`, with `W` packed ([`PackedMatrix`]) and `A`, `B` trained.
//!
//! Composed from candle ops, the rank-8 branch was a dropout mask drawn element by element on
//! one thread, a multiply, two matmuls, a scale and an add, each a tensor and each with a
//! backward of its own (candle zero-fills then adds every gradient): 27% of a SmolLM2 training
//! step for about 1% of its FLOPs (`benches/RESULTS.md`). Here the forward and the backward
//! are one pass each over the rows, on candle's thread pool, and every sum runs in a fixed
//! order whatever the threads.
//!
//! Dropout draws each element from a counter-based hash of the pass's seed, the layer, the
//! projection and the element's index ([`BranchDropout`]), so any thread can draw any row, and
//! the composed path on other devices draws the same mask.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::fused::{contiguous, cpu_values, for_each_piece, for_each_row};
use super::model::PackedPair;

/// The golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijection that scatters every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Dropout on one branch's input in one forward pass.
#[derive(Clone, Copy, Debug)]
pub(super) struct BranchDropout {
    stream: u64,
    /// An element survives when its 53-bit draw is at least this (`p · 2⁵³`).
    threshold: u64,
    /// `1 / (1 - p)`, what a surviving element is multiplied by.
    keep_scale: f32,
}

impl BranchDropout {
    /// Zeroes with probability `p`; the draws are a function of `(seed, layer, proj)` and the
    /// element's index alone.
    pub(super) fn new(p: f64, seed: u64, layer: usize, proj: usize) -> Self {
        let branch = mix(((layer as u64) << 8) | proj as u64);
        BranchDropout {
            stream: mix(seed ^ branch),
            threshold: (p.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64,
            keep_scale: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// The multipliers of `width` elements of row `row` (`keep_scale` or 0).
    pub(super) fn fill_row(&self, row: usize, width: usize, out: &mut [f32]) {
        let first = (row * width) as u64;
        for (c, m) in out.iter_mut().enumerate() {
            let draw = mix(self
                .stream
                .wrapping_add((first + c as u64 + 1).wrapping_mul(GOLDEN)))
                >> 11;
            *m = if draw >= self.threshold {
                self.keep_scale
            } else {
                0.0
            };
        }
    }

    /// The whole `[rows, width]` mask.
    pub(super) fn mask(&self, rows: usize, width: usize) -> Vec<f32> {
        let mut mask = vec![0f32; rows * width];
        for (row, values) in mask.chunks_mut(width.max(1)).enumerate() {
            self.fill_row(row, width, values);
        }
        mask
    }
}

/// What the forward pass keeps for the backward one.
struct Saved {
    /// `x ⊙ m`, when there is dropout (otherwise the input itself is the branch's input).
    dropped: Option<Vec<f32>>,
    /// `(x ⊙ m)·Aᵀ`, `[rows, r]`.
    down: Vec<f32>,
}

/// The node: arguments `x` (`[.., in]`), `A` (`[r, in]`), `B` (`[out, r]`).
pub(super) struct LoraProjection {
    pub(super) frozen: Arc<PackedPair>,
    pub(super) scale: f32,
    pub(super) dropout: Option<BranchDropout>,
    saved: Mutex<Option<Saved>>,
}

impl LoraProjection {
    pub(super) fn new(frozen: Arc<PackedPair>, scale: f32, dropout: Option<BranchDropout>) -> Self {
        LoraProjection {
            frozen,
            scale,
            dropout,
            saved: Mutex::new(None),
        }
    }
}

/// `(r, in, out)` of the branch, checked against the frozen weight.
fn branch_dims(
    frozen: &PackedPair,
    a: &Layout,
    b: &Layout,
) -> candle_core::Result<(usize, usize, usize)> {
    let (k, n) = frozen.forward.dims();
    match (a.shape().dims(), b.shape().dims()) {
        (&[r, a_in], &[b_out, b_r]) if a_in == k && b_out == n && b_r == r && r > 0 => {
            Ok((r, k, n))
        }
        (a, b) => candle_core::bail!(
            "LoRA branch of A {a:?} and B {b:?} against a frozen weight of {n} × {k}"
        ),
    }
}

/// `[rows, cols]` to `[cols, rows]`, times `scale`.
fn transposed(values: &[f32], rows: usize, cols: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for (i, row) in values.chunks_exact(cols).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * rows + i] = v * scale;
        }
    }
    out
}

use super::lanes::Lanes;

fn lanes() -> Lanes {
    Lanes::detect()
}

/// Columns per piece when a product sums over the rows (`hᵀ·x`): each piece's `r` rows of
/// sums stay in L1 while the rows stream past.
const COLUMN_PIECE: usize = 256;

/// `out[j, c] = Σ_i coef[i, j] · x[i, c]` (`coef` `[rows, r]`, `x` `[rows, cols]`): over
/// pieces of columns in parallel, each sum in row order.
fn sum_over_rows(lanes: Lanes, coef: &[f32], r: usize, x: &[f32], cols: usize) -> Vec<f32> {
    let rows = coef.len() / r;
    // Piece-major (`[pieces][r][width]`), so that each piece is one contiguous slice.
    let mut blocks = vec![0f32; r * cols];
    for_each_piece(&mut blocks, r * COLUMN_PIECE, |start, block| {
        let first = start / r;
        let width = block.len() / r;
        for i in 0..rows {
            let x_row = &x[i * cols + first..][..width];
            for (j, sums) in block.chunks_exact_mut(width).enumerate() {
                lanes.axpy(sums, coef[i * r + j], x_row);
            }
        }
    });
    let mut out = vec![0f32; r * cols];
    for (p, block) in blocks.chunks(r * COLUMN_PIECE).enumerate() {
        let first = p * COLUMN_PIECE;
        let width = block.len() / r;
        for (j, sums) in block.chunks_exact(width).enumerate() {
            out[j * cols + first..][..width].copy_from_slice(sums);
        }
    }
    out
}

impl CustomOp3 for LoraProjection {
    fn name(&self) -> &'static str {
        "lora-projection"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (r, k, n) = branch_dims(&self.frozen, a_layout, b_layout)?;
        let x = contiguous(x, x_layout, "LoRA projection (x)")?;
        let a = contiguous(a, a_layout, "LoRA projection (A)")?;
        let b = contiguous(b, b_layout, "LoRA projection (B)")?;
        if x_layout.shape().dims().last() != Some(&k) {
            candle_core::bail!("LoRA projection: input {x_layout:?} against {k} columns");
        }
        let rows = x.len() / k;
        let lanes = lanes();
        let mut y = self.frozen.forward.left_multiply(x);
        let dropped = self.dropout.map(|dropout| {
            let mut dropped = vec![0f32; x.len()];
            for_each_row(&mut dropped, k, |i, row| {
                dropout.fill_row(i, k, row);
                for (d, v) in row.iter_mut().zip(&x[i * k..][..k]) {
                    *d *= v;
                }
            });
            dropped
        });
        let input = dropped.as_deref().unwrap_or(x);
        let mut down = vec![0f32; rows * r];
        for_each_row(&mut down, r, |i, row| {
            let x_row = &input[i * k..][..k];
            for (j, value) in row.iter_mut().enumerate() {
                *value = lanes.dot(x_row, &a[j * k..][..k]);
            }
        });
        let up = transposed(b, n, r, self.scale);
        for_each_row(&mut y, n, |i, row| {
            for (j, &d) in down[i * r..][..r].iter().enumerate() {
                lanes.axpy(row, d, &up[j * n..][..n]);
            }
        });
        let mut saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("LoRA projection: a thread panicked".into()))?;
        *saved = Some(Saved { dropped, down });
        let mut dims = x_layout.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (r, k, n) = branch_dims(&self.frozen, a.layout(), b.layout())?;
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("LoRA projection: a thread panicked".into()))?
            .take()
            .ok_or_else(|| {
                candle_core::Error::Msg("LoRA projection: backward without a forward".into())
            })?;
        let (x, a, b, grad_y) = (
            x.contiguous()?,
            a.contiguous()?,
            b.contiguous()?,
            grad_y.contiguous()?,
        );
        let (x_storage, x_layout) = x.storage_and_layout();
        let (a_storage, a_layout) = a.storage_and_layout();
        let (b_storage, b_layout) = b.storage_and_layout();
        let (g_storage, g_layout) = grad_y.storage_and_layout();
        let xs = cpu_values(&x_storage, x_layout, "LoRA projection (x)")?;
        let a_values = cpu_values(&a_storage, a_layout, "LoRA projection (A)")?;
        let b_values = cpu_values(&b_storage, b_layout, "LoRA projection (B)")?;
        let g = cpu_values(&g_storage, g_layout, "LoRA projection (dy)")?;
        if g.len() / n.max(1) != xs.len() / k.max(1) {
            candle_core::bail!("LoRA projection: dy {g_layout:?} against x {x_layout:?}");
        }
        let lanes = lanes();
        let input = saved.dropped.as_deref().unwrap_or(xs);
        // h = s·dy·B, `[rows, r]`.
        let b_t = transposed(b_values, n, r, self.scale);
        let mut h = vec![0f32; g.len() / n * r];
        for_each_row(&mut h, r, |i, row| {
            let g_row = &g[i * n..][..n];
            for (j, value) in row.iter_mut().enumerate() {
                *value = lanes.dot(g_row, &b_t[j * n..][..n]);
            }
        });
        // dx = dy·W + (h·A) ⊙ m.
        let mut dx = self.frozen.gradient.left_multiply(g);
        for_each_row(&mut dx, k, |i, row| {
            let coef = &h[i * r..][..r];
            match self.dropout {
                None => {
                    for (j, &c) in coef.iter().enumerate() {
                        lanes.axpy(row, c, &a_values[j * k..][..k]);
                    }
                }
                Some(dropout) => {
                    let mut branch = vec![0f32; k];
                    for (j, &c) in coef.iter().enumerate() {
                        lanes.axpy(&mut branch, c, &a_values[j * k..][..k]);
                    }
                    let mut mask = vec![0f32; k];
                    dropout.fill_row(i, k, &mut mask);
                    lanes.mul_add(row, &branch, &mask);
                }
            }
        });
        // dA = hᵀ·(x ⊙ m); dB = s·dyᵀ·down, summed as `[r, out]` then turned.
        let grad_a = sum_over_rows(lanes, &h, r, input, k);
        let grad_b_t = sum_over_rows(lanes, &saved.down, r, g, n);
        let grad_b = transposed(&grad_b_t, r, n, self.scale);
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(grad_a, (r, k), device)?),
            Some(Tensor::from_vec(grad_b, (n, r), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| (mix(seed.wrapping_add((i as u64 + 1).wrapping_mul(GOLDEN))) >> 40) as f32)
            .map(|v| v / (1u64 << 23) as f32 - 1.0)
            .collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).expect("random tensor")
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().expect("flat").to_vec1().expect("values")
    }

    fn assert_close(what: &str, fused: &[f32], composed: &[f32]) {
        assert_eq!(fused.len(), composed.len(), "{what}: lengths");
        for (i, (x, y)) in fused.iter().zip(composed).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}[{i}]: fused {x}, composed {y}"
            );
        }
    }

    /// Values and the gradients of `x`, `A` and `B` under a random linear loss: the fused node
    /// against candle's ops on the same weights and the same mask.
    fn compare(rows: usize, k: usize, n: usize, r: usize, dropout: Option<BranchDropout>) {
        let what = format!("{rows}×{k} → {n}, r = {r}, dropout {}", dropout.is_some());
        let w = random(n, k, 1);
        let frozen = Arc::new(PackedPair::new(&w).expect("packed"));
        let scale = 1.75f32;
        let x = Var::from_tensor(&random(rows, k, 2)).expect("x");
        let a = Var::from_tensor(&random(r, k, 3)).expect("A");
        let b = Var::from_tensor(&random(n, r, 4)).expect("B");
        let weights = random(rows, n, 5);
        let fused = x
            .apply_op3(
                a.as_tensor(),
                b.as_tensor(),
                LoraProjection::new(frozen, scale, dropout),
            )
            .expect("fused");
        let input = match dropout {
            Some(d) => (x.as_tensor()
                * Tensor::from_vec(d.mask(rows, k), (rows, k), &Device::Cpu).expect("mask"))
            .expect("dropped"),
            None => x.as_tensor().clone(),
        };
        let composed = (x.matmul(&w.t().expect("t")).expect("xW")
            + (input
                .matmul(&a.t().expect("t"))
                .and_then(|d| d.matmul(&b.t()?))
                .expect("branch")
                * f64::from(scale))
            .expect("scaled"))
        .expect("sum");
        assert_close(&format!("{what}: y"), &flat(&fused), &flat(&composed));
        let gradients = |y: &Tensor| {
            let grads = (y * &weights)
                .and_then(|l| l.sum_all())
                .and_then(|l| l.backward())
                .expect("backward");
            [&x, &a, &b].map(|v| flat(grads.get(v.as_tensor()).expect("a gradient")))
        };
        let (fused, composed) = (gradients(&fused), gradients(&composed));
        for (name, (f, c)) in ["dx", "dA", "dB"].iter().zip(fused.iter().zip(&composed)) {
            assert_close(&format!("{what}: {name}"), f, c);
        }
    }

    #[test]
    fn fused_branch_equals_candles_ops_forward_and_backward() {
        // One row, rank 1; columns across two pieces of `COLUMN_PIECE` both ways; rows not a
        // multiple of any lane count.
        for (rows, k, n, r) in [(1, 5, 3, 1), (7, 37, 300, 3), (33, 520, 40, 8)] {
            compare(rows, k, n, r, None);
            compare(rows, k, n, r, Some(BranchDropout::new(0.3, 11, 2, 1)));
        }
    }

    #[test]
    fn dropout_draws_depend_on_seed_layer_and_projection_alone() {
        let (rows, width) = (64, 96);
        let draw =
            |seed, layer, proj| BranchDropout::new(0.25, seed, layer, proj).mask(rows, width);
        let mask = draw(7, 3, 2);
        assert_eq!(mask, draw(7, 3, 2), "the same branch draws the same mask");
        for other in [draw(8, 3, 2), draw(7, 4, 2), draw(7, 3, 1)] {
            assert_ne!(
                mask, other,
                "another seed, layer or projection draws another"
            );
        }
        let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / mask.len() as f64;
        assert!(
            (dropped - 0.25).abs() < 0.03,
            "dropped {dropped} for p = 0.25"
        );
        let keep = 1.0 / 0.75f32;
        assert!(mask.iter().all(|&m| m == 0.0 || m == keep));
        // A row drawn alone equals the same row of the whole mask (any thread may draw it).
        let mut row = vec![0f32; width];
        BranchDropout::new(0.25, 7, 3, 2).fill_row(5, width, &mut row);
        assert_eq!(row, mask[5 * width..6 * width]);
    }
}
