//! The training forward pass's norms, rotary embedding, causal softmax and SwiGLU as single
//! CPU nodes with hand-written backward passes.
//!
//! Composed from candle primitives (as the other devices run them, in `model.rs`), an RMSNorm
//! is six tensors forward and more backward, a RoPE eight, a masked softmax six over every
//! `[heads, n, n]` score: most of a training step's element-wise time and its buffer zeroing
//! (`benches/RESULTS.md`). Each op here reads its input once and writes its output once in
//! each direction. Their values and gradients are tested against the composed forms.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Storage, Tensor};

use hexacoder_engine::config::RopeStyle;

use super::lanes::Lanes;

pub(super) fn contiguous<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(all), Some((start, end))) => Ok(&all[start..end]),
        _ => candle_core::bail!("{op} wants contiguous f32 input on the CPU"),
    }
}

/// The f32 values of a contiguous CPU tensor's storage, borrowed.
pub(super) fn cpu_values<'a>(
    storage: &'a Storage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match storage {
        Storage::Cpu(cpu) => contiguous(cpu, layout, op),
        _ => candle_core::bail!("{op} wants a CPU tensor"),
    }
}

/// `x / rms(x) · weight` over the last dimension, with the weight frozen.
pub struct RmsNorm {
    pub weight: Vec<f32>,
    pub eps: f32,
}

impl RmsNorm {
    fn inverse_rms(&self, row: &[f32]) -> f32 {
        let mean_square = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        1.0 / (mean_square + self.eps).sqrt()
    }

    fn check(&self, shape: &Shape) -> candle_core::Result<usize> {
        let width = shape.dims().last().copied().unwrap_or(0);
        if width != self.weight.len() {
            candle_core::bail!(
                "rms-norm: rows of {width} for a weight of {}",
                self.weight.len()
            );
        }
        Ok(width)
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let width = self.check(layout.shape())?;
        let xs = contiguous(storage, layout, self.name())?;
        let mut ys = vec![0f32; xs.len()];
        for_each_row(&mut ys, width, |i, y| {
            let row = &xs[i * width..][..width];
            let inv = self.inverse_rms(row);
            for ((y, x), w) in y.iter_mut().zip(row).zip(&self.weight) {
                *y = x * inv * w;
            }
        });
        Ok((CpuStorage::F32(ys), layout.shape().clone()))
    }

    fn bwd(&self, xs: &Tensor, _ys: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let width = self.check(xs.shape())?;
        let (xs_t, grad_t) = (xs.contiguous()?, grad.contiguous()?);
        let (x_storage, x_layout) = xs_t.storage_and_layout();
        let (g_storage, g_layout) = grad_t.storage_and_layout();
        let x = cpu_values(&x_storage, x_layout, self.name())?;
        let g = cpu_values(&g_storage, g_layout, self.name())?;
        let mut gx = vec![0f32; x.len()];
        for_each_row(&mut gx, width, |i, gx| {
            let (row, grow) = (&x[i * width..][..width], &g[i * width..][..width]);
            // y_j = x_j·r·w_j with r = (Σx²/h + ε)^-½, so
            // ∂L/∂x_j = r·w_j·g_j − x_j·r³/h · Σ_i g_i·w_i·x_i.
            let inv = self.inverse_rms(row);
            let dot: f32 = row
                .iter()
                .zip(grow)
                .zip(&self.weight)
                .map(|((x, g), w)| x * g * w)
                .sum();
            let coefficient = inv * inv * inv * dot / width as f32;
            for (((gx, x), g), w) in gx.iter_mut().zip(row).zip(grow).zip(&self.weight) {
                *gx = inv * w * g - x * coefficient;
            }
        });
        Ok(Some(Tensor::from_vec(gx, xs.shape(), xs.device())?))
    }
}

/// Rotary embedding of `[heads, n, d]` at positions `0..n`; the backward pass rotates the
/// gradient back (the rotation's transpose).
pub struct Rope {
    /// `[n, d/2]` each.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub style: RopeStyle,
}

impl Rope {
    /// Rotates every `d`-wide row of `xs` by its position's angles; `direction` −1 undoes it.
    fn rotate(&self, xs: &[f32], shape: &Shape, direction: f32) -> candle_core::Result<Vec<f32>> {
        let (_, n, d) = shape.dims3()?;
        let half = d / 2;
        if d % 2 != 0 || self.cos.len() != n * half || self.sin.len() != n * half {
            candle_core::bail!(
                "rope: tables of {} for {n} positions of width {d}",
                self.cos.len()
            );
        }
        let mut ys = vec![0f32; xs.len()];
        for (index, (x, y)) in xs.chunks_exact(d).zip(ys.chunks_exact_mut(d)).enumerate() {
            let position = index % n;
            let cos = &self.cos[position * half..][..half];
            let sin = &self.sin[position * half..][..half];
            for i in 0..half {
                let (a, b) = match self.style {
                    RopeStyle::Half => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (c, s) = (cos[i], direction * sin[i]);
                y[a] = x[a] * c - x[b] * s;
                y[b] = x[a] * s + x[b] * c;
            }
        }
        Ok(ys)
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = contiguous(storage, layout, self.name())?;
        let ys = self.rotate(xs, layout.shape(), 1.0)?;
        Ok((CpuStorage::F32(ys), layout.shape().clone()))
    }

    fn bwd(&self, xs: &Tensor, _ys: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (g_storage, g_layout) = grad.storage_and_layout();
        let g = cpu_values(&g_storage, g_layout, self.name())?;
        let gx = self.rotate(g, xs.shape(), -1.0)?;
        Ok(Some(Tensor::from_vec(gx, xs.shape(), xs.device())?))
    }
}

/// Calls `f(index, row)` for every `row_len`-wide row of `out`, spread over candle's CPU
/// threads: a softmax over `[heads, n, n]` scores is too much work for one of them.
pub(super) fn for_each_row(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / row_len.max(1);
    let base = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
        for index in range {
            // SAFETY: the pool hands out every row index once, rows do not overlap, and
            // `out` outlives the pool's call.
            let row = unsafe {
                std::slice::from_raw_parts_mut((base as *mut f32).add(index * row_len), row_len)
            };
            f(index, row);
        }
    });
}

/// The sum in eight independent lanes, which vectorize, then the tail.
pub(super) fn sum_in_lanes(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `softmax(scale · scores)` over the last dimension with a causal mask: `scores` is
/// `[.., n, n]` blocks whose row `q` sees columns `0..=q`. Masked probabilities are 0.
pub struct CausalSoftmax {
    pub scale: f32,
}

impl CausalSoftmax {
    fn width(shape: &Shape) -> candle_core::Result<usize> {
        let dims = shape.dims();
        match dims {
            [.., rows, cols] if rows % cols == 0 => Ok(*cols),
            _ => candle_core::bail!("causal softmax wants [.., n, n] scores, got {shape:?}"),
        }
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = Self::width(layout.shape())?;
        let scores = contiguous(storage, layout, self.name())?;
        let mut probs = vec![0f32; scores.len()];
        for_each_row(&mut probs, n, |index, p| {
            let seen = index % n + 1;
            let (s, p) = (&scores[index * n..][..seen], &mut p[..seen]);
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max) * self.scale;
            for (p, s) in p.iter_mut().zip(s) {
                *p = s * self.scale - max;
            }
            hexacoder_engine::nn::exp_in_place(p);
            let inv = 1.0 / sum_in_lanes(p);
            p.iter_mut().for_each(|p| *p *= inv);
        });
        Ok((CpuStorage::F32(probs), layout.shape().clone()))
    }

    fn bwd(
        &self,
        scores: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let n = Self::width(scores.shape())?;
        let (probs, grad) = (probs.contiguous()?, grad.contiguous()?);
        let (p_storage, p_layout) = probs.storage_and_layout();
        let (g_storage, g_layout) = grad.storage_and_layout();
        let p = cpu_values(&p_storage, p_layout, self.name())?;
        let g = cpu_values(&g_storage, g_layout, self.name())?;
        let mut gs = vec![0f32; p.len()];
        let lanes = Lanes::detect();
        for_each_row(&mut gs, n, |index, gs| {
            let seen = index % n + 1;
            let (p, g) = (&p[index * n..][..seen], &g[index * n..][..seen]);
            // ∂L/∂s_j = scale · p_j · (g_j − Σ_k p_k·g_k); masked columns stay 0.
            let dot = lanes.dot(p, g);
            for ((gs, p), g) in gs[..seen].iter_mut().zip(p).zip(g) {
                *gs = self.scale * p * (g - dot);
            }
        });
        Ok(Some(Tensor::from_vec(gs, scores.shape(), scores.device())?))
    }
}

/// The MLP's `silu(gate) · up`, elementwise. Composed, it was a sigmoid's worth of tensors
/// forward and about ten passes over the `[n, intermediate]` activations backward.
pub struct SwiGlu;

impl SwiGlu {
    /// Elementwise work is cut into pieces of this many values for the threads.
    const PIECE: usize = 4096;

    /// `σ(x)` of every value, into `out`.
    fn sigmoid(xs: &[f32], out: &mut [f32]) {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = -x;
        }
        hexacoder_engine::nn::exp_in_place(out);
        for o in out.iter_mut() {
            *o = 1.0 / (1.0 + *o);
        }
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if gate_layout.shape() != up_layout.shape() {
            candle_core::bail!(
                "swiglu: gate {:?} and up {:?} differ",
                gate_layout.shape(),
                up_layout.shape()
            );
        }
        let (gate, up) = (
            contiguous(gate, gate_layout, self.name())?,
            contiguous(up, up_layout, self.name())?,
        );
        let mut ys = vec![0f32; gate.len()];
        // The serving forward pass's own kernel, so that training sees its bits.
        for_each_piece(&mut ys, Self::PIECE, |start, ys| {
            let (g, u) = (&gate[start..][..ys.len()], &up[start..][..ys.len()]);
            hexacoder_engine::nn::silu_mul_into(g, u, ys);
        });
        Ok((CpuStorage::F32(ys), gate_layout.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _ys: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let (gate_t, up_t, grad_t) = (gate.contiguous()?, up.contiguous()?, grad.contiguous()?);
        let (g_storage, g_layout) = gate_t.storage_and_layout();
        let (u_storage, u_layout) = up_t.storage_and_layout();
        let (dy_storage, dy_layout) = grad_t.storage_and_layout();
        let g = cpu_values(&g_storage, g_layout, name)?;
        let u = cpu_values(&u_storage, u_layout, name)?;
        let dy = cpu_values(&dy_storage, dy_layout, name)?;
        // y = g·σ(g)·u: ∂y/∂u = g·σ(g), ∂y/∂g = u·σ(g)·(1 + g·(1 − σ(g))).
        let mut d_gate = vec![0f32; g.len()];
        let mut d_up = vec![0f32; g.len()];
        let d_up_base = d_up.as_mut_ptr() as usize;
        let d_up_len = d_up.len();
        for_each_piece(&mut d_gate, Self::PIECE, |start, d_gate| {
            let len = d_gate.len();
            // SAFETY: the pieces of `d_up` match those of `d_gate`, which the pool hands out
            // once each, and `d_up` outlives the call.
            let d_up = unsafe {
                debug_assert!(start + len <= d_up_len);
                std::slice::from_raw_parts_mut((d_up_base as *mut f32).add(start), len)
            };
            let (g, u, dy) = (&g[start..][..len], &u[start..][..len], &dy[start..][..len]);
            Self::sigmoid(g, d_gate);
            for ((((dg, du), g), u), dy) in d_gate.iter_mut().zip(d_up).zip(g).zip(u).zip(dy) {
                let sigmoid = *dg;
                *du = dy * g * sigmoid;
                *dg = dy * u * sigmoid * (1.0 + g * (1.0 - sigmoid));
            }
        });
        let d_gate = Tensor::from_vec(d_gate, gate.shape(), gate.device())?;
        let d_up = Tensor::from_vec(d_up, up.shape(), up.device())?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// Calls `f(start, piece)` for consecutive `len`-wide pieces of `out` (the last may be
/// shorter), spread over candle's CPU threads.
pub(super) fn for_each_piece(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let total = out.len();
    let base = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(total.div_ceil(len), |range| {
        for piece in range {
            let start = piece * len;
            let end = (start + len).min(total);
            // SAFETY: the pool hands out every piece once, pieces do not overlap, and `out`
            // outlives the pool's call.
            let piece = unsafe {
                std::slice::from_raw_parts_mut((base as *mut f32).add(start), end - start)
            };
            f(start, piece);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{D, Device, Tensor, Var};

    use super::*;
    use crate::train::model::{causal_mask, rms_norm, rope, softmax};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let count = shape.iter().product::<usize>();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let values: Vec<f32> = (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).expect("random tensor")
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().expect("flat").to_vec1().expect("values")
    }

    fn assert_close(what: &str, a: &[f32], b: &[f32], tolerance: f32) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tolerance * (1.0 + y.abs()),
                "{what}[{i}]: fused {x}, composed {y}"
            );
        }
    }

    /// Values and input gradients of the fused op against the composed one, under a random
    /// linear loss.
    fn compare(
        what: &str,
        input: Tensor,
        fused: impl Fn(&Tensor) -> Tensor,
        composed: impl Fn(&Tensor) -> Tensor,
    ) {
        let run = |f: &dyn Fn(&Tensor) -> Tensor| {
            let x = Var::from_tensor(&input).expect("var");
            let y = f(x.as_tensor());
            let weights = random(y.dims(), 7);
            let loss = (&y * &weights).expect("mul").sum_all().expect("sum");
            let grads = loss.backward().expect("backward");
            let grad = grads
                .get(x.as_tensor())
                .expect("a gradient reaches the input");
            (flat(&y), flat(grad))
        };
        let (fused_y, fused_grad) = run(&fused);
        let (composed_y, composed_grad) = run(&composed);
        assert_close(&format!("{what} values"), &fused_y, &composed_y, 1e-5);
        assert_close(
            &format!("{what} gradients"),
            &fused_grad,
            &composed_grad,
            1e-4,
        );
    }

    fn op(op: impl CustomOp1 + Send + Sync + 'static) -> Arc<Box<dyn CustomOp1 + Send + Sync>> {
        Arc::new(Box::new(op))
    }

    #[test]
    fn rms_norm_matches_the_composed_norm_and_its_gradient() {
        let weight = random(&[16], 3);
        let norm = op(RmsNorm {
            weight: flat(&weight),
            eps: 1e-5,
        });
        compare(
            "rms-norm",
            random(&[5, 16], 1),
            |x| x.apply_op1_arc(norm.clone()).expect("fused"),
            |x| rms_norm(x, &weight, 1e-5).expect("composed"),
        );
    }

    #[test]
    fn swiglu_matches_silu_times_up_and_both_gradients() {
        let up = random(&[7, 4099], 5);
        // Both inputs as one variable, so that `compare` checks both gradients.
        let both = Tensor::cat(&[random(&[7, 4099], 4), up], 0).expect("cat");
        let halves = |x: &Tensor| {
            (
                x.narrow(0, 0, 7).expect("gate"),
                x.narrow(0, 7, 7).expect("up"),
            )
        };
        compare(
            "swiglu",
            both,
            |x| {
                let (gate, up) = halves(x);
                gate.apply_op2(&up, SwiGlu).expect("fused")
            },
            |x| {
                let (gate, up) = halves(x);
                (gate.silu().expect("silu") * up).expect("composed")
            },
        );
    }

    #[test]
    fn rope_matches_the_composed_rotation_in_both_styles() {
        let (n, d) = (6, 8);
        let cos = random(&[n, d / 2], 11);
        let sin = random(&[n, d / 2], 12);
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            let fused = op(Rope {
                cos: flat(&cos),
                sin: flat(&sin),
                style,
            });
            compare(
                &format!("rope {style:?}"),
                random(&[3, n, d], 2),
                |x| x.apply_op1_arc(fused.clone()).expect("fused"),
                |x| rope(x, &cos, &sin, style).expect("composed"),
            );
        }
    }

    #[test]
    fn causal_softmax_matches_scale_mask_and_softmax() {
        let (kv_heads, group, n) = (2, 3, 5);
        let scale = 0.35;
        let fused = op(CausalSoftmax { scale });
        let mask = causal_mask(n, &Device::Cpu).expect("mask");
        compare(
            "causal softmax",
            random(&[kv_heads, group * n, n], 4),
            |x| x.apply_op1_arc(fused.clone()).expect("fused"),
            |x| {
                let masked = (x * scale as f64)
                    .and_then(|s| s.reshape((kv_heads, group, n, n)))
                    .and_then(|s| s.broadcast_add(&mask))
                    .and_then(|s| s.reshape((kv_heads, group * n, n)))
                    .expect("masked scores");
                softmax(&masked).expect("composed")
            },
        );
        // Every row sums to one over what it may see.
        let probs = random(&[1, n, n], 5)
            .apply_op1_arc(fused)
            .expect("fused")
            .sum_keepdim(D::Minus1)
            .expect("sums");
        assert_close("row sums", &flat(&probs), &[1.0; 5], 1e-6);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let norm = RmsNorm {
            weight: vec![1.0; 4],
            eps: 1e-5,
        };
        assert!(random(&[2, 5], 1).apply_op1(norm).is_err());
        let softmax = CausalSoftmax { scale: 1.0 };
        assert!(random(&[2, 5, 3], 1).apply_op1(softmax).is_err());
        let rope = Rope {
            cos: vec![1.0; 4],
            sin: vec![0.0; 4],
            style: RopeStyle::Half,
        };
        assert!(random(&[1, 3, 4], 1).apply_op1(rope).is_err());
    }
}
