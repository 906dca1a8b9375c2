//! bandit (Python): JSON output, CWE from `issue_cwe`.

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
    let level = options.bandit_min_severity.as_str();
    if !["all", "low", "medium", "high"].contains(&level) {
        return Err(ToolError::Failed(format!(
            "bandit severity level {level:?} is not one of all, low, medium, high"
        )));
    }
    let args = with_files(
        &["--format", "json", "--quiet", "--severity-level", level],
        workdir,
        applicable,
    );
    // bandit exits 1 when it found something; its JSON tells a failure apart.
    let finished = workdir.run(Analyzer::Bandit, options, &args, deadline)?;
    parse(&finished.json("bandit")?)
}

pub(super) fn parse(log: &Value) -> Result<ToolOutput, ToolError> {
    let mut output = ToolOutput::default();
    for error in log["errors"].as_array().into_iter().flatten() {
        output.skipped.push((
            error["filename"].as_str().unwrap_or_default().to_string(),
            error["reason"]
                .as_str()
                .unwrap_or("bandit error")
                .to_string(),
        ));
    }
    let results = log["results"]
        .as_array()
        .ok_or_else(|| ToolError::Failed("bandit's JSON has no `results`".into()))?;
    for result in results {
        let number = |key: &str| result[key].as_u64().and_then(|v| usize::try_from(v).ok());
        let line = number("line_number").unwrap_or(1);
        let end_line = result["line_range"]
            .as_array()
            .and_then(|r| r.last())
            .and_then(Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(line);
        let start_column = number("col_offset").unwrap_or(0) + 1;
        output.reports.push(RawReport {
            path: result["filename"].as_str().unwrap_or_default().to_string(),
            rule_id: result["test_id"].as_str().unwrap_or("unknown").to_string(),
            message: result["issue_text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            span: Span {
                start_line: line,
                start_column,
                end_line,
                end_column: number("end_col_offset").map_or(start_column, |c| c + 1),
            },
            severity: match result["issue_severity"].as_str() {
                Some("HIGH") => Severity::Error,
                Some("MEDIUM") => Severity::Warning,
                _ => Severity::Note,
            },
            cwe: result["issue_cwe"]["id"].as_u64().map(|id| id.to_string()),
        });
    }
    Ok(output)
}
