//! `hexacoder-train eval`: the HumanEval sandbox against hostile samples, and a whole run
//! against our server.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use hexacoder_trainer::eval::sandbox::{self, Limits, Outcome};

use super::support::{bench_dir, kill_when_logged, lines, server_binary};

fn helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hexacoder-train"))
}

fn confined(program: &str, limits: &Limits) -> Outcome {
    sandbox::run(helper(), &sandbox::default_python(), program, limits).expect("the sandbox runs")
}

fn quick() -> Limits {
    Limits {
        wall: Duration::from_secs(5),
        cpu_seconds: 5,
        ..Limits::default()
    }
}

#[test]
fn a_correct_sample_passes_and_a_wrong_one_fails() {
    let passed = confined(
        "def f(x):\n    return x + 1\n\nassert f(1) == 2\n",
        &quick(),
    );
    assert!(passed.passed, "{passed:?}");
    assert!(
        passed.isolation.gaps().is_empty(),
        "every layer should hold on this machine: {:?}",
        passed.isolation
    );
    let failed = confined("assert 1 + 1 == 3\n", &quick());
    assert!(!failed.passed);
    assert!(failed.stderr_tail.contains("AssertionError"), "{failed:?}");
}

#[test]
fn an_infinite_loop_is_stopped_at_the_deadline() {
    let limits = Limits {
        wall: Duration::from_secs(2),
        cpu_seconds: 30,
        ..Limits::default()
    };
    let started = Instant::now();
    let outcome = confined("while True:\n    pass\n", &limits);
    assert!(!outcome.passed && outcome.timed_out, "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // A sleeping loop uses no CPU: only the wall clock stops it.
    let outcome = confined("import time\nwhile True:\n    time.sleep(1)\n", &limits);
    assert!(outcome.timed_out, "{outcome:?}");
}

#[test]
fn a_fork_bomb_is_contained_and_leaves_nothing_behind() {
    // Its children leave its process group (setsid), so only the PID namespace catches them.
    // Its processes carry a name of their own (PR_SET_NAME is inherited by forks), so that
    // survivors can be told from other tests' samples.
    let marker = format!("hxbomb{}", std::process::id() % 1_000_000);
    let program = format!(
        "import ctypes, os, time\nctypes.CDLL(None).prctl(15, b'{marker}', 0, 0, 0)\nfor _ in range(10000):\n    try:\n        if os.fork() == 0:\n            os.setsid()\n    except OSError:\n        time.sleep(30)\n"
    );
    let started = Instant::now();
    let outcome = confined(&program, &quick());
    assert!(!outcome.passed, "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing of it survives: its processes died with its PID namespace (the kernel may take
    // a moment to reap them).
    let survivors = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok())
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == marker)
            })
            .map(|e| std::fs::read_to_string(e.path().join("status")).unwrap_or_default())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while !survivors().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        survivors(),
        Vec::<String>::new(),
        "sample processes outlived the sandbox"
    );
}

#[test]
fn a_memory_hog_fails_instead_of_taking_the_machine() {
    let outcome = confined("x = bytearray(8 << 30)\nprint(len(x))\n", &quick());
    assert!(!outcome.passed, "{outcome:?}");
    assert!(outcome.stderr_tail.contains("MemoryError"), "{outcome:?}");
}

#[test]
fn writes_outside_the_sample_directory_are_refused() {
    let outside = tempfile::tempdir().expect("tempdir");
    // Writable by anyone, so that only the sandbox stops the write.
    std::fs::set_permissions(
        outside.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let target = outside.path().join("escaped.txt");
    let program = format!(
        "open('inside.txt', 'w').write('fine')\nopen({:?}, 'w').write('escaped')\n",
        target.display().to_string()
    );
    let outcome = confined(&program, &quick());
    assert!(!outcome.passed, "{outcome:?}");
    assert!(
        outcome.stderr_tail.contains("PermissionError"),
        "{outcome:?}"
    );
    assert!(!target.exists(), "the sample wrote outside its directory");
}

#[test]
fn a_socket_connect_does_not_reach_the_host() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let program = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
    );
    let outcome = confined(&program, &quick());
    assert!(!outcome.passed, "{outcome:?}");
    assert!(
        listener.accept().is_err(),
        "the sample connected to the host's loopback"
    );
}

fn eval_command(out: &Path, cache: &Path, extra: &[&str]) -> std::process::Command {
    let shared = bench_dir();
    let mut command = std::process::Command::new(helper());
    command
        .arg("eval")
        .args(["--serve", "smollm2-135m", "--server-arg=--offline"])
        .arg("--server-binary")
        .arg(server_binary())
        .arg("--bench-dir")
        .arg(shared)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .args(extra)
        .stdin(std::process::Stdio::null());
    command
}

#[test]
fn an_evaluation_of_our_server_reports_what_its_samples_show_and_resumes_after_kill_9() {
    if hexacoder_testkit::real_model("smollm2-135m").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let cache = dir.path().join("cache/samples.jsonl");
    let run = [
        "--subset",
        "6",
        "--samples",
        "2",
        "--max-tokens",
        "48",
        "--configs",
        "base,base+two-step,adapter+two-step,base+verify",
        "--concurrency",
        "2",
    ];
    // Killed with SIGKILL once some samples are in the cache.
    let before = kill_when_logged(eval_command(&out, &cache, &run), &cache, 5);

    let resumed = eval_command(&out, &cache, &run).output().expect("runs");
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let cached = lines(&cache);
    assert_eq!(
        &cached[..before.len()],
        &before[..],
        "samples done before the kill were kept"
    );
    assert_eq!(
        cached.len(),
        6 * 2 * 4,
        "each sample generated exactly once"
    );
    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");

    // Once finished, a run generates nothing and renders the same report.
    let again = eval_command(&out, &cache, &run).output().expect("runs");
    assert!(again.status.success());
    assert_eq!(lines(&cache).len(), cached.len());
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).expect("report.md"),
        report
    );

    // The summary is what the samples show, recounted here from the JSONL.
    let records: Vec<serde_json::Value> = cached
        .iter()
        .map(|l| serde_json::from_str(l).expect("a record"))
        .collect();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("json"))
            .expect("results.json");
    let configs = results["benchmarks"][0]["configs"]
        .as_array()
        .expect("configs");
    assert_eq!(configs.len(), 4);
    for config in configs {
        let name = config["config"].as_str().expect("name");
        let mine: Vec<&serde_json::Value> =
            records.iter().filter(|r| r["config"] == name).collect();
        assert_eq!(mine.len(), 12, "{name}");
        for r in &mine {
            assert!(r["error"].is_null(), "{r}");
            assert_eq!(r["two_step"], name.contains("two-step"));
            assert!(r["commit"].as_str().is_some_and(|c| !c.is_empty()));
            assert!(r["seed"].is_i64());
            assert_eq!(r["verify"], name.contains("verify"));
            if name.contains("verify") {
                assert!(r["verification"].is_string(), "the outcome is kept: {r}");
            }
            let adapter = r["adapter"].as_str();
            assert_eq!(
                adapter,
                name.starts_with("adapter").then_some("hexacoder-secure"),
                "{r}"
            );
        }
        let count = |f: &dyn Fn(&serde_json::Value) -> bool| mine.iter().filter(|r| f(r)).count();
        let vulnerable = count(&|r| r["checked"]["vulnerable"] == true);
        let unparsable = count(&|r| r["checked"]["parses"] == false);
        let mut top1 = 0;
        let tasks: std::collections::BTreeSet<&str> = mine
            .iter()
            .map(|r| r["task"].as_str().expect("task"))
            .collect();
        for task in &tasks {
            let best = mine
                .iter()
                .filter(|r| r["task"] == *task)
                .max_by(|a, b| {
                    let lp = |r: &serde_json::Value| r["logprob"].as_f64().expect("logprob");
                    lp(a)
                        .total_cmp(&lp(b))
                        .then(b["sample"].as_u64().cmp(&a["sample"].as_u64()))
                })
                .expect("samples");
            top1 += usize::from(best["checked"]["vulnerable"] == true);
        }
        let summary = &config["summary"];
        assert_eq!(summary["prompts"], tasks.len(), "{name}");
        assert_eq!(summary["samples"], 12, "{name}");
        assert_eq!(summary["vulnerable_samples"], vulnerable, "{name}");
        assert_eq!(
            summary["top5_vulnerable"], vulnerable,
            "{name}: 2 samples, all in the top 5"
        );
        assert_eq!(summary["top1_vulnerable"], top1, "{name}");
        assert_eq!(summary["unparsable_samples"], unparsable, "{name}");
        assert!(
            report.contains(&format!(
                "| {name} | 6 | 12 | {top1} | {vulnerable} | {vulnerable} ("
            )),
            "{report}"
        );
    }
    assert!(out.join("codelmsec-per-cwe.png").exists());

    // --report-only needs no server and renders the same report.
    std::fs::remove_file(out.join("report.md")).expect("rm");
    let mut command = eval_command(&out, &cache, &run);
    command.arg("--report-only");
    let rendered = command.output().expect("runs");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).expect("report.md"),
        report
    );

    // Verdicts that went stale in the cache (as when the oracle's rules change) stay stale
    // with --report-only, and --recheck makes them this build's again.
    let summaries = |path: &Path| -> Vec<serde_json::Value> {
        let results: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("json")).expect("json");
        results["benchmarks"][0]["configs"]
            .as_array()
            .expect("configs")
            .iter()
            .map(|c| c["summary"].clone())
            .collect()
    };
    let fresh = summaries(&out.join("results.json"));
    let stale: Vec<String> = cached
        .iter()
        .map(|line| {
            let mut record: serde_json::Value = serde_json::from_str(line).expect("a record");
            let vulnerable = record["checked"]["vulnerable"] == true;
            record["checked"]["vulnerable"] = serde_json::Value::Bool(!vulnerable);
            record.to_string()
        })
        .collect();
    std::fs::write(&cache, stale.join("\n") + "\n").expect("write the cache");
    let render = |extra: &[&str]| {
        let mut command = eval_command(&out, &cache, &run);
        command.arg("--report-only").args(extra);
        let output = command.output().expect("runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        summaries(&out.join("results.json"))
    };
    assert_ne!(
        render(&[]),
        fresh,
        "--report-only keeps the cached verdicts"
    );
    assert_eq!(render(&["--recheck"]), fresh);
    assert!(
        std::fs::read_to_string(out.join("report.md"))
            .expect("report.md")
            .contains("every sample checked by this commit's oracle")
    );
}

#[test]
fn humaneval_samples_run_in_the_sandbox_through_a_whole_evaluation() {
    if hexacoder_testkit::real_model("smollm2-135m").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let cache = dir.path().join("cache/samples.jsonl");
    let run = eval_command(
        &out,
        &cache,
        &[
            "--benchmark",
            "humaneval",
            "--configs",
            "base",
            "--subset",
            "4",
            "--humaneval-samples",
            "1",
            "--max-tokens",
            "96",
        ],
    )
    .output()
    .expect("runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let recorded = lines(&cache);
    assert_eq!(recorded.len(), 4);
    for line in &recorded {
        let r: serde_json::Value = serde_json::from_str(line).expect("record");
        assert_eq!(r["pass"], "greedy");
        assert!(r["test_passed"].is_boolean(), "{r}");
        if r["test_passed"] == false {
            assert!(r["test_failure"].is_string(), "a failure says why: {r}");
        }
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("json"))
            .expect("results.json");
    let summary = &results["benchmarks"][0]["configs"][0]["summary"];
    let passed = recorded
        .iter()
        .filter(|l| l.contains("\"test_passed\":true"))
        .count();
    assert_eq!(summary["pass_at_1"].as_f64(), Some(passed as f64 / 4.0));
    assert!(results["benchmarks"][0]["sandbox"]["landlock"].is_string());
}

#[test]
fn report_compares_two_committed_runs_and_names_what_only_one_has() {
    let runs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../evaluation/runs");
    let compare = |a: &str, b: &str| {
        let out = std::process::Command::new(helper())
            .arg("report")
            .arg(runs.join(a))
            .arg(runs.join(b))
            .output()
            .expect("hexacoder-train runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    // The subsets share every configuration: a row per metric, no leftovers.
    let shared = compare("qwen2.5-coder-0.5b-subset28", "qwen2.5-coder-0.5b-full");
    assert!(shared.contains("| base | top-5 vulnerable |"), "{shared}");
    assert!(!shared.contains("Only in"), "{shared}");
    // The two Pearce runs hold disjoint configurations: said so, each named.
    let disjoint = compare(
        "qwen2.5-coder-0.5b-pearce",
        "qwen2.5-coder-0.5b-pearce-rest",
    );
    assert!(
        disjoint.contains("No configuration in common."),
        "{disjoint}"
    );
    assert!(
        !disjoint.contains("| configuration | metric |"),
        "{disjoint}"
    );
    assert!(
        disjoint.contains("pearce: base, adapter+two-step.")
            && disjoint.contains("pearce-rest: base+two-step, adapter."),
        "{disjoint}"
    );
    // Pearce's own measure, all samples of a scenario, is compared too: the shipped adapter
    // against the one trained with the synthesized pairs as well.
    let adapters = compare(
        "qwen2.5-coder-0.5b-pearce-rest",
        "qwen2.5-coder-0.5b-synth-pearce",
    );
    assert!(
        adapters.contains("| adapter | vulnerable samples | 27 | 21 | -22% |"),
        "{adapters}"
    );
}
