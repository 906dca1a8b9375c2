//! Verify mode over HTTP against a real server on a scripted tiny model
//! (`write_eval_or_int_hf_dir`). After `return ` the model branches: `eval(d)` (CWE-094, the
//! more probable) or `int(d)` (clean), with odds set by its weights; every other step is
//! near-certain. So k sampled candidates mix vulnerable
//! and clean code with known log-probabilities, and `logit_bias` (a request's own logits
//! processor) can remove the clean branch.

use hexacoder_testkit::{vocab, write_eval_or_int_hf_dir};
use serde_json::{Value, json};

use crate::harness::{Server, assert_error, client, post};

const PROMPT: &str = "def f(d):\n    return ";

fn scripted_server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = write_eval_or_int_hf_dir(&dir.path().join("m"));
    let server = Server::start(&model, &["--prefix-cache-bytes", "0"], &[]);
    (dir, server)
}

fn token_id(token: &str) -> usize {
    vocab()
        .0
        .iter()
        .position(|t| t == token)
        .expect("tiny-vocabulary token")
}

fn verify_request(extra: Value) -> Value {
    let mut body = json!({
        "prompt": PROMPT, "max_tokens": 12, "temperature": 1.0, "seed": 11,
        "hexacoder": {"verify": true, "candidates": 8, "language": "python"},
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            body.insert(key.clone(), value.clone());
        }
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_returns_the_most_probable_clean_candidate() {
    let (_dir, server) = scripted_server();
    let client = client();
    let url = server.url("/v1/completions");

    // Without verification the same sampling gives both kinds of code.
    let (status, plain) = post(
        &client,
        &url,
        &json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 1.0, "seed": 11, "n": 8}),
    )
    .await;
    assert_eq!(status, 200, "{plain}");
    let texts: Vec<&str> = plain["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .filter_map(|c| c["text"].as_str())
        .collect();
    assert!(
        texts.contains(&"eval(d)") && texts.contains(&"int(d)"),
        "{texts:?}"
    );

    let (status, body) = post(&client, &url, &verify_request(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 1, "{body}");
    let choice = &choices[0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["text"], "int(d)", "{body}");
    let verification = &choice["hexacoder"]["verification"];
    assert_eq!(verification["candidates"], 8, "{verification}");
    assert_eq!(verification["analyzer"], "embedded");
    assert_eq!(verification["language"], "py");
    assert_eq!(verification["outcome"], "replaced", "{verification}");
    assert_eq!(verification["findings"], json!([]));
    assert!(verification["verify_ms"].as_f64().is_some_and(|t| t >= 0.0));
    // The ranking is by probability; the most probable candidate is the vulnerable eval, and
    // the chosen one is the most probable of the clean ones.
    let summaries = verification["candidate_summaries"]
        .as_array()
        .expect("summaries");
    assert_eq!(summaries.len(), 8);
    let logprobs: Vec<f64> = summaries
        .iter()
        .map(|s| s["logprob"].as_f64().expect("logprob"))
        .collect();
    assert!(logprobs.windows(2).all(|w| w[0] >= w[1]), "{logprobs:?}");
    assert_eq!(summaries[0]["cwes"], json!(["CWE-094"]), "{verification}");
    let first_clean = summaries
        .iter()
        .position(|s| s["cwes"] == json!([]))
        .expect("a clean candidate");
    assert_eq!(verification["chosen_rank"], first_clean);
    assert_eq!(
        summaries[first_clean]["sample"], verification["chosen"],
        "{verification}"
    );
    let clean = summaries.iter().filter(|s| s["cwes"] == json!([])).count();
    assert_eq!(verification["clean_candidates"], clean);
    assert!((1..8).contains(&clean), "{verification}");
    // Usage counts every candidate the engine generated.
    let completion_tokens = body["usage"]["completion_tokens"].as_u64().expect("usage");
    assert!(completion_tokens >= 8 * 5, "{body}");

    // With the clean branch banned, every candidate is vulnerable: the most probable one comes
    // back with its findings, located in the completion.
    let ban = json!({"logit_bias": {token_id("in").to_string(): -100}});
    let (status, body) = post(&client, &url, &verify_request(ban)).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["text"], "eval(d)", "{body}");
    let verification = &choice["hexacoder"]["verification"];
    assert_eq!(verification["outcome"], "all_flagged", "{verification}");
    assert_eq!(verification["clean_candidates"], 0);
    assert_eq!(verification["chosen_rank"], 0);
    let finding = &verification["findings"][0];
    assert_eq!(finding["cwe"], "CWE-094", "{verification}");
    assert_eq!(finding["rule_id"], "py-eval-exec");
    assert_eq!(finding["span"]["start_line"], 2);
    assert_eq!(finding["span"]["start_column"], 12);
    // In the completion "eval(d)": the whole call.
    assert_eq!(finding["completion_range"], json!([0, 7]), "{finding}");

    // Greedy with one candidate: the eval, flagged.
    let (status, body) = post(
        &client,
        &url,
        &verify_request(json!({"temperature": 0, "hexacoder": {"verify": true, "candidates": 1, "language": "py"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "eval(d)");
    assert_eq!(
        body["choices"][0]["hexacoder"]["verification"]["outcome"],
        "all_flagged"
    );

    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let value = |name: &str| crate::harness::metric_value(&metrics, name);
    assert_eq!(
        value("hexacoder:verify_requests_total{outcome=\"replaced\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value("hexacoder:verify_requests_total{outcome=\"all_flagged\"}"),
        Some(2.0)
    );
    assert_eq!(value("hexacoder:verify_seconds_count"), Some(3.0));
    // Findings of every checked candidate: the first request's eval candidates, eight, one.
    let findings = value("hexacoder:oracle_findings_total{cwe=\"CWE-094\",mode=\"one_step\"}")
        .expect("findings metric");
    assert_eq!(findings, (8 - clean + 8 + 1) as f64, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_what_it_cannot_do_naming_the_field() {
    let server = Server::tiny(&[]);
    let client = client();
    let url = server.url("/v1/completions");
    let cases = [
        (json!({"stream": true}), "stream"),
        (json!({"n": 2}), "n"),
        (
            json!({"hexacoder": {"verify": true, "candidates": 0, "language": "python"}}),
            "hexacoder.candidates",
        ),
        (
            json!({"hexacoder": {"verify": true, "candidates": 17, "language": "python"}}),
            "hexacoder.candidates",
        ),
        (
            json!({"hexacoder": {"candidates": 2}}),
            "hexacoder.candidates",
        ),
        (
            json!({"hexacoder": {"verify": true, "language": "rust"}}),
            "hexacoder.language",
        ),
        // No language named and none to detect: the prompt has no imports.
        (json!({"hexacoder": {"verify": true}}), "hexacoder.language"),
    ];
    for (extra, param) in cases {
        let (status, body) = post(&client, &url, &verify_request(extra.clone())).await;
        assert_error(status, &body, 400, Some(param));
    }
    // A C prompt is detected from its includes.
    let (status, body) = post(
        &client,
        &url,
        &json!({"prompt": "#include <stdio.h>\n\nint main(void) {\n", "max_tokens": 4,
                "hexacoder": {"verify": true, "candidates": 2}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["hexacoder"]["verification"]["language"],
        "c"
    );
}
