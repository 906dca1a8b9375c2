//! semgrep with a local rules directory: JSON output, CWE from each rule's metadata.

use std::time::Instant;

use serde_json::Value;

use super::{ExternalOptions, RawReport, ToolError, ToolOutput, Workdir, with_files};
use crate::analyzer::Analyzer;
use crate::finding::{Severity, Span};

pub(super) fn run(
    workdir: &Workdir,
    applicable: &[usize],
    options: &ExternalOptions,
    deadline: Instant,
) -> Result<ToolOutput, ToolError> {
    let rules = options.semgrep_rules.as_ref().ok_or_else(|| {
        ToolError::Unavailable(
            "semgrep needs a local rules directory (--semgrep-rules); rules are never fetched"
                .into(),
        )
    })?;
    let rules = std::path::absolute(rules)
        .map_err(|e| ToolError::Failed(format!("{}: {e}", rules.display())))?;
    let rules = rules.to_string_lossy();
    // `--experimental` runs hundreds of rules in about a second instead of a minute.
    let mut args = with_files(
        &[
            "scan",
            "--metrics=off",
            "--disable-version-check",
            "--experimental",
            "--json",
            "--quiet",
            "--no-git-ignore",
            "--config",
        ],
        workdir,
        applicable,
    );
    args.insert(8, rules.as_ref().into());
    let finished = workdir.run(Analyzer::Semgrep, options, &args, deadline)?;
    parse(&finished.json("semgrep")?)
}

pub(super) fn parse(log: &Value) -> Result<ToolOutput, ToolError> {
    let mut output = ToolOutput::default();
    for error in log["errors"].as_array().into_iter().flatten() {
        // A file semgrep could not parse is skipped; partial parses still count as analyzed.
        if error["level"].as_str() == Some("error") {
            let message = error["message"].as_str().unwrap_or("error").to_string();
            match error["path"].as_str() {
                Some(path) => output.skipped.push((path.to_string(), message)),
                None => return Err(ToolError::Failed(format!("semgrep: {message}"))),
            }
        }
    }
    let results = log["results"]
        .as_array()
        .ok_or_else(|| ToolError::Failed("semgrep's JSON has no `results`".into()))?;
    for result in results {
        let position = |key: &str, field: &str| {
            result[key][field]
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(1)
        };
        let extra = &result["extra"];
        let cwe = match &extra["metadata"]["cwe"] {
            Value::String(cwe) => Some(cwe.clone()),
            Value::Array(cwes) => cwes.first().and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        output.reports.push(RawReport {
            path: result["path"].as_str().unwrap_or_default().to_string(),
            rule_id: result["check_id"].as_str().unwrap_or("unknown").to_string(),
            message: extra["message"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_string(),
            span: Span {
                start_line: position("start", "line"),
                start_column: position("start", "col"),
                end_line: position("end", "line"),
                end_column: position("end", "col"),
            },
            severity: match extra["severity"].as_str() {
                Some("ERROR" | "HIGH" | "CRITICAL") => Severity::Error,
                Some("WARNING" | "MEDIUM") => Severity::Warning,
                _ => Severity::Note,
            },
            cwe,
        });
    }
    Ok(output)
}
