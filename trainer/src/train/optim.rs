//! AdamW with a warm-up plus cosine schedule and global gradient-norm clipping.

use candle_core::{Tensor, Var};

use super::Result;

/// AdamW hyper-parameters.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWSettings {
    /// Peak learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// Moments per var, in the order of the vars given to [`AdamW::step`].
pub struct AdamW {
    /// Settings.
    pub settings: AdamWSettings,
    /// First moments.
    pub m: Vec<Tensor>,
    /// Second moments.
    pub v: Vec<Tensor>,
    /// Updates done.
    pub t: u64,
}

impl AdamW {
    /// Zero moments shaped like `vars`.
    ///
    /// # Errors
    /// Tensor failures.
    pub fn new(settings: AdamWSettings, vars: &[&Var]) -> Result<Self> {
        let zeros = |v: &&Var| v.as_tensor().zeros_like();
        Ok(AdamW {
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            settings,
            t: 0,
        })
    }

    /// One update of `vars` by `grads` at learning rate `lr`.
    ///
    /// # Errors
    /// Tensor failures.
    pub fn step(&mut self, vars: &[&Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let s = &self.settings;
        let correction1 = 1.0 - s.beta1.powi(self.t as i32);
        let correction2 = 1.0 - s.beta2.powi(self.t as i32);
        for (i, (var, grad)) in vars.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * s.beta1)? + (grad * (1.0 - s.beta1))?)?;
            let v = ((&self.v[i] * s.beta2)? + (grad.sqr()? * (1.0 - s.beta2))?)?;
            let denominator = ((&v / correction2)?.sqrt()? + s.eps)?;
            let update = (&m / correction1)?.div(&denominator)?;
            let theta = var.as_tensor();
            let decayed = (theta * (1.0 - lr * s.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// The global L2 norm of `grads`, and `grads` scaled so that it is at most `max_norm`
/// (unchanged when `max_norm` is 0 or the norm is within it).
///
/// # Errors
/// Tensor failures.
pub fn clip(grads: Vec<Tensor>, max_norm: f64) -> Result<(f64, Vec<Tensor>)> {
    let mut total = 0f64;
    for g in &grads {
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if max_norm <= 0.0 || norm <= max_norm || !norm.is_finite() {
        return Ok((norm, grads));
    }
    let factor = max_norm / (norm + 1e-6);
    let scaled = grads
        .into_iter()
        .map(|g| g * factor)
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((norm, scaled))
}

/// Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`.
pub fn learning_rate(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}
