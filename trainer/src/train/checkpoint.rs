//! A run directory: `run.json` (the settings), `checkpoint/` (adapter, optimizer moments,
//! progress), `best/` (the adapter with the lowest validation loss), `metrics.jsonl` (one
//! line per step) and `loss.svg`.
//!
//! Nothing is ever half-written: a checkpoint is built in a temporary directory and renamed
//! into place; the previous one is moved aside first and removed only once the new one is
//! in, and a reader that finds only the one moved aside (a kill between the two renames)
//! uses it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model::Lora;
use super::optim::AdamW;
use super::{Error, Result, Settings};

const RUN_FILE: &str = "run.json";
const CHECKPOINT: &str = "checkpoint";
const PREVIOUS: &str = ".checkpoint.previous";
const LORA_FILE: &str = "lora.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";
/// Metrics file name.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Progress of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    /// Optimizer steps done (the next step to run).
    pub step: usize,
    /// Tokens trained on.
    pub tokens: u64,
    /// The last step's loss.
    pub last_train_loss: Option<f64>,
    /// The lowest validation loss so far.
    pub best_validation: Option<f64>,
    /// The step it was reached at.
    pub best_step: Option<usize>,
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
///
/// # Errors
/// I/O failures; `path` is then unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // As `File::create` would: 0o666 less the umask (a temporary file alone is 0o600, and
    // reports, model cards and pairs are for others to read).
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut file = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    file.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Creates `run_dir` for a new run and records its settings.
///
/// # Errors
/// A run directory that already holds a checkpoint (resume it, or choose another), or I/O.
pub fn start_run(run_dir: &Path, settings: &Settings) -> Result<()> {
    if run_dir.join(CHECKPOINT).exists() || run_dir.join(PREVIOUS).exists() {
        return Err(Error::Settings(format!(
            "{} already holds a run; continue it with --resume or choose another --run-dir",
            run_dir.display()
        )));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let json = serde_json::to_vec_pretty(settings)
        .map_err(|e| Error::Settings(format!("settings: {e}")))?;
    write_atomic(&run_dir.join(RUN_FILE), &json)?;
    let metrics = run_dir.join(METRICS_FILE);
    if metrics.exists() {
        std::fs::remove_file(&metrics).map_err(|e| Error::io(&metrics, e))?;
    }
    Ok(())
}

/// The settings a run was started with.
///
/// # Errors
/// No run there, or an unreadable `run.json`.
pub fn read_settings(run_dir: &Path) -> Result<Settings> {
    let path = run_dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Settings(format!(
            "{} has no run to resume ({}: {e})",
            run_dir.display(),
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Data(format!("{}: {e}", path.display())))
}

/// The checkpoint format.
pub struct Checkpoint;

impl Checkpoint {
    /// Saves the adapter, the optimizer and `state` into `run_dir/checkpoint`, atomically.
    ///
    /// # Errors
    /// I/O or tensor failures; the previous checkpoint then survives.
    pub fn save(run_dir: &Path, lora: &Lora, optimizer: &AdamW, state: &RunState) -> Result<()> {
        let staging = tempfile::Builder::new()
            .prefix(".checkpoint-")
            .tempdir_in(run_dir)
            .map_err(|e| Error::io(run_dir, e))?;
        let vars = lora.named_vars();
        let weights: HashMap<String, Tensor> = vars
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect();
        let mut moments = HashMap::new();
        for (i, (name, _)) in vars.iter().enumerate() {
            moments.insert(format!("{name}.m"), optimizer.m[i].clone());
            moments.insert(format!("{name}.v"), optimizer.v[i].clone());
        }
        save_tensors(&weights, &staging.path().join(LORA_FILE))?;
        save_tensors(&moments, &staging.path().join(OPTIMIZER_FILE))?;
        let state_json = serde_json::json!({"state": state, "adam_t": optimizer.t});
        std::fs::write(staging.path().join(STATE_FILE), state_json.to_string())
            .map_err(|e| Error::io(staging.path().join(STATE_FILE), e))?;
        let staged = staging.keep();
        let (current, previous) = (run_dir.join(CHECKPOINT), run_dir.join(PREVIOUS));
        if current.exists() {
            if previous.exists() {
                std::fs::remove_dir_all(&previous).map_err(|e| Error::io(&previous, e))?;
            }
            std::fs::rename(&current, &previous).map_err(|e| Error::io(&current, e))?;
        }
        std::fs::rename(&staged, &current).map_err(|e| Error::io(&current, e))?;
        if previous.exists() {
            std::fs::remove_dir_all(&previous).map_err(|e| Error::io(&previous, e))?;
        }
        Ok(())
    }

    /// Loads the latest checkpoint of `run_dir` into `lora` and `optimizer`.
    ///
    /// # Errors
    /// No checkpoint, or one that does not fit this adapter.
    pub fn load(run_dir: &Path, lora: &Lora, optimizer: &mut AdamW) -> Result<RunState> {
        let dir = [CHECKPOINT, PREVIOUS]
            .iter()
            .map(|name| run_dir.join(name))
            .find(|d| d.join(STATE_FILE).exists())
            .ok_or_else(|| {
                Error::Settings(format!("{} has no checkpoint to resume", run_dir.display()))
            })?;
        let device = lora
            .named_vars()
            .first()
            .map_or(Device::Cpu, |(_, v)| v.as_tensor().device().clone());
        let weights = candle_core::safetensors::load(dir.join(LORA_FILE), &device)?;
        let moments = candle_core::safetensors::load(dir.join(OPTIMIZER_FILE), &device)?;
        let missing = |name: &str| {
            Error::Data(format!(
                "{}: the checkpoint has no `{name}`; was it made with other LoRA settings?",
                dir.display()
            ))
        };
        for (i, (name, var)) in lora.named_vars().into_iter().enumerate() {
            let saved = weights.get(&name).ok_or_else(|| missing(&name))?;
            var.set(saved)?;
            optimizer.m[i] = moments
                .get(&format!("{name}.m"))
                .ok_or_else(|| missing(&format!("{name}.m")))?
                .clone();
            optimizer.v[i] = moments
                .get(&format!("{name}.v"))
                .ok_or_else(|| missing(&format!("{name}.v")))?
                .clone();
        }
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
        optimizer.t = json["adam_t"].as_u64().unwrap_or(0);
        serde_json::from_value(json["state"].clone())
            .map_err(|e| Error::Data(format!("{}: {e}", path.display())))
    }
}

fn save_tensors(tensors: &HashMap<String, Tensor>, path: &PathBuf) -> Result<()> {
    let on_cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&on_cpu, path)?;
    Ok(())
}

/// `metrics.jsonl`, opened to append after `step` (lines past it, from a run killed after its
/// last checkpoint, are dropped, so a resumed run never repeats a step).
pub struct Metrics {
    path: PathBuf,
}

impl Metrics {
    /// Opens the file, truncating it to the lines of steps up to `step`.
    ///
    /// # Errors
    /// I/O failures.
    pub fn open(run_dir: &Path, step: usize) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= step)
                })
                .map(|line| format!("{line}\n"))
                .collect();
            write_atomic(&path, kept.as_bytes())?;
        }
        Ok(Metrics { path })
    }

    /// Appends one line.
    ///
    /// # Errors
    /// I/O failures.
    pub fn append(&mut self, line: &serde_json::Value) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        writeln!(file, "{line}").map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::write_atomic;

    #[test]
    fn an_atomically_written_file_gets_the_mode_a_created_one_gets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let created = dir.path().join("created");
        std::fs::File::create(&created).expect("create");
        let written = dir.path().join("written");
        write_atomic(&written, b"report").expect("write");
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
        };
        assert_eq!(mode(&written), mode(&created), "umask-respecting mode");
        assert_eq!(std::fs::read(&written).expect("read"), b"report");
    }
}
