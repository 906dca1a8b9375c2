//! The MLP's `silu(gate) · up` in one pass over the activations, with the bits of candle's
//! `gate.silu()? * up`: its f32 SiLU is `v / (1 + exp(-v))` on libm's `expf`, one value at a
//! time on one thread, which was 2% of a warm request; [`exp_in_place`] gives libm's bits
//! eight at a time, and large tensors are cut into pieces for candle's threads.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};

use super::exp_in_place;
use crate::Result;

/// Values per piece: small enough to stay in L1 between the passes, large enough to amortize
/// a piece's dispatch.
const PIECE: usize = 2048;

/// Tensors with fewer values than this run on the calling thread.
const INLINE_VALUES: usize = 1 << 15;

/// `out[i] = gate[i] / (1 + exp(-gate[i])) · up[i]`, rounded as candle rounds its SiLU and
/// then the product.
///
/// # Panics
/// The three slices differ in length (a caller's bug).
pub fn silu_mul_into(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && up.len() == out.len(),
        "silu_mul_into: lengths {}, {} and {}",
        gate.len(),
        up.len(),
        out.len()
    );
    for ((gate, up), out) in gate
        .chunks(PIECE)
        .zip(up.chunks(PIECE))
        .zip(out.chunks_mut(PIECE))
    {
        for (o, g) in out.iter_mut().zip(gate) {
            *o = -g;
        }
        exp_in_place(out);
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + *o) * u;
        }
    }
}

/// `gate.silu()? * up` for two tensors of one shape: in one threaded pass for f32 on the CPU,
/// composed from candle's ops otherwise. The same bits either way.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let on_cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    if gate.shape() != up.shape() || !on_cpu_f32(gate) || !on_cpu_f32(up) {
        return Ok((gate.silu()? * up)?);
    }
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let out = with_values(&gate, |g| {
        with_values(&up, |u| {
            let mut out = vec![0f32; g.len()];
            if g.len() < INLINE_VALUES {
                silu_mul_into(g, u, &mut out);
            } else {
                let base = out.as_mut_ptr() as usize;
                let total = out.len();
                candle_core::utils::barrier_pool().execute_chunked(
                    total.div_ceil(PIECE),
                    |pieces| {
                        for piece in pieces {
                            let start = piece * PIECE;
                            let end = (start + PIECE).min(total);
                            // SAFETY: the pool hands out each piece once, pieces do not
                            // overlap, and `out` outlives the pool's call.
                            let out = unsafe {
                                std::slice::from_raw_parts_mut(
                                    (base as *mut f32).add(start),
                                    end - start,
                                )
                            };
                            silu_mul_into(&g[start..end], &u[start..end], out);
                        }
                    },
                );
            }
            out
        })
    })??;
    Ok(Tensor::from_vec(out, gate.shape(), &Device::Cpu)?)
}

/// Calls `f` with a contiguous f32 CPU tensor's values, borrowed.
pub(crate) fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    else {
        return Err(
            candle_core::Error::Msg("expected contiguous f32 values on the CPU".into()).into(),
        );
    };
    Ok(f(&data[start..end]))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::nn::test_util::bits;

    /// The fused op may not change a served model's output by a bit.
    #[test]
    fn gives_the_bits_of_candles_silu_then_product() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        // Below the threshold and above it (threaded), with lengths that leave tails of the
        // eight-wide exp and of a piece; values from tiny to beyond exp's range.
        for &(rows, cols) in &[(1, 7), (3, 896), (9, 4864), (17, 4867)] {
            let n = rows * cols;
            let mut gate: Vec<f32> = (0..n).map(|_| (next() - 0.5) * 40.0).collect();
            gate[0] = -100.0;
            gate[n / 2] = 100.0;
            gate[n - 1] = f32::MIN_POSITIVE;
            let up: Vec<f32> = (0..n).map(|_| (next() - 0.5) * 8.0).collect();
            let gate = Tensor::from_vec(gate, (rows, cols), &Device::Cpu).expect("gate");
            let up = Tensor::from_vec(up, (rows, cols), &Device::Cpu).expect("up");
            let fused = silu_mul(&gate, &up).expect("fused");
            let composed = (gate.silu().expect("silu") * &up).expect("mul");
            assert!(bits(&fused) == bits(&composed), "{rows} × {cols}");
        }
    }

    #[test]
    fn a_strided_gate_is_made_contiguous_and_shapes_must_match() {
        let gate = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .and_then(|t| t.reshape((3, 4)))
            .and_then(|t| t.t())
            .expect("strided");
        let up = Tensor::ones((4, 3), candle_core::DType::F32, &Device::Cpu).expect("up");
        let fused = silu_mul(&gate, &up).expect("fused");
        let composed = (gate.silu().expect("silu") * &up).expect("mul");
        assert_eq!(bits(&fused), bits(&composed));
        let other = Tensor::ones((3, 4), candle_core::DType::F32, &Device::Cpu).expect("other");
        assert!(silu_mul(&gate, &other).is_err(), "shapes differ");
    }
}
