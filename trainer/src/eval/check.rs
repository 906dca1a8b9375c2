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
        self.python_lines(UNKNOWN_NAMES, "name check", code)
    }

    /// The `subprocess` calls in `code` that run a whole command line without a shell
    /// (Python): with `shell` absent or false, a string argument is the program's name, so
    /// `subprocess.run(f"ping -c 1 {host}")` or `subprocess.run(request.form["cmd"])` runs
    /// nothing with arguments. A small model's "fix" for command injection drops `shell=True`
    /// and keeps the string: it passes the oracle and no longer works. A string is a literal
    /// with a space, an f-string, concatenation or `%`/`.format` with such a literal,
    /// `' '.join`, `shlex.join`, `subprocess.list2cmdline`, request data, or a name assigned
    /// only such values in the function. Names it cannot see (parameters) are not judged.
    /// Each call comes back as its source on one line. C: none. `Err` when the checker cannot
    /// run.
    pub fn string_commands(&self, language: Language, code: &str) -> Result<Vec<String>, String> {
        if language != Language::Python {
            return Ok(Vec::new());
        }
        self.python_lines(STRING_COMMANDS, "command check", code)
    }

    /// The non-empty lines `script` prints for `code` on its stdin, run by an isolated
    /// Python; `Err` naming the `check` when it fails.
    fn python_lines(&self, script: &str, check: &str, code: &str) -> Result<Vec<String>, String> {
        let mut command = Command::new(&self.python);
        command.args(["-I", "-c", script]);
        let (program, output) = run_with_input(command, code, Stdio::piped())?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!(
                "{program}'s {check} failed: {}",
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

/// Prints, one per line, the `subprocess` calls of `code` (stdin) that pass a command line as
/// one string without a shell ([`Compilers::string_commands`]).
const STRING_COMMANDS: &str = r#"
import ast, sys
source = sys.stdin.buffer.read().decode("utf-8", "replace")
try:
    tree = ast.parse(source)
except (SyntaxError, ValueError):
    sys.exit(0)
RUNNERS = {"run", "call", "check_call", "check_output", "Popen"}
subprocess_names = {"subprocess"}
runner_names = set()
for node in ast.walk(tree):
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name == "subprocess":
                subprocess_names.add(a.asname or "subprocess")
    elif isinstance(node, ast.ImportFrom) and node.module == "subprocess":
        for a in node.names:
            if a.name in RUNNERS:
                runner_names.add(a.asname or a.name)
def is_runner(func):
    if isinstance(func, ast.Attribute):
        return func.attr in RUNNERS and isinstance(func.value, ast.Name) and func.value.id in subprocess_names
    return isinstance(func, ast.Name) and func.id in runner_names
def spaced(node):
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and any(c.isspace() for c in node.value.strip())
def from_request(node):
    while isinstance(node, (ast.Subscript, ast.Call, ast.Attribute)):
        node = node.value if not isinstance(node, ast.Call) else node.func
    return isinstance(node, ast.Name) and node.id == "request"
def stringish(node, assigned):
    if spaced(node):
        return True
    if isinstance(node, ast.JoinedStr):
        return any(spaced(v) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        parts, stack = [], [node]
        while stack:
            n = stack.pop()
            if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Mod)):
                stack += [n.left, n.right]
            else:
                parts.append(n)
        return any(spaced(p) or (isinstance(p, ast.JoinedStr) and stringish(p, assigned)) for p in parts)
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "format" and spaced(f.value):
            return True
        if isinstance(f, ast.Attribute) and f.attr == "join" and isinstance(f.value, ast.Constant) and f.value.value == " ":
            return True
        if isinstance(f, ast.Attribute) and f.attr in ("join", "list2cmdline") and isinstance(f.value, ast.Name) and f.value.id in ("shlex", "subprocess") and (f.attr == "join") == (f.value.id == "shlex"):
            return True
    if from_request(node):
        return True
    if isinstance(node, ast.Name) and node.id in assigned:
        values = assigned[node.id]
        return bool(values) and all(stringish(v, {}) for v in values)
    return False
def scopes(tree):
    yield tree
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield n
def own_nodes(scope):
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(n))
found = []
for scope in scopes(tree):
    assigned = {}
    nodes = list(own_nodes(scope))
    for n in nodes:
        if isinstance(n, ast.Assign):
            for t in n.targets:
                if isinstance(t, ast.Name):
                    assigned.setdefault(t.id, []).append(n.value)
        elif isinstance(n, (ast.AnnAssign, ast.AugAssign)) and isinstance(n.target, ast.Name) and n.value is not None:
            assigned.setdefault(n.target.id, []).append(n.value)
        elif isinstance(n, (ast.For, ast.withitem, ast.NamedExpr)):
            # Bound by a loop, `with ... as` or `:=`: what it holds is not seen here.
            target = getattr(n, "target", None) or getattr(n, "optional_vars", None)
            if isinstance(target, ast.Name):
                assigned.setdefault(target.id, []).append(ast.List(elts=[], ctx=ast.Load()))
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for a in scope.args.args + scope.args.kwonlyargs + scope.args.posonlyargs:
            assigned.pop(a.arg, None)
    for n in nodes:
        if not (isinstance(n, ast.Call) and is_runner(n.func)):
            continue
        keywords = {k.arg: k.value for k in n.keywords if k.arg}
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value in (False, None, 0)):
            continue
        command = n.args[0] if n.args else keywords.get("args")
        if command is not None and stringish(command, assigned):
            found.append(" ".join((ast.get_source_segment(source, n) or "").split()))
print("\n".join(sorted(set(found))))
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
    fn command_lines_run_without_a_shell_are_found() {
        let code = "import subprocess\nfrom subprocess import Popen as P\nfrom flask import request\n\n\
                    def ping(host, cmd):\n\
                    \x20   subprocess.run(f'ping -c 1 {host}')\n\
                    \x20   subprocess.call('ls -l ' + host, shell=False)\n\
                    \x20   action = request.form.get('action', '')\n\
                    \x20   subprocess.run(action, shell=False, capture_output=True)\n\
                    \x20   line = subprocess.list2cmdline([cmd])\n\
                    \x20   P(line)\n\
                    \x20   subprocess.run(cmd)\n\
                    \x20   subprocess.run(['ping', '-c', '1', host])\n\
                    \x20   subprocess.run('ls')\n\
                    \x20   subprocess.run(f'ping -c 1 {host}', shell=True)\n\
                    \x20   mixed = 'ls -l'\n\
                    \x20   mixed = ['ls', '-l']\n\
                    \x20   subprocess.run(mixed)\n";
        let found = Compilers::default()
            .string_commands(Language::Python, code)
            .expect("python3 runs");
        // A parameter, a list, a one-word program, `shell=True` (the oracle's business) and a
        // name that may hold a list are not judged.
        assert_eq!(
            found,
            [
                "P(line)",
                "subprocess.call('ls -l ' + host, shell=False)",
                "subprocess.run(action, shell=False, capture_output=True)",
                "subprocess.run(f'ping -c 1 {host}')",
            ]
        );
        assert!(
            Compilers::default()
                .string_commands(Language::C, "int main(void) { return 0; }")
                .expect("no check for C")
                .is_empty()
        );
    }

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
