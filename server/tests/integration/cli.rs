//! The command line: `generate`, `fetch` and option errors.

use std::process::{Command, Output};

fn server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hexacoder-server"))
        .args(args)
        .output()
        .expect("run hexacoder-server")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Real-model tests run with `HEXACODER_TEST_MODELS=1` (set by `scripts/test`).
fn real_models() -> bool {
    let enabled = std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() == Some("1");
    if !enabled {
        eprintln!("skipping: set HEXACODER_TEST_MODELS=1 to run real-model tests");
    }
    enabled
}

#[test]
fn missing_model_is_a_clear_error_with_exit_code_1() {
    let output = server(&[
        "generate",
        "--model",
        "./no/such/model.gguf",
        "--prompt",
        "x",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("./no/such/model.gguf") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn bad_flag_values_are_rejected_before_loading() {
    // (model, flags, exit code, what the message names). Sampling values are checked before
    // the model is looked up.
    let cases: [(&str, &[&str], i32, &str); 4] = [
        ("x", &["--max-tokens", "lots"], 2, "lots"),
        (
            "x",
            &["--kv-dtype", "bf16"],
            2,
            "\"bf16\" is not `f16` or `f32`",
        ),
        ("x", &["--fim", "a,b"], 1, "a,b"),
        ("./no/such/model", &["--temperature=-1"], 1, "temperature"),
    ];
    for (model, flags, code, named) in cases {
        let mut args = vec!["generate", "--model", model, "--prompt", "x"];
        args.extend_from_slice(flags);
        let output = server(&args);
        assert_eq!(output.status.code(), Some(code), "{flags:?}");
        assert!(
            stderr(&output).contains(named),
            "{flags:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn fetch_lists_the_catalogue_and_refuses_unknown_ids() {
    let output = server(&["fetch", "--list"]);
    assert!(output.status.success());
    let listing = String::from_utf8_lossy(&output.stdout);
    for id in ["qwen2.5-coder-0.5b", "smollm2-135m", "qwen2.5-coder-1.5b"] {
        assert!(listing.contains(id), "{listing}");
    }
    let output = server(&["fetch", "no-such-model"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no-such-model"));
}

#[test]
fn generate_on_smollm2_prints_a_completion_and_json_with_logprobs() {
    if !real_models() {
        return;
    }
    let output = server(&[
        "generate",
        "--model",
        "smollm2-135m",
        "--prompt",
        "def fibonacci(n):\n",
        "--max-tokens",
        "64",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("return"), "{text}");

    let output = server(&[
        "generate",
        "--model",
        "smollm2-135m",
        "--prompt",
        "import os\n",
        "--max-tokens",
        "8",
        "--json",
        "--logprobs",
        "2",
        "--n",
        "2",
        "--temperature",
        "0.8",
        "--seed",
        "3",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let samples = doc["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 2);
    for sample in samples {
        for token in sample["tokens"].as_array().expect("tokens") {
            let logprob = token["logprob"].as_f64().expect("logprob");
            assert!(logprob.is_finite() && logprob <= 0.0);
            assert_eq!(token["top"].as_array().expect("top").len(), 2);
        }
    }

    // Two-step: imports first; the JSON says what each sample added to the prompt.
    let prompt = "import os\nimport subprocess\n\n\ndef run(command):\n    \"\"\"Run a shell command given by the user.\"\"\"\n";
    let output = server(&[
        "generate",
        "--model",
        "smollm2-135m",
        "--prompt",
        prompt,
        "--max-tokens",
        "40",
        "--two-step",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let imports = &doc["samples"][0]["imports"];
    let updated = imports["prompt"].as_str().expect("updated prompt");
    assert!(
        updated.starts_with("import os\nimport subprocess\n"),
        "{updated}"
    );
    assert!(
        updated.ends_with(
            "\n\n\ndef run(command):\n    \"\"\"Run a shell command given by the user.\"\"\"\n"
        ),
        "{updated}"
    );
    assert!(imports["added"].is_array() && imports["pruned"].is_array());
    let output = server(&[
        "generate",
        "--model",
        "smollm2-135m",
        "--prompt",
        "hello",
        "--two-step",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("--language"),
        "{}",
        stderr(&output)
    );

    // SmolLM2 has no FIM tokens: a suffix is refused with a clear message.
    let output = server(&[
        "generate",
        "--model",
        "smollm2-135m",
        "--prompt",
        "a",
        "--suffix",
        "b",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("fill-in-the-middle"),
        "{}",
        stderr(&output)
    );
}
