//! flawfinder (C/C++): CSV output at a minimum risk level, CWE from its `CWEs` column.
//! (CSV, not SARIF: flawfinder 2.0.19's SARIF output ignores `--minlevel`.)

use std::time::Instant;

use serde::Deserialize;

use super::{ExternalOptions, RawReport, ToolError, ToolOutput, Workdir, with_files};
use crate::analyzer::Analyzer;
use crate::finding::{Severity, Span};

pub(super) fn run(
    workdir: &Workdir,
    applicable: &[usize],
    options: &ExternalOptions,
    deadline: Instant,
) -> Result<ToolOutput, ToolError> {
    if options.flawfinder_min_level > 5 {
        return Err(ToolError::Failed(format!(
            "flawfinder's minimum level is 0 to 5, not {}",
            options.flawfinder_min_level
        )));
    }
    let min_level = format!("--minlevel={}", options.flawfinder_min_level);
    let args = with_files(&["--csv", &min_level], workdir, applicable);
    let finished = workdir.run(Analyzer::Flawfinder, options, &args, deadline)?;
    if !finished.status.success() {
        return Err(finished.failure("flawfinder", "and no report"));
    }
    parse(&finished.stdout)
}

#[derive(Deserialize)]
struct Row {
    #[serde(rename = "File")]
    file: String,
    #[serde(rename = "Line")]
    line: usize,
    #[serde(rename = "Column")]
    column: usize,
    #[serde(rename = "Level")]
    level: u8,
    #[serde(rename = "Category")]
    category: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Warning")]
    warning: String,
    #[serde(rename = "CWEs")]
    cwes: String,
}

pub(super) fn parse(csv_text: &str) -> Result<ToolOutput, ToolError> {
    let mut output = ToolOutput::default();
    for row in csv::Reader::from_reader(csv_text.as_bytes()).deserialize::<Row>() {
        let row = row.map_err(|e| ToolError::Failed(format!("flawfinder's CSV: {e}")))?;
        // `CWE-119!/CWE-120`: the first is the one flawfinder ranks first.
        let cwe = row
            .cwes
            .split(['/', ',', ' '])
            .map(|c| c.trim_end_matches('!'))
            .find(|c| !c.is_empty())
            .map(str::to_string);
        let (line, column) = (row.line.max(1), row.column.max(1));
        output.reports.push(RawReport {
            path: row.file,
            rule_id: format!("{}/{}", row.category, row.name),
            message: row.warning,
            span: Span {
                start_line: line,
                start_column: column,
                end_line: line,
                end_column: column,
            },
            severity: match row.level {
                4.. => Severity::Error,
                2..=3 => Severity::Warning,
                _ => Severity::Note,
            },
            cwe,
        });
    }
    Ok(output)
}
