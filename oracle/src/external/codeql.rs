//! CodeQL, when a `codeql` CLI is installed: a database per language (`--build-mode=none`, so
//! no build command is needed), analyzed with the language's security-extended suite into
//! SARIF; CWE from each rule's `external/cwe/cwe-NNN` tag.

use std::ffi::OsString;
use std::time::Instant;

use super::{ExternalOptions, ToolError, ToolOutput, Workdir};
use crate::analyzer::{Analyzer, Source};
use crate::embedded::Language;

pub(super) fn run(
    workdir: &Workdir,
    applicable: &[usize],
    sources: &[Source],
    options: &ExternalOptions,
    deadline: Instant,
) -> Result<ToolOutput, ToolError> {
    let mut output = ToolOutput::default();
    for codeql_language in ["python", "cpp"] {
        let wanted = applicable
            .iter()
            .any(|&i| codeql_language_of(sources[i].language) == codeql_language);
        if !wanted {
            continue;
        }
        let database = workdir.out().join(format!("db-{codeql_language}"));
        let sarif = workdir
            .out()
            .join(format!("codeql-{codeql_language}.sarif"));
        let create: Vec<OsString> = vec![
            "database".into(),
            "create".into(),
            database.clone().into_os_string(),
            format!("--language={codeql_language}").into(),
            "--build-mode=none".into(),
            format!("--source-root={}", workdir.sources().display()).into(),
            "--overwrite".into(),
            "--quiet".into(),
        ];
        check(workdir.run(Analyzer::Codeql, options, &create, deadline)?)?;
        let analyze: Vec<OsString> = vec![
            "database".into(),
            "analyze".into(),
            database.into_os_string(),
            format!("codeql/{codeql_language}-queries:codeql-suites/{codeql_language}-security-extended.qls").into(),
            "--format=sarif-latest".into(),
            format!("--output={}", sarif.display()).into(),
            "--quiet".into(),
        ];
        check(workdir.run(Analyzer::Codeql, options, &analyze, deadline)?)?;
        let text = std::fs::read_to_string(&sarif)
            .map_err(|e| ToolError::Failed(format!("CodeQL wrote no SARIF: {e}")))?;
        output.reports.extend(
            crate::sarif::parse(&text)
                .map_err(|e| ToolError::Failed(format!("CodeQL's SARIF: {e}")))?,
        );
    }
    Ok(output)
}

fn codeql_language_of(language: Language) -> &'static str {
    match language {
        Language::Python => "python",
        Language::C | Language::Cpp => "cpp",
    }
}

fn check(finished: super::Finished) -> Result<(), ToolError> {
    if finished.status.success() {
        Ok(())
    } else {
        Err(finished.failure("codeql", "and no database or results"))
    }
}
