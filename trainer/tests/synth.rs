//! `hexacoder-train synth` end to end against our server on SmolLM2: every stage runs, the
//! report's accounting matches the files, and a run killed with SIGKILL resumes.

use std::path::Path;
use std::process::{Command, Stdio};

use super::support::{bench_dir, kill_when_logged, lines, server_binary};

fn synth(out: &Path, cache: &Path) -> Command {
    let shared = bench_dir();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hexacoder-train"));
    command
        .arg("synth")
        .args(["--serve", "smollm2-135m", "--server-arg=--offline"])
        .arg("--server-binary")
        .arg(server_binary())
        .arg("--bench-dir")
        .arg(shared)
        .args([
            "--cwes",
            "python/CWE-078,python/CWE-094,python/CWE-502",
            "--per-cwe",
            "4",
            "--attempts",
            "2",
            "--feedback",
            "raw,explained",
            "--generation-max-tokens",
            "160",
            "--repair-max-tokens",
            "128",
            "--concurrency",
            "2",
        ])
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .stdin(Stdio::null());
    command
}

#[test]
fn synthesis_runs_every_stage_accounts_for_every_sample_and_resumes_after_kill_9() {
    if hexacoder_testkit::real_model("smollm2-135m").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let cache = dir.path().join("cache/answers.jsonl");
    let before = kill_when_logged(synth(&out, &cache), &cache, 3);

    let resumed = synth(&out, &cache).output().expect("runs");
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let answers = lines(&cache);
    assert_eq!(
        &answers[..before.len()],
        &before[..],
        "answers before the kill were kept"
    );
    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");

    // A finished run asks nothing again and writes the same report.
    let again = synth(&out, &cache).output().expect("runs");
    assert!(again.status.success());
    assert_eq!(
        lines(&cache).len(),
        answers.len(),
        "no request was sent again"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).expect("report.md"),
        report
    );

    // The accounting: every generated sample is in samples.jsonl, every flagged one was
    // repaired under both variants, and the report's figures are what the files say.
    let samples: Vec<serde_json::Value> = lines(&out.join("samples.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).expect("a sample"))
        .collect();
    assert_eq!(samples.len(), 12);
    let flagged: Vec<&serde_json::Value> = samples
        .iter()
        .filter(|s| {
            s["dropped"].is_null()
                && s["findings"]["flagged"] == true
                && s["findings"]["parses"] == true
        })
        .collect();
    let repairs: Vec<serde_json::Value> = lines(&out.join("repairs.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).expect("a repair"))
        .collect();
    assert_eq!(repairs.len(), 2 * flagged.len());
    for repair in &repairs {
        let attempts = repair["attempts"].as_array().expect("attempts");
        assert!(!attempts.is_empty() && attempts.len() <= 2);
        for (i, attempt) in attempts.iter().enumerate() {
            assert_eq!(attempt["attempt"], i + 1);
            // A refused attempt says why; an accepted one is the last.
            assert_eq!(
                attempt["accepted"] == true,
                attempt["rejection"].is_null(),
                "{attempt}"
            );
            if attempt["accepted"] == true {
                assert_eq!(i + 1, attempts.len());
            }
        }
        if repair["feedback"] == "explained" {
            assert!(
                attempts.iter().any(|a| a["explanation"].is_string()
                    || a["rejection"]["reason"] == "request_failed"),
                "the explained variant carries an explanation: {repair}"
            );
        }
    }
    let pairs = lines(&out.join("pairs.jsonl"));
    let accepted = repairs
        .iter()
        .filter(|r| {
            r["attempts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["accepted"] == true))
        })
        .count();
    assert!(pairs.iter().filter(|l| !l.is_empty()).count() <= accepted);
    for variant in ["raw/curated", "explained/curated"] {
        let total = report
            .lines()
            .find(|l| l.starts_with(&format!("| {variant} | **total**")))
            .unwrap_or_else(|| panic!("a total row for {variant}: {report}"));
        let cells: Vec<&str> = total.split('|').map(str::trim).collect();
        assert_eq!(cells[5], flagged.len().to_string(), "{total}");
        let mine = repairs
            .iter()
            .filter(|r| {
                format!(
                    "{}/{}",
                    r["feedback"].as_str().unwrap_or(""),
                    r["hints"].as_str().unwrap_or("")
                ) == variant
            })
            .filter(|r| {
                r["attempts"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["accepted"] == true))
            })
            .count();
        assert_eq!(cells[8], mine.to_string(), "{total}");
    }
}

#[test]
fn synthesis_refuses_a_cwe_no_analyzer_covers_before_starting_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_hexacoder-train"))
        .args(["synth", "--cwes", "python/CWE-327", "--out"])
        .arg(dir.path().join("out"))
        .arg("--bench-dir")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench"))
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CWE-327") && stderr.contains("covered"),
        "{stderr}"
    );
    assert!(
        stderr.contains("CWE-089"),
        "the covered ones are listed: {stderr}"
    );
    assert!(!dir.path().join("out").exists(), "nothing was written");
}

#[test]
fn an_unreachable_endpoint_or_a_missing_prompt_file_fails_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Port 9 (discard) on loopback: nothing listens there.
    let run = |bench: &Path, out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_hexacoder-train"))
            .args([
                "synth",
                "--generator",
                "http://127.0.0.1:9",
                "--generator-model",
                "m",
            ])
            .args(["--repairer", "http://127.0.0.1:9", "--repairer-model", "m"])
            .arg("--bench-dir")
            .arg(bench)
            .arg("--out")
            .arg(out)
            .output()
            .expect("runs")
    };
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench");
    let out = dir.path().join("unreachable");
    let output = run(&shared, &out);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("127.0.0.1:9") && stderr.contains("cannot connect"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing was written");

    let empty = dir.path().join("no-bench");
    std::fs::create_dir(&empty).expect("mkdir");
    let out = dir.path().join("no-prompts");
    let output = run(&empty, &out);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("fewshot_prompt_code_pairs.json") && stderr.contains("missing"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing was written");
}
