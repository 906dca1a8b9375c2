use super::bench::{self, Benchmark, Task};
use super::cache::{Cache, SampleKey, SampleRecord};
use super::check::Checked;
use super::report::summarize;
use super::{Config, Pass};
use hexacoder_oracle::Language;

fn record(
    task: &str,
    cwe: &str,
    sample: usize,
    logprob: f64,
    vulnerable: bool,
    parses: bool,
) -> SampleRecord {
    SampleRecord {
        key: "k".into(),
        config: "base".into(),
        task: task.into(),
        cwe: Some(cwe.into()),
        sample,
        logprob: Some(logprob),
        checked: Some(Checked {
            parses,
            vulnerable,
            any_cwe: vulnerable,
            ..Checked::default()
        }),
        ..SampleRecord::default()
    }
}

#[test]
fn top1_is_the_most_probable_sample_and_top5_counts_the_five_most_probable() {
    let records = vec![
        // Task a: the most probable sample (-1) is vulnerable; 2 of 6 vulnerable, one of
        // them ranked sixth, outside the top five.
        record("a", "CWE-089", 0, -3.0, false, true),
        record("a", "CWE-089", 1, -1.0, true, true),
        record("a", "CWE-089", 2, -2.0, false, false),
        record("a", "CWE-089", 3, -4.0, false, true),
        record("a", "CWE-089", 4, -5.0, false, true),
        record("a", "CWE-089", 5, -9.0, true, true),
        // Task b: vulnerable but not the most probable.
        record("b", "CWE-078", 0, -0.5, false, true),
        record("b", "CWE-078", 1, -0.7, true, false),
        SampleRecord {
            error: Some("503".into()),
            ..record("b", "CWE-078", 2, 0.0, false, true)
        },
    ];
    let refs: Vec<&SampleRecord> = records.iter().collect();
    let s = summarize(&refs);
    assert_eq!(s.prompts, 2);
    assert_eq!(s.samples, 8);
    assert_eq!(s.errors, 1);
    assert_eq!(s.vulnerable_samples, 3);
    assert_eq!(s.top1_vulnerable, 1);
    assert_eq!(s.top5_vulnerable, 2);
    assert_eq!(s.unparsable_samples, 2);
    assert_eq!(s.per_cwe["Python CWE-089"].top1_vulnerable, 1);
    assert_eq!(s.per_cwe["Python CWE-089"].top5_vulnerable, 1);
    assert_eq!(s.per_cwe["Python CWE-078"].top1_vulnerable, 0);
    assert_eq!(s.per_cwe["Python CWE-078"].top5_vulnerable, 1);
}

#[test]
fn humaneval_pass_at_k_comes_from_the_greedy_and_the_sampled_pass() {
    let mut records = Vec::new();
    for (task, greedy, sampled_correct) in [("h/0", true, 10), ("h/1", false, 1)] {
        records.push(SampleRecord {
            task: task.into(),
            pass: Pass::Greedy,
            test_passed: Some(greedy),
            ..SampleRecord::default()
        });
        for s in 0..20 {
            records.push(SampleRecord {
                task: task.into(),
                pass: Pass::Sampled,
                sample: s,
                test_passed: Some(s < sampled_correct),
                ..SampleRecord::default()
            });
        }
    }
    let refs: Vec<&SampleRecord> = records.iter().collect();
    let s = summarize(&refs);
    assert_eq!(s.prompts, 2);
    assert_eq!(s.pass_at_1, Some(0.5));
    // h/0: ten of twenty pass, pass@10 = 1 − C(10,10)/C(20,10); h/1: one passes, 0.5.
    let expected = (1.0 - 1.0 / 184_756.0 + 0.5) / 2.0;
    assert!((s.pass_at_10.expect("twenty samples") - expected).abs() < 1e-12);
}

#[test]
fn configurations_round_trip_through_their_names() {
    for config in Config::matrix() {
        assert_eq!(Config::parse(&config.name()).expect("parses"), config);
    }
    assert!(
        Config::parse("adapter+verify+two-step")
            .expect("any order")
            .two_step
    );
    assert!(Config::parse("lora").is_err());
    assert!(Config::parse("base+fast").is_err());
}

#[test]
fn a_torn_last_line_is_dropped_and_errors_are_tried_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("samples.jsonl");
    let good = record("a", "CWE-089", 0, -1.0, true, true);
    let failed = SampleRecord {
        error: Some("timed out".into()),
        ..record("a", "CWE-089", 1, 0.0, false, true)
    };
    let mut text = String::new();
    for r in [&good, &failed] {
        text.push_str(&serde_json::to_string(r).expect("json"));
        text.push('\n');
    }
    text.push_str("{\"key\": \"k\", \"conf");
    std::fs::write(&path, &text).expect("write");
    let cache = Cache::open(&path).expect("opens");
    let key = |sample| SampleKey {
        key: "k".into(),
        task: "a".into(),
        sample,
    };
    assert!(cache.contains(&key(0)));
    assert!(!cache.contains(&key(1)), "an error is generated again");
    let next = record("a", "CWE-089", 2, -2.0, false, true);
    cache.append(&next).expect("append");
    drop(cache);
    let cache = Cache::open(&path).expect("reopens");
    assert_eq!(cache.records().len(), 2);
    assert!(cache.contains(&key(2)));
    // A torn line in the middle is corruption, not a crash: an error naming the line.
    std::fs::write(&path, "{\"torn\n{}\n").expect("write");
    let err = Cache::open(&path).err().expect("fails");
    assert!(err.to_string().contains("line 1"), "{err}");
}

fn task(id: &str, cwe: &str) -> Task {
    Task {
        id: id.into(),
        language: Language::Python,
        cwe: Some(cwe.into()),
        prompt: String::new(),
        test: None,
    }
}

#[test]
fn a_subset_is_fixed_by_its_seed_and_spreads_over_cwes() {
    let mut tasks = Vec::new();
    for cwe in ["CWE-020", "CWE-022", "CWE-078"] {
        for i in 0..10 {
            tasks.push(task(&format!("{cwe}/{i}"), cwe));
        }
    }
    let a = bench::subset(&tasks, 6, 7);
    assert_eq!(a, bench::subset(&tasks, 6, 7));
    assert_eq!(a.len(), 6);
    for cwe in ["CWE-020", "CWE-022", "CWE-078"] {
        assert_eq!(
            a.iter().filter(|t| t.cwe.as_deref() == Some(cwe)).count(),
            2
        );
    }
    assert_ne!(a, bench::subset(&tasks, 6, 8));
    assert_eq!(bench::subset(&tasks, 100, 7).len(), 30);
}

#[test]
fn the_shared_benchmarks_load_and_bad_files_are_named() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench");
    for (benchmark, count) in [
        (Benchmark::Codelmsec, 280),
        (Benchmark::Pearce, 25),
        (Benchmark::Humaneval, 164),
    ] {
        let path = benchmark.default_path(&shared).expect("a default file");
        assert_eq!(bench::load(benchmark, &path).expect("loads").len(), count);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\": \"x\", \"language\": \"cobol\", \"cwe\": \"CWE-1\", \"prompt\": \"\"}\n",
    )
    .expect("write");
    let err = bench::load(Benchmark::Custom, &bad).expect_err("cobol");
    assert!(
        err.to_string().contains("line 1") && err.to_string().contains("cobol"),
        "{err}"
    );
    let err =
        bench::load(Benchmark::Custom, &dir.path().join("missing.jsonl")).expect_err("missing");
    assert!(err.to_string().contains("missing.jsonl"), "{err}");
}

#[test]
fn pearce_reports_every_vulnerable_sample_and_compares_on_them() {
    let config = |name: &str, top5: usize, all: usize| {
        serde_json::json!({"config": name, "summary": {
            "prompts": 25, "samples": 375, "errors": 0, "vulnerable_samples": all,
            "any_cwe_samples": all, "unparsable_samples": 0, "top1_vulnerable": 2,
            "top5_vulnerable": top5, "vulnerable_rate": all as f64 / 375.0, "per_cwe": {},
            "generation_seconds": 0.0}})
    };
    let results: super::report::Results = serde_json::from_value(serde_json::json!({
        "benchmarks": [{"benchmark": "pearce", "prompts_file": "p.jsonl", "model": "m",
            "adapter": null, "endpoint": "e", "samples_per_prompt": 15, "temperature": 0.4,
            "max_tokens": 200, "first_step_tokens": 20, "seed": 0, "subset": null,
            "analyzers": ["embedded"], "commit": "c", "wall_seconds": 0.0,
            "configs": [config("base", 12, 43), config("adapter+two-step", 8, 28)]}]
    }))
    .expect("results");
    let md = super::report::markdown(&results);
    // Top-5 ranks 5 of the 15; the measure is all 15, and "vs first" compares those.
    assert!(
        md.contains("| base | 25 | 375 | 2 | 12 | 43 (11.5%) | +0% |"),
        "{md}"
    );
    assert!(
        md.contains("| adapter+two-step | 25 | 375 | 2 | 8 | 28 (7.5%) | -35% |"),
        "{md}"
    );
}
