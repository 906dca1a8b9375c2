//! HexaCoder's security oracle: analyzers that find weaknesses (CWEs) in code, with one
//! findings model. The embedded analyzer runs YAML `ast-grep` rules in process in
//! milliseconds; external analyzers (semgrep, bandit, cppcheck, flawfinder, `gcc -fanalyzer`,
//! CodeQL) run as subprocesses and are mapped to CWEs by a table kept as data. [`Oracle`]
//! runs a chosen set and gives a verdict per source.
#![deny(missing_docs)]

mod analyzer;
pub mod cwe_map;
pub mod embedded;
mod external;
pub mod finding;
mod null_check;
mod oracle;
mod redirect_guard;
mod sarif;

pub use analyzer::{Analyzer, AnalyzerRun, RunStatus, Skipped, Source};
pub use cwe_map::{CweMap, CweMapError, Mapped};
pub use embedded::{EmbeddedAnalyzer, Language, RuleError, ScanError};
pub use external::ExternalOptions;
pub use finding::{Finding, Severity, Span, normalize_cwe, to_sarif, to_sarif_runs};
pub use oracle::{CweSelection, Oracle, Report, Verdict, VerdictStatus};

#[cfg(test)]
mod tests;
