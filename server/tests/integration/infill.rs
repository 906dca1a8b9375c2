//! `/infill` as llama.cpp's editor plugins use it, field by field, against what llama-server's
//! documentation specifies: `n_indent`, `t_max_predict_ms`, `response_fields`, `samplers`,
//! `stop`, and the `n_predict: 0` requests that warm the prompt cache.

use std::path::{Path, PathBuf};

use hexacoder_testkit::{
    Arch, SCRIPT_WEIGHT, Tiny, write_bigram_hf_dir, write_import_gc_fim_hf_dir,
};
use serde_json::{Value, json};

use crate::harness::{Server, client, post};

/// After the FIM prompt: `a`, then `\n    b` forever.
fn indented_lines_model(dir: &Path) -> PathBuf {
    let w = SCRIPT_WEIGHT;
    let tiny = Tiny {
        max_positions: 8192,
        ..Tiny::small(Arch::Qwen2)
    };
    write_bigram_hf_dir(
        &tiny,
        &dir.join("indented"),
        &[
            ("<|fim_middle|>", "a", w),
            ("a", "Ċ", w),
            ("Ċ", "ĠĠĠĠ", w),
            ("ĠĠĠĠ", "b", w),
            ("b", "Ċ", w),
        ],
    )
}

/// The scripted `gc` then `\nimport gc` model ([`write_import_gc_fim_hf_dir`]).
pub fn import_gc_model(dir: &Path) -> PathBuf {
    write_import_gc_fim_hf_dir(&dir.join("import-gc"))
}

fn text(body: &Value) -> &str {
    body["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn n_indent_ends_the_completion_with_the_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&indented_lines_model(dir.path()), &[], &[]);
    let client = client();
    let url = server.url("/infill");
    let infill = |n_indent: i64| {
        json!({"input_prefix": "def f():\n", "input_suffix": "\n", "prompt": "    x = ",
               "n_predict": 12, "temperature": 0, "n_indent": n_indent})
    };
    // Every line is indented by 4: nothing ends it but n_predict.
    for n_indent in [0, 4, -1] {
        let (status, body) = post(&client, &url, &infill(n_indent)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            text(&body),
            "a\n    b\n    b\n    b\n    ",
            "n_indent {n_indent}"
        );
        assert_eq!(body["tokens_predicted"], 12);
        assert_eq!(body["stop_type"], "limit");
    }
    // Below 5: the second line ends it, keeping its newline and indentation (llama-server
    // cuts the line after its whitespace).
    let (status, body) = post(&client, &url, &infill(5)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&body), "a\n    ");
    assert_eq!(body["tokens_predicted"], 4, "{body}");
    assert_eq!(body["stop_type"], "limit");
    assert_eq!(body["has_new_line"], true);

    // The same rule through the `hexacoder` extension on /v1/completions: "stop".
    let (status, body) = post(
        &client,
        &server.url("/v1/completions"),
        &json!({"prompt": "def f():\n    x = ", "suffix": "\n", "max_tokens": 12, "temperature": 0,
                "hexacoder": {"n_indent": 5}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "a\n    ");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 4);

    // Streamed, the pieces add up to the same text.
    let response = client
        .post(&url)
        .json(
            &json!({"input_prefix": "def f():\n", "input_suffix": "\n", "prompt": "    x = ",
                      "n_predict": 12, "temperature": 0, "n_indent": 5, "stream": true}),
        )
        .send()
        .await
        .expect("POST");
    let body = response.text().await.expect("body");
    let chunks: Vec<Value> = crate::harness::sse_data(&body)
        .iter()
        .map(|c| serde_json::from_str(c).expect("chunk"))
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["content"].as_str())
        .collect();
    assert_eq!(streamed, "a\n    ");
    let last = chunks.last().expect("final chunk");
    assert_eq!(last["stop"], true);
    assert_eq!(last["tokens_predicted"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn t_max_predict_ms_ends_at_the_first_newline_past_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&indented_lines_model(dir.path()), &[], &[]);
    let client = client();
    let url = server.url("/infill");
    let n_predict = 6000;
    let (status, unlimited) = post(
        &client,
        &url,
        &json!({"input_prefix": "def f():\n", "input_suffix": "\n", "n_predict": 300, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{unlimited}");
    assert_eq!(unlimited["tokens_predicted"], 300);
    let (status, body) = post(
        &client,
        &url,
        &json!({"input_prefix": "def f():\n", "input_suffix": "\n", "n_predict": n_predict,
                "temperature": 0, "t_max_predict_ms": 40}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let content = text(&body);
    let predicted = body["tokens_predicted"].as_u64().expect("tokens_predicted");
    assert!(
        predicted < n_predict,
        "the budget did not stop it: {predicted} tokens"
    );
    assert!(
        content.ends_with('\n'),
        "stopped off a line end: {content:?}"
    );
    assert!(content.starts_with("a\n    b\n"), "{content:?}");
    assert_eq!(body["stop_type"], "limit");
    let predicted_ms = body["timings"]["predicted_ms"].as_f64().expect("ms");
    assert!(
        predicted_ms >= 40.0,
        "stopped before the budget: {predicted_ms} ms"
    );
    // As the extension on /v1/completions: "length".
    let (status, body) = post(
        &client,
        &server.url("/v1/completions"),
        &json!({"prompt": "def f():\n", "suffix": "\n", "max_tokens": n_predict, "temperature": 0,
                "hexacoder": {"t_max_predict_ms": 40}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert!(body["usage"]["completion_tokens"].as_u64().expect("tokens") < n_predict);
    assert!(
        body["choices"][0]["text"]
            .as_str()
            .expect("text")
            .ends_with('\n')
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn response_fields_cache_warming_samplers_and_stop_as_llama_vim_uses_them() {
    let server = Server::tiny(&[]);
    let client = client();
    let url = server.url("/infill");
    let extra = json!([
        {"filename": "util.py", "text": "def area(r):\n    return 3.14159 * r * r\n\n\ndef perimeter(r):\n    return 2 * 3.14159 * r\n"},
        {"filename": "config.py", "text": "import json\n\n\ndef load(path):\n    with open(path) as f:\n        return json.load(f)\n"},
    ]);

    // llama.vim's ring-buffer update: no tokens, an empty object back.
    let (status, warm) = post(
        &client,
        &url,
        &json!({"id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": extra, "prompt": "",
                "n_predict": 0, "temperature": 0.0, "samplers": [], "stream": false, "cache_prompt": true,
                "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""]}),
    )
    .await;
    assert_eq!(status, 200, "{warm}");
    assert_eq!(warm, json!({}));

    // llama.vim's completion request, with the same chunks: their KV state is reused.
    let fields = json!([
        "content",
        "timings/prompt_n",
        "timings/prompt_ms",
        "timings/prompt_per_token_ms",
        "timings/prompt_per_second",
        "timings/predicted_n",
        "timings/predicted_ms",
        "timings/predicted_per_token_ms",
        "timings/predicted_per_second",
        "truncated",
        "tokens_cached"
    ]);
    let fim = json!({"id_slot": 0, "input_prefix": "def volume(r, h):\n", "input_suffix": "\n",
        "input_extra": extra, "prompt": "    return ", "n_predict": 16, "stop": [], "n_indent": 4,
        "top_k": 40, "top_p": 0.90, "samplers": ["top_k", "top_p", "infill"], "stream": false,
        "cache_prompt": true, "t_max_prompt_ms": 500, "t_max_predict_ms": 1000, "response_fields": fields});
    let (status, body) = post(&client, &url, &fim).await;
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected: Vec<&str> = fields
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    expected.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, expected, "{body}");
    assert!(body["content"].is_string());
    // The chunks (well over 100 tokens in the tiny byte-level vocabulary) came from the cache.
    let cached = body["tokens_cached"].as_u64().expect("tokens_cached");
    assert!(cached > 100, "the warm-up was not reused: {body}");
    let prompt_n = body["timings/prompt_n"].as_u64().expect("prompt_n");
    assert!(prompt_n < 40, "{prompt_n} prompt tokens computed: {body}");

    // The same request with other chunks computes its whole prompt.
    let mut cold = fim.clone();
    cold["input_extra"] = json!([{"filename": "other.py", "text": "X = 1\n"}]);
    cold["response_fields"] = json!([]);
    let (_, body) = post(&client, &url, &cold).await;
    assert_eq!(body["tokens_cached"], 0, "{body}");
    assert_eq!(body["timings"]["prompt_n"], body["tokens_evaluated"]);
    assert_eq!(body["id_slot"], 0);
    // Empty stop strings are dropped, as llama.cpp drops them.
    let mut stops = cold.clone();
    stops["stop"] = json!(["", "\n\n"]);
    let (status, body) = post(&client, &url, &stops).await;
    assert_eq!(status, 200, "{body}");

    // `samplers` decides what runs: temperature listed and 0 is greedy; left out, the
    // distribution is sampled as it stands (temperature 1), as in llama.cpp's chain.
    let sampled = |extra: Value| {
        let mut body = json!({"input_prefix": "def f(x):\n", "input_suffix": "\n", "n_predict": 16, "seed": 7});
        for (key, value) in extra.as_object().expect("object") {
            body[key] = value.clone();
        }
        let client = client.clone();
        let url = url.clone();
        async move {
            let (status, body) = post(&client, &url, &body).await;
            assert_eq!(status, 200, "{body}");
            text(&body).to_string()
        }
    };
    let greedy = sampled(json!({"temperature": 0})).await;
    assert_eq!(
        sampled(json!({"temperature": 0, "samplers": ["temperature", "top_k"]})).await,
        greedy
    );
    assert_eq!(
        sampled(json!({"temperature": 0, "samplers": "tk"})).await,
        greedy
    );
    let untempered = sampled(json!({"temperature": 0, "samplers": ["top_k"], "top_k": 40})).await;
    assert_ne!(untempered, greedy, "temperature ran though not listed");
    assert_eq!(
        sampled(json!({"temperature": 1, "top_k": 40, "top_p": 1})).await,
        untempered
    );
    let (status, body) = post(&client, &url, &json!({"input_prefix": "x", "samplers": 3})).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_step_imports_survive_the_indent_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&import_gc_model(dir.path()), &[], &[]);
    let client = client();
    let prefix = "import abc\n\n\ndef f():\n";
    let (status, body) = post(
        &client,
        &server.url("/infill"),
        &json!({"input_prefix": prefix, "input_suffix": "\n", "prompt": "    x = ", "n_predict": 40,
                "temperature": 0, "n_indent": 4,
                "hexacoder": {"two_step": true, "prune_unused_imports": false}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Step 1 wrote its import lines at column 0; the floor applies only to the code.
    assert_eq!(
        body["hexacoder"]["imports_edit"]["newText"], "import gc\n",
        "{body}"
    );
    assert_eq!(text(&body), "gc\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn logit_bias_applies_on_infill_as_on_completions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&indented_lines_model(dir.path()), &[], &[]);
    let client = client();
    let (tokens, _) = hexacoder_testkit::vocab();
    let a = tokens
        .iter()
        .position(|t| t == "a")
        .expect("`a` in the vocabulary");
    let request = |bias: Value| {
        json!({"input_prefix": "def f():\n", "input_suffix": "\n", "n_predict": 2,
               "temperature": 0, "logit_bias": bias})
    };
    let (status, body) = post(&client, &server.url("/infill"), &request(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert!(text(&body).starts_with('a'), "{body}");
    let banned = json!({ a.to_string(): -100 });
    let (status, body) = post(&client, &server.url("/infill"), &request(banned)).await;
    assert_eq!(status, 200, "{body}");
    assert!(!text(&body).starts_with('a'), "{body}");
    // A key that is not a token id is refused, naming the field.
    let (status, body) = post(&client, &server.url("/infill"), &request(json!({"a": 1}))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "logit_bias");
}
