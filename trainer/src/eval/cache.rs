//! The sample cache: one JSON line per checked sample, appended and flushed as soon as it is
//! known. A run killed mid-line leaves a torn last line, which the next open drops.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use hexacoder_api::VerificationOutcome;
use hexacoder_oracle::Language;
use serde::{Deserialize, Serialize};

use super::bench::Benchmark;
use super::check::Checked;
use super::{Error, Pass};
use crate::jsonl::{AppendLog, LogError};

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
    log: AppendLog,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Later lines replace earlier ones (a retried error replaced by a success).
    records: HashMap<SampleKey, SampleRecord>,
    order: Vec<SampleKey>,
}

fn key_of(record: &SampleRecord) -> SampleKey {
    SampleKey {
        key: record.key.clone(),
        task: record.task.clone(),
        sample: record.sample,
    }
}

impl Cache {
    /// Opens (or creates) the cache at `path`. Samples recorded as request errors are not
    /// kept, so that they are tried again.
    ///
    /// # Errors
    /// It cannot be read or written, or a line other than the last is not a record.
    pub fn open(path: &Path) -> Result<Cache, Error> {
        let (log, lines) = AppendLog::open::<SampleRecord>(path).map_err(|e| match e {
            LogError::Io { path, source } => Error::Io { path, source },
            LogError::Corrupt { path, line, why } => Error::Cache {
                path,
                why: format!("line {line}: {why}"),
            },
        })?;
        let mut records = HashMap::new();
        let mut order = Vec::new();
        for record in lines.into_iter().filter(|r| r.error.is_none()) {
            let key = key_of(&record);
            if records.insert(key.clone(), record).is_none() {
                order.push(key);
            }
        }
        Ok(Cache {
            log,
            inner: Mutex::new(Inner { records, order }),
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
        self.log.append(record).map_err(|e| match e {
            LogError::Io { path, source } => Error::Io { path, source },
            LogError::Corrupt { path, why, .. } => Error::Cache { path, why },
        })?;
        let key = key_of(record);
        let mut inner = self.lock();
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
