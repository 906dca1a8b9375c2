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
    assert!(stdout.contains("0 finding(s) in 1 file(s)"), "{stdout}");

    let (code, stdout, _) = scan(&[&root.display().to_string()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("CWE-078") && stdout.contains("CWE-787"),
        "{stdout}"
    );
    assert!(stdout.contains("2 finding(s) in 3 file(s)"), "{stdout}");

    let (code, stdout, _) = scan(&["--format", "json", &path("bad.py")]);
    assert_eq!(code, 1);
    let findings: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(findings[0]["cwe"], "CWE-078");
    assert_eq!(findings[0]["span"]["start_line"], 3);

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
}
