//! The oracle: a chosen set of analyzers run over sources, their findings kept per analyzer,
//! and a verdict per source that never mistakes "not analyzed" for "clean".

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::Serialize;

use crate::analyzer::{Analyzer, AnalyzerRun, RunStatus, Skipped, Source};
use crate::cwe_map::CweMap;
use crate::embedded::{EmbeddedAnalyzer, RuleError};
use crate::external::{self, ExternalOptions};
use crate::finding::{Finding, to_sarif_runs};

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

    /// This oracle with another embedded analyzer (other rules, another parse budget).
    pub fn with_embedded(self, embedded: EmbeddedAnalyzer) -> Self {
        Oracle { embedded, ..self }
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
            match self
                .embedded
                .scan(source.language, &source.path, &source.text)
            {
                Ok(findings) => run.findings.extend(findings),
                Err(error) => run.skipped.push(Skipped {
                    path: source.path.clone(),
                    reason: error.to_string(),
                }),
            }
        }
        run.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        run
    }
}
