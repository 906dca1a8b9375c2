//! cppcheck (C/C++): XML version 2 output, CWE from each error's `cwe` attribute.

use std::time::Instant;

use super::{ExternalOptions, RawReport, ToolError, ToolOutput, Workdir, with_files};
use crate::analyzer::Analyzer;
use crate::finding::{Severity, Span};

pub(super) fn run(
    workdir: &Workdir,
    applicable: &[usize],
    options: &ExternalOptions,
    deadline: Instant,
) -> Result<ToolOutput, ToolError> {
    let report = workdir.out().join("cppcheck.xml");
    let output_file = format!("--output-file={}", report.display());
    let args = with_files(
        &[
            "--xml",
            "--enable=warning,portability",
            "--quiet",
            "--inline-suppr",
            &output_file,
        ],
        workdir,
        applicable,
    );
    let finished = workdir.run(Analyzer::Cppcheck, options, &args, deadline)?;
    let xml = std::fs::read_to_string(&report)
        .map_err(|e| finished.failure("cppcheck", &format!("and wrote no report ({e})")))?;
    parse(&xml)
}

pub(super) fn parse(xml: &str) -> Result<ToolOutput, ToolError> {
    let document = roxmltree::Document::parse(xml)
        .map_err(|e| ToolError::Failed(format!("cppcheck's XML does not parse: {e}")))?;
    let mut output = ToolOutput::default();
    for error in document.descendants().filter(|n| n.has_tag_name("error")) {
        // The first location is where the weakness is; later ones are the path to it.
        let Some(location) = error.children().find(|n| n.has_tag_name("location")) else {
            continue;
        };
        let number = |name: &str| {
            location
                .attribute(name)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(1)
                .max(1)
        };
        let (line, column) = (number("line"), number("column"));
        output.reports.push(RawReport {
            path: location.attribute("file").unwrap_or_default().to_string(),
            rule_id: error.attribute("id").unwrap_or("unknown").to_string(),
            message: error.attribute("msg").unwrap_or_default().to_string(),
            span: Span {
                start_line: line,
                start_column: column,
                end_line: line,
                end_column: column,
            },
            severity: match error.attribute("severity") {
                Some("error") => Severity::Error,
                Some("warning") => Severity::Warning,
                _ => Severity::Note,
            },
            cwe: error.attribute("cwe").map(str::to_string),
        });
    }
    Ok(output)
}
