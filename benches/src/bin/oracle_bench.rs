//! The embedded analyzer's time per file, on 200-line files cut from real code: the published
//! HexaCoder training set (Python and C), whole functions joined until a file has 200 lines.
//! Every file is scanned `--passes` times; the report gives the median and p99 per language.
//!
//! With `--per-rule`, also the median time of each rule file alone, to find slow rules.
//!
//! `cargo run --release -p hexacoder-benches --bin oracle-bench -- [--passes N] [--lines N]
//! [--per-rule]`

use std::time::Instant;

use anyhow::{Context, Result};
use hexacoder_oracle::{EmbeddedAnalyzer, Language};

fn main() -> Result<()> {
    let mut passes = 5usize;
    let mut lines = 200usize;
    let mut per_rule = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<usize> {
            let value = args
                .next()
                .with_context(|| format!("{name} needs a number"))?;
            value
                .parse()
                .with_context(|| format!("{name} {value:?} is not a number"))
        };
        match arg.as_str() {
            "--passes" => passes = number("--passes")?.max(1),
            "--lines" => lines = number("--lines")?.max(1),
            "--per-rule" => per_rule = true,
            other => anyhow::bail!("unknown argument {other:?} (--passes N, --lines N)"),
        }
    }
    let path =
        hexacoder_testkit::shared_dir().join("bench/hexacoder/dataset/hexacoder_train.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut python = Vec::new();
    let mut c = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line).context("a JSONL row")?;
        let code = row["text"].as_str().unwrap_or_default();
        if code.lines().take(40).any(|l| l.starts_with("#include")) {
            c.push(code.to_string());
        } else {
            python.push(code.to_string());
        }
    }
    let analyzer = EmbeddedAnalyzer::builtin().context("the built-in rules")?;
    println!("| language | files | lines per file | median (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|---|---|---|");
    for (language, name, sources) in [
        (Language::Python, "Python", &python),
        (Language::C, "C", &c),
    ] {
        let files = join_into_files(sources, lines);
        let mut times = Vec::with_capacity(files.len() * passes);
        for _ in 0..passes {
            for file in &files {
                let started = Instant::now();
                let findings = analyzer.scan(language, "bench", file)?;
                times.push(started.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(findings);
            }
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "| {name} | {} | {lines} | {:.2} | {:.2} | {:.2} |",
            files.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
        if per_rule {
            for (file, yaml) in hexacoder_oracle::embedded::BUILTIN_RULES {
                let alone = EmbeddedAnalyzer::from_rules([(*file, *yaml)])
                    .with_context(|| format!("rule file {file}"))?;
                if alone.rule_count(language) == 0 {
                    continue;
                }
                let mut times: Vec<f64> = files
                    .iter()
                    .map(|f| {
                        let started = Instant::now();
                        std::hint::black_box(alone.scan(language, "bench", f)?);
                        Ok(started.elapsed().as_secs_f64() * 1e3)
                    })
                    .collect::<Result<_>>()?;
                times.sort_by(f64::total_cmp);
                println!("|   {file} | | | {:.2} | | |", times[times.len() / 2]);
            }
        }
    }
    Ok(())
}

/// Whole sources joined in order until each file has `lines` lines (the last partial file is
/// dropped).
fn join_into_files(sources: &[String], lines: usize) -> Vec<String> {
    let mut files = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for source in sources {
        // A blank line between sources, as between functions in a file.
        for line in source.lines().chain([""]) {
            current.push(line);
            if current.len() == lines {
                files.push(current.join("\n") + "\n");
                current.clear();
            }
        }
    }
    files
}
