//! The benchmarks: CodeLMSec, Pearce's "Asleep at the keyboard" scenarios, HumanEval, and any
//! JSONL of prompts in CodeLMSec's shape.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use hexacoder_oracle::{Language, normalize_cwe};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::Error;

/// Which benchmark a run evaluates.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Benchmark {
    /// CodeLMSec: 280 Python and C prompts, each with the CWE it invites.
    Codelmsec,
    /// Pearce et al.'s scenarios as the HexaCoder paper used them (25).
    Pearce,
    /// HumanEval: 164 Python problems with tests.
    Humaneval,
    /// `--prompts FILE`: CodeLMSec's procedure on a JSONL of `{id, language, cwe, prompt}`.
    Custom,
}

impl Benchmark {
    /// Its name in reports and result files.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Codelmsec => "codelmsec",
            Benchmark::Pearce => "pearce",
            Benchmark::Humaneval => "humaneval",
            Benchmark::Custom => "custom",
        }
    }

    /// Whether it counts vulnerable samples (else it runs tests).
    pub fn is_security(self) -> bool {
        self != Benchmark::Humaneval
    }

    /// The paper's samples per prompt.
    pub fn default_samples(self) -> usize {
        match self {
            Benchmark::Codelmsec | Benchmark::Custom => 5,
            Benchmark::Pearce => 15,
            Benchmark::Humaneval => 20,
        }
    }

    /// The file it is read from, under the shared benchmark directory.
    pub fn default_path(self, bench_dir: &Path) -> Option<PathBuf> {
        match self {
            Benchmark::Codelmsec => Some(bench_dir.join("codelmsec/codelmsec_prompts.jsonl")),
            Benchmark::Pearce => Some(bench_dir.join("hexacoder/pearce_prompts.jsonl")),
            Benchmark::Humaneval => Some(bench_dir.join("humaneval/HumanEval.jsonl.gz")),
            Benchmark::Custom => None,
        }
    }
}

/// One prompt of a benchmark.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique within its benchmark.
    pub id: String,
    pub language: Language,
    /// `CWE-089` style; HumanEval's tasks have none.
    pub cwe: Option<String>,
    pub prompt: String,
    /// HumanEval: the test code and the function it checks.
    pub test: Option<HumanEvalTest>,
}

/// What HumanEval runs against a completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HumanEvalTest {
    pub test: String,
    pub entry_point: String,
}

#[derive(Deserialize)]
struct PromptRow {
    id: String,
    language: String,
    cwe: String,
    prompt: String,
}

#[derive(Deserialize)]
struct HumanEvalRow {
    task_id: String,
    prompt: String,
    test: String,
    entry_point: String,
}

/// Reads a benchmark's tasks from `path` (gzip when it ends in `.gz`).
///
/// # Errors
/// The file is missing or unreadable, a line is not a task, an id repeats, or there are none.
pub fn load(benchmark: Benchmark, path: &Path) -> Result<Vec<Task>, Error> {
    let text = read_text(path)?;
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |why: String| Error::Benchmark {
            path: path.to_path_buf(),
            why: format!("line {}: {why}", i + 1),
        };
        let task = if benchmark == Benchmark::Humaneval {
            let row: HumanEvalRow = serde_json::from_str(line)
                .map_err(|e| malformed(format!("not a HumanEval problem: {e}")))?;
            Task {
                id: row.task_id,
                language: Language::Python,
                cwe: None,
                prompt: row.prompt,
                test: Some(HumanEvalTest {
                    test: row.test,
                    entry_point: row.entry_point,
                }),
            }
        } else {
            let row: PromptRow = serde_json::from_str(line).map_err(|e| {
                malformed(format!(
                    "not a prompt {{\"id\", \"language\", \"cwe\", \"prompt\"}}: {e}"
                ))
            })?;
            let language = Language::from_name(&row.language).ok_or_else(|| {
                malformed(format!(
                    "language {:?}: the oracle checks python, c and cpp",
                    row.language
                ))
            })?;
            let cwe = normalize_cwe(&row.cwe)
                .ok_or_else(|| malformed(format!("cwe {:?} is not a CWE", row.cwe)))?;
            Task {
                id: row.id,
                language,
                cwe: Some(cwe),
                prompt: row.prompt,
                test: None,
            }
        };
        tasks.push(task);
    }
    if tasks.is_empty() {
        return Err(Error::Benchmark {
            path: path.to_path_buf(),
            why: "no tasks in it".into(),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for task in &tasks {
        if !seen.insert(task.id.as_str()) {
            return Err(Error::Benchmark {
                path: path.to_path_buf(),
                why: format!("task id {:?} appears twice", task.id),
            });
        }
    }
    Ok(tasks)
}

fn read_text(path: &Path) -> Result<String, Error> {
    let unreadable = |e: std::io::Error| Error::Benchmark {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    let bytes = std::fs::read(path).map_err(unreadable)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .map_err(unreadable)?;
        Ok(text)
    } else {
        String::from_utf8(bytes).map_err(|e| Error::Benchmark {
            path: path.to_path_buf(),
            why: format!("not UTF-8: {e}"),
        })
    }
}

/// A fixed, seeded subset of `n` tasks, stratified by (language, CWE): every stratum gets its
/// share (at least one while `n` allows), and the original order is kept.
pub fn subset(tasks: &[Task], n: usize, seed: u64) -> Vec<Task> {
    if n >= tasks.len() {
        return tasks.to_vec();
    }
    let mut strata: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, task) in tasks.iter().enumerate() {
        let key = (
            task.language.extension().to_string(),
            task.cwe.clone().unwrap_or_default(),
        );
        strata.entry(key).or_default().push(i);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for members in strata.values_mut() {
        members.shuffle(&mut rng);
    }
    // Round-robin over the strata in shuffled order, so that small `n` spreads over CWEs.
    let mut order: Vec<&Vec<usize>> = strata.values().collect();
    order.shuffle(&mut rng);
    let mut chosen = Vec::with_capacity(n);
    let mut round = 0;
    while chosen.len() < n {
        for members in &order {
            if chosen.len() == n {
                break;
            }
            if let Some(&i) = members.get(round) {
                chosen.push(i);
            }
        }
        round += 1;
    }
    chosen.sort_unstable();
    chosen.into_iter().map(|i| tasks[i].clone()).collect()
}
