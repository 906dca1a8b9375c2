//! Two-step generation over HTTP on the tiny model: which requests get it (request, adapter
//! metadata, server default), what each choice reports, and that step 2 is exactly a
//! one-step completion of the merged prompt, whole, streamed and on `/infill`.

use std::collections::HashMap;
use std::path::Path;

use hexacoder_testkit::{Arch, Tiny};
use serde_json::{Value, json};

use crate::harness::{Server, assert_error, client, metric_value, post, sse_data, tiny_model};

const PROMPT: &str = "import os\n\n\ndef run(cmd):\n";

/// Applies an LSP edit (UTF-16 columns; the prompts here are ASCII) to `text`.
fn apply(text: &str, edit: &Value) -> String {
    let offset = |position: &Value| {
        let line = position["line"].as_u64().expect("line") as usize;
        let character = position["character"].as_u64().expect("character") as usize;
        let line_start: usize = text.split_inclusive('\n').take(line).map(str::len).sum();
        line_start + character
    };
    let start = offset(&edit["range"]["start"]);
    let end = offset(&edit["range"]["end"]);
    format!(
        "{}{}{}",
        &text[..start],
        edit["newText"].as_str().expect("newText"),
        &text[end..]
    )
}

fn counts(choice: &Value) -> (u64, u64) {
    let extension = &choice["hexacoder"];
    (
        extension["first_step_tokens"]
            .as_u64()
            .expect("first_step_tokens"),
        extension["second_step_tokens"]
            .as_u64()
            .expect("second_step_tokens"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn step2_is_a_one_step_completion_of_the_merged_prompt() {
    let server = Server::tiny(&[]);
    let client = client();
    let url = server.url("/v1/completions");
    let (status, body) = post(
        &client,
        &url,
        &json!({
            "prompt": PROMPT, "max_tokens": 40, "temperature": 0, "echo": true,
            "hexacoder": {"two_step": true, "prune_unused_imports": false},
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    let extension = &choice["hexacoder"];
    assert_eq!(extension["two_step"], true, "{body}");
    assert!(extension["added_imports"].is_array());
    let (first, second) = counts(choice);
    assert!((1..=20).contains(&first), "{body}");
    assert!(first + second <= 40);
    assert_eq!(
        body["usage"]["completion_tokens"].as_u64(),
        Some(first + second)
    );
    // The echoed prompt is the original with the edit applied.
    let merged = match &extension["imports_edit"] {
        Value::Null => PROMPT.to_string(),
        edit => apply(PROMPT, edit),
    };
    let text = choice["text"].as_str().expect("text");
    let completion = text
        .strip_prefix(merged.as_str())
        .unwrap_or_else(|| panic!("{text:?} does not start with {merged:?}"));
    // Step 2 is exactly a greedy one-step completion of the merged prompt with what step 1
    // left of the budget.
    let (_, one_step) = post(
        &client,
        &url,
        &json!({
            "prompt": merged, "max_tokens": 40 - first, "temperature": 0,
        }),
    )
    .await;
    assert_eq!(one_step["choices"][0]["text"].as_str(), Some(completion));
    assert!(
        one_step["choices"][0]["hexacoder"].is_null(),
        "one step by default"
    );

    // Without `max_tokens`, both steps share 200 tokens.
    let (_, body) = post(
        &client,
        &url,
        &json!({
            "prompt": PROMPT, "temperature": 0,
            "hexacoder": {"two_step": true, "ignore_eos": true},
        }),
    )
    .await;
    let (first, second) = counts(&body["choices"][0]);
    assert_eq!(first + second, 200, "{body}");

    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metric_value(
            &text,
            "hexacoder:two_step_requests_total{first_step=\"ran\"}"
        )
        .is_some_and(|v| v >= 2.0),
        "{text}"
    );
    for name in [
        "hexacoder:imports_added_total",
        "hexacoder:imports_pruned_total",
        "hexacoder:two_step_first_step_seconds_count",
    ] {
        assert!(metric_value(&text, name).is_some(), "{name} missing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_send_the_imports_before_the_code() {
    let server = Server::tiny(&[]);
    let client = client();
    let url = server.url("/v1/completions");
    let request = json!({
        "prompt": [PROMPT, "#include <stdio.h>\n\nint main(void) {\n"], "n": 2,
        "max_tokens": 30, "temperature": 0.7, "seed": 5,
        "hexacoder": {"two_step": true},
    });
    let (_, whole) = post(&client, &url, &request).await;
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let response = client
        .post(&url)
        .json(&streamed)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let data = sse_data(&response.text().await.expect("body"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let mut texts = vec![String::new(); 4];
    let mut previewed = [false; 4];
    let mut finals: HashMap<usize, Value> = HashMap::new();
    for chunk in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(chunk).expect("chunk");
        for choice in chunk["choices"].as_array().expect("choices") {
            let i = choice["index"].as_u64().expect("index") as usize;
            let text = choice["text"].as_str().expect("text");
            let extension = &choice["hexacoder"];
            if extension.get("second_step_tokens").is_some() {
                finals.insert(i, extension.clone());
            } else if !extension.is_null() {
                assert!(texts[i].is_empty(), "the imports come first");
                assert!(extension.get("imports_edit").is_some());
                previewed[i] = true;
            }
            if !text.is_empty() {
                assert!(previewed[i], "code before the imports of choice {i}");
            }
            texts[i].push_str(text);
        }
    }
    assert_eq!(previewed, [true; 4]);
    for (i, text) in texts.iter().enumerate() {
        let choice = &whole["choices"][i];
        assert_eq!(Some(text.as_str()), choice["text"].as_str(), "choice {i}");
        assert_eq!(finals[&i], choice["hexacoder"], "choice {i}");
    }
    // The C prompt's step 1 was shared by its two samples.
    assert_eq!(
        whole["choices"][2]["hexacoder"]["first_step_tokens"],
        whole["choices"][3]["hexacoder"]["first_step_tokens"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn infill_runs_two_steps_with_fim() {
    let server = Server::tiny(&[]);
    let client = client();
    let url = server.url("/infill");
    let prefix = "from flask import request\n\ndef page():\n    name = ";
    let (status, body) = post(
        &client,
        &url,
        &json!({
            "input_prefix": prefix, "input_suffix": "\n    return name\n", "n_predict": 30,
            "temperature": 0, "hexacoder": {"two_step": true, "prune_unused_imports": false},
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let extension = &body["hexacoder"];
    let first = extension["first_step_tokens"].as_u64().expect("first");
    let merged = match &extension["imports_edit"] {
        Value::Null => prefix.to_string(),
        edit => apply(prefix, edit),
    };
    let (_, one_step) = post(
        &client,
        &url,
        &json!({
            "input_prefix": merged, "input_suffix": "\n    return name\n", "n_predict": 30 - first,
            "temperature": 0,
        }),
    )
    .await;
    assert_eq!(one_step["content"], body["content"]);

    let response = client
        .post(&url)
        .json(&json!({"input_prefix": prefix, "input_suffix": "\n", "n_predict": 10, "stream": true, "hexacoder": {"two_step": true}}))
        .send()
        .await
        .expect("POST");
    let data = sse_data(&response.text().await.expect("body"));
    let first: Value = serde_json::from_str(&data[0]).expect("json");
    assert_eq!(first["hexacoder"]["two_step"], true, "{first}");
    let last: Value = serde_json::from_str(data.last().expect("last")).expect("json");
    assert_eq!(last["stop"], true);
    assert!(last["hexacoder"]["second_step_tokens"].is_u64(), "{last}");
}

fn write_two_step_adapter(dir: &Path) {
    let tiny = Tiny {
        max_positions: 8192,
        ..Tiny::small(Arch::Qwen2)
    };
    let path = tiny.write_lora(dir, 4, 4, &["q_proj", "v_proj"], 0.5);
    let weights = path.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("hexacoder.two_step".to_string(), "true".to_string()),
    ]);
    safetensors::serialize_to_file(tensors.tensors(), Some(metadata), &weights).expect("write");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_adapters_and_the_server_choose_two_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path());
    write_two_step_adapter(&dir.path().join("secure"));
    let adapter = format!("secure={}", dir.path().join("secure").display());
    let client = client();
    let two_step = |body: &Value| body["choices"][0]["hexacoder"]["two_step"] == true;

    let server = Server::start(&model, &["--adapter", &adapter], &[]);
    let url = server.url("/v1/completions");
    let ask = |model: &str, extension: Value| json!({"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "hexacoder": extension});
    let base = model
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    let (_, body) = post(&client, &url, &ask(&base, json!({}))).await;
    assert!(!two_step(&body), "server default is off: {body}");
    let (_, body) = post(&client, &url, &ask("secure", json!({}))).await;
    assert!(
        two_step(&body),
        "the adapter's metadata turns it on: {body}"
    );
    let (_, body) = post(&client, &url, &ask("secure", json!({"two_step": false}))).await;
    assert!(
        !two_step(&body),
        "the request overrides the adapter: {body}"
    );

    // A prompt in no known language runs one step and says why.
    let (_, body) = post(
        &client,
        &url,
        &json!({"prompt": "hello", "max_tokens": 4, "hexacoder": {"two_step": true}}),
    )
    .await;
    assert!(
        body["choices"][0]["hexacoder"]["first_step_skipped"].is_string(),
        "{body}"
    );
    assert_eq!(body["choices"][0]["hexacoder"]["first_step_tokens"], 0);
    let (status, body) = post(
        &client,
        &url,
        &json!({"prompt": "x", "hexacoder": {"two_step": true, "language": "cobol"}}),
    )
    .await;
    assert_error(status, &body, 400, Some("hexacoder.language"));
    drop(server);

    let server = Server::start(
        &model,
        &["--two-step", "on", "--first-step-tokens", "3"],
        &[],
    );
    let (_, body) = post(
        &client,
        &server.url("/v1/completions"),
        &json!({"prompt": PROMPT, "max_tokens": 8, "hexacoder": {"ignore_eos": true}}),
    )
    .await;
    assert!(two_step(&body), "server default on: {body}");
    assert!(body["choices"][0]["hexacoder"]["first_step_tokens"].as_u64() <= Some(3));
}
