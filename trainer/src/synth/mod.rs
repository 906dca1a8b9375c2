//! `hexacoder-train synth`: HexaCoder's oracle-guided synthesis. Vulnerable code generated
//! per CWE from few-shot prompts, confirmed by the oracle, repaired by a chat model from the
//! oracle's report (raw or explained) and the CWE's hint (curated or the model's own),
//! re-checked, and kept as (vulnerable, fixed) pairs the trainer reads.
//!
//! Every model answer is cached by the hash of its request, so a killed run resumes and a
//! finished one re-renders its report without a request; the checks are recomputed.
//!
//! Why one file of about 1,000 lines: the stages share one run state and one answer cache and
//! read top to bottom in the order they run; the parts that stand alone (prompts, code
//! extraction, re-check rules, deduplication) are modules of their own.

pub mod dedup;
pub mod extract;
pub mod prompts;
pub mod recheck;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hexacoder_api::{ChatMessage, ChatRequest, CompletionRequest, Prompt};
use hexacoder_oracle::{Analyzer, CweSelection, Language, Oracle, Source};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::eval::Progress;
use crate::eval::check::Compilers;
use crate::eval::client::Client;
use crate::jsonl::{AppendLog, LogError};
use prompts::{Feedback, Hints, ReportLine, Shot};
use recheck::{Findings, Rejection};

/// What can stop a run (a failed request or a bad answer is a recorded attempt instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {why}", path.display())]
    Input { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Settings(String),
    #[error("checking samples: {0}")]
    Check(String),
    #[error(transparent)]
    Eval(#[from] crate::eval::Error),
}

/// An endpoint and the model to ask there.
#[derive(Clone)]
pub struct Endpoint {
    pub client: Client,
    pub model: String,
}

/// Everything a run needs.
#[derive(Clone)]
pub struct Settings {
    pub generator: Endpoint,
    pub repairer: Endpoint,
    /// (language, CWE) pairs to synthesize for.
    pub targets: Vec<(Language, String)>,
    pub per_cwe: usize,
    /// Few-shot examples per generation prompt.
    pub shots: usize,
    pub generation_temperature: f64,
    pub generation_max_tokens: u32,
    pub repair_temperature: f64,
    pub repair_max_tokens: u32,
    /// Feedback and hint modes, each pair a variant reported side by side.
    pub variants: Vec<(Feedback, Hints)>,
    pub attempts: usize,
    pub concurrency: usize,
    pub analyzers: Vec<Analyzer>,
    pub compilers: Compilers,
    pub shots_file: PathBuf,
    pub hints_file: PathBuf,
    /// The evaluation benchmarks; generated code overlapping their prompts is not used.
    pub bench_dir: PathBuf,
    /// Pairs whose fixed code shares more than this share of tokens are duplicates.
    pub dedup_threshold: f64,
    pub out: PathBuf,
    /// The answers cache (JSONL).
    pub cache: PathBuf,
}

/// A generated sample and what the oracle found in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub language: Language,
    pub cwe: String,
    pub code: String,
    pub findings: Findings,
    /// The target CWE's findings, as the repair prompt shows them.
    pub report: Vec<ReportLine>,
    /// Why it is not used: `empty`, `duplicate`, `overlaps <benchmark>`, `request failed …`.
    pub dropped: Option<String>,
}

/// One repair attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: usize,
    pub accepted: bool,
    pub rejection: Option<Rejection>,
    /// The explanation the repair prompt carried (`--feedback explained`).
    pub explanation: Option<String>,
    pub fixed: Option<String>,
}

/// One sample's repair under one variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Repair {
    pub sample: String,
    pub language: Language,
    pub cwe: String,
    pub feedback: Feedback,
    pub hints: Hints,
    pub attempts: Vec<Attempt>,
}

impl Repair {
    /// The attempt that was accepted, 1-based.
    pub fn accepted_at(&self) -> Option<usize> {
        self.attempts.iter().find(|a| a.accepted).map(|a| a.attempt)
    }
}

/// A training pair, in the trainer's pair format plus provenance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pair {
    pub vulnerable: String,
    pub fixed: String,
    pub language: String,
    pub cwe: String,
    pub generator: String,
    pub repairer: String,
    pub oracle: String,
    pub feedback: Feedback,
    pub hints: Hints,
    pub attempt: usize,
}

/// Model answers keyed by the hash of their request.
struct Answers {
    log: AppendLog,
    known: Mutex<HashMap<String, String>>,
}

#[derive(Serialize, Deserialize)]
struct AnswerLine {
    key: String,
    text: String,
}

impl Answers {
    fn open(path: &Path) -> Result<Answers, Error> {
        let (log, lines) = AppendLog::open::<AnswerLine>(path).map_err(log_error)?;
        let known = lines.into_iter().map(|a| (a.key, a.text)).collect();
        Ok(Answers {
            log,
            known: Mutex::new(known),
        })
    }

    fn get(&self, key: &str) -> Option<String> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn put(&self, key: &str, text: &str) -> Result<(), Error> {
        self.log
            .append(&AnswerLine {
                key: key.to_string(),
                text: text.to_string(),
            })
            .map_err(log_error)?;
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), text.to_string());
        Ok(())
    }
}

fn failure(f: crate::eval::client::RequestFailure) -> String {
    format!("{} (after {} tries)", f.message, f.attempts)
}

fn log_error(e: LogError) -> Error {
    match e {
        LogError::Io { path, source } => Error::Io { path, source },
        LogError::Corrupt { path, line, why } => Error::Input {
            path,
            why: format!("line {line}: {why}"),
        },
    }
}

fn request_key(model: &str, request: &impl Serialize) -> String {
    let json = serde_json::to_string(&(model, request)).unwrap_or_default();
    sha2::Sha256::digest(json.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The pipeline's shared state.
struct Context {
    settings: Settings,
    answers: Answers,
    oracle: Oracle,
    hints: BTreeMap<String, String>,
}

impl Context {
    /// The answer cached under `key`, or `ask`'s (then cached).
    async fn cached<Ask>(&self, key: String, ask: Ask) -> Result<String, String>
    where
        Ask: std::future::Future<Output = Result<String, String>>,
    {
        if let Some(text) = self.answers.get(&key) {
            return Ok(text);
        }
        let text = ask.await?;
        self.answers.put(&key, &text).map_err(|e| e.to_string())?;
        Ok(text)
    }

    /// A completion from the generator, cached.
    async fn generate(&self, request: CompletionRequest) -> Result<String, String> {
        let generator = &self.settings.generator;
        let key = request_key(&generator.model, &request);
        self.cached(key, async {
            let response = generator.client.complete(&request).await.map_err(failure)?;
            response
                .choices
                .into_iter()
                .next()
                .map(|c| c.text)
                .ok_or_else(|| "the answer has no choice".to_string())
        })
        .await
    }

    /// A chat answer from the repairer, cached.
    async fn chat(
        &self,
        messages: Vec<ChatMessage>,
        seed: i64,
        max_tokens: u32,
    ) -> Result<String, String> {
        let repairer = &self.settings.repairer;
        let request = ChatRequest {
            model: Some(repairer.model.clone()),
            messages,
            max_tokens: Some(max_tokens),
            temperature: Some(self.settings.repair_temperature),
            seed: Some(seed),
            ..ChatRequest::default()
        };
        let key = request_key(&repairer.model, &request);
        self.cached(key, async {
            let response = repairer.client.chat(&request).await.map_err(failure)?;
            response
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.message.content)
                .ok_or_else(|| "the answer has no message".to_string())
        })
        .await
    }

    /// The oracle's and the compiler's word on `code`, against `cwe`.
    fn check(
        &self,
        language: Language,
        cwe: &str,
        code: &str,
    ) -> Result<(Findings, Vec<ReportLine>), String> {
        let source = Source {
            path: format!("sample.{}", language.extension()),
            language,
            text: code.to_string(),
        };
        let report = self
            .oracle
            .check(std::slice::from_ref(&source), &self.settings.analyzers);
        let map = self.oracle.cwe_map();
        let verdict = report.verdict(&source, &CweSelection::All, &[cwe.to_string()], map);
        let parse = self.settings.compilers.parses(language, code)?;
        let (unknown_names, string_commands) = if parse.is_ok() {
            let compilers = &self.settings.compilers;
            (
                compilers.unknown_names(language, code)?,
                compilers.string_commands(language, code)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let lines: Vec<ReportLine> = report
            .findings()
            .filter(|f| map.counts_for(&f.cwe, cwe))
            .map(|f| ReportLine {
                rule: f.rule_id.clone(),
                message: f.message.clone(),
                line: f.span.start_line,
                cwe: f.cwe.clone(),
            })
            .collect();
        Ok((
            Findings {
                parses: parse.is_ok(),
                parse_error: parse.err(),
                flagged: !verdict.targeted.is_empty(),
                cwes: verdict.cwes,
                unknown_names: unknown_names.into_iter().collect(),
                string_commands: string_commands.into_iter().collect(),
            },
            lines,
        ))
    }
}

/// The CWEs `oracle`'s embedded analyzer covers per language, for refusing the rest.
pub fn covered(oracle: &Oracle) -> BTreeMap<&'static str, Vec<String>> {
    let mut covered = BTreeMap::new();
    for language in [Language::Python, Language::C] {
        covered.insert(
            prompts::language_key(language),
            oracle.embedded().cwes(language).into_iter().collect(),
        );
    }
    covered
}

/// What a run produced.
pub struct Outcome {
    pub samples: Vec<Sample>,
    pub repairs: Vec<Repair>,
    pub pairs: Vec<Pair>,
    pub report: String,
}

/// Runs every stage; what is cached is not asked again.
///
/// # Errors
/// Missing inputs, an uncovered CWE, an unwritable output. Failed requests and bad answers
/// are recorded, not errors.
pub async fn run(settings: Settings, progress: Arc<dyn Progress>) -> Result<Outcome, Error> {
    let oracle = Oracle::new(
        hexacoder_oracle::CweMap::builtin().map_err(|e| Error::Check(e.to_string()))?,
        hexacoder_oracle::ExternalOptions::default(),
    )
    .map_err(|e| Error::Check(e.to_string()))?;
    let covered_cwes = covered(&oracle);
    for (language, cwe) in &settings.targets {
        let key = prompts::language_key(*language);
        if !covered_cwes.get(key).is_some_and(|c| c.contains(cwe)) {
            return Err(Error::Settings(format!(
                "{cwe} in {key}: no analyzer covers it; covered: {covered_cwes:?}"
            )));
        }
    }
    let shots = prompts::load_shots(&settings.shots_file)?;
    let hints = prompts::load_hints(&settings.hints_file)?;
    let overlap = BenchmarkNames::load(&settings.bench_dir)?;
    settings.compilers.probe().map_err(Error::Check)?;
    let answers = Answers::open(&settings.cache)?;
    let context = Arc::new(Context {
        settings: settings.clone(),
        answers,
        oracle,
        hints,
    });
    let semaphore = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));

    // 1. Generate.
    let total = settings.targets.len() * settings.per_cwe;
    progress.start("generate", total, 0);
    let mut jobs = tokio::task::JoinSet::new();
    for (language, cwe) in &settings.targets {
        let key = (prompts::language_key(*language).to_string(), cwe.clone());
        let Some(examples) = shots.get(&key).filter(|s| !s.is_empty()).cloned() else {
            return Err(Error::Input {
                path: settings.shots_file.clone(),
                why: format!("no few-shot examples for {cwe} in {}", key.0),
            });
        };
        for i in 0..settings.per_cwe {
            let (context, semaphore, examples, cwe, language) = (
                context.clone(),
                semaphore.clone(),
                examples.clone(),
                cwe.clone(),
                *language,
            );
            jobs.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                let sample = generate_one(&context, language, &cwe, &examples, i).await;
                (i, sample)
            });
        }
    }
    let mut samples = Vec::new();
    let (mut flagged, mut done) = (0, 0);
    while let Some(joined) = jobs.join_next().await {
        let (_, sample) = joined.map_err(|e| Error::Check(format!("a worker panicked: {e}")))?;
        let sample = sample.map_err(Error::Check)?;
        done += 1;
        flagged += usize::from(sample.dropped.is_none() && sample.findings.flagged);
        progress.advance("generate", flagged, done, 0);
        samples.push(sample);
    }
    progress.finish("generate");
    samples.sort_by_key(|a| natural_key(&a.id));

    // 2. Drop duplicates (of each other and of the few-shot examples) and benchmark overlaps.
    let mut seen = dedup::Dedup::new(0.95);
    for examples in shots.values() {
        for shot in examples {
            seen.admit(&format!("{}{}", shot.prompt, shot.code));
        }
    }
    for sample in &mut samples {
        if sample.dropped.is_some() {
            continue;
        }
        if sample.code.trim().is_empty() {
            sample.dropped = Some("empty".into());
        } else if let Some(benchmark) = overlap.overlaps(&sample.code) {
            sample.dropped = Some(format!("overlaps {benchmark}"));
        } else if !seen.admit(&sample.code) {
            sample.dropped = Some("duplicate".into());
        }
    }

    // 3. Repair every flagged sample under every variant.
    let flagged_samples: Vec<Sample> = samples
        .iter()
        .filter(|s| s.dropped.is_none() && s.findings.flagged && s.findings.parses)
        .cloned()
        .collect();
    let mut self_hints: HashMap<(Language, String), Option<String>> = HashMap::new();
    if settings.variants.iter().any(|(_, h)| *h == Hints::OwnWords) {
        for (language, cwe) in &settings.targets {
            let hint = context
                .chat(prompts::self_hint_messages(*language, cwe), 0, 256)
                .await
                .ok();
            self_hints.insert((*language, cwe.clone()), hint);
        }
    }
    let self_hints = Arc::new(self_hints);
    let mut repairs = Vec::new();
    for &(feedback, hints) in &settings.variants {
        let stage = format!("repair {}/{}", feedback.name(), hints.name());
        progress.start(&stage, flagged_samples.len(), 0);
        let mut jobs = tokio::task::JoinSet::new();
        for sample in &flagged_samples {
            let (context, semaphore, sample, self_hints) = (
                context.clone(),
                semaphore.clone(),
                sample.clone(),
                self_hints.clone(),
            );
            jobs.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                repair_one(&context, &sample, feedback, hints, &self_hints).await
            });
        }
        let (mut repaired, mut done) = (0, 0);
        while let Some(joined) = jobs.join_next().await {
            let repair = joined.map_err(|e| Error::Check(format!("a worker panicked: {e}")))?;
            let repair = repair.map_err(Error::Check)?;
            done += 1;
            repaired += usize::from(repair.accepted_at().is_some());
            progress.advance(&stage, repaired, done, 0);
            repairs.push(repair);
        }
        progress.finish(&stage);
    }
    repairs.sort_by(|a, b| {
        (a.feedback, a.hints, natural_key(&a.sample)).cmp(&(
            b.feedback,
            b.hints,
            natural_key(&b.sample),
        ))
    });

    // 4. Pairs, near-duplicates removed.
    let by_id: HashMap<&str, &Sample> = samples.iter().map(|s| (s.id.as_str(), s)).collect();
    let oracle_name = settings
        .analyzers
        .iter()
        .map(|a| a.name())
        .collect::<Vec<_>>()
        .join("+");
    let mut pair_dedup = dedup::Dedup::new(settings.dedup_threshold);
    let mut pairs = Vec::new();
    for repair in &repairs {
        let Some(attempt) = repair.attempts.iter().find(|a| a.accepted) else {
            continue;
        };
        let (Some(sample), Some(fixed)) = (by_id.get(repair.sample.as_str()), &attempt.fixed)
        else {
            continue;
        };
        if !pair_dedup.admit(fixed) {
            continue;
        }
        pairs.push(Pair {
            vulnerable: sample.code.clone(),
            fixed: fixed.clone(),
            language: prompts::language_key(sample.language).to_string(),
            cwe: sample.cwe.clone(),
            generator: settings.generator.model.clone(),
            repairer: settings.repairer.model.clone(),
            oracle: oracle_name.clone(),
            feedback: repair.feedback,
            hints: repair.hints,
            attempt: attempt.attempt,
        });
    }
    let report = render_report(&settings, &samples, &repairs, &pairs);
    write_outputs(&settings.out, &samples, &repairs, &pairs, &report)?;
    Ok(Outcome {
        samples,
        repairs,
        pairs,
        report,
    })
}

/// `python/CWE-089/12` sorts after `…/2`.
fn natural_key(id: &str) -> (String, usize) {
    match id.rsplit_once('/') {
        Some((head, n)) => (head.to_string(), n.parse().unwrap_or(usize::MAX)),
        None => (id.to_string(), 0),
    }
}

async fn generate_one(
    context: &Context,
    language: Language,
    cwe: &str,
    examples: &[Shot],
    i: usize,
) -> Result<Sample, String> {
    let settings = &context.settings;
    let request = CompletionRequest {
        model: Some(settings.generator.model.clone()),
        prompt: Prompt::One(prompts::generation_prompt(
            language,
            examples,
            i,
            settings.shots,
        )),
        max_tokens: Some(settings.generation_max_tokens),
        temperature: Some(settings.generation_temperature),
        stop: vec![prompts::stop(language)],
        seed: Some(i as i64),
        hexacoder: Some(hexacoder_api::HexacoderRequest {
            two_step: Some(false),
            ..Default::default()
        }),
        ..CompletionRequest::default()
    };
    let id = format!("{}/{cwe}/{i}", prompts::language_key(language));
    let mut sample = Sample {
        id,
        language,
        cwe: cwe.to_string(),
        code: String::new(),
        findings: Findings::default(),
        report: Vec::new(),
        dropped: None,
    };
    match context.generate(request).await {
        Err(error) => sample.dropped = Some(format!("request failed: {error}")),
        Ok(text) => {
            // The model may start the next example's separator before the stop catches it.
            let marker = format!("\n{}", prompts::stop(language).trim_end_matches(" example"));
            let text = text.find(&marker).map_or(text.as_str(), |i| &text[..i]);
            sample.code = format!("{}\n", text.trim_end());
            let (findings, report) = context.check(language, cwe, &sample.code)?;
            sample.findings = findings;
            sample.report = report;
        }
    }
    Ok(sample)
}

async fn repair_one(
    context: &Context,
    sample: &Sample,
    feedback: Feedback,
    hints: Hints,
    self_hints: &HashMap<(Language, String), Option<String>>,
) -> Result<Repair, String> {
    let settings = &context.settings;
    let hint = match hints {
        Hints::Curated => {
            prompts::curated_hint(&context.hints, &sample.cwe, sample.language).map(String::from)
        }
        Hints::OwnWords => self_hints
            .get(&(sample.language, sample.cwe.clone()))
            .cloned()
            .flatten(),
        Hints::None => None,
    };
    let mut report = sample.report.clone();
    let mut previous: Option<Rejection> = None;
    let mut attempts = Vec::new();
    for attempt in 1..=settings.attempts {
        let raw = prompts::render_report(&report);
        let mut explanation = None;
        let mut text = match feedback {
            Feedback::Raw => Some(raw.clone()),
            Feedback::None => None,
            Feedback::Explained => {
                match context
                    .chat(
                        prompts::explain_messages(sample.language, &sample.code, &sample.cwe, &raw),
                        attempt as i64,
                        384,
                    )
                    .await
                {
                    Ok(words) => {
                        explanation = Some(words.clone());
                        Some(words)
                    }
                    Err(error) => {
                        attempts.push(Attempt {
                            attempt,
                            accepted: false,
                            rejection: Some(Rejection::RequestFailed { error }),
                            explanation: None,
                            fixed: None,
                        });
                        continue;
                    }
                }
            }
        };
        // A retry says why the last fix was refused.
        if let Some(rejection) = &previous
            && !matches!(rejection, Rejection::StillFlagged)
        {
            let note = format!("A previous fix was refused: it {rejection}.");
            text = Some(match text {
                Some(t) => format!("{t}\n{note}"),
                None => note,
            });
        }
        let messages = prompts::repair_messages(
            sample.language,
            &sample.code,
            &sample.cwe,
            text.as_deref(),
            hint.as_deref(),
        );
        let answer = match context
            .chat(messages, attempt as i64, settings.repair_max_tokens)
            .await
        {
            Ok(answer) => answer,
            Err(error) => {
                attempts.push(Attempt {
                    attempt,
                    accepted: false,
                    rejection: Some(Rejection::RequestFailed { error }),
                    explanation,
                    fixed: None,
                });
                continue;
            }
        };
        let fixed = match extract::extract_code(&answer, sample.language) {
            Ok(code) => code,
            Err(why) => {
                let rejection = Rejection::NoCode {
                    why: why.to_string(),
                };
                previous = Some(rejection.clone());
                attempts.push(Attempt {
                    attempt,
                    accepted: false,
                    rejection: Some(rejection),
                    explanation,
                    fixed: None,
                });
                continue;
            }
        };
        let (findings, fixed_report) = context.check(sample.language, &sample.cwe, &fixed)?;
        let verdict = recheck::judge(
            sample.language,
            &sample.code,
            &sample.findings,
            &fixed,
            &findings,
        );
        let accepted = verdict.is_ok();
        if findings.flagged {
            report = fixed_report;
        }
        previous = verdict.clone().err();
        attempts.push(Attempt {
            attempt,
            accepted,
            rejection: verdict.err(),
            explanation,
            fixed: Some(fixed),
        });
        if accepted {
            break;
        }
    }
    Ok(Repair {
        sample: sample.id.clone(),
        language: sample.language,
        cwe: sample.cwe.clone(),
        feedback,
        hints,
        attempts,
    })
}

/// Function names of the evaluation prompts, so that generated code reusing one (a copy of a
/// benchmark task) is not trained on.
struct BenchmarkNames {
    names: HashMap<String, &'static str>,
}

impl BenchmarkNames {
    const STOPLIST: [&'static str; 8] = [
        "main", "__init__", "index", "run", "test", "get", "post", "hello",
    ];

    fn load(bench: &Path) -> Result<BenchmarkNames, Error> {
        let mut names = HashMap::new();
        for (benchmark, name) in [
            (crate::eval::bench::Benchmark::Codelmsec, "CodeLMSec"),
            (crate::eval::bench::Benchmark::Pearce, "Pearce"),
            (crate::eval::bench::Benchmark::Humaneval, "HumanEval"),
        ] {
            let Some(path) = benchmark.default_path(bench) else {
                continue;
            };
            let tasks = crate::eval::bench::load(benchmark, &path)?;
            for task in tasks {
                for function in defined_functions(&task.prompt) {
                    if !Self::STOPLIST.contains(&function.as_str()) {
                        names.insert(function, name);
                    }
                }
            }
        }
        Ok(BenchmarkNames { names })
    }

    fn overlaps(&self, code: &str) -> Option<&'static str> {
        defined_functions(code).find_map(|f| self.names.get(&f).copied())
    }
}

fn defined_functions(code: &str) -> impl Iterator<Item = String> + '_ {
    code.lines().filter_map(|line| {
        let t = line.trim_start();
        let rest = t
            .strip_prefix("def ")
            .or_else(|| t.strip_prefix("async def "))?;
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        (!name.is_empty()).then_some(name)
    })
}

/// `report.md`: the paper's Table 3 shape, per CWE and in total, per variant.
fn render_report(
    settings: &Settings,
    samples: &[Sample],
    repairs: &[Repair],
    pairs: &[Pair],
) -> String {
    let mut md = String::from("# HexaCoder synthesis\n\n");
    let _ = writeln!(
        md,
        "Generator `{}`, repairer `{}`, analyzers {}, {} samples per CWE, up to {} repair attempts.\n",
        settings.generator.model,
        settings.repairer.model,
        settings
            .analyzers
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", "),
        settings.per_cwe,
        settings.attempts
    );
    let dropped: BTreeMap<String, usize> = samples
        .iter()
        .filter_map(|s| s.dropped.as_deref())
        .fold(BTreeMap::new(), |mut m, why| {
            let key = why.split(':').next().unwrap_or(why).to_string();
            *m.entry(key).or_insert(0) += 1;
            m
        });
    if !dropped.is_empty() {
        let _ = writeln!(
            md,
            "Samples not used: {}.\n",
            dropped
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let attempts = settings.attempts;
    md.push_str("| variant (feedback/hints) | CWE | language | generated | flagged |");
    for a in 1..=attempts {
        let _ = write!(md, " repaired at {a} |");
    }
    md.push_str(" repaired | repair rate |\n|---|---|---|---|---|");
    md.push_str(&"---|".repeat(attempts));
    md.push_str("---|---|\n");
    let targets: Vec<(Language, String)> = settings.targets.clone();
    for &(feedback, hints) in &settings.variants {
        let variant = format!("{}/{}", feedback.name(), hints.name());
        for (language, cwe) in targets
            .iter()
            .map(|(l, c)| (Some(*l), Some(c.as_str())))
            .chain([(None, None)])
        {
            let in_target = |l: Language, c: &str| {
                language.is_none_or(|x| x == l) && cwe.is_none_or(|x| x == c)
            };
            let generated = samples
                .iter()
                .filter(|s| {
                    in_target(s.language, &s.cwe)
                        && !s
                            .dropped
                            .as_deref()
                            .is_some_and(|d| d.starts_with("request failed"))
                })
                .count();
            let flagged = samples
                .iter()
                .filter(|s| {
                    in_target(s.language, &s.cwe)
                        && s.dropped.is_none()
                        && s.findings.flagged
                        && s.findings.parses
                })
                .count();
            let mine: Vec<&Repair> = repairs
                .iter()
                .filter(|r| {
                    r.feedback == feedback && r.hints == hints && in_target(r.language, &r.cwe)
                })
                .collect();
            let at: Vec<usize> = (1..=attempts)
                .map(|a| mine.iter().filter(|r| r.accepted_at() == Some(a)).count())
                .collect();
            let repaired: usize = at.iter().sum();
            let (name, lang) = match (cwe, language) {
                (Some(c), Some(l)) => (c.to_string(), crate::eval::language_name(l).to_string()),
                _ => ("**total**".to_string(), String::new()),
            };
            let _ = write!(
                md,
                "| {variant} | {name} | {lang} | {generated} | {flagged} |"
            );
            for n in &at {
                let _ = write!(md, " {n} |");
            }
            let rate = if flagged > 0 {
                format!("{:.0}%", 100.0 * repaired as f64 / flagged as f64)
            } else {
                "–".into()
            };
            let _ = writeln!(md, " {repaired} | {rate} |");
        }
    }
    let rejections: BTreeMap<String, usize> = repairs
        .iter()
        .flat_map(|r| r.attempts.iter())
        .filter_map(|a| a.rejection.as_ref())
        .fold(BTreeMap::new(), |mut m, r| {
            let key = serde_json::to_value(r)
                .ok()
                .and_then(|v| v["reason"].as_str().map(String::from))
                .unwrap_or_default();
            *m.entry(key).or_insert(0) += 1;
            m
        });
    if !rejections.is_empty() {
        let _ = writeln!(
            md,
            "\nRefused attempts by reason: {}.",
            rejections
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        md,
        "\n{} pairs written to `pairs.jsonl` after removing near-duplicates (token Jaccard above {}).",
        pairs.len(),
        settings.dedup_threshold
    );
    md
}

fn write_outputs(
    out: &Path,
    samples: &[Sample],
    repairs: &[Repair],
    pairs: &[Pair],
    report: &str,
) -> Result<(), Error> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let jsonl = |rows: Vec<String>| rows.into_iter().map(|row| row + "\n").collect::<String>();
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        crate::train::checkpoint::write_atomic(&path, bytes).map_err(|e| Error::Io {
            path: path.clone(),
            source: std::io::Error::other(format!("{e:#}")),
        })
    };
    let ser = |v: &dyn erased::Json| v.json();
    write(
        "samples.jsonl",
        jsonl(samples.iter().map(|s| ser(s)).collect()).as_bytes(),
    )?;
    write(
        "repairs.jsonl",
        jsonl(repairs.iter().map(|r| ser(r)).collect()).as_bytes(),
    )?;
    write(
        "pairs.jsonl",
        jsonl(pairs.iter().map(|p| ser(p)).collect()).as_bytes(),
    )?;
    write("report.md", report.as_bytes())?;
    Ok(())
}

mod erased {
    /// One JSON line of any record.
    pub trait Json {
        fn json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// The distinct (language, CWE) targets of `--cwes` (`CWE-089`, `python/CWE-089`, `c/CWE-787`);
/// a bare CWE means every language the oracle covers it in.
pub fn parse_targets(oracle: &Oracle, cwes: &[String]) -> Result<Vec<(Language, String)>, Error> {
    let covered = covered(oracle);
    let mut targets = Vec::new();
    let all: Vec<String> = if cwes.is_empty() {
        covered
            .get("python")
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|c| format!("python/{c}"))
            .collect()
    } else {
        cwes.to_vec()
    };
    for spec in &all {
        let (languages, cwe): (Vec<Language>, &str) = match spec.split_once('/') {
            Some((language, cwe)) => match Language::from_name(language) {
                Some(l) => (vec![l], cwe),
                None => {
                    return Err(Error::Settings(format!(
                        "--cwes {spec:?}: unknown language {language:?}"
                    )));
                }
            },
            None => (vec![Language::Python, Language::C], spec.as_str()),
        };
        let Some(cwe) = hexacoder_oracle::normalize_cwe(cwe) else {
            return Err(Error::Settings(format!("--cwes {spec:?}: not a CWE")));
        };
        let mut any = false;
        for language in languages {
            if covered
                .get(prompts::language_key(language))
                .is_some_and(|c| c.contains(&cwe))
            {
                any = true;
                if !targets.contains(&(language, cwe.clone())) {
                    targets.push((language, cwe.clone()));
                }
            }
        }
        if !any {
            return Err(Error::Settings(format!(
                "--cwes {spec}: no analyzer covers it; covered: {covered:?}"
            )));
        }
    }
    Ok(targets)
}

/// Seen (language, CWE) pairs, for a summary line.
pub fn summary(outcome: &Outcome) -> String {
    let languages: HashSet<Language> = outcome.samples.iter().map(|s| s.language).collect();
    format!(
        "{} samples ({} languages), {} flagged, {} repairs accepted, {} pairs",
        outcome.samples.len(),
        languages.len(),
        outcome
            .samples
            .iter()
            .filter(|s| s.dropped.is_none() && s.findings.flagged)
            .count(),
        outcome
            .repairs
            .iter()
            .filter(|r| r.accepted_at().is_some())
            .count(),
        outcome.pairs.len()
    )
}
