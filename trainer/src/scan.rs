//! `hexacoder-train scan`: the oracle over files and directories.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hexacoder_oracle::{EmbeddedAnalyzer, Finding, Language, to_sarif};

/// How findings are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per finding, for people.
    Table,
    /// A JSON array of findings.
    Json,
    /// A SARIF 2.1.0 log.
    Sarif,
}

/// Analyzers `--analyzers` accepts.
pub const ANALYZERS: &[&str] = &["embedded"];

/// What one scan found.
pub struct ScanOutcome {
    /// Every finding, by file then position.
    pub findings: Vec<Finding>,
    /// Files scanned.
    pub files: usize,
}

/// The files under `paths` in a language the oracle knows (directories are walked, honouring
/// `.gitignore`); a file given by name must be in such a language.
///
/// # Errors
/// A path that does not exist, or a named file in an unknown language.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Language)>> {
    let mut files = Vec::new();
    for path in paths {
        if !path.exists() {
            bail!("{} does not exist", path.display());
        }
        if path.is_file() {
            let language = language_of(path).with_context(|| {
                format!(
                    "{}: not a file the oracle knows (Python, C or C++ by extension)",
                    path.display()
                )
            })?;
            files.push((path.clone(), language));
            continue;
        }
        for entry in ignore::WalkBuilder::new(path).build() {
            let entry = entry.with_context(|| format!("walking {}", path.display()))?;
            if entry.file_type().is_some_and(|t| t.is_file())
                && let Some(language) = language_of(entry.path())
            {
                files.push((entry.path().to_path_buf(), language));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);
    Ok(files)
}

fn language_of(path: &Path) -> Option<Language> {
    path.extension()
        .and_then(|e| e.to_str())
        .and_then(Language::from_name)
}

/// Scans `files` with the chosen analyzers.
///
/// # Errors
/// An unknown analyzer, a file that cannot be read.
pub fn scan(files: &[(PathBuf, Language)], analyzers: &[String]) -> Result<ScanOutcome> {
    for analyzer in analyzers {
        if !ANALYZERS.contains(&analyzer.as_str()) {
            bail!("unknown analyzer {analyzer:?}; this build has {ANALYZERS:?}");
        }
    }
    let embedded = EmbeddedAnalyzer::builtin().context("loading the embedded rules")?;
    let mut findings = Vec::new();
    for (path, language) in files {
        let source =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        findings.extend(embedded.scan(*language, &path.display().to_string(), &source));
    }
    Ok(ScanOutcome {
        findings,
        files: files.len(),
    })
}

/// The findings in `format`.
pub fn render(outcome: &ScanOutcome, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&outcome.findings)?,
        Format::Sarif => serde_json::to_string_pretty(&to_sarif(&outcome.findings))?,
        Format::Table => {
            let mut out = String::new();
            for f in &outcome.findings {
                out.push_str(&format!(
                    "{}:{}:{}  {}  {}  {}  [{}]\n",
                    f.path,
                    f.span.start_line,
                    f.span.start_column,
                    f.cwe,
                    f.severity.sarif_level(),
                    f.message,
                    f.rule_id,
                ));
            }
            out.push_str(&format!(
                "{} finding(s) in {} file(s)\n",
                outcome.findings.len(),
                outcome.files
            ));
            out
        }
    })
}
