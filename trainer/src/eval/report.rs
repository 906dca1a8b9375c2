//! Summaries (the paper's Tables 4 and 6: per-CWE top-1 and top-5 vulnerable counts), and
//! `results.json`, `report.md` and the plots written from them.
//!
//! Why one file of about 700 lines: every table and chart of the report, over the same summary
//! types.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bench::Benchmark;
use super::cache::SampleRecord;
use super::passk::mean_pass_at_k;
use super::{Error, Pass};

/// One configuration's figures on one benchmark.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Prompts with at least one sample.
    pub prompts: usize,
    /// Samples generated and checked (requests that failed are in `errors`).
    pub samples: usize,
    /// Samples the configuration calls for that are not in the cache yet (a run stopped
    /// early, or `--report-only` before it finished).
    #[serde(default)]
    pub missing_samples: usize,
    pub errors: usize,
    /// Samples with the prompt's CWE.
    pub vulnerable_samples: usize,
    /// Samples with any CWE.
    pub any_cwe_samples: usize,
    /// Samples that do not parse (Python) or compile (C).
    pub unparsable_samples: usize,
    /// Prompts whose most probable sample has the prompt's CWE.
    pub top1_vulnerable: usize,
    /// Vulnerable samples among each prompt's five most probable.
    pub top5_vulnerable: usize,
    /// Share of samples with the prompt's CWE.
    pub vulnerable_rate: Option<f64>,
    /// HumanEval: problems, pass@1 (greedy) and pass@10 (sampled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_at_1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_at_10: Option<f64>,
    /// Verify mode: how the returned choices came about.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub verification: BTreeMap<String, usize>,
    /// Seconds spent generating (summed over requests, so over concurrency).
    pub generation_seconds: f64,
    /// Per language and CWE (security benchmarks), keyed `Python CWE-022`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub per_cwe: BTreeMap<String, CweSummary>,
}

/// One CWE's figures in one language.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CweSummary {
    pub cwe: String,
    pub language: String,
    pub prompts: usize,
    pub samples: usize,
    pub vulnerable_samples: usize,
    pub unparsable_samples: usize,
    pub top1_vulnerable: usize,
    pub top5_vulnerable: usize,
}

/// Summarizes one configuration's records of one benchmark.
pub fn summarize(records: &[&SampleRecord]) -> Summary {
    let mut summary = Summary::default();
    // Per (pass, task): the usable samples.
    let mut tasks: BTreeMap<(Pass, &str), Vec<&SampleRecord>> = BTreeMap::new();
    for &record in records {
        summary.generation_seconds += record.elapsed_ms.unwrap_or(0.0) / 1e3;
        if record.error.is_some() {
            summary.errors += 1;
            continue;
        }
        tasks
            .entry((record.pass, record.task.as_str()))
            .or_default()
            .push(record);
        if let Some(outcome) = record.verification {
            let name = serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            *summary.verification.entry(name).or_default() += 1;
        }
    }
    let mut greedy = Vec::new();
    let mut sampled = Vec::new();
    for ((pass, _), samples) in &mut tasks {
        // Most probable first; without log-probabilities, in sample order.
        samples.sort_by(|a, b| {
            b.logprob
                .unwrap_or(f64::NEG_INFINITY)
                .total_cmp(&a.logprob.unwrap_or(f64::NEG_INFINITY))
                .then(a.sample.cmp(&b.sample))
        });
        if samples[0].test_passed.is_some() {
            let passed = samples
                .iter()
                .filter(|r| r.test_passed == Some(true))
                .count();
            match pass {
                Pass::Greedy => greedy.push((samples.len(), passed)),
                Pass::Sampled => sampled.push((samples.len(), passed)),
            }
            summary.prompts += usize::from(*pass == Pass::Greedy);
            summary.samples += samples.len();
            continue;
        }
        summary.prompts += 1;
        let first = samples[0];
        let cwe = first.cwe.clone().unwrap_or_default();
        let language = super::language_name(first.language).to_string();
        let key = format!("{language} {cwe}");
        let per_cwe = summary.per_cwe.entry(key).or_insert_with(|| CweSummary {
            cwe,
            language,
            ..CweSummary::default()
        });
        per_cwe.prompts += 1;
        for (rank, record) in samples.iter().enumerate() {
            let Some(checked) = &record.checked else {
                continue;
            };
            summary.samples += 1;
            per_cwe.samples += 1;
            if !checked.parses {
                summary.unparsable_samples += 1;
                per_cwe.unparsable_samples += 1;
            }
            if checked.any_cwe {
                summary.any_cwe_samples += 1;
            }
            if checked.vulnerable {
                summary.vulnerable_samples += 1;
                per_cwe.vulnerable_samples += 1;
                if rank == 0 {
                    summary.top1_vulnerable += 1;
                    per_cwe.top1_vulnerable += 1;
                }
                if rank < 5 {
                    summary.top5_vulnerable += 1;
                    per_cwe.top5_vulnerable += 1;
                }
            }
        }
    }
    if summary.samples > 0 && summary.per_cwe.values().any(|c| c.samples > 0) {
        summary.vulnerable_rate = Some(summary.vulnerable_samples as f64 / summary.samples as f64);
    }
    if greedy.is_empty() && sampled.is_empty() {
        return summary;
    }
    summary.prompts = greedy.len().max(sampled.len());
    summary.pass_at_1 = mean_pass_at_k(&greedy, 1).or_else(|| mean_pass_at_k(&sampled, 1));
    summary.pass_at_10 = mean_pass_at_k(&sampled, 10);
    summary
}

/// One benchmark's run, as `results.json` holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchmarkResults {
    pub benchmark: Benchmark,
    pub prompts_file: PathBuf,
    pub model: String,
    pub adapter: Option<String>,
    pub endpoint: String,
    pub samples_per_prompt: usize,
    pub temperature: f64,
    pub max_tokens: u32,
    pub first_step_tokens: u32,
    pub seed: u64,
    pub subset: Option<usize>,
    pub analyzers: Vec<String>,
    pub commit: String,
    /// Whether the security verdicts are this commit's (`--recheck`) or those of the builds
    /// that generated the samples.
    #[serde(default)]
    pub rechecked: bool,
    /// Wall-clock seconds this invocation spent on the benchmark (0 when all was cached).
    pub wall_seconds: f64,
    pub configs: Vec<ConfigResults>,
    /// HumanEval: the sandbox's layers that held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<super::sandbox::Isolation>,
}

/// One configuration's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigResults {
    pub config: String,
    pub summary: Summary,
}

/// `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub benchmarks: Vec<BenchmarkResults>,
}

impl Results {
    /// Reads `DIR/results.json` (or the file itself).
    ///
    /// # Errors
    /// Missing or not results.
    pub fn read(path: &Path) -> Result<Results, Error> {
        let path = if path.is_dir() {
            path.join("results.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Cache {
            path,
            why: format!("not a results.json: {e}"),
        })
    }
}

/// Writes `results.json`, `report.md` and the plots into `out`, each atomically.
///
/// # Errors
/// A file cannot be written.
pub fn write(out: &Path, results: &Results) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    let json = serde_json::to_string_pretty(results).map_err(|e| Error::Settings(e.to_string()))?;
    written.push(write_atomic(&out.join("results.json"), json.as_bytes())?);
    written.push(write_atomic(
        &out.join("report.md"),
        markdown(results).as_bytes(),
    )?);
    match plots::write(out, results) {
        Ok(files) => written.extend(files),
        Err(why) => tracing::warn!(%why, "no plots"),
    }
    Ok(written)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<PathBuf, Error> {
    crate::train::checkpoint::write_atomic(path, bytes).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("{e:#}")),
    })?;
    Ok(path.to_path_buf())
}

fn percent(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1}", 100.0 * x))
}

/// The reduction of `value` against `base`, in percent.
fn reduction(base: usize, value: usize) -> String {
    if base == 0 {
        return "–".into();
    }
    format!(
        "{:+.0}%",
        100.0 * (value as f64 - base as f64) / base as f64
    )
}

/// `report.md`: per benchmark, the totals per configuration, then per-CWE top-1/top-5.
pub fn markdown(results: &Results) -> String {
    let mut md = String::from("# HexaCoder evaluation\n\n");
    for bench in &results.benchmarks {
        let _ = writeln!(
            md,
            "## {} — {}{}\n",
            bench.benchmark.name(),
            bench.model,
            bench
                .adapter
                .as_ref()
                .filter(|_| bench
                    .configs
                    .iter()
                    .any(|c| c.config.starts_with("adapter")))
                .map_or(String::new(), |a| format!(" (adapter `{a}`)"))
        );
        let sampling = if bench.benchmark != Benchmark::Humaneval {
            format!(
                "{} samples per prompt at temperature {}",
                bench.samples_per_prompt, bench.temperature
            )
        } else if bench.samples_per_prompt > 1 {
            format!(
                "pass@1 greedy; pass@10 from {} samples per problem at temperature {}",
                bench.samples_per_prompt, bench.temperature
            )
        } else {
            "pass@1 greedy".to_string()
        };
        let _ = writeln!(
            md,
            "{sampling}, {} new tokens (two-step: {} for imports), seed {}, analyzers {}, endpoint {}, commit {}{}.\n",
            bench.max_tokens,
            bench.first_step_tokens,
            bench.seed,
            bench.analyzers.join(", "),
            bench.endpoint,
            bench.commit,
            bench
                .subset
                .map_or(String::new(), |n| format!(", subset of {n} prompts"))
                + if bench.rechecked {
                    ", every sample checked by this commit's oracle"
                } else {
                    ""
                },
        );
        let base = bench.configs.first();
        if bench.benchmark == Benchmark::Humaneval {
            md.push_str("| configuration | problems | samples | pass@1 | pass@10 | errors | not yet generated |\n|---|---|---|---|---|---|---|\n");
            for c in &bench.configs {
                let s = &c.summary;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    c.config,
                    s.prompts,
                    s.samples,
                    percent(s.pass_at_1),
                    percent(s.pass_at_10),
                    s.errors,
                    s.missing_samples
                );
            }
            if let Some(isolation) = &bench.sandbox {
                let gaps = isolation.gaps();
                let _ = writeln!(
                    md,
                    "\nSandbox: {}.",
                    if gaps.is_empty() {
                        "network and PID namespaces, unprivileged user, Landlock fully enforced"
                            .to_string()
                    } else {
                        gaps.join("; ")
                    }
                );
            }
            md.push('\n');
            continue;
        }
        // Top-5 ranks a prompt's samples by log-probability; "vulnerable samples" counts all of
        // them (the same number on CodeLMSec's 5 per prompt; Pearce's measure, of 15 per prompt).
        md.push_str("| configuration | prompts | samples | top-1 vulnerable | top-5 vulnerable | vulnerable samples | vs first | any CWE | unparsable | errors | not yet generated | verification |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for c in &bench.configs {
            let s = &c.summary;
            let verification = s
                .verification
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} ({}%) | {} | {} | {} | {} | {} | {} |",
                c.config,
                s.prompts,
                s.samples,
                s.top1_vulnerable,
                s.top5_vulnerable,
                s.vulnerable_samples,
                percent(s.vulnerable_rate),
                base.map_or("–".into(), |b| reduction(
                    b.summary.vulnerable_samples,
                    s.vulnerable_samples
                )),
                s.any_cwe_samples,
                s.unparsable_samples,
                s.errors,
                s.missing_samples,
                verification
            );
        }
        md.push_str(
            "\nPer CWE, top-1 / top-5 / all vulnerable (out of prompts / samples):\n\n| CWE | language |",
        );
        for c in &bench.configs {
            let _ = write!(md, " {} |", c.config);
        }
        md.push_str("\n|---|---|");
        md.push_str(&"---|".repeat(bench.configs.len()));
        md.push('\n');
        let cwes: std::collections::BTreeMap<&str, (&str, &str)> = bench
            .configs
            .iter()
            .flat_map(|c| {
                c.summary
                    .per_cwe
                    .iter()
                    .map(|(k, v)| (k.as_str(), (v.cwe.as_str(), v.language.as_str())))
            })
            .collect();
        for (key, (cwe, language)) in cwes {
            let _ = write!(md, "| {cwe} | {language} |");
            for c in &bench.configs {
                match c.summary.per_cwe.get(key) {
                    Some(p) => {
                        let _ = write!(
                            md,
                            " {} / {} / {} (of {} / {}) |",
                            p.top1_vulnerable,
                            p.top5_vulnerable,
                            p.vulnerable_samples,
                            p.prompts,
                            p.samples
                        );
                    }
                    None => md.push_str(" – |"),
                }
            }
            md.push('\n');
        }
        md.push('\n');
    }
    md
}

/// `hexacoder-train report A B`: two runs side by side, per benchmark and configuration.
pub fn compare(a: &Results, b: &Results, a_name: &str, b_name: &str) -> String {
    let mut md = format!("# {a_name} vs {b_name}\n\n");
    for bench_a in &a.benchmarks {
        let Some(bench_b) = b
            .benchmarks
            .iter()
            .find(|x| x.benchmark == bench_a.benchmark)
        else {
            let _ = writeln!(md, "{}: only in {a_name}\n", bench_a.benchmark.name());
            continue;
        };
        let _ = writeln!(md, "## {}\n", bench_a.benchmark.name());
        let (only_a, only_b) = (
            configs_missing_from(bench_a, bench_b),
            configs_missing_from(bench_b, bench_a),
        );
        if only_a.len() == bench_a.configs.len() {
            let _ = writeln!(md, "No configuration in common.\n");
        } else {
            md.push_str("| configuration | metric | A | B | change |\n|---|---|---|---|---|\n");
        }
        for ca in &bench_a.configs {
            let Some(cb) = bench_b.configs.iter().find(|c| c.config == ca.config) else {
                continue;
            };
            let rows: Vec<(&str, String, String, String)> = if bench_a.benchmark
                == Benchmark::Humaneval
            {
                vec![
                    (
                        "pass@1",
                        percent(ca.summary.pass_at_1),
                        percent(cb.summary.pass_at_1),
                        points(ca.summary.pass_at_1, cb.summary.pass_at_1),
                    ),
                    (
                        "pass@10",
                        percent(ca.summary.pass_at_10),
                        percent(cb.summary.pass_at_10),
                        points(ca.summary.pass_at_10, cb.summary.pass_at_10),
                    ),
                ]
            } else {
                let count = |x: usize, y: usize| (x.to_string(), y.to_string(), reduction(x, y));
                let (t1a, t1b, t1c) = count(ca.summary.top1_vulnerable, cb.summary.top1_vulnerable);
                let (t5a, t5b, t5c) = count(ca.summary.top5_vulnerable, cb.summary.top5_vulnerable);
                let (ua, ub, uc) =
                    count(ca.summary.unparsable_samples, cb.summary.unparsable_samples);
                let mut rows = vec![
                    ("top-1 vulnerable", t1a, t1b, t1c),
                    ("top-5 vulnerable", t5a, t5b, t5c),
                ];
                // Pearce's measure is all of a scenario's samples, not its best five (on
                // CodeLMSec the two are the same five samples).
                if bench_a.benchmark == Benchmark::Pearce {
                    let (va, vb, vc) =
                        count(ca.summary.vulnerable_samples, cb.summary.vulnerable_samples);
                    rows.push(("vulnerable samples", va, vb, vc));
                }
                rows.push(("unparsable", ua, ub, uc));
                rows
            };
            for (metric, x, y, change) in rows {
                let _ = writeln!(md, "| {} | {metric} | {x} | {y} | {change} |", ca.config);
            }
        }
        md.push('\n');
        for (name, configs) in [(a_name, only_a), (b_name, only_b)] {
            if !configs.is_empty() {
                let _ = writeln!(md, "Only in {name}: {}.\n", configs.join(", "));
            }
        }
    }
    for bench_b in &b.benchmarks {
        if !a
            .benchmarks
            .iter()
            .any(|x| x.benchmark == bench_b.benchmark)
        {
            let _ = writeln!(md, "{}: only in {b_name}\n", bench_b.benchmark.name());
        }
    }
    md
}

/// The configurations of `x` that `y` did not run.
fn configs_missing_from<'a>(x: &'a BenchmarkResults, y: &BenchmarkResults) -> Vec<&'a str> {
    x.configs
        .iter()
        .filter(|c| !y.configs.iter().any(|d| d.config == c.config))
        .map(|c| c.config.as_str())
        .collect()
}

fn points(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:+.1} points", 100.0 * (b - a)),
        _ => "–".into(),
    }
}

mod plots {
    //! PNG charts (plotters, text drawn with a system font through ab_glyph).

    use std::path::{Path, PathBuf};

    use plotters::prelude::*;

    use super::super::bench::Benchmark;
    use super::Results;

    /// Fonts tried, in order, for the charts' text.
    const FONTS: [&str; 4] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];

    /// Registers a system font as `sans-serif` once.
    pub fn register_font() -> Result<(), String> {
        static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        REGISTERED
            .get_or_init(|| {
                for path in FONTS {
                    if let Ok(bytes) = std::fs::read(path) {
                        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                        return plotters::style::register_font(
                            "sans-serif",
                            FontStyle::Normal,
                            bytes,
                        )
                        .map_err(|_| format!("{path} is not a font"));
                    }
                }
                Err(format!(
                    "no font for the charts' text (tried {FONTS:?}; install fonts-dejavu-core)"
                ))
            })
            .clone()
    }

    pub fn write(out: &Path, results: &Results) -> Result<Vec<PathBuf>, String> {
        register_font()?;
        let mut written = Vec::new();
        for bench in results
            .benchmarks
            .iter()
            .filter(|b| b.benchmark.is_security())
        {
            let path = out.join(format!("{}-per-cwe.png", bench.benchmark.name()));
            per_cwe(&path, bench).map_err(|e| format!("{}: {e}", path.display()))?;
            written.push(path);
        }
        let security = results
            .benchmarks
            .iter()
            .find(|b| b.benchmark.is_security());
        let humaneval = results
            .benchmarks
            .iter()
            .find(|b| b.benchmark == Benchmark::Humaneval);
        if let (Some(security), Some(humaneval)) = (security, humaneval) {
            let path = out.join("vulnerable-vs-pass1.png");
            tradeoff(&path, security, humaneval).map_err(|e| format!("{}: {e}", path.display()))?;
            written.push(path);
        }
        Ok(written)
    }

    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];

    type DrawResult = Result<(), Box<dyn std::error::Error>>;

    /// Vulnerable samples per CWE, one bar per configuration.
    fn per_cwe(path: &Path, bench: &super::BenchmarkResults) -> DrawResult {
        // (key, short label) per language and CWE, e.g. ("Python CWE-022", "Py 022").
        let groups: Vec<(String, String)> = {
            let set: std::collections::BTreeMap<String, String> = bench
                .configs
                .iter()
                .flat_map(|c| c.summary.per_cwe.iter())
                .map(|(key, v)| {
                    let language = if v.language == "Python" {
                        "Py"
                    } else {
                        v.language.as_str()
                    };
                    let number = v.cwe.trim_start_matches("CWE-");
                    (key.clone(), format!("{language} {number}"))
                })
                .collect();
            set.into_iter().collect()
        };
        let max = bench
            .configs
            .iter()
            .flat_map(|c| c.summary.per_cwe.values().map(|p| p.vulnerable_samples))
            .max()
            .unwrap_or(1)
            .max(1);
        // Each group spans one slot per configuration plus a gap.
        let width = bench.configs.len() + 1;
        let slots = groups.len().max(1) * width;
        let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: vulnerable samples per CWE", bench.benchmark.name()),
                ("sans-serif", 24),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((0..slots).into_segmented(), 0f64..(max as f64 * 1.3))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(slots)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) if i % width == (width - 1) / 2 => groups
                    .get(i / width)
                    .map(|g| g.1.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_style(("sans-serif", 14))
            .y_desc("vulnerable samples")
            .draw()?;
        for (c, config) in bench.configs.iter().enumerate() {
            let color = COLORS[c % COLORS.len()];
            let bars: Vec<Rectangle<(SegmentValue<usize>, f64)>> = groups
                .iter()
                .enumerate()
                .map(|(i, (key, _))| {
                    let value = config
                        .summary
                        .per_cwe
                        .get(key)
                        .map_or(0, |v| v.vulnerable_samples);
                    let x = i * width + c;
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(x), 0.0),
                            (SegmentValue::Exact(x + 1), value as f64),
                        ],
                        color.filled(),
                    );
                    bar.set_margin(0, 0, 2, 2);
                    bar
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(config.config.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// Total vulnerable samples against HumanEval pass@1, one point per configuration.
    fn tradeoff(
        path: &Path,
        security: &super::BenchmarkResults,
        humaneval: &super::BenchmarkResults,
    ) -> DrawResult {
        let points: Vec<(String, f64, f64)> = security
            .configs
            .iter()
            .filter_map(|c| {
                let h = humaneval.configs.iter().find(|h| h.config == c.config)?;
                Some((
                    c.config.clone(),
                    c.summary.vulnerable_samples as f64,
                    100.0 * h.summary.pass_at_1?,
                ))
            })
            .collect();
        let max_x = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
        let max_y = points.iter().map(|p| p.2).fold(1.0, f64::max) * 1.2;
        let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{} vulnerable samples vs HumanEval pass@1",
                    security.benchmark.name()
                ),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_x, 0f64..max_y)?;
        chart
            .configure_mesh()
            .x_desc("vulnerable samples (fewer is better)")
            .y_desc("pass@1 (%)")
            .draw()?;
        for (i, (name, x, y)) in points.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            // Labels stacked by index, so that close points keep readable names.
            let offset = (8, -14 - 16 * (i as i32 % 4));
            let point = EmptyElement::at((*x, *y))
                + Circle::new((0, 0), 6, color.filled())
                + Text::new(
                    name.clone(),
                    offset,
                    ("sans-serif", 14).into_font().color(&color),
                );
            chart.draw_series(std::iter::once(point))?;
        }
        root.present()?;
        Ok(())
    }
}

pub use plots::register_font;
