//! One findings model for every analyzer, and its JSON and SARIF 2.1.0 forms.

use serde::{Deserialize, Serialize};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Note,
    /// Likely a weakness.
    Warning,
    /// A weakness.
    Error,
}

impl Severity {
    /// SARIF's `level`.
    pub fn sarif_level(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// A span in a file: 1-based lines and columns (columns count characters), end inclusive of
/// the line and exclusive of the column, as SARIF has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// First line.
    pub start_line: usize,
    /// Column on the first line.
    pub start_column: usize,
    /// Last line.
    pub end_line: usize,
    /// Column after the end on the last line.
    pub end_column: usize,
}

/// One weakness one analyzer reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `CWE-079` style (three digits at least).
    pub cwe: String,
    /// The analyzer's rule id.
    pub rule_id: String,
    /// What is wrong, for a person.
    pub message: String,
    /// The file, as given to the analyzer.
    pub path: String,
    /// Where.
    pub span: Span,
    /// How bad.
    pub severity: Severity,
    /// Which analyzer (`embedded`, `semgrep`, …).
    pub analyzer: String,
}

/// Normalizes a CWE reference (`CWE-79`, `cwe79`, `79`, `CWE-079: Improper…`) to `CWE-079`;
/// `None` when there is no number.
pub fn normalize_cwe(text: &str) -> Option<String> {
    let upper = text.trim().to_ascii_uppercase();
    let rest = upper.strip_prefix("CWE").unwrap_or(&upper);
    let rest = rest.trim_start_matches(['-', '_', ' ', ':']);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let number: u32 = digits.parse().ok()?;
    Some(format!("CWE-{number:03}"))
}

/// Findings as a SARIF 2.1.0 log with one run per analyzer that reported something.
pub fn to_sarif(findings: &[Finding]) -> serde_json::Value {
    let mut analyzers: Vec<&str> = findings.iter().map(|f| f.analyzer.as_str()).collect();
    analyzers.sort_unstable();
    analyzers.dedup();
    let per_analyzer: Vec<(&str, Vec<Finding>)> = analyzers
        .iter()
        .map(|a| {
            let mine = findings
                .iter()
                .filter(|f| f.analyzer == *a)
                .cloned()
                .collect();
            (*a, mine)
        })
        .collect();
    to_sarif_runs(
        per_analyzer
            .iter()
            .map(|(a, mine)| (*a, None, mine.as_slice())),
    )
}

/// A SARIF 2.1.0 log with one run per `(analyzer, failure, findings)`; a run whose analyzer
/// did not run carries `executionSuccessful: false` and the reason.
pub fn to_sarif_runs<'a>(
    runs: impl IntoIterator<Item = (&'a str, Option<String>, &'a [Finding])>,
) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = runs
        .into_iter()
        .map(|(analyzer, failure, mine)| {
            let mut rules: Vec<(&str, &str)> = mine
                .iter()
                .map(|f| (f.rule_id.as_str(), f.cwe.as_str()))
                .collect();
            rules.sort_unstable();
            rules.dedup();
            let mut invocation = serde_json::json!({"executionSuccessful": failure.is_none()});
            if let Some(reason) = failure {
                invocation["toolExecutionNotifications"] =
                    serde_json::json!([{"level": "error", "message": {"text": reason}}]);
            }
            serde_json::json!({
                "tool": {"driver": {
                    "name": format!("hexacoder-oracle/{analyzer}"),
                    "informationUri": "https://cwe.mitre.org/",
                    "rules": rules.iter().map(|(id, cwe)| serde_json::json!({
                        "id": id,
                        "properties": {"tags": ["security", cwe]},
                    })).collect::<Vec<_>>(),
                }},
                "invocations": [invocation],
                "results": mine.iter().map(|f| serde_json::json!({
                    "ruleId": f.rule_id,
                    "level": f.severity.sarif_level(),
                    "message": {"text": f.message},
                    "locations": [{"physicalLocation": {
                        "artifactLocation": {"uri": f.path},
                        "region": {
                            "startLine": f.span.start_line,
                            "startColumn": f.span.start_column,
                            "endLine": f.span.end_line,
                            "endColumn": f.span.end_column,
                        },
                    }}],
                    "taxa": [{"id": f.cwe.trim_start_matches("CWE-").trim_start_matches('0'), "toolComponent": {"name": "CWE"}}],
                    "properties": {"cwe": f.cwe},
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": runs,
    })
}
