//! Each external analyzer adapter against the real tool: a vulnerable and a fixed source, the
//! CWE each report maps to, paths mapped back, and what the oracle does with a tool that is
//! missing, fails to parse a file, or hangs.
//!
//! The tools come from PATH or from `HEXACODER_<TOOL>` (scripts/test installs semgrep and
//! bandit in a venv and points these at it; .ci/run installs cppcheck and flawfinder with apt).
//! In the full suite (`HEXACODER_TEST_MODELS=1`) a missing tool fails its test; elsewhere the
//! test says it is skipping.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hexacoder_oracle::{
    Analyzer, CweMap, CweSelection, ExternalOptions, Language, Oracle, Report, RunStatus, Source,
    VerdictStatus,
};

const VULNERABLE_PY: &str = "import os\nimport yaml\nfrom flask import request\n\n\ndef ping():\n    host = request.args.get(\"host\", \"\")\n    os.system(\"ping -c 1 \" + host)\n    return yaml.load(request.data)\n";
const FIXED_PY: &str = "import subprocess\nimport yaml\nfrom flask import request\n\n\ndef ping():\n    host = request.args.get(\"host\", \"\")\n    subprocess.run([\"ping\", \"-c\", \"1\", host], capture_output=True)\n    return yaml.safe_load(request.data)\n";
const VULNERABLE_C: &str = "#include <stdlib.h>\n#include <string.h>\n\nint copy_name(const char *name) {\n    char buf[16];\n    strcpy(buf, name);\n    char *p = malloc(16);\n    if (p == NULL)\n        return -1;\n    free(p);\n    free(p);\n    return buf[0];\n}\n";
const FIXED_C: &str = "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\nint copy_name(const char *name) {\n    char buf[16];\n    snprintf(buf, sizeof buf, \"%s\", name);\n    char *p = malloc(16);\n    if (p == NULL)\n        return -1;\n    memcpy(p, buf, sizeof buf);\n    puts(p);\n    free(p);\n    return 0;\n}\n";

/// A deadline no healthy run comes near (semgrep takes about a second alone), so that a
/// loaded machine does not fail the tests; the deadline itself has its own test.
const GENEROUS: Duration = Duration::from_secs(600);

fn full_suite() -> bool {
    std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() == Some("1")
}

/// The program for `analyzer`, or `None` (after saying so) when it is not installed outside
/// the full suite.
fn program(analyzer: Analyzer) -> Option<PathBuf> {
    let variable = format!("HEXACODER_{}", analyzer.name().to_ascii_uppercase());
    let program = std::env::var_os(&variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(analyzer.name()));
    // semgrep's --version alone checks for a newer release online, which hangs offline.
    let installed = std::process::Command::new(&program)
        .args(
            ["--version", "--disable-version-check"]
                .iter()
                .take(if analyzer == Analyzer::Semgrep { 2 } else { 1 }),
        )
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Some(program);
    }
    assert!(
        !full_suite(),
        "{} is missing ({} or PATH): the full suite needs it (scripts/test and .ci/run install it)",
        analyzer.name(),
        variable
    );
    eprintln!(
        "skipping: {} is not installed (set {variable})",
        analyzer.name()
    );
    None
}

fn semgrep_rules() -> PathBuf {
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/semgrep-rules");
    assert!(
        rules.is_dir(),
        "{} is missing: the semgrep rules come from ../shared",
        rules.display()
    );
    rules
}

fn source(path: &str, language: Language, text: &str) -> Source {
    Source {
        path: path.into(),
        language,
        text: text.into(),
    }
}

fn oracle(analyzer: Analyzer, program: PathBuf) -> Oracle {
    let options = ExternalOptions {
        semgrep_rules: Some(semgrep_rules()),
        programs: vec![(analyzer, program)],
        timeout: GENEROUS,
        ..ExternalOptions::default()
    };
    Oracle::new(CweMap::builtin().expect("the CWE map loads"), options).expect("rules compile")
}

/// The CWEs the run found in `path`.
fn cwes_in(report: &Report, path: &str) -> Vec<String> {
    let mut cwes: Vec<String> = report
        .findings()
        .filter(|f| f.path == path)
        .map(|f| f.cwe.clone())
        .collect();
    cwes.sort();
    cwes.dedup();
    cwes
}

/// Runs `analyzer` on a vulnerable and a fixed source of `language`: the vulnerable one must
/// carry `expected` CWEs (each found on its line) and the fixed one none.
fn check_pair(analyzer: Analyzer, language: Language, expected: &[(&str, usize)]) {
    let Some(program) = program(analyzer) else {
        return;
    };
    let oracle = oracle(analyzer, program);
    let (vulnerable, fixed, extension) = match language {
        Language::Python => (VULNERABLE_PY, FIXED_PY, "py"),
        _ => (VULNERABLE_C, FIXED_C, "c"),
    };
    // Paths that are not file names on purpose: the adapters must map reports back by source.
    let bad_path = format!("project dir/vulnerable one.{extension}");
    let good_path = format!("fixed.{extension}");
    let sources = [
        source(&bad_path, language, vulnerable),
        source(&good_path, language, fixed),
    ];
    let report = oracle.check(&sources, &[analyzer]);
    let run = &report.runs[0];
    assert_eq!(run.status, RunStatus::Ran, "{run:#?}");
    assert!(run.skipped.is_empty(), "{run:#?}");
    for (cwe, line) in expected {
        assert!(
            run.findings
                .iter()
                .any(|f| f.path == bad_path && f.cwe == *cwe && f.span.start_line == *line),
            "{} should report {cwe} on line {line}: {run:#?}",
            analyzer.name()
        );
    }
    assert!(
        run.findings.iter().all(|f| f.analyzer == analyzer.name()),
        "{run:#?}"
    );
    assert_eq!(
        cwes_in(&report, &good_path),
        Vec::<String>::new(),
        "{run:#?}"
    );

    let map = oracle.cwe_map();
    let bad = report.verdict(&sources[0], &CweSelection::All, &[], map);
    assert_eq!(bad.status, VerdictStatus::Vulnerable, "{bad:#?}");
    assert_eq!(
        bad.by_analyzer.keys().collect::<Vec<_>>(),
        [analyzer.name()]
    );
    let good = report.verdict(&sources[1], &CweSelection::All, &[], map);
    assert_eq!(good.status, VerdictStatus::Clean, "{good:#?}");
}

#[test]
fn semgrep_reports_command_injection_and_passes_the_fix() {
    check_pair(Analyzer::Semgrep, Language::Python, &[("CWE-078", 8)]);
}

#[test]
fn semgrep_runs_its_c_rules_too() {
    check_pair(Analyzer::Semgrep, Language::C, &[("CWE-415", 11)]);
}

#[test]
fn bandit_reports_shell_commands_and_yaml_load() {
    // bandit files yaml.load under CWE-20; the CWE table makes it CWE-502.
    check_pair(
        Analyzer::Bandit,
        Language::Python,
        &[("CWE-078", 8), ("CWE-502", 9)],
    );
}

#[test]
fn cppcheck_reports_a_double_free() {
    check_pair(Analyzer::Cppcheck, Language::C, &[("CWE-415", 11)]);
}

#[test]
fn flawfinder_reports_an_unbounded_copy() {
    check_pair(Analyzer::Flawfinder, Language::C, &[("CWE-120", 6)]);
}

#[test]
fn gcc_analyzer_reports_a_double_free() {
    check_pair(Analyzer::Gcc, Language::C, &[("CWE-415", 11)]);
}

#[test]
fn codeql_is_run_when_installed_and_otherwise_unavailable_never_clean() {
    let installed = std::process::Command::new("codeql")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        check_pair(Analyzer::Codeql, Language::Python, &[("CWE-078", 8)]);
        return;
    }
    let oracle = oracle(Analyzer::Codeql, PathBuf::from("codeql"));
    let sources = [source("fixed.py", Language::Python, FIXED_PY)];
    let report = oracle.check(&sources, &[Analyzer::Codeql]);
    assert!(
        matches!(&report.runs[0].status, RunStatus::Unavailable { reason } if reason.contains("codeql")),
        "{report:#?}"
    );
    let verdict = report.verdict(&sources[0], &CweSelection::All, &[], oracle.cwe_map());
    assert_eq!(verdict.status, VerdictStatus::Unknown);
    assert!(verdict.not_analyzed_by.contains_key("codeql"));
}

#[test]
fn a_missing_program_is_unavailable_and_makes_no_file_clean() {
    for analyzer in Analyzer::ALL.into_iter().skip(1) {
        let oracle = oracle(
            analyzer,
            PathBuf::from("/nonexistent/hexacoder-no-such-tool"),
        );
        let sources = [
            source("fixed.py", Language::Python, FIXED_PY),
            source("fixed.c", Language::C, FIXED_C),
        ];
        let report = oracle.check(&sources, &[Analyzer::Embedded, analyzer]);
        assert!(
            matches!(&report.runs[1].status, RunStatus::Unavailable { reason } if reason.contains("hexacoder-no-such-tool")),
            "{}: {report:#?}",
            analyzer.name()
        );
        for source in &sources {
            let verdict = report.verdict(source, &CweSelection::All, &[], oracle.cwe_map());
            let expected = if analyzer.handles(source.language) {
                VerdictStatus::Unknown
            } else {
                VerdictStatus::Clean
            };
            assert_eq!(
                verdict.status,
                expected,
                "{}: {verdict:#?}",
                analyzer.name()
            );
        }
    }
}

#[test]
fn a_c_fragment_gcc_cannot_compile_is_skipped_not_clean() {
    let Some(program) = program(Analyzer::Gcc) else {
        return;
    };
    let oracle = oracle(Analyzer::Gcc, program);
    let sources = [
        source(
            "fragment.c",
            Language::C,
            "int f(void) {\n    return undeclared_thing;\n}\n",
        ),
        source("fixed.c", Language::C, FIXED_C),
    ];
    let report = oracle.check(&sources, &[Analyzer::Gcc]);
    let run = &report.runs[0];
    assert_eq!(run.status, RunStatus::Ran);
    assert_eq!(run.skipped.len(), 1, "{run:#?}");
    assert_eq!(run.skipped[0].path, "fragment.c");
    assert!(
        run.skipped[0].reason.contains("undeclared_thing"),
        "{run:#?}"
    );
    let map = oracle.cwe_map();
    assert_eq!(
        report
            .verdict(&sources[0], &CweSelection::All, &[], map)
            .status,
        VerdictStatus::Unknown
    );
    assert_eq!(
        report
            .verdict(&sources[1], &CweSelection::All, &[], map)
            .status,
        VerdictStatus::Clean
    );
}

#[cfg(unix)]
#[test]
fn an_analyzer_past_its_deadline_is_killed_with_the_processes_it_started() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // A tool that starts a helper and hangs, as semgrep (semgrep-core) and CodeQL do.
    let pid_file = dir.path().join("helper.pid");
    let script = dir.path().join("hanging-tool");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep 60 &\necho $! > '{}'\nwait\n",
            pid_file.display()
        ),
    )
    .expect("write the script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let options = ExternalOptions {
        timeout: Duration::from_millis(500),
        programs: vec![(Analyzer::Cppcheck, script)],
        ..ExternalOptions::default()
    };
    let oracle = Oracle::new(CweMap::builtin().expect("map"), options).expect("rules");
    let sources = [source("fixed.c", Language::C, FIXED_C)];
    let started = Instant::now();
    let report = oracle.check(&sources, &[Analyzer::Cppcheck]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(report.runs[0].status, RunStatus::TimedOut { .. }),
        "{report:#?}"
    );
    let pid = std::fs::read_to_string(&pid_file).expect("the helper started");
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    // Killed processes may linger a moment as zombies of init; give it a bounded while.
    let gone = (0..50).any(|_| {
        let alive = std::fs::read_to_string(proc_dir.join("stat"))
            .is_ok_and(|stat| stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"));
        if alive {
            std::thread::sleep(Duration::from_millis(100));
        }
        !alive
    });
    assert!(gone, "the helper {} outlived the deadline", pid.trim());
    assert_eq!(
        report
            .verdict(&sources[0], &CweSelection::All, &[], oracle.cwe_map())
            .status,
        VerdictStatus::Unknown
    );
}

#[test]
fn the_combined_verdict_is_the_union_with_attribution() {
    let (Some(bandit), Some(semgrep)) = (program(Analyzer::Bandit), program(Analyzer::Semgrep))
    else {
        return;
    };
    let options = ExternalOptions {
        semgrep_rules: Some(semgrep_rules()),
        programs: vec![(Analyzer::Bandit, bandit), (Analyzer::Semgrep, semgrep)],
        timeout: GENEROUS,
        ..ExternalOptions::default()
    };
    let oracle = Oracle::new(CweMap::builtin().expect("map"), options).expect("rules");
    let sources = [
        source("app.py", Language::Python, VULNERABLE_PY),
        source("ok.py", Language::Python, FIXED_PY),
    ];
    let analyzers = [Analyzer::Embedded, Analyzer::Semgrep, Analyzer::Bandit];
    let report = oracle.check(&sources, &analyzers);
    let map = oracle.cwe_map();
    let all = report.verdict(&sources[0], &CweSelection::All, &["CWE-078".into()], map);
    assert_eq!(all.status, VerdictStatus::Vulnerable);
    for analyzer in ["embedded", "semgrep", "bandit"] {
        assert!(all.by_analyzer.contains_key(analyzer), "{all:#?}");
    }
    assert!(
        all.cwes.contains("CWE-078") && all.cwes.contains("CWE-502"),
        "{all:#?}"
    );
    assert_eq!(all.targeted.iter().collect::<Vec<_>>(), ["CWE-078"]);
    // Only CWE-502 chosen: still vulnerable, through embedded and bandit alone.
    let only = CweSelection::Only(["CWE-502".to_string()].into());
    let deserialization = report.verdict(&sources[0], &only, &[], map);
    assert_eq!(deserialization.status, VerdictStatus::Vulnerable);
    assert_eq!(deserialization.cwes.iter().collect::<Vec<_>>(), ["CWE-502"]);
    let sql_only = CweSelection::Only(["CWE-089".to_string()].into());
    assert_eq!(
        report.verdict(&sources[0], &sql_only, &[], map).status,
        VerdictStatus::Clean
    );
    assert_eq!(
        report
            .verdict(&sources[1], &CweSelection::All, &[], map)
            .status,
        VerdictStatus::Clean
    );
    // SARIF: one run per analyzer, each marked as having run.
    let sarif = report.to_sarif();
    let runs = sarif["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3);
    assert!(
        runs.iter()
            .all(|r| r["invocations"][0]["executionSuccessful"] == true)
    );
}
