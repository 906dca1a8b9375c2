//! LoRA adapters applied per request as an unmerged side branch, `y = W·x + s·B(A·x)`.
//!
//! A [`LoadedAdapter`] is an adapter from `hexacoder-adapters` prepared for the forward pass
//! (on the CPU a [`LowRankDelta`] per projection, in f16 when the adapter's values are f16
//! values; elsewhere `Aᵀ` and `s·Bᵀ` for candle's matmuls) and given an identity that no other adapter, or later
//! version of the same name, ever shares. [`RowAdapters`] is the hook for one forward pass of
//! a ragged batch: each sequence's rows get their own adapter's delta, or none.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Tensor};
use hexacoder_adapters::{Adapter, BaseModel};

use crate::models::llama::Model;
use crate::nn::{LinearHook, LowRankDelta, Proj, plus_delta};
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

/// One projection's side branch: the host kernel on the CPU, candle's matmuls elsewhere.
enum Branch {
    Host(LowRankDelta),
    Device {
        /// `Aᵀ`, `[in, r]`.
        a_t: Tensor,
        /// `s·Bᵀ`, `[r, out]`.
        b_t: Tensor,
    },
}

impl Branch {
    fn out_features(&self) -> usize {
        match self {
            Branch::Host(delta) => delta.out_features(),
            Branch::Device { b_t, .. } => b_t.dims()[1],
        }
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
            let a = module.a.to_dtype(DType::F32)?;
            let b = in_model_rows(model, proj, &module.b.to_dtype(DType::F32)?)?;
            let (rank, n_in) = a.dims2()?;
            let branch = if device.is_cpu() {
                Branch::Host(LowRankDelta::new(
                    a.flatten_all()?.to_vec1::<f32>()?,
                    b.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?,
                    module.scale as f32,
                    rank,
                    n_in,
                )?)
            } else {
                let b = (b.to_device(device)? * module.scale)?;
                Branch::Device {
                    a_t: a.to_device(device)?.t()?.contiguous()?,
                    b_t: b.t()?.contiguous()?,
                }
            };
            branches.insert((key.layer, proj), branch);
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
        match branch {
            Branch::Host(delta) => {
                let rows = xs.dims()[0];
                let flat = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let out = delta.apply(&flat, rows);
                let out = Tensor::from_vec(out, (rows, delta.out_features()), xs.device())?;
                Ok(Some(out.to_dtype(xs.dtype())?))
            }
            Branch::Device { a_t, b_t } => Ok(Some(xs.matmul(a_t)?.matmul(b_t)?)),
        }
    }

    /// `ys + delta`, the host branch adding straight into a copy of `ys`.
    fn add_delta(&self, layer_idx: usize, proj: Proj, xs: &Tensor, ys: Tensor) -> Result<Tensor> {
        let rows = xs.dims()[0];
        let in_place = match self.branches.get(&(layer_idx, proj)) {
            Some(Branch::Host(delta))
                if ys.dtype() == DType::F32 && ys.dims() == [rows, delta.out_features()] =>
            {
                Some(delta)
            }
            _ => None,
        };
        // A device branch, or a projection that does not answer in f32 (a dense half
        // model), takes the delta as a tensor of its own.
        let Some(delta) = in_place else {
            return plus_delta(ys, LoadedAdapter::delta(self, layer_idx, proj, xs)?);
        };
        let mut out = ys.flatten_all()?.to_vec1::<f32>()?;
        crate::nn::with_f32_values(&xs.to_dtype(DType::F32)?.contiguous()?, |x| {
            delta.add_to(x, rows, &mut out)
        })?;
        Ok(Tensor::from_vec(out, ys.shape(), ys.device())?)
    }

    fn out_features(&self, layer_idx: usize, proj: Proj) -> Option<usize> {
        self.branches
            .get(&(layer_idx, proj))
            .map(Branch::out_features)
    }
}

impl LinearHook for LoadedAdapter {
    fn delta(&self, layer_idx: usize, proj: Proj, xs: &Tensor) -> Result<Option<Tensor>> {
        LoadedAdapter::delta(self, layer_idx, proj, xs)
    }

    fn add_delta(&self, layer_idx: usize, proj: Proj, xs: &Tensor, ys: Tensor) -> Result<Tensor> {
        LoadedAdapter::add_delta(self, layer_idx, proj, xs, ys)
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
    fn add_delta(&self, layer_idx: usize, proj: Proj, xs: &Tensor, ys: Tensor) -> Result<Tensor> {
        if let [(_, Some(adapter))] = self.segments.as_slice() {
            return adapter.add_delta(layer_idx, proj, xs, ys);
        }
        plus_delta(ys, self.delta(layer_idx, proj, xs)?)
    }

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
