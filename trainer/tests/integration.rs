//! `hexacoder-train scan` as a user runs it: exit codes and every output format.

use std::process::Command;

fn scan(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_hexacoder-train"))
        .arg("scan")
        .args(args)
        .output()
        .expect("run hexacoder-train");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn scan_exits_by_what_it_found_and_writes_each_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(
        root.join("bad.py"),
        "import os\ndef f(c):\n    os.system(c)\n",
    )
    .expect("write");
    std::fs::create_dir(root.join("src")).expect("mkdir");
    std::fs::write(
        root.join("src/bad.c"),
        "int main(void) { char b[9]; gets(b); }\n",
    )
    .expect("write");
    std::fs::write(
        root.join("good.py"),
        "import json\nprint(json.loads('1'))\n",
    )
    .expect("write");
    std::fs::write(root.join("notes.txt"), "os.system(x)\n").expect("write");
    let path = |name: &str| root.join(name).display().to_string();

    let (code, stdout, _) = scan(&[&path("good.py")]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("0 finding(s) in 1 file(s): 0 vulnerable, 1 clean"),
        "{stdout}"
    );

    let (code, stdout, _) = scan(&[&root.display().to_string()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("CWE-078") && stdout.contains("CWE-787"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 finding(s) in 3 file(s): 2 vulnerable, 1 clean"),
        "{stdout}"
    );
    assert!(stdout.contains("embedded: ran: 2 finding(s)"), "{stdout}");

    let (code, stdout, _) = scan(&["--format", "json", &path("bad.py")]);
    assert_eq!(code, 1);
    let outcome: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(outcome["findings"][0]["cwe"], "CWE-078");
    assert_eq!(outcome["findings"][0]["span"]["start_line"], 3);
    assert_eq!(outcome["analyzers"][0]["status"]["state"], "ran");
    assert_eq!(outcome["verdicts"][0]["status"], "vulnerable");

    // Findings outside the chosen CWEs make nothing vulnerable.
    let (code, stdout, _) = scan(&["--cwes", "CWE-89", &path("bad.py")]);
    assert_eq!(code, 0, "{stdout}");

    let (code, stdout, _) = scan(&["--format", "sarif", &path("src/bad.c")]);
    assert_eq!(code, 1);
    let sarif: serde_json::Value = serde_json::from_str(&stdout).expect("sarif");
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(
        sarif["runs"][0]["results"][0]["properties"]["cwe"],
        "CWE-787"
    );
}

#[test]
fn scan_errors_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.py").display().to_string();
    let (code, _, stderr) = scan(&[&missing]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("nope.py") && stderr.contains("does not exist"),
        "{stderr}"
    );

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "x").expect("write");
    let (code, _, stderr) = scan(&[&text.display().to_string()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("notes.txt"), "{stderr}");

    let (code, _, stderr) = scan(&[
        "--analyzers",
        "embedded,nosuch",
        &dir.path().display().to_string(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("\"nosuch\""), "{stderr}");

    let good = dir.path().join("good.py");
    std::fs::write(&good, "print(1)\n").expect("write");
    let good = good.display().to_string();
    for (args, expected) in [
        (vec!["--cwes", "injection"], "\"injection\" is not a CWE"),
        (vec!["--analyzers", "semgrep"], "--semgrep-rules"),
        (
            vec!["--program", "embedded=/bin/true"],
            "not an external analyzer",
        ),
        (vec!["--program", "bandit"], "NAME=PATH"),
        (vec!["--timeout", "0"], "--timeout 0"),
    ] {
        let mut all = args.clone();
        all.push(&good);
        let (code, _, stderr) = scan(&all);
        assert_eq!(code, 2, "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn an_analyzer_that_is_not_installed_is_never_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.py");
    std::fs::write(&good, "import json\nprint(json.loads('1'))\n").expect("write");
    let (code, stdout, stderr) = scan(&[
        "--analyzers",
        "embedded,bandit",
        "--program",
        "bandit=/nonexistent/bandit",
        &good.display().to_string(),
    ]);
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.contains("bandit: UNAVAILABLE"), "{stdout}");
    assert!(stdout.contains("0 clean, 1 not fully analyzed"), "{stdout}");
    assert!(stderr.contains("not counted as clean"), "{stderr}");

    let (code, stdout, _) = scan(&[
        "--format",
        "sarif",
        "--analyzers",
        "embedded,bandit",
        "--program",
        "bandit=/nonexistent/bandit",
        &good.display().to_string(),
    ]);
    assert_eq!(code, 2);
    let sarif: serde_json::Value = serde_json::from_str(&stdout).expect("sarif");
    assert_eq!(
        sarif["runs"][1]["invocations"][0]["executionSuccessful"],
        false
    );
}

/// The external analyzers through the CLI, when installed (the full suite installs them).
#[test]
fn scan_with_every_installed_analyzer_attributes_each_finding() {
    let program = |name: &str| {
        std::env::var(format!("HEXACODER_{}", name.to_ascii_uppercase()))
            .unwrap_or_else(|_| name.to_string())
    };
    // semgrep's --version alone checks for a newer release online, which hangs offline.
    let installed = |program: &str| {
        Command::new(program)
            .args(
                ["--version", "--disable-version-check"]
                    .iter()
                    .take(if program.ends_with("semgrep") { 2 } else { 1 }),
            )
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let tools = ["semgrep", "bandit", "cppcheck", "flawfinder", "gcc"];
    let missing: Vec<&str> = tools
        .into_iter()
        .filter(|t| !installed(&program(t)))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() != Some("1"),
            "the full suite needs {missing:?} (scripts/test installs them)"
        );
        eprintln!("skipping: {missing:?} not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("app.py"),
        "import os\nfrom flask import request\n\ndef f():\n    os.system('ls ' + request.args['d'])\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("copy.c"),
        "#include <stdlib.h>\n#include <string.h>\nvoid f(const char *s) {\n    char b[8];\n    strcpy(b, s);\n    char *p = malloc(4);\n    free(p);\n    free(p);\n}\n",
    )
    .expect("write");
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/semgrep-rules");
    let mut args = vec![
        "--format".to_string(),
        "json".into(),
        "--analyzers".into(),
        "embedded,semgrep,bandit,cppcheck,flawfinder,gcc".into(),
        "--semgrep-rules".into(),
        rules.display().to_string(),
        "--timeout".into(),
        "600".into(),
    ];
    for tool in tools {
        args.push("--program".into());
        args.push(format!("{tool}={}", program(tool)));
    }
    args.push(dir.path().display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = scan(&args);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let outcome: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let mut attributed: Vec<(String, String)> = outcome["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            let file = f["path"]
                .as_str()
                .unwrap_or_default()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            (f["analyzer"].as_str().unwrap_or_default().to_string(), file)
        })
        .collect();
    attributed.sort();
    attributed.dedup();
    for expected in [
        ("embedded", "app.py"),
        ("embedded", "copy.c"),
        ("semgrep", "app.py"),
        ("semgrep", "copy.c"),
        ("bandit", "app.py"),
        ("cppcheck", "copy.c"),
        ("flawfinder", "copy.c"),
        ("gcc", "copy.c"),
    ] {
        assert!(
            attributed.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} missing from {attributed:?}"
        );
    }
    for run in outcome["analyzers"].as_array().expect("analyzers") {
        assert_eq!(run["status"]["state"], "ran", "{run}");
    }
    let verdicts = outcome["verdicts"].as_array().expect("verdicts");
    assert!(
        verdicts.iter().all(|v| v["status"] == "vulnerable"),
        "{verdicts:?}"
    );
}

mod eval;
mod support;
mod synth;
mod train;
