//! The oracle: a chosen set of analyzers run over sources, their findings kept per analyzer,
//! and a verdict per source that never mistakes "not analyzed" for "clean".

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::Serialize;

use crate::cwe_map::CweMap;
use crate::embedded::{EmbeddedAnalyzer, Language, RuleError};
use crate::external::{self, ExternalOptions};
use crate::finding::{Finding, to_sarif_runs};

/// An analyzer the oracle can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Analyzer {
    /// HexaCoder's own rules, in process.
    Embedded,
    /// semgrep with a local rules directory.
    Semgrep,
    /// bandit (Python).
    Bandit,
    /// cppcheck (C/C++).
    Cppcheck,
    /// flawfinder (C/C++).
    Flawfinder,
    /// `gcc -fanalyzer` (C/C++).
    Gcc,
    /// CodeQL's security-extended suites, when the `codeql` CLI is installed.
    Codeql,
}

impl Analyzer {
    /// Every analyzer, in a stable order.
    pub const ALL: [Analyzer; 7] = [
        Analyzer::Embedded,
        Analyzer::Semgrep,
        Analyzer::Bandit,
        Analyzer::Cppcheck,
        Analyzer::Flawfinder,
        Analyzer::Gcc,
        Analyzer::Codeql,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Analyzer::Embedded => "embedded",
            Analyzer::Semgrep => "semgrep",
            Analyzer::Bandit => "bandit",
            Analyzer::Cppcheck => "cppcheck",
            Analyzer::Flawfinder => "flawfinder",
            Analyzer::Gcc => "gcc",
            Analyzer::Codeql => "codeql",
        }
    }

    /// The analyzer called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name.trim())
    }

    /// Whether it analyzes code in `language`.
    pub fn handles(self, language: Language) -> bool {
        match self {
            Analyzer::Embedded | Analyzer::Semgrep | Analyzer::Codeql => true,
            Analyzer::Bandit => language == Language::Python,
            Analyzer::Cppcheck | Analyzer::Flawfinder | Analyzer::Gcc => {
                language != Language::Python
            }
        }
    }
}

/// One piece of code to check.
#[derive(Clone, Debug)]
pub struct Source {
    /// How findings name it (a file path, or a label such as `completion`).
    pub path: String,
    /// Its language.
    pub language: Language,
    /// The code.
    pub text: String,
}

/// How an analyzer's run ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunStatus {
    /// It analyzed the sources in its languages (except those in `skipped`).
    Ran,
    /// None of the sources is in a language it handles.
    NotApplicable,
    /// It is not installed or not configured; its silence means nothing.
    Unavailable {
        /// Why.
        reason: String,
    },
    /// It was killed at the deadline.
    TimedOut {
        /// The deadline.
        seconds: f64,
    },
    /// It ran and failed.
    Failed {
        /// What it said.
        reason: String,
    },
}

/// A source an analyzer that ran could not analyze.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Skipped {
    /// The source.
    pub path: String,
    /// Why (the tool's words).
    pub reason: String,
}

/// One analyzer's part of a check.
#[derive(Clone, Debug, Serialize)]
pub struct AnalyzerRun {
    /// Which analyzer.
    pub analyzer: Analyzer,
    /// How it ended.
    pub status: RunStatus,
    /// Its findings, mapped to CWEs.
    pub findings: Vec<Finding>,
    /// Sources it could not analyze.
    pub skipped: Vec<Skipped>,
    /// Reports dropped as code quality or tied to no CWE.
    pub unmapped: usize,
    /// Wall time.
    pub elapsed_ms: f64,
}

impl AnalyzerRun {
    pub(crate) fn new(analyzer: Analyzer) -> Self {
        AnalyzerRun {
            analyzer,
            status: RunStatus::Ran,
            findings: Vec::new(),
            skipped: Vec::new(),
            unmapped: 0,
            elapsed_ms: 0.0,
        }
    }

    /// Whether this run vouches for `source`: it handles the language, ran, and did not skip it.
    fn covers(&self, source: &Source) -> Result<(), String> {
        if !self.analyzer.handles(source.language) {
            return Ok(());
        }
        match &self.status {
            RunStatus::Ran | RunStatus::NotApplicable => {}
            RunStatus::Unavailable { reason } => return Err(format!("unavailable: {reason}")),
            RunStatus::TimedOut { seconds } => return Err(format!("timed out after {seconds} s")),
            RunStatus::Failed { reason } => return Err(format!("failed: {reason}")),
        }
        match self.skipped.iter().find(|s| s.path == source.path) {
            Some(skipped) => Err(format!("skipped: {}", skipped.reason)),
            None => Ok(()),
        }
    }
}

/// Which CWEs make code vulnerable.
#[derive(Clone, Debug, Default)]
pub enum CweSelection {
    /// Any finding at all, as in the paper.
    #[default]
    All,
    /// Only findings under these CWEs (or their families).
    Only(BTreeSet<String>),
}

/// The verdict on one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictStatus {
    /// A finding under a chosen CWE.
    Vulnerable,
    /// No such finding, and every chosen analyzer for its language analyzed it.
    Clean,
    /// No such finding, but some chosen analyzer did not analyze it.
    Unknown,
}

/// The verdict on one source, with attribution.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The source.
    pub path: String,
    /// Vulnerable, clean or unknown.
    pub status: VerdictStatus,
    /// The CWEs found that count under the selection.
    pub cwes: BTreeSet<String>,
    /// The targeted CWEs found (directly or through their family).
    pub targeted: BTreeSet<String>,
    /// Findings per analyzer.
    pub by_analyzer: BTreeMap<String, usize>,
    /// Analyzers that did not analyze this source, and why.
    pub not_analyzed_by: BTreeMap<String, String>,
}

/// Everything one check found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// One entry per analyzer asked for, in the order asked.
    pub runs: Vec<AnalyzerRun>,
}

impl Report {
    /// Every finding, by analyzer.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.runs.iter().flat_map(|r| r.findings.iter())
    }

    /// Runs that produced no answer (unavailable, timed out, failed).
    pub fn incomplete(&self) -> impl Iterator<Item = &AnalyzerRun> {
        self.runs
            .iter()
            .filter(|r| !matches!(r.status, RunStatus::Ran | RunStatus::NotApplicable))
    }

    /// The verdict on `source` under `selection`, with `targeted` CWEs reported apart.
    pub fn verdict(
        &self,
        source: &Source,
        selection: &CweSelection,
        targeted: &[String],
        map: &CweMap,
    ) -> Verdict {
        let mut verdict = Verdict {
            path: source.path.clone(),
            status: VerdictStatus::Clean,
            cwes: BTreeSet::new(),
            targeted: BTreeSet::new(),
            by_analyzer: BTreeMap::new(),
            not_analyzed_by: BTreeMap::new(),
        };
        for run in &self.runs {
            if let Err(why) = run.covers(source) {
                verdict
                    .not_analyzed_by
                    .insert(run.analyzer.name().into(), why);
            }
            for finding in run.findings.iter().filter(|f| f.path == source.path) {
                let counts = match selection {
                    CweSelection::All => true,
                    CweSelection::Only(chosen) => {
                        chosen.iter().any(|c| map.counts_for(&finding.cwe, c))
                    }
                };
                if !counts {
                    continue;
                }
                verdict.cwes.insert(finding.cwe.clone());
                *verdict
                    .by_analyzer
                    .entry(run.analyzer.name().into())
                    .or_default() += 1;
                for target in targeted {
                    if map.counts_for(&finding.cwe, target) {
                        verdict.targeted.insert(target.clone());
                    }
                }
            }
        }
        verdict.status = if !verdict.cwes.is_empty() {
            VerdictStatus::Vulnerable
        } else if verdict.not_analyzed_by.is_empty() {
            VerdictStatus::Clean
        } else {
            VerdictStatus::Unknown
        };
        verdict
    }

    /// The findings as a SARIF 2.1.0 log: one run per analyzer asked for, with an invocation
    /// that says whether it ran, so an absent analyzer is never read as a clean one.
    pub fn to_sarif(&self) -> serde_json::Value {
        to_sarif_runs(self.runs.iter().map(|run| {
            let failure = match &run.status {
                RunStatus::Ran | RunStatus::NotApplicable => None,
                RunStatus::Unavailable { reason } => Some(format!("unavailable: {reason}")),
                RunStatus::TimedOut { seconds } => Some(format!("timed out after {seconds} s")),
                RunStatus::Failed { reason } => Some(format!("failed: {reason}")),
            };
            (run.analyzer.name(), failure, run.findings.as_slice())
        }))
    }
}

/// The oracle: the embedded rules, the CWE table and the external analyzers' settings.
pub struct Oracle {
    embedded: EmbeddedAnalyzer,
    map: CweMap,
    options: ExternalOptions,
}

impl Oracle {
    /// An oracle with the built-in rules.
    ///
    /// # Errors
    /// Built-in rules that do not compile (a bug the tests catch).
    pub fn new(map: CweMap, options: ExternalOptions) -> Result<Self, RuleError> {
        Ok(Oracle {
            embedded: EmbeddedAnalyzer::builtin()?,
            map,
            options,
        })
    }

    /// The embedded analyzer alone.
    pub fn embedded(&self) -> &EmbeddedAnalyzer {
        &self.embedded
    }

    /// The CWE table.
    pub fn cwe_map(&self) -> &CweMap {
        &self.map
    }

    /// Runs `analyzers` over `sources`, the external ones in parallel, each under the
    /// options' deadline.
    pub fn check(&self, sources: &[Source], analyzers: &[Analyzer]) -> Report {
        let mut wanted: Vec<Analyzer> = Vec::new();
        for analyzer in analyzers {
            if !wanted.contains(analyzer) {
                wanted.push(*analyzer);
            }
        }
        let runs = std::thread::scope(|scope| {
            let handles: Vec<_> = wanted
                .iter()
                .map(|&analyzer| {
                    scope.spawn(move || match analyzer {
                        Analyzer::Embedded => self.run_embedded(sources),
                        _ => external::run(analyzer, sources, &self.options, &self.map),
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(&wanted)
                .map(|(handle, &analyzer)| {
                    handle.join().unwrap_or_else(|_| {
                        let mut run = AnalyzerRun::new(analyzer);
                        run.status = RunStatus::Failed {
                            reason: "the analyzer's thread panicked".into(),
                        };
                        run
                    })
                })
                .collect()
        });
        Report { runs }
    }

    fn run_embedded(&self, sources: &[Source]) -> AnalyzerRun {
        let started = Instant::now();
        let mut run = AnalyzerRun::new(Analyzer::Embedded);
        for source in sources {
            run.findings.extend(
                self.embedded
                    .scan(source.language, &source.path, &source.text),
            );
        }
        run.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        run
    }
}
