//! The sample cache: one JSON line per checked sample, appended and flushed as soon as it is
//! known. A run killed mid-line leaves a torn last line, which the next open drops.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hexacoder_api::VerificationOutcome;
use hexacoder_oracle::Language;
use serde::{Deserialize, Serialize};

use super::bench::Benchmark;
use super::check::Checked;
use super::{Error, Pass};

/// One sample: what generated it, what came back, and what the checks found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// The configuration's cache key (see [`super::config_key`]).
    pub key: String,
    pub config: String,
    pub benchmark: Benchmark,
    pub pass: Pass,
    pub task: String,
    pub language: Language,
    pub cwe: Option<String>,
    pub sample: usize,
    pub endpoint: String,
    /// The `model` the requests named (the adapter's name for adapter configurations).
    pub model: String,
    pub adapter: Option<String>,
    pub adapter_generation: Option<u64>,
    pub two_step: bool,
    pub first_step_tokens: Option<u32>,
    pub verify: bool,
    pub temperature: f64,
    pub max_tokens: u32,
    pub seed: i64,
    pub commit: String,
    /// The request failed for good.
    pub error: Option<String>,
    /// The completion as generated.
    pub completion: Option<String>,
    /// Bytes of the completion kept by the function cut-off.
    pub cut_bytes: Option<usize>,
    /// The checked sample: the prompt (with two-step's imports) and the cut completion.
    pub code: Option<String>,
    /// Summed log-probability of the kept tokens, for ranking.
    pub logprob: Option<f64>,
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub added_imports: Vec<String>,
    pub verification: Option<VerificationOutcome>,
    pub elapsed_ms: Option<f64>,
    /// Security benchmarks: the checks.
    pub checked: Option<Checked>,
    /// HumanEval: the tests passed.
    pub test_passed: Option<bool>,
    pub test_failure: Option<String>,
}

impl Default for SampleRecord {
    fn default() -> Self {
        SampleRecord {
            key: String::new(),
            config: String::new(),
            benchmark: Benchmark::Codelmsec,
            pass: Pass::Sampled,
            task: String::new(),
            language: Language::Python,
            cwe: None,
            sample: 0,
            endpoint: String::new(),
            model: String::new(),
            adapter: None,
            adapter_generation: None,
            two_step: false,
            first_step_tokens: None,
            verify: false,
            temperature: 0.0,
            max_tokens: 0,
            seed: 0,
            commit: String::new(),
            error: None,
            completion: None,
            cut_bytes: None,
            code: None,
            logprob: None,
            finish_reason: None,
            added_imports: Vec::new(),
            verification: None,
            elapsed_ms: None,
            checked: None,
            test_passed: None,
            test_failure: None,
        }
    }
}

/// Where a sample sits in the cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub key: String,
    pub task: String,
    pub sample: usize,
}

/// The cache file, read at open and appended to.
pub struct Cache {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    /// Later lines replace earlier ones (a retried error replaced by a success).
    records: HashMap<SampleKey, SampleRecord>,
    order: Vec<SampleKey>,
}

impl Cache {
    /// Opens (or creates) the cache at `path`. Samples recorded as request errors are not
    /// kept, so that they are tried again.
    ///
    /// # Errors
    /// It cannot be read or written, or a line other than the last is not a record.
    pub fn open(path: &Path) -> Result<Cache, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut records = HashMap::new();
        let mut order = Vec::new();
        let mut valid_bytes = 0u64;
        if path.exists() {
            let reader = BufReader::new(File::open(path).map_err(io)?);
            let lines: Vec<String> = reader.lines().collect::<Result<_, _>>().map_err(io)?;
            let count = lines.len();
            for (i, line) in lines.into_iter().enumerate() {
                match serde_json::from_str::<SampleRecord>(&line) {
                    Ok(record) => {
                        valid_bytes += line.len() as u64 + 1;
                        if record.error.is_some() {
                            continue;
                        }
                        let key = SampleKey {
                            key: record.key.clone(),
                            task: record.task.clone(),
                            sample: record.sample,
                        };
                        if records.insert(key.clone(), record).is_none() {
                            order.push(key);
                        }
                    }
                    // A torn last line: the run was killed while writing it.
                    Err(_) if i + 1 == count => {
                        tracing::warn!(path = %path.display(), "dropping a torn last line");
                    }
                    Err(e) => {
                        return Err(Error::Cache {
                            path: path.to_path_buf(),
                            why: format!("line {}: {e}", i + 1),
                        });
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // Cut a torn tail off, so that the next line starts clean.
        if file.metadata().map_err(io)?.len() > valid_bytes {
            file.set_len(valid_bytes).map_err(io)?;
        }
        Ok(Cache {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                records,
                order,
            }),
        })
    }

    /// Whether a sample is recorded (without an error).
    pub fn contains(&self, key: &SampleKey) -> bool {
        self.lock().records.contains_key(key)
    }

    /// Appends a record and flushes it.
    ///
    /// # Errors
    /// The write fails.
    pub fn append(&self, record: &SampleRecord) -> Result<(), Error> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::Cache {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        line.push('\n');
        let mut inner = self.lock();
        inner
            .file
            .write_all(line.as_bytes())
            .and_then(|()| inner.file.flush())
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        let key = SampleKey {
            key: record.key.clone(),
            task: record.task.clone(),
            sample: record.sample,
        };
        if (record.error.is_none() || !inner.records.contains_key(&key))
            && inner.records.insert(key.clone(), record.clone()).is_none()
        {
            inner.order.push(key);
        }
        Ok(())
    }

    /// Every record, in the order first recorded.
    pub fn records(&self) -> Vec<SampleRecord> {
        let inner = self.lock();
        inner
            .order
            .iter()
            .filter_map(|k| inner.records.get(k).cloned())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
