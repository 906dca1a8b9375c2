//! LoRA adapters applied per request as an unmerged side branch, `y = W·x + s·B(A·x)`.
//!
//! A [`LoadedAdapter`] is an adapter from `hexacoder-adapters` prepared for the forward pass
//! (transposed, scale folded into `B`) and given an identity that no other adapter, or later
//! version of the same name, ever shares. [`RowAdapters`] is the hook for one forward pass of
//! a ragged batch: each sequence's rows get their own adapter's delta, or none.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Tensor};
use hexacoder_adapters::{Adapter, BaseModel};

use crate::models::llama::Model;
use crate::nn::{LinearHook, Proj};
use crate::{Error, Result};

fn proj_named(parent: &str, module: &str) -> Option<Proj> {
    Proj::ALL
        .into_iter()
        .find(|p| p.parent() == parent && p.module_name() == module)
}

impl BaseModel for Model {
    fn n_layers(&self) -> usize {
        self.config().num_hidden_layers
    }

    fn projection_shape(&self, layer: usize, parent: &str, module: &str) -> Option<(usize, usize)> {
        let linear = self.projection(layer, proj_named(parent, module)?)?;
        Some((linear.in_features(), linear.out_features()))
    }
}

/// Adds `s·B·A` of every module of `adapter` to `model`'s weights: one adapter, no per-request
/// cost. Quantized projections become Q8_0.
///
/// # Errors
/// A module the model does not have, or tensor failures.
pub fn merge_into(model: &mut Model, adapter: &Adapter, kernel: crate::nn::Q8Kernel) -> Result<()> {
    for (key, module) in adapter.modules() {
        let proj = proj_named(&key.parent, &key.module).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "adapter module `{}` is not a projection",
                key.path()
            ))
        })?;
        let b = in_model_rows(model, proj, &module.b.to_dtype(DType::F32)?)?;
        let delta = (b.matmul(&module.a.to_dtype(DType::F32)?)? * module.scale)?;
        let linear = model.projection_mut(key.layer, proj).ok_or_else(|| {
            Error::InvalidRequest(format!("the model has no module `{}`", key.path()))
        })?;
        *linear = linear.with_weight_delta(&delta, kernel)?;
    }
    Ok(())
}

/// `B` (`[out, r]`, HF row order, as PEFT writes it) in the model's own row order.
fn in_model_rows(model: &Model, proj: Proj, b: &Tensor) -> Result<Tensor> {
    match model.config().hf_rows(proj) {
        Some(rows) => {
            let rows = Tensor::new(rows.as_slice(), b.device())?;
            Ok(b.index_select(&rows, 0)?)
        }
        None => Ok(b.clone()),
    }
}

/// Never reused, so prefix-cache entries of one adapter version can never serve another.
static NEXT_IDENTITY: AtomicU64 = AtomicU64::new(1);

struct Branch {
    /// `Aᵀ`, `[in, r]`.
    a_t: Tensor,
    /// `s·Bᵀ`, `[r, out]`.
    b_t: Tensor,
    /// `A` and `s·Bᵀ` row-major on the host, on the CPU.
    host: Option<(Vec<f32>, Vec<f32>)>,
    rank: usize,
}

/// Rows per work item when a prompt chunk's branch is spread over the threads.
const HOST_ROW_TILE: usize = 16;

/// A dot product with eight independent accumulators, which the compiler vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (chunks_a, chunks_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

impl Branch {
    /// `s·B(A·x)` for one row `x` into `out`: `r` dot products, then `r` scaled rows of
    /// `s·Bᵀ` added in order, so each output sums over the rank in one fixed order.
    fn host_row(&self, x: &[f32], a: &[f32], b_t: &[f32], hidden: &mut [f32], out: &mut [f32]) {
        let n_in = x.len();
        for (h, a_row) in hidden.iter_mut().zip(a.chunks_exact(n_in)) {
            *h = dot(x, a_row);
        }
        out.fill(0.0);
        for (&h, b_row) in hidden.iter().zip(b_t.chunks_exact(out.len())) {
            for (o, &b) in out.iter_mut().zip(b_row) {
                *o += h * b;
            }
        }
    }

    /// [`Branch::host_row`] for each row of `xs` (`rows × in`, row-major), spread over
    /// candle's threads for a prompt chunk. A row's result is the same however many rows
    /// come with it, so a token's delta does not depend on how its prompt was split.
    fn host_delta(&self, xs: &[f32], rows: usize, a: &[f32], b_t: &[f32]) -> Vec<f32> {
        let n_in = xs.len() / rows.max(1);
        let n_out = b_t.len() / self.rank.max(1);
        let mut out = vec![0f32; rows * n_out];
        if rows <= HOST_ROW_TILE {
            let mut hidden = vec![0f32; self.rank];
            for (x, dst) in xs.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)) {
                self.host_row(x, a, b_t, &mut hidden, dst);
            }
            return out;
        }
        let out_ptr = out.as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(rows.div_ceil(HOST_ROW_TILE), |tiles| {
            let mut hidden = vec![0f32; self.rank];
            for tile in tiles {
                for row in tile * HOST_ROW_TILE..((tile + 1) * HOST_ROW_TILE).min(rows) {
                    // SAFETY: each row of `out` is written by exactly one work item, and
                    // `out` outlives the pool's call.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            (out_ptr as *mut f32).add(row * n_out),
                            n_out,
                        )
                    };
                    self.host_row(&xs[row * n_in..(row + 1) * n_in], a, b_t, &mut hidden, dst);
                }
            }
        });
        out
    }
}

/// An adapter ready for the forward pass.
pub struct LoadedAdapter {
    name: String,
    generation: u64,
    identity: u64,
    bytes: usize,
    two_step_default: Option<bool>,
    branches: HashMap<(usize, Proj), Branch>,
}

impl std::fmt::Debug for LoadedAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAdapter")
            .field("name", &self.name)
            .field("generation", &self.generation)
            .field("modules", &self.branches.len())
            .finish()
    }
}

impl LoadedAdapter {
    /// Prepares `adapter` (already validated against `model`) for `model`'s device.
    ///
    /// # Errors
    /// A module the model does not have, or tensor failures.
    pub fn new(name: &str, generation: u64, adapter: &Adapter, model: &Model) -> Result<Self> {
        let device = model.device();
        let mut branches = HashMap::new();
        for (key, module) in adapter.modules() {
            let proj = proj_named(&key.parent, &key.module).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "adapter module `{}` is not a projection",
                    key.path()
                ))
            })?;
            let a = module.a.to_device(device)?.to_dtype(DType::F32)?;
            let b = in_model_rows(model, proj, &module.b.to_dtype(DType::F32)?)?;
            let b = (b.to_device(device)? * module.scale)?;
            let rank = a.dims()[0];
            let a_t = a.t()?.contiguous()?;
            let b_t = b.t()?.contiguous()?;
            let host = if device.is_cpu() {
                Some((
                    a.flatten_all()?.to_vec1::<f32>()?,
                    b_t.flatten_all()?.to_vec1::<f32>()?,
                ))
            } else {
                None
            };
            branches.insert(
                (key.layer, proj),
                Branch {
                    a_t,
                    b_t,
                    host,
                    rank,
                },
            );
        }
        Ok(LoadedAdapter {
            name: name.to_string(),
            generation,
            identity: NEXT_IDENTITY.fetch_add(1, Ordering::Relaxed),
            bytes: adapter.bytes(),
            two_step_default: adapter.two_step_default(),
            branches,
        })
    }

    /// Whether requests on it default to two-step generation, from its metadata.
    pub fn two_step_default(&self) -> Option<bool> {
        self.two_step_default
    }

    /// The name requests select it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which version of `name` this is.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of LoRA weights.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The prefix-cache namespace of KV state computed with this adapter.
    pub(crate) fn namespace(&self) -> u64 {
        self.identity
    }

    fn delta(&self, layer_idx: usize, proj: Proj, xs: &Tensor) -> Result<Option<Tensor>> {
        let Some(branch) = self.branches.get(&(layer_idx, proj)) else {
            return Ok(None);
        };
        let rows = xs.dims()[0];
        if let Some((a, b_t)) = &branch.host
            && xs.dtype() == DType::F32
        {
            let flat = xs.flatten_all()?.to_vec1::<f32>()?;
            let delta = branch.host_delta(&flat, rows, a, b_t);
            let n_out = branch.b_t.dims()[1];
            return Ok(Some(Tensor::from_vec(delta, (rows, n_out), xs.device())?));
        }
        Ok(Some(xs.matmul(&branch.a_t)?.matmul(&branch.b_t)?))
    }

    fn out_features(&self, layer_idx: usize, proj: Proj) -> Option<usize> {
        self.branches
            .get(&(layer_idx, proj))
            .map(|b| b.b_t.dims()[1])
    }
}

impl LinearHook for LoadedAdapter {
    fn delta(&self, layer_idx: usize, proj: Proj, xs: &Tensor) -> Result<Option<Tensor>> {
        LoadedAdapter::delta(self, layer_idx, proj, xs)
    }
}

/// The hook for one forward pass: consecutive row ranges, each with its adapter or none.
pub(crate) struct RowAdapters<'a> {
    segments: Vec<(usize, Option<&'a LoadedAdapter>)>,
}

impl<'a> RowAdapters<'a> {
    /// `segments`: `(rows, adapter)` in batch order. `None` if no row has an adapter.
    pub(crate) fn new(segments: Vec<(usize, Option<&'a LoadedAdapter>)>) -> Option<Self> {
        segments
            .iter()
            .any(|(_, a)| a.is_some())
            .then_some(RowAdapters { segments })
    }
}

impl LinearHook for RowAdapters<'_> {
    fn delta(&self, layer_idx: usize, proj: Proj, xs: &Tensor) -> Result<Option<Tensor>> {
        if let [(_, Some(adapter))] = self.segments.as_slice() {
            return adapter.delta(layer_idx, proj, xs);
        }
        let Some(out) = self
            .segments
            .iter()
            .find_map(|(_, a)| a.and_then(|a| a.out_features(layer_idx, proj)))
        else {
            return Ok(None);
        };
        let mut parts = Vec::with_capacity(self.segments.len());
        let mut offset = 0;
        for &(rows, adapter) in &self.segments {
            let rows_xs = xs.narrow(0, offset, rows)?;
            let part = match adapter.map(|a| a.delta(layer_idx, proj, &rows_xs)) {
                Some(delta) => match delta? {
                    Some(delta) => delta,
                    None => Tensor::zeros((rows, out), xs.dtype(), xs.device())?,
                },
                None => Tensor::zeros((rows, out), xs.dtype(), xs.device())?,
            };
            parts.push(part);
            offset += rows;
        }
        Ok(Some(Tensor::cat(&parts, 0)?))
    }
}

/// Shares a loaded adapter between requests.
pub type SharedAdapter = Arc<LoadedAdapter>;
