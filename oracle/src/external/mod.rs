//! External analyzers, run as subprocesses in a temp workdir under one deadline, their
//! reports normalized to [`Finding`]s through the [`CweMap`].
//!
//! Each tool's file holds its command line and the parser for its output; this module holds
//! what they share: the workdir, the process runner, and path and CWE mapping.

mod bandit;
mod codeql;
mod cppcheck;
mod flawfinder;
mod gcc;
mod semgrep;

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::analyzer::{Analyzer, AnalyzerRun, RunStatus, Skipped, Source};
use crate::cwe_map::{CweMap, Mapped};
use crate::finding::{Finding, Severity, Span};

/// Settings for the external analyzers.
#[derive(Clone, Debug)]
pub struct ExternalOptions {
    /// How long one analyzer may take over all the files of one check.
    pub timeout: Duration,
    /// The rules directory `semgrep --config` reads (required to run semgrep: fetching
    /// rules from a registry at run time is not something an oracle may do).
    pub semgrep_rules: Option<PathBuf>,
    /// flawfinder's `--minlevel` (0–5): lower levels are mostly "this function can be
    /// misused" notes.
    pub flawfinder_min_level: u8,
    /// bandit's `--severity-level` (`low`, `medium`, `high`): low is mostly "this module is
    /// imported" notes.
    pub bandit_min_severity: String,
    /// Programs other than the ones on PATH, by analyzer.
    pub programs: Vec<(Analyzer, PathBuf)>,
}

impl Default for ExternalOptions {
    fn default() -> Self {
        ExternalOptions {
            timeout: Duration::from_secs(120),
            semgrep_rules: None,
            flawfinder_min_level: 3,
            bandit_min_severity: "medium".into(),
            programs: Vec::new(),
        }
    }
}

impl ExternalOptions {
    /// The analyzer's program: the one configured, else its name on PATH.
    fn program(&self, analyzer: Analyzer) -> PathBuf {
        self.programs
            .iter()
            .find(|(a, _)| *a == analyzer)
            .map_or_else(|| PathBuf::from(analyzer.name()), |(_, p)| p.clone())
    }
}

/// One report as a tool gave it, before its path and CWE are mapped.
#[derive(Clone, Debug)]
pub(crate) struct RawReport {
    /// The path the tool printed (relative to the sources directory, or absolute).
    pub path: String,
    pub rule_id: String,
    pub message: String,
    pub span: Span,
    pub severity: Severity,
    /// The CWE the tool attached, in any spelling.
    pub cwe: Option<String>,
}

/// What one tool run produced.
#[derive(Default)]
pub(crate) struct ToolOutput {
    pub reports: Vec<RawReport>,
    /// Files the tool could not analyze: (the path it printed, why).
    pub skipped: Vec<(String, String)>,
}

/// Why a tool produced no output.
#[derive(Debug)]
pub(crate) enum ToolError {
    /// The program is not installed.
    Unavailable(String),
    /// It ran past the deadline and was killed.
    TimedOut,
    /// It ran and failed, or printed something we cannot read.
    Failed(String),
}

/// The sources, written into a temp directory as `src/s<i>/<name>` so that every report maps
/// back to its source by index, whatever the original paths were.
pub(crate) struct Workdir {
    dir: tempfile::TempDir,
    /// Per source: its path relative to [`Workdir::sources`].
    pub files: Vec<PathBuf>,
}

impl Workdir {
    fn new(sources: &[Source]) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hexacoder-oracle")
            .tempdir()?;
        std::fs::create_dir(dir.path().join("src"))?;
        std::fs::create_dir(dir.path().join("out"))?;
        let mut files = Vec::with_capacity(sources.len());
        for (i, source) in sources.iter().enumerate() {
            let relative = PathBuf::from(format!("s{i}")).join(file_name(source));
            let full = dir.path().join("src").join(&relative);
            std::fs::create_dir(full.parent().unwrap_or(dir.path()))?;
            std::fs::write(&full, &source.text)?;
            files.push(relative);
        }
        Ok(Workdir { dir, files })
    }

    /// Where the sources are; tools run here and see paths relative to it.
    pub fn sources(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    /// A scratch directory for the tools' outputs, outside the sources.
    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Runs `analyzer`'s program with `args` in the sources directory.
    pub fn run(
        &self,
        analyzer: Analyzer,
        options: &ExternalOptions,
        args: &[OsString],
        deadline: Instant,
    ) -> Result<Finished, ToolError> {
        run_process(
            &options.program(analyzer),
            args,
            &self.sources(),
            &self.out(),
            deadline,
        )
    }

    /// The index of the source a tool's path names.
    fn source_index(&self, printed: &str) -> Option<usize> {
        let path = Path::new(printed);
        let path = path.strip_prefix(self.sources()).unwrap_or(path);
        let mut components = path.components().filter_map(|c| match c {
            std::path::Component::Normal(part) => part.to_str(),
            _ => None,
        });
        let index: usize = components.next()?.strip_prefix('s')?.parse().ok()?;
        (index < self.files.len()).then_some(index)
    }
}

/// The source's base name, kept readable for the tools' messages but limited to safe
/// characters, with the extension its language needs (tools pick the language by it).
fn file_name(source: &Source) -> String {
    let base = Path::new(&source.path)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("source");
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        name.push_str("source");
    }
    format!("{name}.{}", source.language.extension())
}

/// A finished process: its status and what it printed.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// A failure of `tool` that says how it exited and what it printed last.
    pub fn failure(&self, tool: &str, what: &str) -> ToolError {
        ToolError::Failed(format!(
            "{tool} exited with {} {what}: {}",
            self.status,
            self.stderr_tail()
        ))
    }

    /// Standard output as JSON, or a failure.
    pub fn json(&self, tool: &str) -> Result<serde_json::Value, ToolError> {
        serde_json::from_str(&self.stdout).map_err(|_| self.failure(tool, "and no JSON"))
    }

    /// The end of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = self.stderr.trim();
        let start = text.char_indices().rev().nth(600).map_or(0, |(i, _)| i);
        text[start..].to_string()
    }
}

/// Runs `program` in `cwd` until it exits or `deadline` passes; then it and every process it
/// started are killed. Output goes to files, so a chatty tool never blocks on a full pipe.
pub(crate) fn run_process(
    program: &Path,
    args: &[OsString],
    cwd: &Path,
    out: &Path,
    deadline: Instant,
) -> Result<Finished, ToolError> {
    use wait_timeout::ChildExt;
    let name = program.display().to_string();
    let stdout_path = out.join(format!("{}.stdout", unique_stem()));
    let stderr_path = stdout_path.with_extension("stderr");
    let io_error = |e: std::io::Error| ToolError::Failed(format!("running {name}: {e}"));
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).map_err(io_error)?)
        .stderr(File::create(&stderr_path).map_err(io_error)?);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let mut child = command.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ToolError::Unavailable(format!("`{name}` is not installed (not found on PATH)"))
        } else {
            io_error(e)
        }
    })?;
    let left = deadline.saturating_duration_since(Instant::now());
    let status = match child.wait_timeout(left).map_err(io_error)? {
        Some(status) => status,
        None => {
            kill_tree(&mut child);
            return Err(ToolError::TimedOut);
        }
    };
    let read = |path: &Path| {
        std::fs::read(path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(io_error)
    };
    Ok(Finished {
        status,
        stdout: read(&stdout_path)?,
        stderr: read(&stderr_path)?,
    })
}

fn unique_stem() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("run{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Kills the child's whole process group: semgrep, CodeQL and gcc run helpers of their own.
fn kill_tree(child: &mut std::process::Child) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs one external analyzer on the sources in its languages.
pub(crate) fn run(
    analyzer: Analyzer,
    sources: &[Source],
    options: &ExternalOptions,
    map: &CweMap,
) -> AnalyzerRun {
    let started = Instant::now();
    let mut run = AnalyzerRun::new(analyzer);
    let applicable: Vec<usize> = (0..sources.len())
        .filter(|&i| analyzer.handles(sources[i].language))
        .collect();
    if applicable.is_empty() {
        run.status = RunStatus::NotApplicable;
        return run;
    }
    let result = Workdir::new(sources)
        .map_err(|e| ToolError::Failed(format!("writing the sources to a temp dir: {e}")))
        .and_then(|workdir| {
            let deadline = started + options.timeout;
            let output = match analyzer {
                Analyzer::Semgrep => semgrep::run(&workdir, &applicable, options, deadline),
                Analyzer::Bandit => bandit::run(&workdir, &applicable, options, deadline),
                Analyzer::Cppcheck => cppcheck::run(&workdir, &applicable, options, deadline),
                Analyzer::Flawfinder => flawfinder::run(&workdir, &applicable, options, deadline),
                Analyzer::Gcc => gcc::run(&workdir, &applicable, sources, options, deadline),
                Analyzer::Codeql => codeql::run(&workdir, &applicable, sources, options, deadline),
                Analyzer::Embedded => Err(ToolError::Failed("not an external analyzer".into())),
            }?;
            Ok((workdir, output))
        });
    match result {
        Ok((workdir, output)) => {
            run.status = RunStatus::Ran;
            for (path, reason) in output.skipped {
                if let Some(i) = workdir.source_index(&path) {
                    run.skipped.push(Skipped {
                        path: sources[i].path.clone(),
                        reason,
                    });
                }
            }
            for report in output.reports {
                let Some(i) = workdir.source_index(&report.path) else {
                    continue;
                };
                match map.map(analyzer.name(), &report.rule_id, report.cwe.as_deref()) {
                    Mapped::Cwe(cwe) => run.findings.push(Finding {
                        cwe,
                        rule_id: report.rule_id,
                        message: report.message,
                        path: sources[i].path.clone(),
                        span: report.span,
                        severity: report.severity,
                        analyzer: analyzer.name().into(),
                    }),
                    Mapped::Skip => run.skipped.push(Skipped {
                        path: sources[i].path.clone(),
                        reason: format!("{}: {}", report.rule_id, report.message),
                    }),
                    Mapped::Ignore => run.unmapped += 1,
                }
            }
            run.findings.sort_by(|a, b| {
                (&a.path, a.span.start_line, a.span.start_column, &a.rule_id).cmp(&(
                    &b.path,
                    b.span.start_line,
                    b.span.start_column,
                    &b.rule_id,
                ))
            });
            run.skipped.sort_by(|a, b| a.path.cmp(&b.path));
            run.skipped.dedup_by(|a, b| a.path == b.path);
        }
        Err(ToolError::Unavailable(reason)) => run.status = RunStatus::Unavailable { reason },
        Err(ToolError::TimedOut) => {
            run.status = RunStatus::TimedOut {
                seconds: options.timeout.as_secs_f64(),
            }
        }
        Err(ToolError::Failed(reason)) => run.status = RunStatus::Failed { reason },
    }
    run.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    run
}

/// `args` as the `OsString`s `Command` takes, with the sources' relative paths appended.
pub(crate) fn with_files(args: &[&str], workdir: &Workdir, applicable: &[usize]) -> Vec<OsString> {
    args.iter()
        .map(OsString::from)
        .chain(
            applicable
                .iter()
                .map(|&i| workdir.files[i].clone().into_os_string()),
        )
        .collect()
}
