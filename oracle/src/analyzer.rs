//! What every analyzer run shares: which analyzer, the source it reads, and how its run went.
//! The oracle and the external analyzers both speak these types.

use serde::Serialize;

use crate::embedded::Language;
use crate::finding::Finding;

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
    pub(crate) fn covers(&self, source: &Source) -> Result<(), String> {
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
