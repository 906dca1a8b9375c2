//! `hexacoder-train train` as a user runs it: an adapter the engine serves, runs that survive
//! `kill -9`, clear errors for bad input, and (real-model tier) learning on SmolLM2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use hexacoder_adapters::Adapter;
use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions};
use hexacoder_engine::{LoadedAdapter, load::Requantize};
use hexacoder_testkit::{Arch, Tiny};
use serde_json::json;

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hexacoder-train"))
        .arg("train")
        .args(args)
        .output()
        .expect("run hexacoder-train")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A model big enough that a step takes a few milliseconds, so a run can be interrupted.
fn tiny() -> Tiny {
    Tiny {
        arch: Arch::Qwen2,
        hidden: 128,
        intermediate: 256,
        layers: 3,
        heads: 4,
        kv_heads: 2,
        tied: false,
        max_positions: 512,
    }
}

/// Rows in the shared set's format: code with the span a "fix" inserted.
fn write_rows(path: &Path, n: usize) {
    let mut out = String::new();
    for i in 0..n {
        let before =
            format!("def handler_{i}(request):\n    value = request.args.get('v{i}')\n    ");
        let fix = format!("value = escape(value)  # {i}\n    ");
        let text = format!("{before}{fix}return render(value)\n");
        let start = before.chars().count();
        let end = start + fix.chars().count();
        out.push_str(
            &json!({"text": text, "changes": [{"char_start": start, "char_end": end, "chars": fix}]})
                .to_string(),
        );
        out.push('\n');
    }
    std::fs::write(path, out).expect("write rows");
}

struct Fixture {
    dir: tempfile::TempDir,
    model: PathBuf,
    data: PathBuf,
}

fn fixture(rows: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny().write_hf_dir(&dir.path().join("model"), 21);
    let data = dir.path().join("rows.jsonl");
    write_rows(&data, rows);
    Fixture { dir, model, data }
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn args<'a>(&'a self, out: &'a str, run: &'a str) -> Vec<String> {
        vec![
            "--model".into(),
            self.model.display().to_string(),
            "--data".into(),
            self.data.display().to_string(),
            "--out".into(),
            self.path(out).display().to_string(),
            "--run-dir".into(),
            self.path(run).display().to_string(),
            "--no-overlap-filter".into(),
        ]
    }
}

fn run_with(fixture: &Fixture, out: &str, run: &str, extra: &[&str]) -> Output {
    let mut args = fixture.args(out, run);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    train(&args)
}

fn adapter_tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
        .expect("adapter weights")
}

#[test]
fn a_trained_adapter_loads_in_the_engine_changes_its_output_and_carries_its_provenance() {
    let f = fixture(12);
    let output = run_with(
        &f,
        "adapter",
        "run",
        &[
            "--batch-size",
            "4",
            "--epochs",
            "4",
            "--lr",
            "1e-2",
            "--validation-fraction",
            "0.25",
            "--checkpoint-every",
            "2",
            "--eval-every",
            "2",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(log.contains("12 rows read"), "{log}");
    assert!(log.contains("9 train / 3 validation"), "{log}");
    let out = f.path("adapter");
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let run = f.path("run");
    for file in [
        "run.json",
        "metrics.jsonl",
        "loss.svg",
        "examples.jsonl",
        "best",
    ] {
        assert!(
            run.join(file).exists(),
            "{file} missing in the run directory"
        );
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    assert_eq!(metrics.lines().count(), 12, "3 steps a epoch for 4 epochs");
    // f16 by default, so the server takes its f16 side branch; the best adapter too.
    for dir in [out.clone(), run.join("best")] {
        let tensors = adapter_tensors(&dir);
        assert!(!tensors.is_empty());
        for (name, tensor) in tensors {
            assert_eq!(tensor.dtype(), DType::F16, "{}: {name}", dir.display());
        }
    }
    let svg = std::fs::read_to_string(run.join("loss.svg")).expect("plot");
    assert!(
        svg.starts_with("<svg") && svg.contains("validation"),
        "{svg:.200}"
    );

    let engine = load::load(
        &ModelFiles::HfDir(f.model.clone()),
        &LoadOptions {
            requantize: Requantize::Keep,
            ..LoadOptions::cpu()
        },
    )
    .expect("base");
    let adapter = Adapter::load(&out, engine.model()).expect("the server's loader accepts it");
    assert_eq!(adapter.two_step_default(), Some(true));
    let meta = adapter.metadata();
    assert_eq!(meta["hexacoder.base_sha256"].len(), 64);
    assert_eq!(meta["hexacoder.dataset_sha256"].len(), 64);
    assert!(meta["hexacoder.hyperparameters"].contains("\"rank\":8"));
    assert!(meta.contains_key("hexacoder.validation_loss"));
    let card = std::fs::read_to_string(out.join("README.md")).expect("card");
    assert!(
        card.contains("hexacoder-train train") || card.contains("hexacoder-train"),
        "{card}"
    );
    assert!(card.contains("--adapter secure="), "{card}");

    let loaded = LoadedAdapter::new("secure", 1, &adapter, engine.model()).expect("prepare");
    let ids = engine
        .tokenizer()
        .encode_plain("def handler_3(request):\n    value = request.args.get('v3')\n    ")
        .expect("ids");
    let base = engine.model().forward_all(&ids, None).expect("base logits");
    let with = engine
        .model()
        .forward_all(&ids, Some(&loaded))
        .expect("adapter logits");
    let diff = (base - with)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff");
    assert!(diff > 0.1, "the adapter barely changes the logits: {diff}");

    // PEFT's own config schema accepts it (scripts/test provides the Python with PEFT).
    if let Ok(python) = std::env::var("HEXACODER_TEST_PYTHON") {
        let check = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../adapters/tests/peft_config_check.py"
            ))
            .arg(&out)
            .output()
            .expect("run python");
        assert!(
            check.status.success(),
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

/// Reads whatever checkpoint is in place; it must always be whole.
fn checkpoint_step(run: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(run.join("checkpoint/state.json")).ok()?;
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("half-written state.json: {e}"));
    json["state"]["step"].as_u64()
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_same_adapter() {
    let f = fixture(16);
    let settings = [
        "--batch-size",
        "2",
        "--epochs",
        "10",
        "--max-steps",
        "40",
        "--lr",
        "5e-3",
        "--checkpoint-every",
        "1",
        "--eval-every",
        "5",
        "--validation-fraction",
        "0.2",
        "--dropout",
        "0.1",
        // f32: the comparison below is of the trained values, not of their f16 rounding.
        "--save-dtype",
        "f32",
    ];
    let reference = run_with(&f, "reference", "reference-run", &settings);
    assert!(reference.status.success(), "{}", stderr(&reference));

    let mut args = f.args("resumed", "run");
    args.extend(settings.iter().map(|s| s.to_string()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hexacoder-train"))
        .arg("train")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let run = f.path("run");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before it could be interrupted"
        );
        if checkpoint_step(&run).is_some_and(|s| s >= 5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint within two minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let killed_at = checkpoint_step(&run).expect("a whole checkpoint survives");
    assert!(killed_at < 40, "killed at step {killed_at}");
    assert!(
        !f.path("resumed").exists(),
        "no adapter before the run ends"
    );

    let resumed = train(&["--resume", run.to_str().expect("utf-8")]);
    let log = stderr(&resumed);
    assert!(resumed.status.success(), "{log}");
    assert!(log.contains("resuming"), "{log}");
    assert_eq!(checkpoint_step(&run), Some(40));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["step"]
                .as_u64()
                .expect("step")
        })
        .collect();
    assert_eq!(steps, (1..=40).collect::<Vec<_>>(), "each step once");

    let want = adapter_tensors(&f.path("reference"));
    let got = adapter_tensors(&f.path("resumed"));
    assert_eq!(want.len(), got.len());
    for (name, a) in &want {
        let diff = (a - &got[name])
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff");
        // Same seeds, same order, exact state: only thread scheduling could differ.
        assert!(diff <= 1e-6, "{name}: {diff}");
    }
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let f = fixture(4);
    let nothing_written = |out: &str, run: &str| {
        assert!(!f.path(out).exists(), "{out} was written");
        assert!(
            !f.path(run).join("checkpoint").exists(),
            "{run} got a checkpoint"
        );
    };
    let expect_error = |output: Output, needle: &str| {
        let log = stderr(&output);
        assert!(!output.status.success(), "succeeded; expected {needle:?}");
        assert!(log.contains(needle), "expected {needle:?} in: {log}");
    };

    let bad = f.path("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"a\", \"changes\": []}\n{not json\n").expect("write");
    let mut args = f.args("o1", "r1");
    args[3] = bad.display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect_error(train(&args), "bad.jsonl:2: not JSON");
    nothing_written("o1", "r1");

    std::fs::write(
        &bad,
        "{\"text\": \"abc\", \"changes\": [{\"char_start\": 1, \"char_end\": 7}]}\n",
    )
    .expect("write");
    let mut args = f.args("o2", "r2");
    args[3] = bad.display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect_error(
        train(&args),
        "bad.jsonl:1: changes[0] spans characters 1..7",
    );
    nothing_written("o2", "r2");

    std::fs::write(&bad, "{\"text\": \"abc\", \"changes\": []}\n").expect("write");
    let mut args = f.args("o3", "r3");
    args[3] = bad.display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect_error(train(&args), "no trainable rows");
    nothing_written("o3", "r3");

    expect_error(
        run_with(&f, "o4", "r4", &["--target-modules", "q,qkv"]),
        "unknown target module \"qkv\"",
    );
    nothing_written("o4", "r4");
    expect_error(run_with(&f, "o5", "r5", &["--rank", "0"]), "--rank");
    nothing_written("o5", "r5");
    expect_error(
        run_with(&f, "o6", "r6", &["--memory-limit-gib", "0.0001"]),
        "needs about",
    );
    nothing_written("o6", "r6");
    expect_error(
        run_with(&f, "o8", "r8", &["--save-dtype", "bf16"]),
        "`bf16` is not a weight dtype (use f16 or f32)",
    );
    nothing_written("o8", "r8");

    let mut args = f.args("o7", "r7");
    args[1] = f.path("no-such-model").display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect_error(train(&args), "neither a catalogue id");
    nothing_written("o7", "r7");

    expect_error(
        train(&["--resume", f.path("no-run").to_str().expect("utf-8")]),
        "has no run to resume",
    );
}

/// Real-model tier: a dozen steps on two of the shared set's rows halve their loss (it falls
/// to about a quarter; 24 steps of 4 rows × 96 tokens took 234 s on 2 cores for the same).
#[test]
fn smollm2_learns_a_handful_of_rows() {
    let Some(model) = hexacoder_testkit::real_model("smollm2-135m") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let shared =
        hexacoder_testkit::shared_dir().join("bench/hexacoder/dataset/hexacoder_train.jsonl");
    let rows: String = std::fs::read_to_string(&shared)
        .expect("shared training set")
        .lines()
        .filter(|l| !l.contains("\"changes\": []"))
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    let data = dir.path().join("two.jsonl");
    std::fs::write(&data, rows).expect("write");
    let run = dir.path().join("run");
    let output = train(&[
        "--model",
        model.to_str().expect("utf-8"),
        "--data",
        data.to_str().expect("utf-8"),
        "--out",
        dir.path().join("adapter").to_str().expect("utf-8"),
        "--run-dir",
        run.to_str().expect("utf-8"),
        "--no-overlap-filter",
        "--validation-fraction",
        "0",
        "--dropout",
        "0",
        "--batch-size",
        "2",
        "--epochs",
        "12",
        "--lr",
        "3e-3",
        "--max-seq-len",
        "64",
        "--warmup-ratio",
        "0",
        "--checkpoint-every",
        "100",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["loss"]
                .as_f64()
                .expect("loss")
        })
        .collect();
    assert_eq!(losses.len(), 12);
    let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        last <= 0.5 * losses[0],
        "loss went from {:.3} to {last:.3}: {losses:?}",
        losses[0]
    );
}
