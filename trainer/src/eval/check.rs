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
        let command = match language {
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
        let (_, output) = run_with_input(command, code, Stdio::null())?;
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

    /// The standard-library names `code` uses that its modules do not define (Python: a
    /// small model's "fix" calling `subprocess.listescape` parses, and passes the oracle, but
    /// raises at run time). Only modules of Python's standard library are imported to look;
    /// third-party ones may not be installed here and are not judged. C: none.
    /// `Err` when the checker itself cannot run.
    pub fn unknown_names(&self, language: Language, code: &str) -> Result<Vec<String>, String> {
        if language != Language::Python {
            return Ok(Vec::new());
        }
        let mut command = Command::new(&self.python);
        command.args(["-I", "-c", UNKNOWN_NAMES]);
        let (program, output) = run_with_input(command, code, Stdio::piped())?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!(
                "{program}'s name check failed: {}",
                stderr.lines().last().unwrap_or("no message")
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
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

/// Runs a checker in the temporary directory with `input` on its stdin: its program's name
/// (for messages) and its output. The checkers read all of their input before they write.
fn run_with_input(
    mut command: Command,
    input: &str,
    stdout: Stdio,
) -> Result<(String, std::process::Output), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .current_dir(std::env::temp_dir())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A checker that exits early closes the pipe; its status says what happened.
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("running {program}: {e}"))?;
    Ok((program, output))
}

/// Prints, one per line, the dotted names `code` (stdin) takes from standard-library modules
/// that do not exist: `from m import x` and `m.x.y` chains through modules, where `m` is not
/// rebound. Modules with side effects on import are left alone.
const UNKNOWN_NAMES: &str = r#"
import ast, importlib, sys
try:
    tree = ast.parse(sys.stdin.buffer.read())
except (SyntaxError, ValueError):
    sys.exit(0)
SKIP = {"antigravity", "this", "turtle", "turtledemo", "tkinter", "idlelib", "__main__",
        "__hello__", "__phello__"}
def stdlib(name):
    top = name.split(".")[0]
    return top in sys.stdlib_module_names and top not in SKIP
def load(name):
    try:
        return importlib.import_module(name)
    except Exception:
        return None
def attribute(module, name, attr):
    if hasattr(module, attr):
        return getattr(module, attr)
    return load(name + "." + attr)
bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
bound |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
bound |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
modules, missing = {}, set()
for node in ast.walk(tree):
    if isinstance(node, ast.Import):
        for a in node.names:
            if stdlib(a.name):
                name = a.name if a.asname else a.name.split(".")[0]
                modules[a.asname or name] = name
                if load(a.name) is None:
                    missing.add(a.name)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and stdlib(node.module):
        module = load(node.module)
        if module is None:
            missing.add(node.module)
            continue
        for a in node.names:
            if a.name != "*" and attribute(module, node.module, a.name) is None:
                missing.add(node.module + "." + a.name)
for node in ast.walk(tree):
    if not isinstance(node, ast.Attribute):
        continue
    chain, inner = [node.attr], node.value
    while isinstance(inner, ast.Attribute):
        chain.insert(0, inner.attr)
        inner = inner.value
    if not isinstance(inner, ast.Name) or inner.id not in modules or inner.id in bound:
        continue
    name = modules[inner.id]
    value = load(name)
    for attr in chain:
        if value is None or not isinstance(value, type(sys)):
            break
        found = attribute(value, name, attr)
        if found is None:
            missing.add(name + "." + attr)
        value, name = found, name + "." + attr
print("\n".join(sorted(missing)))
"#;

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

#[cfg(test)]
mod tests {
    use hexacoder_oracle::Language;

    use super::Compilers;

    #[test]
    fn names_the_standard_library_does_not_define_are_found() {
        let code = "import subprocess\nimport os.path\nimport re as rx\nimport json\n\
                    from os import getcwd, pathx\nimport flask\n\ndef run(cmd, json):\n\
                    \x20   subprocess.run(subprocess.listescape(cmd))\n\
                    \x20   os.path.joinx(getcwd())\n    rx.compile(cmd)\n    flask.anything(json.nothere)\n";
        let found = Compilers::default()
            .unknown_names(Language::Python, code)
            .expect("python3 runs");
        // `flask` is not the standard library's and `json` is a parameter here: not judged.
        assert_eq!(
            found,
            ["os.path.joinx", "os.pathx", "subprocess.listescape"]
        );
        let clean = "import subprocess\n\ndef run(cmd):\n    subprocess.run([cmd], check=True)\n";
        assert!(
            Compilers::default()
                .unknown_names(Language::Python, clean)
                .expect("python3 runs")
                .is_empty()
        );
        assert!(
            Compilers::default()
                .unknown_names(Language::C, "int main(void) { return 0; }")
                .expect("no check for C")
                .is_empty()
        );
    }
}
