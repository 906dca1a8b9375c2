//! HexaCoder's security oracle: analyzers that find weaknesses (CWEs) in code, with one
//! findings model. The embedded analyzer runs YAML `ast-grep` rules in process in
//! milliseconds; external analyzers (semgrep, bandit, cppcheck, …) plug into the same model.
#![deny(missing_docs)]

pub mod embedded;
pub mod finding;

pub use embedded::{EmbeddedAnalyzer, Language, RuleError};
pub use finding::{Finding, Severity, Span, normalize_cwe, to_sarif};

#[cfg(test)]
mod tests;
