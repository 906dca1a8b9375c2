//! `hexacoder-train scan`: the oracle over files and directories.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hexacoder_oracle::{
    Analyzer, CweMap, CweSelection, ExternalOptions, Finding, Language, Oracle, Report, RunStatus,
    Source, Verdict, VerdictStatus, normalize_cwe,
};
use serde::Serialize;

/// How findings are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per finding, then one per analyzer, for people.
    Table,
    /// One JSON object: findings, analyzers (how each run ended) and verdicts per file.
    Json,
    /// A SARIF 2.1.0 log, one run per analyzer.
    Sarif,
}

/// What to scan with, as the command line gives it.
pub struct ScanSettings {
    /// Analyzer names (`all` for every one).
    pub analyzers: Vec<String>,
    /// The external analyzers' settings.
    pub options: ExternalOptions,
    /// A CWE table replacing the built-in one.
    pub cwe_map: Option<PathBuf>,
    /// CWEs that make a file vulnerable (empty: any).
    pub cwes: Vec<String>,
    /// CWEs reported apart in the verdicts.
    pub targeted: Vec<String>,
}

/// What one scan found.
pub struct ScanOutcome {
    /// The files, read.
    pub sources: Vec<Source>,
    /// Every analyzer's run.
    pub report: Report,
    /// One verdict per file.
    pub verdicts: Vec<Verdict>,
}

impl ScanOutcome {
    /// The exit status: 1 when a file is vulnerable; else 2 when an analyzer did not analyze
    /// a file (an absent analyzer never makes code clean); else 0.
    pub fn exit_code(&self) -> u8 {
        if self.count(VerdictStatus::Vulnerable) > 0 {
            1
        } else if self.count(VerdictStatus::Unknown) > 0 {
            2
        } else {
            0
        }
    }

    fn count(&self, status: VerdictStatus) -> usize {
        self.verdicts.iter().filter(|v| v.status == status).count()
    }
}

/// The files under `paths` in a language the oracle knows (directories are walked, honouring
/// `.gitignore`); a file given by name must be in such a language.
///
/// # Errors
/// A path that does not exist, or a named file in an unknown language.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Language)>> {
    let mut files = Vec::new();
    for path in paths {
        if !path.exists() {
            bail!("{} does not exist", path.display());
        }
        if path.is_file() {
            let language = language_of(path).with_context(|| {
                format!(
                    "{}: not a file the oracle knows (Python, C or C++ by extension)",
                    path.display()
                )
            })?;
            files.push((path.clone(), language));
            continue;
        }
        for entry in ignore::WalkBuilder::new(path).build() {
            let entry = entry.with_context(|| format!("walking {}", path.display()))?;
            if entry.file_type().is_some_and(|t| t.is_file())
                && let Some(language) = language_of(entry.path())
            {
                files.push((entry.path().to_path_buf(), language));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);
    Ok(files)
}

fn language_of(path: &Path) -> Option<Language> {
    path.extension()
        .and_then(|e| e.to_str())
        .and_then(Language::from_name)
}

/// Parses `--analyzers`: names, or `all`.
///
/// # Errors
/// A name that is no analyzer.
pub fn parse_analyzers(names: &[String]) -> Result<Vec<Analyzer>> {
    let mut analyzers = Vec::new();
    for name in names {
        if name.trim() == "all" {
            analyzers.extend(Analyzer::ALL);
            continue;
        }
        let Some(analyzer) = Analyzer::from_name(name) else {
            let known: Vec<&str> = Analyzer::ALL.iter().map(|a| a.name()).collect();
            bail!("unknown analyzer {name:?}; choose from {known:?} or \"all\"");
        };
        analyzers.push(analyzer);
    }
    Ok(analyzers)
}

/// Parses `--program NAME=PATH` values.
///
/// # Errors
/// A value without `=`, or a name that is no external analyzer.
pub fn parse_programs(values: &[String]) -> Result<Vec<(Analyzer, PathBuf)>> {
    values
        .iter()
        .map(|value| {
            let (name, path) = value
                .split_once('=')
                .with_context(|| format!("--program {value:?}: expected NAME=PATH"))?;
            match Analyzer::from_name(name) {
                Some(Analyzer::Embedded) | None => bail!(
                    "--program {value:?}: {name:?} is not an external analyzer (semgrep, bandit, cppcheck, flawfinder, gcc, codeql)"
                ),
                // Tools run in a temp dir: a relative path is made absolute here; a bare name
                // is looked up on PATH.
                Some(analyzer) => {
                    let path = PathBuf::from(path);
                    let path = if path.components().count() > 1 {
                        std::path::absolute(&path)
                            .with_context(|| format!("--program {value:?}"))?
                    } else {
                        path
                    };
                    Ok((analyzer, path))
                }
            }
        })
        .collect()
}

fn parse_cwes(values: &[String], flag: &str) -> Result<Vec<String>> {
    values
        .iter()
        .map(|v| normalize_cwe(v).with_context(|| format!("{flag}: {v:?} is not a CWE")))
        .collect()
}

/// Scans `files` with the chosen analyzers.
///
/// # Errors
/// An unknown analyzer or CWE, a CWE table that does not load, a file that cannot be read.
pub fn scan(files: &[(PathBuf, Language)], settings: ScanSettings) -> Result<ScanOutcome> {
    let analyzers = parse_analyzers(&settings.analyzers)?;
    let cwes = parse_cwes(&settings.cwes, "--cwes")?;
    let targeted = parse_cwes(&settings.targeted, "--target-cwes")?;
    if analyzers.contains(&Analyzer::Semgrep) && settings.options.semgrep_rules.is_none() {
        bail!("semgrep needs a local rules directory: pass --semgrep-rules DIR");
    }
    let map = match &settings.cwe_map {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            CweMap::parse(&text).with_context(|| format!("{}", path.display()))?
        }
        None => CweMap::builtin().context("the built-in CWE map")?,
    };
    let oracle = Oracle::new(map, settings.options).context("loading the embedded rules")?;
    let mut sources = Vec::with_capacity(files.len());
    for (path, language) in files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        sources.push(Source {
            path: path.display().to_string(),
            language: *language,
            text,
        });
    }
    let report = oracle.check(&sources, &analyzers);
    let selection = if cwes.is_empty() {
        CweSelection::All
    } else {
        CweSelection::Only(cwes.into_iter().collect::<BTreeSet<_>>())
    };
    let verdicts = sources
        .iter()
        .map(|s| report.verdict(s, &selection, &targeted, oracle.cwe_map()))
        .collect();
    Ok(ScanOutcome {
        sources,
        report,
        verdicts,
    })
}

#[derive(Serialize)]
struct JsonOutcome<'a> {
    findings: Vec<&'a Finding>,
    analyzers: Vec<JsonRun<'a>>,
    verdicts: &'a [Verdict],
}

#[derive(Serialize)]
struct JsonRun<'a> {
    analyzer: &'static str,
    status: &'a RunStatus,
    findings: usize,
    skipped: &'a [hexacoder_oracle::Skipped],
    unmapped: usize,
    elapsed_ms: f64,
}

/// The outcome in `format`.
pub fn render(outcome: &ScanOutcome, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&JsonOutcome {
            findings: outcome.report.findings().collect(),
            analyzers: outcome
                .report
                .runs
                .iter()
                .map(|run| JsonRun {
                    analyzer: run.analyzer.name(),
                    status: &run.status,
                    findings: run.findings.len(),
                    skipped: &run.skipped,
                    unmapped: run.unmapped,
                    elapsed_ms: run.elapsed_ms,
                })
                .collect(),
            verdicts: &outcome.verdicts,
        })?,
        Format::Sarif => serde_json::to_string_pretty(&outcome.report.to_sarif())?,
        Format::Table => {
            let mut out = String::new();
            let mut findings: Vec<&Finding> = outcome.report.findings().collect();
            findings.sort_by(|a, b| {
                (&a.path, a.span.start_line, a.span.start_column).cmp(&(
                    &b.path,
                    b.span.start_line,
                    b.span.start_column,
                ))
            });
            for f in findings {
                out.push_str(&format!(
                    "{}:{}:{}  {}  {}  {}  [{}/{}]\n",
                    f.path,
                    f.span.start_line,
                    f.span.start_column,
                    f.cwe,
                    f.severity.sarif_level(),
                    f.message,
                    f.analyzer,
                    f.rule_id,
                ));
            }
            for run in &outcome.report.runs {
                let state = match &run.status {
                    RunStatus::Ran => format!(
                        "ran: {} finding(s), {} file(s) skipped",
                        run.findings.len(),
                        run.skipped.len()
                    ),
                    RunStatus::NotApplicable => "no file in its languages".into(),
                    RunStatus::Unavailable { reason } => format!("UNAVAILABLE: {reason}"),
                    RunStatus::TimedOut { seconds } => format!("TIMED OUT after {seconds} s"),
                    RunStatus::Failed { reason } => format!("FAILED: {reason}"),
                };
                out.push_str(&format!(
                    "{}: {state} ({:.0} ms)\n",
                    run.analyzer.name(),
                    run.elapsed_ms
                ));
            }
            out.push_str(&format!(
                "{} finding(s) in {} file(s): {} vulnerable, {} clean, {} not fully analyzed\n",
                outcome.report.findings().count(),
                outcome.sources.len(),
                outcome.count(VerdictStatus::Vulnerable),
                outcome.count(VerdictStatus::Clean),
                outcome.count(VerdictStatus::Unknown),
            ));
            out
        }
    })
}
