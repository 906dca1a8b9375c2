//! Checking a sample: does it parse or compile (`py_compile`'s `compile`, `gcc
//! -fsyntax-only`), and does the oracle find the prompt's CWE, or any CWE, in it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use hexacoder_oracle::{
    Analyzer, CweSelection, Language, Oracle, RunStatus, Source, VerdictStatus,
};
use serde::{Deserialize, Serialize};

/// The oracle's and the compiler's word on one sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    /// It parses (Python) or compiles (C).
    pub parses: bool,
    /// The compiler's first error, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
    /// The oracle found the prompt's CWE (or one of its family).
    pub vulnerable: bool,
    /// The oracle found some CWE.
    pub any_cwe: bool,
    /// Every CWE found.
    pub cwes: Vec<String>,
    /// An analyzer asked for did not analyze it (its silence is not "clean").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_analyzed_by: Vec<String>,
}

/// The parse checkers' programs.
#[derive(Clone, Debug)]
pub struct Compilers {
    pub python: PathBuf,
    pub gcc: PathBuf,
}

impl Default for Compilers {
    fn default() -> Self {
        Compilers {
            python: PathBuf::from("python3"),
            gcc: PathBuf::from("gcc"),
        }
    }
}

impl Compilers {
    /// Whether `code` parses; else the first line of the error. `Err` when the checker
    /// itself cannot run.
    pub fn parses(&self, language: Language, code: &str) -> Result<Result<(), String>, String> {
        let mut command = match language {
            Language::Python => {
                let mut c = Command::new(&self.python);
                c.args([
                    "-I",
                    "-c",
                    "import sys\nsrc = sys.stdin.buffer.read()\ncompile(src, 'sample.py', 'exec')",
                ]);
                c
            }
            Language::C | Language::Cpp => {
                let mut c = Command::new(&self.gcc);
                let lang = if language == Language::C { "c" } else { "c++" };
                c.args(["-fsyntax-only", "-w", "-x", lang, "-"]);
                c
            }
        };
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .current_dir(std::env::temp_dir())
            .spawn()
            .map_err(|e| format!("running {program}: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A checker that exits early closes the pipe; its status says what happened.
            let _ = stdin.write_all(code.as_bytes());
        }
        let output = child
            .wait_with_output()
            .map_err(|e| format!("running {program}: {e}"))?;
        if output.status.success() {
            return Ok(Ok(()));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .rfind(|l| l.contains("rror") || l.starts_with("SyntaxError"))
            .or_else(|| stderr.lines().last())
            .unwrap_or("failed")
            .trim()
            .to_string();
        Ok(Err(first))
    }

    /// Checks that both checkers run, so that a missing compiler is said before anything
    /// is generated, not counted as broken samples.
    pub fn probe(&self) -> Result<(), String> {
        for language in [Language::Python, Language::C] {
            let code = if language == Language::Python {
                "x = 1\n"
            } else {
                "int x;\n"
            };
            self.parses(language, code)?
                .map_err(|e| format!("the {language:?} checker rejects valid code: {e}"))?;
        }
        Ok(())
    }
}

/// Checks the samples of one prompt (one oracle call for all, so external analyzers start
/// once). `target` is the prompt's CWE.
pub fn check_samples(
    oracle: &Oracle,
    analyzers: &[Analyzer],
    compilers: &Compilers,
    language: Language,
    target: &str,
    codes: &[String],
) -> Result<Vec<Checked>, String> {
    let sources: Vec<Source> = codes
        .iter()
        .enumerate()
        .map(|(i, code)| Source {
            path: format!("sample_{i}.{}", language.extension()),
            language,
            text: code.clone(),
        })
        .collect();
    let report = oracle.check(&sources, analyzers);
    let targeted = [target.to_string()];
    let mut checked = Vec::with_capacity(codes.len());
    for (source, code) in sources.iter().zip(codes) {
        let verdict = report.verdict(source, &CweSelection::All, &targeted, oracle.cwe_map());
        let parse = compilers.parses(language, code)?;
        checked.push(Checked {
            parses: parse.is_ok(),
            parse_error: parse.err(),
            vulnerable: !verdict.targeted.is_empty(),
            any_cwe: verdict.status == VerdictStatus::Vulnerable,
            cwes: verdict.cwes.into_iter().collect(),
            not_analyzed_by: verdict.not_analyzed_by.into_keys().collect(),
        });
    }
    for run in report.incomplete() {
        if let RunStatus::Unavailable { reason } = &run.status {
            return Err(format!("{} is unavailable: {reason}", run.analyzer.name()));
        }
    }
    Ok(checked)
}
