//! `hexacoder-train eval`: how many vulnerable completions (CodeLMSec, Pearce, your own
//! prompts) and how many correct ones (HumanEval) a model gives, against any OpenAI-compatible
//! endpoint, for each configuration of the matrix (base or adapter, one or two steps, with or
//! without verification).
//!
//! Every sample's result is appended to a JSONL cache as soon as it is known, keyed by what
//! generated it, so a killed run resumes where it stopped and a finished one re-renders its
//! report without generating anything.
//!
//! Why one file of about 850 lines: the run (configurations, cache keys, requests and checks
//! scheduled over one cache) is one piece of state; benchmarks, cut-offs, checks, the sandbox,
//! the cache, the report and pass@k are modules of their own.

pub mod bench;
pub mod cache;
pub mod check;
pub mod client;
pub mod cut;
pub mod passk;
pub mod report;
pub mod sandbox;
pub mod serve;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hexacoder_api::{CompletionRequest, HexacoderRequest, Prompt, VerificationOutcome};
use hexacoder_oracle::{Analyzer, Language, Oracle};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use bench::{Benchmark, Task};
use cache::{Cache, SampleKey, SampleRecord};
use check::Compilers;
use client::Client;
use sandbox::Limits;

/// What can go wrong before or around a run (a failed request is a recorded sample instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("benchmark {}: {why}", path.display())]
    Benchmark { path: PathBuf, why: String },
    #[error("endpoint: {0}")]
    Endpoint(String),
    #[error("starting the server: {0}")]
    Serve(String),
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error("checking samples: {0}")]
    Check(String),
    #[error("{0}")]
    Settings(String),
    #[error("cache {}: {why}", path.display())]
    Cache { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One configuration of the matrix.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Config {
    /// The HexaCoder adapter (else the base model).
    pub adapter: bool,
    /// Two-step generation: imports first, then code.
    pub two_step: bool,
    /// Verify mode: the server returns the most probable candidate the oracle finds clean.
    pub verify: bool,
}

impl Config {
    /// Every configuration, in the report's order.
    pub fn matrix() -> Vec<Config> {
        let mut all = Vec::new();
        for verify in [false, true] {
            for adapter in [false, true] {
                for two_step in [false, true] {
                    all.push(Config {
                        adapter,
                        two_step,
                        verify,
                    });
                }
            }
        }
        all
    }

    /// `base`, `base+two-step`, `adapter+two-step+verify`, ….
    pub fn name(self) -> String {
        let mut name = String::from(if self.adapter { "adapter" } else { "base" });
        if self.two_step {
            name.push_str("+two-step");
        }
        if self.verify {
            name.push_str("+verify");
        }
        name
    }

    /// Parses a name as [`Config::name`] writes it (parts in any order).
    pub fn parse(text: &str) -> Result<Config, Error> {
        let mut parts = text.trim().split('+');
        let mut config = match parts.next() {
            Some("base") => Config::default(),
            Some("adapter") => Config {
                adapter: true,
                ..Config::default()
            },
            _ => {
                return Err(Error::Settings(format!(
                    "configuration {text:?}: start with `base` or `adapter`, then `+two-step` and/or `+verify`"
                )));
            }
        };
        for part in parts {
            match part {
                "two-step" => config.two_step = true,
                "verify" => config.verify = true,
                other => {
                    return Err(Error::Settings(format!(
                        "configuration {text:?}: unknown part {other:?} (two-step, verify)"
                    )));
                }
            }
        }
        Ok(config)
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub benchmark: Benchmark,
    /// The prompts or problems file.
    pub prompts: PathBuf,
    /// A seeded, stratified subset of this many tasks.
    pub subset: Option<usize>,
    pub subset_seed: u64,
    /// Samples per prompt (HumanEval: of the T=0.8 pass; 1 runs only the greedy pass).
    pub samples: usize,
    pub max_tokens: u32,
    /// Two-step: tokens of `max_tokens` step 1 may spend.
    pub first_step_tokens: u32,
    pub temperature: f64,
    pub top_p: Option<f64>,
    /// Base of every request's seed.
    pub seed: u64,
    pub configs: Vec<Config>,
    /// The base model's name at the endpoint.
    pub model: String,
    /// The adapter's name at the endpoint (configurations with `adapter`).
    pub adapter: Option<String>,
    /// Verify mode's candidates per sample.
    pub candidates: u32,
    /// Requests in flight.
    pub concurrency: usize,
    pub analyzers: Vec<Analyzer>,
    /// Send stops that end generation where the cut would be anyway.
    pub early_stop: bool,
    pub request_timeout: Duration,
    pub sandbox: Limits,
    pub python: PathBuf,
    /// The `hexacoder-train` binary, for the sandbox.
    pub helper: PathBuf,
    pub compilers: Compilers,
    pub out: PathBuf,
    pub cache: PathBuf,
    /// The commit of the code doing the evaluation.
    pub commit: String,
    /// Generate nothing: report what the cache holds.
    pub report_only: bool,
    /// Check the cached security samples again with this build's oracle and compilers
    /// (the cache holds the verdicts of the build that generated them).
    pub recheck: bool,
}

/// A pass over a benchmark: HumanEval runs a greedy pass (pass@1) and a sampled one
/// (pass@10); the others one sampled pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    Greedy,
    Sampled,
}

/// The passes a benchmark runs, with samples and temperature.
pub fn passes(settings: &Settings) -> Vec<(Pass, usize, f64)> {
    if settings.benchmark == Benchmark::Humaneval {
        let mut passes = vec![(Pass::Greedy, 1, 0.0)];
        if settings.samples > 1 {
            passes.push((Pass::Sampled, settings.samples, settings.temperature));
        }
        passes
    } else {
        vec![(Pass::Sampled, settings.samples, settings.temperature)]
    }
}

/// What generated a sample, hashed into its cache key: a run with other settings never
/// reuses it. The endpoint's address is left out (`--serve` picks a new port each time).
#[derive(Serialize)]
struct Identity<'a> {
    benchmark: Benchmark,
    config: &'a str,
    model: &'a str,
    adapter: Option<&'a str>,
    pass: Pass,
    temperature: f64,
    top_p: Option<f64>,
    max_tokens: u32,
    first_step_tokens: Option<u32>,
    candidates: Option<u32>,
    seed: u64,
    early_stop: bool,
}

/// The cache key of `config`'s `pass`.
pub fn config_key(settings: &Settings, config: Config, pass: Pass, temperature: f64) -> String {
    let name = config.name();
    let identity = Identity {
        benchmark: settings.benchmark,
        config: &name,
        model: &settings.model,
        adapter: config
            .adapter
            .then_some(settings.adapter.as_deref())
            .flatten(),
        pass,
        temperature,
        top_p: settings.top_p,
        max_tokens: settings.max_tokens,
        first_step_tokens: config.two_step.then_some(settings.first_step_tokens),
        candidates: config.verify.then_some(settings.candidates),
        seed: settings.seed,
        early_stop: settings.early_stop,
    };
    let json = serde_json::to_string(&identity).unwrap_or_default();
    let digest = sha2::Sha256::digest(json.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A stable per-task seed offset.
fn task_seed(base: u64, task: &str) -> i64 {
    let digest = sha2::Sha256::digest(task.as_bytes());
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&digest[..4]);
    ((base + u64::from(u32::from_le_bytes(bytes))) & 0x7fff_ffff) as i64
}

/// Samples a configuration calls for over `tasks`, all passes together.
pub fn expected_samples(settings: &Settings, tasks: usize) -> usize {
    passes(settings).iter().map(|(_, n, _)| n * tasks).sum()
}

/// Reads the tasks `settings` names.
///
/// # Errors
/// The file is missing or malformed.
pub fn load_tasks(settings: &Settings) -> Result<Vec<Task>, Error> {
    let tasks = bench::load(settings.benchmark, &settings.prompts)?;
    Ok(match settings.subset {
        Some(n) => bench::subset(&tasks, n, settings.subset_seed),
        None => tasks,
    })
}

/// Checks before anything is generated: the endpoint answers, serves the model (and the
/// adapter when a configuration needs it), the checkers and the sandbox run.
///
/// # Errors
/// Whatever would make the run fail or count wrongly.
pub async fn preflight(settings: &Settings, client: &Client) -> Result<Preflight, Error> {
    if settings.configs.is_empty() {
        return Err(Error::Settings("no configurations to run".into()));
    }
    if settings.samples == 0 {
        return Err(Error::Settings("--samples must be at least 1".into()));
    }
    let models = client.models().await?;
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    if !ids.contains(&settings.model.as_str()) {
        return Err(Error::Endpoint(format!(
            "{} does not serve model {:?}; it serves {ids:?}",
            client.base(),
            settings.model
        )));
    }
    if settings.configs.iter().any(|c| c.adapter) {
        match &settings.adapter {
            None => {
                return Err(Error::Settings(
                    "an adapter configuration needs --adapter NAME (or --serve with a shipped adapter)".into(),
                ));
            }
            Some(adapter) if !ids.contains(&adapter.as_str()) => {
                return Err(Error::Endpoint(format!(
                    "{} does not serve adapter {adapter:?}; it serves {ids:?}",
                    client.base()
                )));
            }
            Some(_) => {}
        }
    }
    let mut isolation = None;
    if settings.benchmark.is_security() {
        settings.compilers.probe().map_err(Error::Check)?;
    } else {
        let probe = sandbox::run(
            &settings.helper,
            &settings.python,
            "print('ok')\n",
            &settings.sandbox,
        )?;
        if !probe.passed {
            return Err(Error::Sandbox(format!(
                "a trivial program failed in the sandbox (exit {:?}): {}",
                probe.exit_code, probe.stderr_tail
            )));
        }
        isolation = Some(probe.isolation);
    }
    Ok(Preflight { isolation })
}

/// What the checks before the run found.
pub struct Preflight {
    /// HumanEval: which layers of the sandbox hold here.
    pub isolation: Option<sandbox::Isolation>,
}

/// One request's worth of work: a task's missing samples of one configuration and pass.
struct Unit {
    config: Config,
    pass: Pass,
    temperature: f64,
    key: String,
    task: Arc<Task>,
    /// Sample indices still missing.
    missing: Vec<usize>,
    samples: usize,
}

/// How a configuration's progress is shown.
pub trait Progress: Send + Sync {
    /// A configuration starts with `total` samples, `done` of them cached.
    fn start(&self, config: &str, total: usize, done: usize);
    /// A sample is done; `vulnerable`/`scored` is the running rate so far.
    fn advance(&self, config: &str, vulnerable: usize, scored: usize, errors: usize);
    fn finish(&self, config: &str);
}

/// Generates and checks every sample not yet in the cache. Returns the records of this run's
/// tasks and configurations (cached and new).
///
/// # Errors
/// The cache cannot be written, or a check cannot run. Failed requests are recorded.
pub async fn run(
    settings: Arc<Settings>,
    client: Client,
    tasks: Vec<Task>,
    progress: Arc<dyn Progress>,
) -> Result<Vec<SampleRecord>, Error> {
    let cache = Arc::new(Cache::open(&settings.cache)?);
    let oracle = Arc::new(
        Oracle::new(
            hexacoder_oracle::CweMap::builtin().map_err(|e| Error::Check(e.to_string()))?,
            hexacoder_oracle::ExternalOptions::default(),
        )
        .map_err(|e| Error::Check(e.to_string()))?,
    );
    let tasks: Vec<Arc<Task>> = tasks.into_iter().map(Arc::new).collect();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
    for &config in &settings.configs {
        let name = config.name();
        let mut units = Vec::new();
        let (mut total, mut done) = (0, 0);
        for (pass, samples, temperature) in passes(&settings) {
            let key = config_key(&settings, config, pass, temperature);
            for task in &tasks {
                let missing: Vec<usize> = (0..samples)
                    .filter(|&s| {
                        !cache.contains(&SampleKey {
                            key: key.clone(),
                            task: task.id.clone(),
                            sample: s,
                        })
                    })
                    .collect();
                total += samples;
                done += samples - missing.len();
                if !missing.is_empty() {
                    units.push(Unit {
                        config,
                        pass,
                        temperature,
                        key: key.clone(),
                        task: task.clone(),
                        missing,
                        samples,
                    });
                }
            }
        }
        if settings.report_only {
            continue;
        }
        progress.start(&name, total, done);
        let counts = Arc::new(std::sync::Mutex::new(running_counts(
            &cache, &settings, config, &tasks,
        )));
        let mut jobs = tokio::task::JoinSet::new();
        for unit in units {
            let permit = semaphore
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| Error::Settings(e.to_string()))?;
            let (settings, client, cache, oracle, progress, counts, name) = (
                settings.clone(),
                client.clone(),
                cache.clone(),
                oracle.clone(),
                progress.clone(),
                counts.clone(),
                name.clone(),
            );
            jobs.spawn(async move {
                let _permit = permit;
                let records = run_unit(&settings, &client, &oracle, &unit).await?;
                for record in records {
                    cache.append(&record)?;
                    let (vulnerable, scored, errors) = {
                        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                        c.add(&record);
                        (c.vulnerable, c.scored, c.errors)
                    };
                    progress.advance(&name, vulnerable, scored, errors);
                }
                Ok::<(), Error>(())
            });
            // Reap finished jobs as we go, so an error stops the run early.
            while let Some(result) = jobs.try_join_next() {
                result.map_err(|e| Error::Check(format!("a worker panicked: {e}")))??;
            }
        }
        while let Some(result) = jobs.join_next().await {
            result.map_err(|e| Error::Check(format!("a worker panicked: {e}")))??;
        }
        progress.finish(&name);
    }
    let wanted: HashSet<(String, String)> = settings
        .configs
        .iter()
        .flat_map(|&config| {
            passes(&settings)
                .into_iter()
                .map(move |(pass, _, t)| (config, pass, t))
        })
        .flat_map(|(config, pass, t)| {
            let key = config_key(&settings, config, pass, t);
            tasks.iter().map(move |task| (key.clone(), task.id.clone()))
        })
        .collect();
    let mut records: Vec<SampleRecord> = cache
        .records()
        .into_iter()
        .filter(|r| wanted.contains(&(r.key.clone(), r.task.clone())))
        .collect();
    if settings.recheck {
        records = recheck(settings, oracle, &tasks, records).await?;
    }
    Ok(records)
}

/// Checks every security sample again (one oracle call per configuration and prompt, as
/// when they were generated). HumanEval's are left: their verdicts are runs of the tests.
async fn recheck(
    settings: Arc<Settings>,
    oracle: Arc<Oracle>,
    tasks: &[Arc<Task>],
    mut records: Vec<SampleRecord>,
) -> Result<Vec<SampleRecord>, Error> {
    let by_id: HashMap<&str, &Arc<Task>> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        if record.checked.is_some() {
            groups
                .entry((record.key.clone(), record.task.clone()))
                .or_default()
                .push(i);
        }
    }
    let groups: Vec<(Arc<Task>, Vec<usize>)> = groups
        .into_iter()
        .filter_map(|((_, task), indices)| {
            let task = by_id.get(task.as_str())?;
            (task.test.is_none()).then(|| (Arc::clone(task), indices))
        })
        .collect();
    let samples: usize = groups.iter().map(|(_, i)| i.len()).sum();
    eprintln!("rechecking {samples} samples with this build's oracle");
    tokio::task::spawn_blocking(move || {
        for (task, indices) in &groups {
            check_records(&settings, &oracle, task, &mut records, indices)?;
        }
        Ok::<_, Error>(records)
    })
    .await
    .map_err(|e| Error::Check(format!("a checker panicked: {e}")))?
}

/// Running figures for the progress bar.
#[derive(Default)]
struct Counts {
    vulnerable: usize,
    scored: usize,
    errors: usize,
}

impl Counts {
    fn add(&mut self, record: &SampleRecord) {
        if record.error.is_some() {
            self.errors += 1;
            return;
        }
        self.scored += 1;
        let hit = match (&record.checked, record.test_passed) {
            (Some(checked), _) => checked.vulnerable,
            (None, Some(passed)) => passed,
            _ => false,
        };
        if hit {
            self.vulnerable += 1;
        }
    }
}

fn running_counts(
    cache: &Cache,
    settings: &Settings,
    config: Config,
    tasks: &[Arc<Task>],
) -> Counts {
    let ids: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    let keys: HashSet<String> = passes(settings)
        .into_iter()
        .map(|(pass, _, t)| config_key(settings, config, pass, t))
        .collect();
    let mut counts = Counts::default();
    for record in cache.records() {
        if keys.contains(&record.key) && ids.contains(record.task.as_str()) {
            counts.add(&record);
        }
    }
    counts
}

/// Generates one unit's samples, cuts and checks them.
async fn run_unit(
    settings: &Settings,
    client: &Client,
    oracle: &Arc<Oracle>,
    unit: &Unit,
) -> Result<Vec<SampleRecord>, Error> {
    let task = &unit.task;
    let base_seed = task_seed(settings.seed, &task.id);
    let model = if unit.config.adapter {
        settings.adapter.clone().unwrap_or_default()
    } else {
        settings.model.clone()
    };
    let stops = if task.test.is_some() {
        cut::HUMANEVAL_STOPS[..4]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else if settings.early_stop {
        cut::early_stops(task.language, &task.prompt)
    } else {
        Vec::new()
    };
    let request = |n: u32, seed: i64| CompletionRequest {
        model: Some(model.clone()),
        prompt: Prompt::One(task.prompt.clone()),
        max_tokens: Some(settings.max_tokens),
        temperature: Some(unit.temperature),
        top_p: settings.top_p,
        n: Some(n),
        logprobs: Some(0),
        stop: stops.clone(),
        seed: Some(seed),
        hexacoder: Some(HexacoderRequest {
            two_step: Some(unit.config.two_step),
            language: Some(task.language.extension().to_string())
                .filter(|_| unit.config.two_step || unit.config.verify),
            first_step_tokens: unit.config.two_step.then_some(settings.first_step_tokens),
            per_sample_imports: (unit.config.two_step && n > 1).then_some(true),
            verify: unit.config.verify.then_some(true),
            candidates: unit.config.verify.then_some(settings.candidates),
            ..HexacoderRequest::default()
        }),
        ..CompletionRequest::default()
    };
    // Verify mode returns one checked choice per request: one request per sample. Otherwise
    // one request with `n` samples shares the prompt's prefill.
    let mut generated: Vec<(usize, Result<Generated, String>)> = Vec::new();
    if unit.config.verify {
        for &s in &unit.missing {
            let started = Instant::now();
            let outcome = client.complete(&request(1, base_seed + s as i64)).await;
            let elapsed = started.elapsed();
            generated.push((
                s,
                outcome
                    .map_err(failure_text)
                    .and_then(|r| Generated::from_choice(&task.prompt, r, 0, elapsed)),
            ));
        }
    } else {
        let started = Instant::now();
        let outcome = client
            .complete(&request(unit.samples as u32, base_seed))
            .await;
        let elapsed = started.elapsed();
        match outcome {
            Ok(response) => {
                for &s in &unit.missing {
                    generated.push((
                        s,
                        Generated::from_choice(&task.prompt, response.clone(), s, elapsed),
                    ));
                }
            }
            Err(failure) => {
                let text = failure_text(failure);
                for &s in &unit.missing {
                    generated.push((s, Err(text.clone())));
                }
            }
        }
    }
    let template = SampleRecord {
        key: unit.key.clone(),
        config: unit.config.name(),
        benchmark: settings.benchmark,
        pass: unit.pass,
        task: task.id.clone(),
        language: task.language,
        cwe: task.cwe.clone(),
        sample: 0,
        model: model.clone(),
        adapter: unit.config.adapter.then(|| model.clone()),
        adapter_generation: None,
        two_step: unit.config.two_step,
        first_step_tokens: unit.config.two_step.then_some(settings.first_step_tokens),
        verify: unit.config.verify,
        temperature: unit.temperature,
        max_tokens: settings.max_tokens,
        seed: base_seed,
        commit: settings.commit.clone(),
        endpoint: client.base().to_string(),
        ..SampleRecord::default()
    };
    let mut records = Vec::with_capacity(generated.len());
    let mut to_check = Vec::new();
    for (s, outcome) in generated {
        let mut record = template.clone();
        record.sample = s;
        if unit.config.verify {
            record.seed = base_seed + s as i64;
        }
        match outcome {
            Err(error) => record.error = Some(error),
            Ok(generated) => {
                let end = if task.test.is_some() {
                    cut::humaneval_end(&generated.completion)
                } else {
                    cut::function_end(task.language, &generated.prompt, &generated.completion)
                };
                record.code = Some(format!(
                    "{}{}",
                    generated.prompt,
                    &generated.completion[..end]
                ));
                record.logprob = generated.logprobs.as_ref().map(|l| l.sum_before(end));
                record.completion = Some(generated.completion);
                record.cut_bytes = Some(end);
                record.finish_reason = generated.finish_reason;
                record.added_imports = generated.added_imports;
                record.verification = generated.verification;
                record.adapter_generation = generated.adapter_generation;
                record.elapsed_ms = Some(generated.elapsed.as_secs_f64() * 1e3);
                to_check.push(records.len());
            }
        }
        records.push(record);
    }
    // Checking is CPU work (the oracle, the compilers, the sandbox): off the async threads.
    let settings_for_check = settings.clone();
    let oracle = oracle.clone();
    let task = task.clone();
    tokio::task::spawn_blocking(move || {
        check_records(&settings_for_check, &oracle, &task, &mut records, &to_check)?;
        Ok::<_, Error>(records)
    })
    .await
    .map_err(|e| Error::Check(format!("a checker panicked: {e}")))?
}

fn check_records(
    settings: &Settings,
    oracle: &Oracle,
    task: &Task,
    records: &mut [SampleRecord],
    indices: &[usize],
) -> Result<(), Error> {
    if let Some(test) = &task.test {
        for &i in indices {
            let code = records[i].code.clone().unwrap_or_default();
            let program = format!("{code}\n\n{}\n\ncheck({})\n", test.test, test.entry_point);
            let outcome = sandbox::run(
                &settings.helper,
                &settings.python,
                &program,
                &settings.sandbox,
            )?;
            records[i].test_passed = Some(outcome.passed);
            if !outcome.passed {
                records[i].test_failure = Some(if outcome.timed_out {
                    format!("timed out after {:?}", settings.sandbox.wall)
                } else {
                    last_line(&outcome.stderr_tail)
                });
            }
        }
        return Ok(());
    }
    let Some(target) = &task.cwe else {
        return Ok(());
    };
    let codes: Vec<String> = indices
        .iter()
        .map(|&i| records[i].code.clone().unwrap_or_default())
        .collect();
    let checked = check::check_samples(
        oracle,
        &settings.analyzers,
        &settings.compilers,
        task.language,
        target,
        &codes,
    )
    .map_err(Error::Check)?;
    for (&i, checked) in indices.iter().zip(checked) {
        records[i].checked = Some(checked);
    }
    Ok(())
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed without output")
        .trim()
        .chars()
        .take(300)
        .collect()
}

fn failure_text(failure: client::RequestFailure) -> String {
    format!("{} (after {} tries)", failure.message, failure.attempts)
}

/// One choice, with what the evaluation needs from it.
struct Generated {
    /// The prompt the completion continues: with two steps, the prompt with its imports.
    prompt: String,
    completion: String,
    logprobs: Option<hexacoder_api::Logprobs>,
    finish_reason: Option<String>,
    added_imports: Vec<String>,
    verification: Option<VerificationOutcome>,
    adapter_generation: Option<u64>,
    elapsed: Duration,
}

impl Generated {
    fn from_choice(
        prompt: &str,
        response: hexacoder_api::CompletionResponse,
        index: usize,
        elapsed: Duration,
    ) -> Result<Generated, String> {
        let adapter_generation = response
            .hexacoder
            .as_ref()
            .and_then(|h| h.adapter_generation);
        let choice = response
            .choices
            .into_iter()
            .find(|c| c.index as usize == index)
            .ok_or_else(|| format!("the answer has no choice {index}"))?;
        let extension = choice.hexacoder.unwrap_or_default();
        let prompt = match extension.edit() {
            Some(edit) => edit
                .apply(prompt)
                .ok_or("the imports edit does not fit the prompt")?,
            None => prompt.to_string(),
        };
        Ok(Generated {
            prompt,
            completion: choice.text,
            logprobs: choice.logprobs,
            finish_reason: choice.finish_reason,
            added_imports: extension.added_imports.unwrap_or_default(),
            verification: extension.verification.map(|v| v.outcome),
            adapter_generation,
            elapsed,
        })
    }
}

/// The commit of the working directory's repository, or `unknown`.
pub fn current_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Groups records by configuration name, keeping the order of `configs`.
pub fn by_config<'a>(
    records: &'a [SampleRecord],
    configs: &[Config],
) -> BTreeMap<usize, (Config, Vec<&'a SampleRecord>)> {
    let mut grouped = BTreeMap::new();
    for (i, &config) in configs.iter().enumerate() {
        let name = config.name();
        grouped.insert(
            i,
            (
                config,
                records.iter().filter(|r| r.config == name).collect(),
            ),
        );
    }
    grouped
}

/// `~/.cache/hexacoder/eval/NAME/samples.jsonl` for an output directory named NAME.
pub fn default_cache(out: &Path) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let name = out.file_name()?;
    Some(
        PathBuf::from(home)
            .join(".cache/hexacoder/eval")
            .join(name)
            .join("samples.jsonl"),
    )
}

/// The language of a record, for reports.
pub fn language_name(language: Language) -> &'static str {
    match language {
        Language::Python => "Python",
        Language::C => "C",
        Language::Cpp => "C++",
    }
}

#[cfg(test)]
mod tests;
