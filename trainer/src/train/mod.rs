//! `hexacoder-train train`: masked-loss LoRA fine-tuning (HexaCoder's second component).
//!
//! The loss covers only the tokens a security fix changed ([`data`]); the base model is the
//! engine's, dequantized to dense f32 and frozen ([`model`]); LoRA pairs are trained with
//! AdamW ([`optim`]); runs checkpoint atomically and resume exactly ([`checkpoint`]); the
//! result is a PEFT directory the server serves ([`report`] writes its card and loss plot).
//!
//! Why one file of about 700 lines: it is the run (settings, resume, the step loop, export),
//! whose parts share one state; data, model, optimizer, checkpoints and report are modules.

mod branch;
pub mod checkpoint;
pub mod data;
mod fused;
mod lanes;
pub mod model;
pub mod optim;
pub mod packed;
pub mod report;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use hexacoder_adapters::WeightDtype;
use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions, Requantize};
use hexacoder_engine::tokenizer::Tokenizer;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use checkpoint::{Checkpoint, RunState};
use data::{Dataset, EvalPrompts, Example};
use model::{Dropout, Lora, LoraSettings, TrainModel};
use optim::{AdamW, AdamWSettings};

/// What can go wrong in training; every message names the value, file or line at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Bad training data.
    #[error("{0}")]
    Data(String),
    /// Bad settings.
    #[error("{0}")]
    Settings(String),
    /// Not enough memory for the chosen settings.
    #[error("{0}")]
    Memory(String),
    /// The engine failed (loading, tokenizing).
    #[error(transparent)]
    Engine(#[from] hexacoder_engine::Error),
    /// The adapter writer failed.
    #[error(transparent)]
    Adapter(#[from] hexacoder_adapters::Error),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The trainer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a run is made of; saved as `run.json` in the run directory, so `--resume`
/// continues with exactly these.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// The base model's file (GGUF) or directory (safetensors).
    pub model: PathBuf,
    /// A name for the base in the adapter config (`base_model_name_or_path`).
    pub model_name: String,
    /// Training data files (JSONL).
    pub data: Vec<PathBuf>,
    /// Where the final adapter goes.
    pub out: PathBuf,
    /// LoRA.
    pub lora: LoraSettings,
    /// Optimizer.
    pub optim: AdamWSettings,
    /// Passes over the training rows.
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<usize>,
    /// Rows per optimizer step (gradients accumulated over them).
    pub batch_size: usize,
    /// Longest row, in tokens.
    pub max_seq_len: usize,
    /// Share of rows held out for validation.
    pub validation_fraction: f64,
    /// Seeds the split, the data order, LoRA's initialization and dropout.
    pub seed: u64,
    /// Share of the steps spent warming the learning rate up.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip (0: none).
    pub max_grad_norm: f64,
    /// Checkpoint every this many steps (and at each epoch's end).
    pub checkpoint_every: usize,
    /// Validation loss every this many steps (and at each epoch's end).
    pub eval_every: usize,
    /// The shared benchmarks, whose prompts no training row may overlap; `None` skips that.
    pub benchmarks: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// How the exported adapters (`--out` and the run's `best`) store their weights;
    /// checkpoints stay f32 so that a resumed run continues exactly. Runs recorded before
    /// this setting existed wrote f32.
    #[serde(default)]
    pub save_dtype: WeightDtype,
}

impl Settings {
    /// Checks values that do not need the model.
    ///
    /// # Errors
    /// The first bad value, named.
    pub fn validate(&self) -> Result<()> {
        self.lora.projections()?;
        let bad = |what: String| Err(Error::Settings(what));
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.max_steps == Some(0) {
            return bad("--max-steps must be at least 1".into());
        }
        if self.max_seq_len < 8 {
            return bad(format!("--max-seq-len {} is below 8", self.max_seq_len));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad(format!(
                "--validation-fraction {} is not in [0, 1)",
                self.validation_fraction
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "--warmup-ratio {} is not in [0, 1]",
                self.warmup_ratio
            ));
        }
        if !(self.optim.lr > 0.0 && self.optim.lr.is_finite()) {
            return bad(format!("--lr {} must be positive", self.optim.lr));
        }
        if self.checkpoint_every == 0 || self.eval_every == 0 {
            return bad("--checkpoint-every and --eval-every must be at least 1".into());
        }
        if self.data.is_empty() {
            return bad("give at least one --data file".into());
        }
        Ok(())
    }
}

/// How the run reports progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// An indicatif bar on stderr.
    Bar,
    /// One line per step on stderr (logs, `nohup`).
    Lines,
    /// Nothing (tests).
    Quiet,
}

/// What a finished run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The adapter directory.
    pub out: PathBuf,
    /// Optimizer steps taken in total.
    pub steps: usize,
    /// Mean masked-token loss of the last step.
    pub final_train_loss: Option<f64>,
    /// Validation loss of the adapter written (the best one), if there is a validation set.
    pub validation_loss: Option<f64>,
    /// Training tokens per second over this process's steps.
    pub tokens_per_second: f64,
}

/// Makes glibc keep freed memory for reuse instead of handing it back to the kernel.
///
/// A training step allocates and frees hundreds of multi-megabyte tensors; by default glibc
/// maps each large block fresh and unmaps it on free, so every step page-faults on newly
/// zeroed pages. On Qwen2.5-Coder-0.5B that was a quarter of the time (`clear_page` in
/// `perf`), and keeping the memory took training from 39 to 61 tokens/s on 2 cores.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the threads that
    // train are busy, and glibc makes it thread-safe anyway.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Fixes candle's thread count for the process by setting `RAYON_NUM_THREADS` (when unset)
/// to the count candle would find: without it, candle's matmul counts the cores again on
/// every call, by reading and parsing `/proc/cpuinfo` (3-6% of a SmolLM2 training step, in
/// the kernel and on one thread).
///
/// # Safety
/// It sets an environment variable: call it before the process starts any other thread.
pub unsafe fn settle_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        // SAFETY: the caller guarantees that no other thread runs yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

/// Loads the base model as the trainer needs it: on the CPU, quantized types kept (they are
/// dequantized to f32 once), no prefix cache.
///
/// # Errors
/// An unreadable model.
pub fn load_base(model: &Path) -> Result<hexacoder_engine::Engine> {
    let files = hexacoder_engine::local_files(model)?;
    let options = LoadOptions {
        device: Device::Cpu,
        requantize: Requantize::Keep,
        prefix_cache_bytes: 0,
        ..LoadOptions::cpu()
    };
    Ok(load::load(&files, &options)?)
}

/// Bytes a run will hold at its peak, roughly: the frozen base, the activations one sequence
/// of `max_seq_len` keeps for its backward pass, and the quantized model while it is copied.
pub fn memory_estimate(
    config: &hexacoder_engine::config::TransformerConfig,
    max_seq_len: usize,
    file_bytes: u64,
) -> u64 {
    let c = config;
    let (h, i, t) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        max_seq_len as u64,
    );
    let (q, kv) = (
        (c.num_attention_heads * c.head_dim) as u64,
        (c.num_key_value_heads * c.head_dim) as u64,
    );
    let per_layer = h * (q + 2 * kv) + q * h + 3 * h * i;
    let heads = if c.tie_word_embeddings { 1 } else { 2 };
    // The projections are held twice, packed for each direction ([`packed`]).
    let params = heads * c.vocab_size as u64 * h + 2 * c.num_hidden_layers as u64 * per_layer;
    // Per layer and token: about a dozen hidden-wide tensors, four MLP-wide ones, and the
    // attention scores of every head.
    let activations =
        c.num_hidden_layers as u64 * t * (12 * h + 4 * i + 2 * c.num_attention_heads as u64 * t);
    // Logits, log-probabilities and their gradients at every masked position, at worst.
    let head = 3 * t * c.vocab_size as u64;
    4 * (params + activations + head) + file_bytes
}

/// Bytes this machine can give a new process (`MemAvailable`), if known.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn sha256_files(paths: &[PathBuf]) -> Result<String> {
    let mut hasher = sha2::Sha256::new();
    for path in paths {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut file, &mut buffer).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The files that make up a model (one GGUF, or a directory's safetensors and config).
fn model_files(model: &Path) -> Result<Vec<PathBuf>> {
    match hexacoder_engine::local_files(model)? {
        ModelFiles::Gguf(path) => Ok(vec![path]),
        ModelFiles::HfDir(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "safetensors")
                        || p.file_name().is_some_and(|n| n == "config.json")
                })
                .collect();
            files.sort();
            Ok(files)
        }
    }
}

/// A prepared run: model, data, adapter and optimizer, at step `state.step`.
pub struct Trainer {
    /// The settings.
    pub settings: Settings,
    /// The frozen base.
    pub model: TrainModel,
    /// The tokenizer of the base.
    pub tokenizer: std::sync::Arc<Tokenizer>,
    /// Rows.
    pub dataset: Dataset,
    /// What is trained.
    pub lora: Lora,
    /// Its optimizer.
    pub optimizer: AdamW,
    /// Where the run keeps checkpoints, metrics and the best adapter.
    pub run_dir: PathBuf,
    /// Progress so far.
    pub state: RunState,
    /// sha256 of the base model's files.
    pub model_sha256: String,
    /// sha256 of the data files, in order.
    pub data_sha256: String,
}

impl Trainer {
    /// Prepares a new run in `run_dir`, or resumes the one there when it has a checkpoint
    /// and `resume` is set (its `run.json` settings win, except `max_steps` and `epochs`).
    ///
    /// # Errors
    /// Bad settings or data, too little memory, an unreadable model, a run directory that
    /// holds another run.
    pub fn prepare(
        settings: Settings,
        run_dir: &Path,
        resume: bool,
        memory_limit: Option<u64>,
        log: &mut dyn Write,
    ) -> Result<Self> {
        let settings = if resume {
            let saved = checkpoint::read_settings(run_dir)?;
            Settings {
                max_steps: settings.max_steps.or(saved.max_steps),
                epochs: settings.epochs.max(saved.epochs),
                ..saved
            }
        } else {
            settings
        };
        settings.validate()?;
        let device = load::parse_device(&settings.device)?;
        let files = model_files(&settings.model)?;
        let file_bytes: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        let config = match hexacoder_engine::local_files(&settings.model)? {
            ModelFiles::Gguf(path) => load::gguf::GgufFile::open(&path)?.config()?,
            ModelFiles::HfDir(dir) => load::safetensors::read_config(&dir)?,
        };
        let need = memory_estimate(&config, settings.max_seq_len, file_bytes);
        if let Some(have) = memory_limit.or_else(available_memory)
            && need > have
        {
            return Err(Error::Memory(format!(
                "training {} at --max-seq-len {} needs about {:.1} GiB, and {:.1} GiB is available; \
                 lower --max-seq-len or free memory",
                settings.model.display(),
                settings.max_seq_len,
                need as f64 / (1u64 << 30) as f64,
                have as f64 / (1u64 << 30) as f64
            )));
        }
        let engine = load_base(&settings.model)?;
        let tokenizer = engine.shared_tokenizer();
        let max_len = settings.max_seq_len.min(engine.context_length());
        let eval_prompts = settings
            .benchmarks
            .as_ref()
            .map(|dir| EvalPrompts::load(dir, &tokenizer))
            .transpose()?;
        let dataset = data::prepare(
            &settings.data,
            &tokenizer,
            max_len,
            eval_prompts.as_ref(),
            settings.validation_fraction,
            settings.seed,
        )?;
        writeln!(
            log,
            "data: {}",
            dataset
                .report
                .summary(dataset.train.len(), dataset.validation.len())
        )
        .ok();
        let model = TrainModel::new(engine.model(), &device)?;
        drop(engine);
        let lora = Lora::new(&model, &settings.lora, settings.seed)?;
        let vars: Vec<&Var> = lora.named_vars().into_iter().map(|(_, v)| v).collect();
        let mut optimizer = AdamW::new(settings.optim.clone(), &vars)?;
        let model_sha256 = sha256_files(&files)?;
        let data_sha256 = sha256_files(&settings.data)?;
        let state = match resume.then(|| Checkpoint::load(run_dir, &lora, &mut optimizer)) {
            Some(loaded) => {
                let state = loaded?;
                writeln!(log, "resuming {} at step {}", run_dir.display(), state.step).ok();
                state
            }
            None => {
                checkpoint::start_run(run_dir, &settings)?;
                write_examples(run_dir, &dataset)?;
                RunState::default()
            }
        };
        writeln!(
            log,
            "model: {} layers, hidden {}, {} LoRA parameters (r={} on {}), base sha256 {}",
            model.config().num_hidden_layers,
            model.config().hidden_size,
            lora.parameters(),
            settings.lora.rank,
            settings.lora.target_modules.join(","),
            &model_sha256[..12]
        )
        .ok();
        Ok(Trainer {
            settings,
            model,
            tokenizer,
            dataset,
            lora,
            optimizer,
            run_dir: run_dir.to_path_buf(),
            state,
            model_sha256,
            data_sha256,
        })
    }

    /// Optimizer steps in one epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.dataset.train.len().div_ceil(self.settings.batch_size)
    }

    /// Steps the run will take in all.
    pub fn total_steps(&self) -> usize {
        let epochs = self.settings.epochs * self.steps_per_epoch();
        self.settings.max_steps.map_or(epochs, |m| m.min(epochs))
    }

    /// The training rows of `step`, in the epoch's seeded order.
    pub fn batch(&self, step: usize) -> Vec<&Example> {
        let per_epoch = self.steps_per_epoch();
        let (epoch, k) = (step / per_epoch, step % per_epoch);
        let mut order: Vec<usize> = (0..self.dataset.train.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            self.settings.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        let start = k * self.settings.batch_size;
        let end = (start + self.settings.batch_size).min(order.len());
        order[start..end]
            .iter()
            .map(|&i| &self.dataset.train[i])
            .collect()
    }

    /// One optimizer step: accumulated gradients of the batch's mean masked-token loss.
    /// Returns `(loss, grad_norm, tokens)`.
    ///
    /// # Errors
    /// Tensor failures, or a var the graph does not reach.
    pub fn step(&mut self, step: usize) -> Result<(f64, f64, usize)> {
        let batch = self.batch(step);
        let total_masked: usize = batch.iter().map(|e| e.masked()).sum();
        let tokens: usize = batch.iter().map(|e| e.ids.len()).sum();
        let mut summed: Option<Vec<Tensor>> = None;
        let mut loss_sum = 0f64;
        for (j, example) in batch.iter().enumerate() {
            let dropout = Dropout {
                p: self.settings.lora.dropout,
                seed: self.settings.seed ^ ((step as u64) << 20) ^ j as u64,
            };
            let (nll, _) = self.model.masked_nll(
                &example.ids,
                &example.mask,
                Some(&self.lora),
                Some(&dropout),
            )?;
            let loss = (nll / total_masked.max(1) as f64)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let grads = model::gradients(&self.lora, &loss.backward()?)?;
            summed = Some(match summed {
                None => grads,
                Some(acc) => acc
                    .iter()
                    .zip(&grads)
                    .map(|(a, g)| a + g)
                    .collect::<candle_core::Result<Vec<_>>>()?,
            });
        }
        let grads = summed.ok_or_else(|| Error::Data(format!("step {step} has no rows")))?;
        let (norm, grads) = optim::clip(grads, self.settings.max_grad_norm)?;
        let total = self.total_steps();
        let warmup = (self.settings.warmup_ratio * total as f64).round() as usize;
        let lr = optim::learning_rate(self.settings.optim.lr, step, warmup, total);
        let vars: Vec<&Var> = self.lora.named_vars().into_iter().map(|(_, v)| v).collect();
        self.optimizer.step(&vars, &grads, lr)?;
        Ok((loss_sum, norm, tokens))
    }

    /// Mean masked-token loss over `examples` with the current adapter, without dropout.
    ///
    /// # Errors
    /// Tensor failures.
    pub fn loss_on(&self, examples: &[Example]) -> Result<Option<f64>> {
        let (mut nll, mut count) = (0f64, 0usize);
        for example in examples {
            let (sum, n) =
                self.model
                    .masked_nll(&example.ids, &example.mask, Some(&self.lora), None)?;
            nll += sum.detach().to_scalar::<f32>()? as f64;
            count += n;
        }
        Ok((count > 0).then(|| nll / count as f64))
    }

    /// Runs to the last step, checkpointing, evaluating and keeping the best adapter, then
    /// writes the final adapter, its card and the loss plot.
    ///
    /// # Errors
    /// Any failure; the last checkpoint stays usable for `--resume`.
    pub fn run(&mut self, progress: Progress, log: &mut dyn Write) -> Result<Outcome> {
        let total = self.total_steps();
        let per_epoch = self.steps_per_epoch();
        let bar = match progress {
            Progress::Bar => {
                let bar = indicatif::ProgressBar::new(total as u64);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} step {pos}/{len} {wide_bar} {msg} ETA {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_position(self.state.step as u64);
                Some(bar)
            }
            _ => None,
        };
        let started = Instant::now();
        let mut tokens_here = 0usize;
        let mut metrics = checkpoint::Metrics::open(&self.run_dir, self.state.step)?;
        while self.state.step < total {
            let step = self.state.step;
            let (loss, norm, tokens) = self.step(step)?;
            tokens_here += tokens;
            self.state.step += 1;
            self.state.tokens += tokens as u64;
            self.state.last_train_loss = Some(loss);
            let elapsed = started.elapsed().as_secs_f64();
            let rate = tokens_here as f64 / elapsed.max(1e-9);
            let epoch_end = self.state.step.is_multiple_of(per_epoch);
            let last = self.state.step == total;
            let mut val = None;
            if !self.dataset.validation.is_empty()
                && (self.state.step.is_multiple_of(self.settings.eval_every) || epoch_end || last)
            {
                val = self.loss_on(&self.dataset.validation)?;
                if let Some(v) = val
                    && self.state.best_validation.is_none_or(|best| v < best)
                {
                    self.state.best_validation = Some(v);
                    self.state.best_step = Some(self.state.step);
                    self.save_adapter(&self.run_dir.join("best"), Some(v))?;
                }
            }
            let total_warmup = (self.settings.warmup_ratio * total as f64).round() as usize;
            metrics.append(&serde_json::json!({
                "step": self.state.step,
                "epoch": (step / per_epoch) + 1,
                "loss": loss,
                "validation_loss": val,
                "lr": optim::learning_rate(self.settings.optim.lr, step, total_warmup, total),
                "grad_norm": norm,
                "tokens": tokens,
                "tokens_per_second": rate,
                "elapsed_s": elapsed,
            }))?;
            let line = format!(
                "loss {loss:.4}{} | {rate:.0} tok/s",
                val.map(|v| format!(" val {v:.4}")).unwrap_or_default()
            );
            match (&bar, progress) {
                (Some(bar), _) => {
                    bar.set_position(self.state.step as u64);
                    bar.set_message(line);
                }
                (None, Progress::Lines) => {
                    writeln!(
                        log,
                        "step {}/{total} epoch {} {line} | grad norm {norm:.3} | {:.0} s",
                        self.state.step,
                        step / per_epoch + 1,
                        elapsed
                    )
                    .ok();
                }
                _ => {}
            }
            if self
                .state
                .step
                .is_multiple_of(self.settings.checkpoint_every)
                || epoch_end
                || last
            {
                Checkpoint::save(&self.run_dir, &self.lora, &self.optimizer, &self.state)?;
                report::plot_losses(&self.run_dir)?;
            }
        }
        if let Some(bar) = bar {
            bar.finish();
        }
        // The best adapter by validation loss, or the last one without a validation set.
        let best = self.run_dir.join("best");
        let validation_loss = self.state.best_validation;
        if validation_loss.is_some() && best.is_dir() {
            copy_adapter(&best, &self.settings.out)?;
        } else {
            self.save_adapter(&self.settings.out, None)?;
        }
        report::plot_losses(&self.run_dir)?;
        report::write_card(self, validation_loss)?;
        Ok(Outcome {
            out: self.settings.out.clone(),
            steps: self.state.step,
            final_train_loss: self.state.last_train_loss,
            validation_loss,
            tokens_per_second: tokens_here as f64 / started.elapsed().as_secs_f64().max(1e-9),
        })
    }

    /// Writes the adapter as it is now, with HexaCoder's metadata, into `dir` (atomically).
    ///
    /// # Errors
    /// I/O or tensor failures.
    pub fn save_adapter(&self, dir: &Path, validation_loss: Option<f64>) -> Result<()> {
        let s = &self.settings;
        let hyper = serde_json::json!({
            "rank": s.lora.rank, "alpha": s.lora.alpha, "dropout": s.lora.dropout,
            "rslora": s.lora.rslora, "target_modules": s.lora.target_modules,
            "lr": s.optim.lr, "weight_decay": s.optim.weight_decay, "betas": [s.optim.beta1, s.optim.beta2],
            "batch_size": s.batch_size, "epochs": s.epochs, "max_steps": s.max_steps,
            "max_seq_len": s.max_seq_len, "warmup_ratio": s.warmup_ratio,
            "max_grad_norm": s.max_grad_norm, "seed": s.seed,
            "validation_fraction": s.validation_fraction, "save_dtype": s.save_dtype,
        });
        let mut adapter = self
            .lora
            .to_adapter(&self.model, &s.model_name)?
            .with_metadata(hexacoder_adapters::TWO_STEP_METADATA, "true")
            .with_metadata("hexacoder.base_sha256", &self.model_sha256)
            .with_metadata("hexacoder.dataset_sha256", &self.data_sha256)
            .with_metadata("hexacoder.hyperparameters", &hyper.to_string())
            .with_metadata("hexacoder.steps", &self.state.step.to_string());
        if let Some(loss) = self.state.last_train_loss {
            adapter = adapter.with_metadata("hexacoder.train_loss", &format!("{loss:.6}"));
        }
        if let Some(loss) = validation_loss {
            adapter = adapter.with_metadata("hexacoder.validation_loss", &format!("{loss:.6}"));
        }
        adapter.save_as(dir, s.save_dtype)?;
        Ok(())
    }
}

/// `examples.jsonl`: the rows exactly as trained (ids, loss mask, split), so that another
/// trainer (PyTorch + PEFT in the GPU comparison) can train on the same tokens.
fn write_examples(run_dir: &Path, dataset: &Dataset) -> Result<()> {
    let mut out = String::new();
    for (split, examples) in [
        ("train", &dataset.train),
        ("validation", &dataset.validation),
    ] {
        for e in examples {
            let mask: Vec<u8> = e.mask.iter().map(|&m| u8::from(m)).collect();
            let line = serde_json::json!({
                "split": split, "origin": e.origin, "language": e.language,
                "ids": e.ids, "mask": mask,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    checkpoint::write_atomic(&run_dir.join("examples.jsonl"), out.as_bytes())
}

/// Copies an adapter directory's two files into `to`, atomically (staged, then renamed).
fn copy_adapter(from: &Path, to: &Path) -> Result<()> {
    hexacoder_adapters::write_dir_atomically(to, |staging| {
        for name in [
            hexacoder_adapters::CONFIG_FILE,
            hexacoder_adapters::WEIGHTS_FILE,
        ] {
            std::fs::copy(from.join(name), staging.join(name)).map_err(|e| {
                hexacoder_adapters::Error::Io {
                    path: from.join(name),
                    source: e,
                }
            })?;
        }
        Ok(())
    })?;
    Ok(())
}
