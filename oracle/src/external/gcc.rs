//! GCC's static analyzer (`gcc -fanalyzer`, C and C++): one compile per file, JSON
//! diagnostics, CWE from each diagnostic's metadata. A file that does not compile (a
//! fragment without its headers) is skipped, not clean.

use std::ffi::OsString;
use std::time::Instant;

use serde_json::Value;

use super::{ExternalOptions, RawReport, ToolError, ToolOutput, Workdir};
use crate::analyzer::{Analyzer, Source};
use crate::embedded::Language;
use crate::finding::{Severity, Span};

pub(super) fn run(
    workdir: &Workdir,
    applicable: &[usize],
    sources: &[Source],
    options: &ExternalOptions,
    deadline: Instant,
) -> Result<ToolOutput, ToolError> {
    let mut output = ToolOutput::default();
    for &i in applicable {
        let file = &workdir.files[i];
        let object = workdir.out().join(format!("s{i}.o"));
        let language = if sources[i].language == Language::Cpp {
            "c++"
        } else {
            "c"
        };
        let args: Vec<OsString> = vec![
            "-fanalyzer".into(),
            "-fdiagnostics-format=json".into(),
            "-x".into(),
            language.into(),
            "-c".into(),
            file.clone().into_os_string(),
            "-o".into(),
            object.into_os_string(),
        ];
        let finished = workdir.run(Analyzer::Gcc, options, &args, deadline)?;
        let path = file.display().to_string();
        let diagnostics: Value = serde_json::from_str(finished.stderr.trim())
            .map_err(|_| finished.failure("gcc", "without JSON diagnostics"))?;
        parse_file(&diagnostics, &path, &mut output);
    }
    Ok(output)
}

/// One compile's diagnostics: analyzer warnings become reports; an error skips the file.
pub(super) fn parse_file(diagnostics: &Value, path: &str, output: &mut ToolOutput) {
    let all = diagnostics
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(error) = all.iter().find(|d| d["kind"].as_str() == Some("error")) {
        let message = error["message"].as_str().unwrap_or("error");
        let line = error["locations"][0]["caret"]["line"].as_u64().unwrap_or(0);
        output.skipped.push((
            path.to_string(),
            format!("does not compile (line {line}: {message})"),
        ));
        return;
    }
    for diagnostic in all {
        let option = diagnostic["option"].as_str().unwrap_or_default();
        if !option.starts_with("-Wanalyzer") {
            continue;
        }
        let location = &diagnostic["locations"][0];
        let position = |key: &str, field: &str| {
            location[key][field]
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
        };
        let line = position("caret", "line").unwrap_or(1);
        let column = position("caret", "display-column")
            .or_else(|| position("caret", "column"))
            .unwrap_or(1);
        output.reports.push(RawReport {
            path: location["caret"]["file"]
                .as_str()
                .unwrap_or(path)
                .to_string(),
            rule_id: option.to_string(),
            message: diagnostic["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            span: Span {
                start_line: line,
                start_column: column,
                end_line: position("finish", "line").unwrap_or(line),
                end_column: position("finish", "display-column").map_or(column, |c| c + 1),
            },
            severity: Severity::Warning,
            cwe: diagnostic["metadata"]["cwe"]
                .as_u64()
                .map(|c| c.to_string()),
        });
    }
}
