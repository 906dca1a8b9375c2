//! The training forward pass: the engine's decoder on dense, frozen f32 weights, with LoRA
//! branches as candle `Var`s, built only from ops whose backward candle implements.
//!
//! Why not the serving forward pass: candle's fused `rms_norm`, `rope` and `softmax_last_dim`
//! have no backward and cut the gradient silently, the KV cache writes in place, and a plain
//! matmul's backward also computes the gradient of the frozen weight (a third more work and a
//! second copy of the weights). Here norms, RoPE and the causal softmax are single nodes
//! with hand-written backward passes on the CPU ([`super::fused`]) and composed of primitive
//! ops elsewhere, and every frozen projection is a [`FrozenLinear`] whose backward returns
//! only the input's gradient. The parity test holds this forward pass to the serving one's logits.
//!
//! Why one file of about 750 lines: the whole training decoder, op by op, so that it reads line
//! by line against the serving one it must equal (tested to 1e-4).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Shape, Storage, Tensor, Var};
use hexacoder_adapters::{Adapter, LoraConfig, LoraModule, ModuleKey, TargetModules};
use hexacoder_engine::config::{RopeStyle, TransformerConfig};
use hexacoder_engine::models::llama::Model;
use hexacoder_engine::nn::Proj;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::branch::{BranchDropout, LoraProjection};
use super::packed::PackedMatrix;
use super::{Error, Result, fused};

/// `y = x·Wᵀ` for a frozen `W` (`[out, in]`): the backward pass gives `x` its gradient and
/// computes nothing for `W`.
enum FrozenMatmul {
    /// On the CPU: `W` packed once for each direction ([`PackedMatrix`]), no dense copy.
    Packed(Arc<PackedPair>),
    /// Elsewhere: candle's matmul on the dense weight.
    Dense(Tensor),
}

/// One frozen weight packed for `x · Wᵀ` and for `dy · W`.
pub(super) struct PackedPair {
    pub(super) forward: PackedMatrix,
    pub(super) gradient: PackedMatrix,
}

/// Runs `a · B` for a packed `B` on a contiguous CPU input of `k` values per row.
fn packed_product(
    packed: &PackedMatrix,
    x: &CpuStorage,
    layout: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (k, n) = packed.dims();
    let dims = layout.shape().dims();
    let (CpuStorage::F32(values), true, Some(&last)) = (x, layout.is_contiguous(), dims.last())
    else {
        candle_core::bail!("frozen matmul wants a contiguous f32 input, got {layout:?}");
    };
    if last != k {
        candle_core::bail!("frozen matmul: rows of {last} values against a weight of {k}");
    }
    let a = &values[layout.start_offset()..][..layout.shape().elem_count()];
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    Ok((
        CpuStorage::F32(packed.left_multiply(a)),
        Shape::from(out_dims),
    ))
}

impl PackedPair {
    pub(super) fn new(weight: &Tensor) -> Result<Self> {
        let (rows, cols) = weight.dims2()?;
        let values: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        Ok(PackedPair {
            forward: PackedMatrix::transposed(&values, rows, cols),
            gradient: PackedMatrix::plain(&values, rows, cols),
        })
    }
}

impl FrozenMatmul {
    fn run_dense(
        weight: &Tensor,
        x: Storage,
        layout: &Layout,
    ) -> candle_core::Result<(Storage, Shape)> {
        if !layout.is_contiguous() {
            candle_core::bail!("frozen matmul wants a contiguous input");
        }
        let len = layout.shape().elem_count();
        let x = Tensor::from_storage(x, (layout.start_offset() + len,), BackpropOp::none(), false)
            .narrow(0, layout.start_offset(), len)?
            .reshape(layout.shape())?;
        let y = x.matmul(&weight.t()?)?.contiguous()?;
        let shape = y.shape().clone();
        let (storage, y_layout) = y.storage_and_layout();
        Ok((storage.try_clone(y_layout)?, shape))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        match self {
            FrozenMatmul::Packed(pair) => packed_product(&pair.forward, x, layout),
            FrozenMatmul::Dense(weight) => {
                match Self::run_dense(weight, Storage::Cpu(x.clone()), layout)? {
                    (Storage::Cpu(y), shape) => Ok((y, shape)),
                    _ => candle_core::bail!("frozen matmul: weight and input on different devices"),
                }
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let FrozenMatmul::Dense(weight) = self else {
            candle_core::bail!("frozen matmul: the weight is packed for the CPU");
        };
        match Self::run_dense(weight, Storage::Cuda(x.try_clone(layout)?), layout)? {
            (Storage::Cuda(y), shape) => Ok((y, shape)),
            _ => candle_core::bail!("frozen matmul: weight and input on different devices"),
        }
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        match self {
            FrozenMatmul::Packed(pair) => Ok(Some(
                grad_y
                    .contiguous()?
                    .apply_op1_no_bwd(&FrozenGradient(pair.clone()))?,
            )),
            FrozenMatmul::Dense(weight) => Ok(Some(grad_y.matmul(weight)?)),
        }
    }
}

/// `dy · W` over [`PackedPair::gradient`]: the input's gradient of a packed [`FrozenMatmul`].
struct FrozenGradient(Arc<PackedPair>);

impl CustomOp1 for FrozenGradient {
    fn name(&self) -> &'static str {
        "frozen-matmul-gradient"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        packed_product(&self.0.gradient, x, layout)
    }
}

/// A frozen projection.
struct FrozenLinear {
    op: Arc<Box<dyn CustomOp1 + Send + Sync>>,
    /// The packed weight on the CPU, which a LoRA branch fuses with ([`LoraProjection`]).
    packed: Option<Arc<PackedPair>>,
    bias: Option<Tensor>,
}

impl FrozenLinear {
    /// Packed on the CPU, the dense weight kept elsewhere.
    fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if !weight.device().is_cpu() {
            return Ok(Self::dense(weight, bias));
        }
        let pair = Arc::new(PackedPair::new(&weight)?);
        Ok(FrozenLinear {
            op: Arc::new(Box::new(FrozenMatmul::Packed(pair.clone()))),
            packed: Some(pair),
            bias,
        })
    }

    /// On candle's matmul and the dense weight, on every device.
    fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        FrozenLinear {
            op: Arc::new(Box::new(FrozenMatmul::Dense(weight))),
            packed: None,
            bias,
        }
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.contiguous()?.apply_op1_arc(self.op.clone())?;
        self.add_bias(ys)
    }

    fn add_bias(&self, ys: Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            Some(bias) => ys.broadcast_add(bias)?,
            None => ys,
        })
    }

    /// `x·Wᵀ (+ bias) + s·((x ⊙ m)·Aᵀ)·Bᵀ`: one node over the packed weight on the CPU,
    /// composed of candle ops elsewhere (the same mask either way).
    fn forward_with_lora(
        &self,
        xs: &Tensor,
        pair: &LoraPair,
        dropout: Option<BranchDropout>,
    ) -> Result<Tensor> {
        if let Some(packed) = &self.packed {
            let op = LoraProjection::new(packed.clone(), pair.scale as f32, dropout);
            let ys = xs
                .contiguous()?
                .apply_op3(pair.a.as_tensor(), pair.b.as_tensor(), op)?;
            return self.add_bias(ys);
        }
        let ys = self.forward(xs)?;
        let input = match dropout {
            Some(dropout) => {
                let (rows, width) = (xs.elem_count() / xs.dim(D::Minus1)?, xs.dim(D::Minus1)?);
                let mask = Tensor::from_vec(dropout.mask(rows, width), xs.shape(), xs.device())?;
                (xs * mask)?
            }
            None => xs.clone(),
        };
        let delta = input
            .matmul(&pair.a.as_tensor().t()?)?
            .matmul(&pair.b.as_tensor().t()?)?;
        Ok((ys + (delta * pair.scale)?)?)
    }
}

/// An RMSNorm: on the CPU one fused node ([`fused::RmsNorm`]), elsewhere composed.
struct Norm {
    weight: Tensor,
    eps: f64,
    fused: Option<Arc<Box<dyn CustomOp1 + Send + Sync>>>,
}

impl Norm {
    fn new(weight: Tensor, eps: f64) -> Result<Self> {
        let fused = if weight.device().is_cpu() {
            let op: Box<dyn CustomOp1 + Send + Sync> = Box::new(fused::RmsNorm {
                weight: weight.flatten_all()?.to_vec1()?,
                eps: eps as f32,
            });
            Some(Arc::new(op))
        } else {
            None
        };
        Ok(Norm { weight, eps, fused })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.fused {
            Some(op) => Ok(xs.contiguous()?.apply_op1_arc(op.clone())?),
            None => rms_norm(xs, &self.weight, self.eps),
        }
    }
}

struct Layer {
    input_layernorm: Norm,
    post_attention_layernorm: Norm,
    /// In [`Proj::ALL`] order.
    projections: Vec<FrozenLinear>,
}

/// The frozen base, ready for training forward passes.
pub struct TrainModel {
    config: TransformerConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: FrozenLinear,
    cos: Tensor,
    sin: Tensor,
    /// The same tables as values, `[max_positions, head_dim / 2]`, for the CPU's fused ops.
    cpu_tables: Option<(Vec<f32>, Vec<f32>)>,
    device: Device,
}

/// One LoRA pair being trained.
pub struct LoraPair {
    /// `[r, in]`.
    pub a: Var,
    /// `[out, r]`, in the model's row order.
    pub b: Var,
    /// `alpha / r` or `alpha / sqrt(r)`.
    pub scale: f64,
}

/// LoRA hyper-parameters.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LoraSettings {
    /// Rank.
    pub rank: usize,
    /// Alpha.
    pub alpha: f64,
    /// Dropout on the branch's input during training.
    pub dropout: f64,
    /// Scale by `alpha / sqrt(r)`.
    pub rslora: bool,
    /// PEFT module names, e.g. `q_proj`.
    pub target_modules: Vec<String>,
}

impl LoraSettings {
    /// The projections targeted.
    ///
    /// # Errors
    /// A name that is not one of the seven projections, or a rank of 0.
    pub fn projections(&self) -> Result<Vec<Proj>> {
        if self.rank == 0 {
            return Err(Error::Settings("--rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Settings(format!(
                "--dropout {} is not in [0, 1)",
                self.dropout
            )));
        }
        self.target_modules
            .iter()
            .map(|name| parse_module(name))
            .collect()
    }

    fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// `q`, `q_proj`, `gate`, … to a projection.
///
/// # Errors
/// Anything else, naming the valid modules.
pub fn parse_module(name: &str) -> Result<Proj> {
    let name = name.trim();
    Proj::ALL
        .into_iter()
        .find(|p| p.module_name() == name || p.module_name().strip_suffix("_proj") == Some(name))
        .ok_or_else(|| {
            Error::Settings(format!(
                "unknown target module {name:?}; expected some of q, k, v, o, gate, up, down (or q_proj, …)"
            ))
        })
}

/// The trainable adapter: a LoRA pair per targeted projection of every layer.
pub struct Lora {
    /// By layer and projection.
    pub pairs: BTreeMap<(usize, usize), LoraPair>,
    /// The settings it was made with.
    pub settings: LoraSettings,
}

fn proj_index(proj: Proj) -> usize {
    Proj::ALL.iter().position(|&p| p == proj).unwrap_or(0)
}

impl Lora {
    /// PEFT's initialization: `A` uniform in ±1/√in (Kaiming with a = √5), `B` zero, so
    /// training starts from the base model exactly.
    ///
    /// # Errors
    /// Bad settings.
    pub fn new(model: &TrainModel, settings: &LoraSettings, seed: u64) -> Result<Self> {
        let projections = settings.projections()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pairs = BTreeMap::new();
        for layer in 0..model.config.num_hidden_layers {
            for &proj in &projections {
                let (n_in, n_out) = model.projection_shape(proj);
                let bound = 1.0 / (n_in as f32).sqrt();
                let a: Vec<f32> = (0..settings.rank * n_in)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a =
                    Var::from_tensor(&Tensor::from_vec(a, (settings.rank, n_in), &model.device)?)?;
                let b = Var::zeros((n_out, settings.rank), DType::F32, &model.device)?;
                pairs.insert(
                    (layer, proj_index(proj)),
                    LoraPair {
                        a,
                        b,
                        scale: settings.scale(),
                    },
                );
            }
        }
        Ok(Lora {
            pairs,
            settings: settings.clone(),
        })
    }

    /// Every trainable tensor with a stable name (`layers.3.q_proj.lora_A`).
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        self.pairs
            .iter()
            .flat_map(|(&(layer, p), pair)| {
                let module = Proj::ALL[p].module_name();
                [
                    (format!("layers.{layer}.{module}.lora_A"), &pair.a),
                    (format!("layers.{layer}.{module}.lora_B"), &pair.b),
                ]
            })
            .collect()
    }

    /// Trainable parameters.
    pub fn parameters(&self) -> usize {
        self.named_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }

    /// The adapter in PEFT's terms (`B` back in HF row order), for [`Adapter::save`].
    ///
    /// # Errors
    /// Tensor failures.
    pub fn to_adapter(&self, model: &TrainModel, base_name: &str) -> Result<Adapter> {
        let mut modules = BTreeMap::new();
        for (&(layer, p), pair) in &self.pairs {
            let proj = Proj::ALL[p];
            let mut b = pair.b.as_tensor().to_device(&Device::Cpu)?;
            if let Some(rows) = model.config.hf_rows(proj) {
                let mut inverse = vec![0u32; rows.len()];
                for (model_row, &hf_row) in rows.iter().enumerate() {
                    inverse[hf_row as usize] = model_row as u32;
                }
                b = b.index_select(&Tensor::new(inverse.as_slice(), &Device::Cpu)?, 0)?;
            }
            modules.insert(
                ModuleKey {
                    layer,
                    parent: proj.parent().into(),
                    module: proj.module_name().into(),
                },
                LoraModule {
                    a: pair.a.as_tensor().to_device(&Device::Cpu)?,
                    b,
                    scale: pair.scale,
                },
            );
        }
        let mut names: Vec<String> = self
            .settings
            .projections()?
            .iter()
            .map(|p| p.module_name().to_string())
            .collect();
        names.dedup();
        let config = LoraConfig {
            r: self.settings.rank,
            lora_alpha: self.settings.alpha,
            use_rslora: self.settings.rslora,
            target_modules: TargetModules::Names(names),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            base_model_name_or_path: Some(base_name.to_string()),
        };
        Ok(Adapter::new(config, modules))
    }
}

/// Dropout for one forward pass: which rows of which branch input are kept is a function of
/// the seed alone, so a resumed run draws exactly what the uninterrupted one drew.
pub struct Dropout {
    /// Probability of zeroing an element.
    pub p: f64,
    /// Seeds this pass's masks.
    pub seed: u64,
}

impl TrainModel {
    /// Dense f32 copies of `model`'s weights on `device`.
    ///
    /// # Errors
    /// Tensor failures.
    pub fn new(model: &Model, device: &Device) -> Result<Self> {
        Self::build(model, device, device.is_cpu())
    }

    /// On the CPU with the projections dense and the LoRA branches composed of candle ops, as
    /// a GPU runs them: the reference the fused CPU nodes are tested against.
    #[cfg(test)]
    pub(crate) fn with_composed_projections(model: &Model) -> Result<Self> {
        Self::build(model, &Device::Cpu, false)
    }

    fn build(model: &Model, device: &Device, pack: bool) -> Result<Self> {
        let config = model.config().clone();
        let mut dense = model.dense_weights()?;
        let on = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.to_device(device)?) };
        // Each layer's dense weights are dropped once packed, so that the run never holds
        // both copies of the whole model.
        let layers = std::mem::take(&mut dense.layers)
            .into_iter()
            .map(|layer| {
                Ok(Layer {
                    input_layernorm: Norm::new(on(&layer.input_layernorm)?, config.rms_norm_eps)?,
                    post_attention_layernorm: Norm::new(
                        on(&layer.post_attention_layernorm)?,
                        config.rms_norm_eps,
                    )?,
                    projections: layer
                        .projections
                        .iter()
                        .map(|(w, b)| {
                            let (w, b) = (on(w)?, b.as_ref().map(on).transpose()?);
                            if pack {
                                FrozenLinear::new(w, b)
                            } else {
                                Ok(FrozenLinear::dense(w, b))
                            }
                        })
                        .collect::<Result<Vec<_>>>()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = on(&dense.embed_tokens)?;
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            on(&dense.lm_head)?
        };
        let (cos, sin) = model.rope_tables();
        let (cos, sin) = (cos.to_device(device)?, sin.to_device(device)?);
        let cpu_tables = if device.is_cpu() {
            Some((cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?))
        } else {
            None
        };
        Ok(TrainModel {
            embed_tokens,
            layers,
            norm: Norm::new(on(&dense.norm)?, config.rms_norm_eps)?,
            // The head stays dense: it is the embedding's tensor when tied, and packing it
            // twice would hold 1 GB more for the 0.5B model's 151,936 rows.
            lm_head: FrozenLinear::dense(lm_head, None),
            cos,
            sin,
            cpu_tables,
            device: device.clone(),
            config,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// Where the weights live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Positions a sequence may hold.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// `(in, out)` of a projection.
    pub fn projection_shape(&self, proj: Proj) -> (usize, usize) {
        let c = &self.config;
        let (q, kv) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        match proj {
            Proj::Q => (c.hidden_size, q),
            Proj::K | Proj::V => (c.hidden_size, kv),
            Proj::O => (q, c.hidden_size),
            Proj::Gate | Proj::Up => (c.hidden_size, c.intermediate_size),
            Proj::Down => (c.intermediate_size, c.hidden_size),
        }
    }

    /// Final hidden states (before the last norm) of one sequence: `[len, hidden]`.
    ///
    /// # Errors
    /// A sequence longer than the model's context; tensor failures.
    pub fn hidden(
        &self,
        ids: &[u32],
        lora: Option<&Lora>,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        let n = ids.len();
        if n == 0 || n > self.max_positions() {
            return Err(Error::Settings(format!(
                "a sequence of {n} tokens does not fit the model's {} positions",
                self.max_positions()
            )));
        }
        let c = &self.config;
        let attention = self.attention(n)?;
        let mut xs = self
            .embed_tokens
            .index_select(&Tensor::new(ids, &self.device)?, 0)?;
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            let project = |proj: Proj, xs: &Tensor| -> Result<Tensor> {
                let p = proj_index(proj);
                let linear = &layer.projections[p];
                match lora.and_then(|l| l.pairs.get(&(layer_idx, p))) {
                    None => linear.forward(xs),
                    Some(pair) => {
                        let dropout = dropout
                            .filter(|d| d.p > 0.0)
                            .map(|d| BranchDropout::new(d.p, d.seed, layer_idx, p));
                        linear.forward_with_lora(xs, pair, dropout)
                    }
                }
            };
            let hs = layer.input_layernorm.forward(&xs)?;
            let q = project(Proj::Q, &hs)?;
            let k = project(Proj::K, &hs)?;
            let v = project(Proj::V, &hs)?;
            let heads = |t: Tensor, h: usize| -> Result<Tensor> {
                Ok(t.reshape((n, h, c.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?)
            };
            let q = attention.rope(&heads(q, c.num_attention_heads)?)?;
            let k = attention.rope(&heads(k, c.num_key_value_heads)?)?;
            let v = heads(v, c.num_key_value_heads)?;
            let attn = attention.attend(&q, &k, &v)?;
            let attn = project(Proj::O, &attn)?;
            xs = (xs + attn)?;
            let hs = layer.post_attention_layernorm.forward(&xs)?;
            let gate = project(Proj::Gate, &hs)?;
            let up = project(Proj::Up, &hs)?;
            let mlp = if self.device.is_cpu() {
                gate.apply_op2(&up, fused::SwiGlu)?
            } else {
                (gate.silu()? * up)?
            };
            let down = project(Proj::Down, &mlp)?;
            xs = (xs + down)?;
        }
        Ok(xs)
    }

    /// Rotary embedding and causal attention for one sequence of `n` tokens.
    fn attention(&self, n: usize) -> Result<Attention> {
        let c = &self.config;
        Ok(match &self.cpu_tables {
            Some((cos, sin)) => {
                let half = c.head_dim / 2;
                let rope: Box<dyn CustomOp1 + Send + Sync> = Box::new(fused::Rope {
                    cos: cos[..n * half].to_vec(),
                    sin: sin[..n * half].to_vec(),
                    style: c.rope_style,
                });
                let softmax: Box<dyn CustomOp1 + Send + Sync> = Box::new(fused::CausalSoftmax {
                    scale: 1.0 / (c.head_dim as f32).sqrt(),
                });
                Attention::Fused {
                    rope: Arc::new(rope),
                    softmax: Arc::new(softmax),
                }
            }
            None => Attention::Composed {
                cos: self.cos.narrow(0, 0, n)?,
                sin: self.sin.narrow(0, 0, n)?,
                style: c.rope_style,
                mask: causal_mask(n, &self.device)?,
            },
        })
    }

    /// Logits at `positions` of `hidden` (`[positions.len(), vocab]`).
    ///
    /// # Errors
    /// Tensor failures.
    pub fn logits_at(&self, hidden: &Tensor, positions: &[u32]) -> Result<Tensor> {
        let hs = hidden.index_select(&Tensor::new(positions, &self.device)?, 0)?;
        let hs = self.norm.forward(&hs)?;
        self.lm_head.forward(&hs)
    }

    /// The summed negative log-likelihood of the masked tokens of `ids` (a scalar tensor),
    /// and how many there are. Only masked positions get logits.
    ///
    /// # Errors
    /// Mismatched lengths; tensor failures.
    pub fn masked_nll(
        &self,
        ids: &[u32],
        mask: &[bool],
        lora: Option<&Lora>,
        dropout: Option<&Dropout>,
    ) -> Result<(Tensor, usize)> {
        if ids.len() != mask.len() {
            return Err(Error::Settings(format!(
                "{} tokens but {} mask entries",
                ids.len(),
                mask.len()
            )));
        }
        let (positions, targets): (Vec<u32>, Vec<u32>) = (1..ids.len())
            .filter(|&i| mask[i])
            .map(|i| (i as u32 - 1, ids[i]))
            .unzip();
        if positions.is_empty() {
            return Ok((Tensor::zeros((), DType::F32, &self.device)?, 0));
        }
        let hidden = self.hidden(ids, lora, dropout)?;
        let logits = self.logits_at(&hidden, &positions)?;
        let nll = logits.contiguous()?.apply_op1(CrossEntropy::new(targets))?;
        Ok((nll.sum_all()?, positions.len()))
    }
}

/// Gradients of every var of `lora`, in `named_vars` order.
///
/// # Errors
/// A var without a gradient: candle returns none, silently, when the graph was cut.
pub fn gradients(lora: &Lora, grads: &GradStore) -> Result<Vec<Tensor>> {
    lora.named_vars()
        .into_iter()
        .map(|(name, var)| {
            grads.get(var.as_tensor()).cloned().ok_or_else(|| {
                Error::Settings(format!("{name} received no gradient: the graph is cut"))
            })
        })
        .collect()
}

pub(super) fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_square = xs.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (mean_square + eps)?.sqrt()?.recip()?;
    Ok(xs.broadcast_mul(&inv)?.broadcast_mul(weight)?)
}

/// `xs` is `[heads, n, d]`; `cos`/`sin` are `[n, d/2]`.
pub(super) fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let (heads, n, d) = xs.dims3()?;
    let half = d / 2;
    let rotate = |x1: &Tensor, x2: &Tensor| -> Result<(Tensor, Tensor)> {
        let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
        let b = (x1.broadcast_mul(sin)? + x2.broadcast_mul(cos)?)?;
        Ok((a, b))
    };
    Ok(match style {
        RopeStyle::Half => {
            let (a, b) = rotate(&xs.narrow(2, 0, half)?, &xs.narrow(2, half, half)?)?;
            Tensor::cat(&[a, b], 2)?
        }
        RopeStyle::Interleaved => {
            let pairs = xs.reshape((heads, n, half, 2))?;
            let x1 = pairs.narrow(3, 0, 1)?.squeeze(3)?;
            let x2 = pairs.narrow(3, 1, 1)?.squeeze(3)?;
            let (a, b) = rotate(&x1, &x2)?;
            Tensor::stack(&[a, b], 3)?.reshape((heads, n, d))?
        }
    })
}

#[cfg(test)]
pub(crate) fn rope_for_tests(
    xs: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    style: RopeStyle,
) -> Result<Tensor> {
    rope(xs, cos, sin, style)
}

pub(super) fn causal_mask(n: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..n)
        .flat_map(|row| (0..n).map(move |col| if col <= row { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(mask, (n, n), device)?)
}

/// Softmax from primitives: candle's fused one has no backward.
pub(super) fn softmax(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    Ok(exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?)
}

/// Per-row negative log-likelihood of `targets` under `[rows, vocab]` logits, as one node:
/// the composed log-softmax, gather and their backward made about ten vocabulary-wide
/// tensors per row set (151,936 wide for Qwen), this makes one, in the backward pass.
struct CrossEntropy {
    targets: Vec<u32>,
    /// Each row's log-sum-exp from the CPU forward pass, for the backward one.
    log_sum_exps: std::sync::Mutex<Vec<f32>>,
}

impl CrossEntropy {
    fn new(targets: Vec<u32>) -> Self {
        CrossEntropy {
            targets,
            log_sum_exps: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn check(&self, rows: usize, vocab: usize) -> candle_core::Result<()> {
        if rows != self.targets.len() || self.targets.iter().any(|&t| t as usize >= vocab) {
            candle_core::bail!(
                "cross-entropy: {} targets for {rows} rows of {vocab} logits",
                self.targets.len()
            );
        }
        Ok(())
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, vocab) = layout.shape().dims2()?;
        self.check(rows, vocab)?;
        let (CpuStorage::F32(all), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("cross-entropy wants contiguous f32 logits");
        };
        let logits = &all[start..end];
        let mut lse = vec![0f32; rows];
        fused::for_each_row(&mut lse, 1, |i, out| {
            out[0] = log_sum_exp(&logits[i * vocab..][..vocab]);
        });
        let nll = lse
            .iter()
            .zip(logits.chunks_exact(vocab).zip(&self.targets))
            .map(|(lse, (row, &t))| lse - row[t as usize])
            .collect();
        *self
            .log_sum_exps
            .lock()
            .map_err(|_| candle_core::Error::Msg("cross-entropy: a thread panicked".into()))? = lse;
        Ok((CpuStorage::F32(nll), Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (rows, vocab) = layout.shape().dims2()?;
        self.check(rows, vocab)?;
        let len = layout.shape().elem_count();
        let logits = Tensor::from_storage(
            Storage::Cuda(storage.try_clone(layout)?),
            (layout.start_offset() + len,),
            BackpropOp::none(),
            false,
        )
        .narrow(0, layout.start_offset(), len)?
        .reshape((rows, vocab))?;
        let max = logits.max_keepdim(D::Minus1)?;
        let lse = (logits
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(D::Minus1)?
            .log()?
            + max)?;
        let targets = Tensor::new(self.targets.as_slice(), logits.device())?.unsqueeze(1)?;
        let nll = (lse - logits.gather(&targets, 1)?)?
            .squeeze(1)?
            .contiguous()?;
        let (storage, nll_layout) = nll.storage_and_layout();
        match storage.try_clone(nll_layout)? {
            Storage::Cuda(s) => Ok((s, Shape::from(rows))),
            _ => candle_core::bail!("cross-entropy: result left the GPU"),
        }
    }

    fn bwd(
        &self,
        logits: &Tensor,
        _nll: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (rows, vocab) = logits.dims2()?;
        let grad = grad.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if logits.device().is_cpu() {
            let lse =
                std::mem::take(&mut *self.log_sum_exps.lock().map_err(|_| {
                    candle_core::Error::Msg("cross-entropy: a thread panicked".into())
                })?);
            if lse.len() != rows || grad.len() != rows {
                candle_core::bail!("cross-entropy: backward without its forward");
            }
            // softmax(row)·g − g at the target, in one buffer.
            let mut values = logits.flatten_all()?.to_vec1::<f32>()?;
            fused::for_each_row(&mut values, vocab, |i, row| {
                hexacoder_engine::nn::exp_shifted_in_place(row, lse[i]);
                row.iter_mut().for_each(|x| *x *= grad[i]);
                row[self.targets[i] as usize] -= grad[i];
            });
            return Ok(Some(Tensor::from_vec(
                values,
                (rows, vocab),
                logits.device(),
            )?));
        }
        let device = logits.device();
        let g = Tensor::from_vec(grad.clone(), (rows, 1), device)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let exp = logits.broadcast_sub(&max)?.exp()?;
        let softmax = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
        let targets = Tensor::new(self.targets.as_slice(), device)?.unsqueeze(1)?;
        let minus_g = Tensor::from_vec(
            grad.iter().map(|g| -g).collect::<Vec<_>>(),
            (rows, 1),
            device,
        )?;
        Ok(Some(
            softmax
                .broadcast_mul(&g)?
                .scatter_add(&targets, &minus_g, 1)?,
        ))
    }
}

/// `ln Σ exp(x)` of a row, its exponentials taken a stack buffer at a time.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut buffer = [0f32; 512];
    let mut sum = 0f32;
    for chunk in row.chunks(buffer.len()) {
        let buffer = &mut buffer[..chunk.len()];
        buffer.copy_from_slice(chunk);
        hexacoder_engine::nn::exp_shifted_in_place(buffer, max);
        sum += fused::sum_in_lanes(buffer);
    }
    max + sum.ln()
}

/// RoPE and causal attention for one sequence length: fused nodes on the CPU
/// ([`fused::Rope`], [`fused::CausalSoftmax`]), primitives elsewhere.
enum Attention {
    Fused {
        rope: Arc<Box<dyn CustomOp1 + Send + Sync>>,
        softmax: Arc<Box<dyn CustomOp1 + Send + Sync>>,
    },
    Composed {
        cos: Tensor,
        sin: Tensor,
        style: RopeStyle,
        mask: Tensor,
    },
}

impl Attention {
    /// Rotates `[heads, n, d]` as positions `0..n`.
    fn rope(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Attention::Fused { rope, .. } => Ok(xs.contiguous()?.apply_op1_arc(rope.clone())?),
            Attention::Composed {
                cos, sin, style, ..
            } => rope(xs, cos, sin, *style),
        }
    }

    /// Grouped-query causal attention of one whole sequence: `q` `[heads, n, d]`, `k`/`v`
    /// `[kv_heads, n, d]`; returns `[n, heads·d]`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (heads, n, d) = q.dims3()?;
        let kv_heads = k.dim(0)?;
        let group = heads / kv_heads;
        let q = q.reshape((kv_heads, group * n, d))?;
        let scores = q.matmul(&k.t()?)?;
        let probs = match self {
            Attention::Fused { softmax, .. } => {
                scores.contiguous()?.apply_op1_arc(softmax.clone())?
            }
            Attention::Composed { mask, .. } => {
                let scores = (scores * (1.0 / (d as f64).sqrt()))?
                    .reshape((kv_heads, group, n, n))?
                    .broadcast_add(mask)?
                    .reshape((kv_heads, group * n, n))?;
                softmax(&scores)?
            }
        };
        Ok(probs
            .matmul(v)?
            .reshape((heads, n, d))?
            .transpose(0, 1)?
            .reshape((n, heads * d))?)
    }
}
