//! Every endpoint over real HTTP on a loopback port, on a tiny random model.

use serde_json::{Value, json};

use crate::harness::{Server, assert_error, client, post, sse_data};

const MODEL: &str = "tiny-coder";

fn greedy(prompt: &str, max_tokens: u32) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_answer_like_openai() {
    let server = Server::tiny(&[]);
    let client = client();
    let url = server.url("/v1/completions");

    let response = client
        .post(&url)
        .header("x-request-id", "test-123")
        .json(&greedy("def add(a, b):\n", 12))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "test-123");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert!(choice["logprobs"].is_null());
    let usage = &body["usage"];
    assert!(
        usage["completion_tokens"]
            .as_u64()
            .expect("completion tokens")
            <= 12
    );
    assert_eq!(
        usage["total_tokens"].as_u64().expect("total"),
        usage["prompt_tokens"].as_u64().expect("prompt")
            + usage["completion_tokens"].as_u64().expect("completion")
    );
    let text = choice["text"].as_str().expect("text").to_string();

    // Greedy is deterministic; a request id is generated when none is sent.
    let response = client
        .post(&url)
        .json(&greedy("def add(a, b):\n", 12))
        .send()
        .await
        .expect("POST");
    assert!(response.headers().contains_key("x-request-id"));
    let again: Value = response.json().await.expect("json");
    assert_eq!(again["choices"][0]["text"], text.as_str());
    // The second request reused the first one's prompt from the prefix cache.
    assert!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .expect("cached")
            > 0,
        "{again}"
    );

    // Several prompts, n samples each, legacy logprobs, seeded sampling, echo.
    let (status, body) = post(
        &client,
        &url,
        &json!({"model": MODEL, "prompt": ["import os\n", "class A:\n"], "n": 2, "max_tokens": 5,
                "temperature": 0.9, "seed": 42, "logprobs": 3, "user": "tester"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 4);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        let logprobs = &choice["logprobs"];
        let tokens = logprobs["tokens"].as_array().expect("tokens");
        assert_eq!(
            tokens.len(),
            logprobs["token_logprobs"].as_array().expect("lps").len()
        );
        assert_eq!(
            tokens.len(),
            logprobs["text_offset"].as_array().expect("offsets").len()
        );
        for top in logprobs["top_logprobs"].as_array().expect("top") {
            assert!(top.as_object().expect("object").len() <= 3);
        }
        for lp in logprobs["token_logprobs"].as_array().expect("lps") {
            assert!(lp.as_f64().expect("f64") <= 0.0);
        }
    }
    let (_, same_seed) = post(
        &client,
        &url,
        &json!({"model": MODEL, "prompt": ["import os\n", "class A:\n"], "n": 2, "max_tokens": 5,
                "temperature": 0.9, "seed": 42, "logprobs": 3}),
    )
    .await;
    // The same seed gives the same tokens (log-probabilities may differ in the last bits: the
    // prompt now comes from the prefix cache).
    for (a, b) in same_seed["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .zip(choices)
    {
        assert_eq!(a["text"], b["text"]);
        assert_eq!(a["logprobs"]["tokens"], b["logprobs"]["tokens"]);
    }

    let (_, echoed) = post(
        &client,
        &url,
        &json!({"prompt": "x = 1\n", "max_tokens": 3, "temperature": 0, "echo": true}),
    )
    .await;
    assert!(
        echoed["choices"][0]["text"]
            .as_str()
            .expect("text")
            .starts_with("x = 1\n")
    );

    // Fill in the middle, stop strings, max_tokens 0.
    let (status, fim) = post(&client, &url, &json!({"prompt": "def f(x):\n    ", "suffix": "\n    return y\n", "max_tokens": 8, "temperature": 0})).await;
    assert_eq!(status, 200, "{fim}");
    let (_, stopped) = post(&client, &url, &json!({"prompt": "def add(a, b):\n", "max_tokens": 12, "temperature": 0, "stop": [text.chars().nth(2).expect("3 chars").to_string()]})).await;
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert!(text.starts_with(stopped["choices"][0]["text"].as_str().expect("text")));
    let (_, zero) = post(&client, &url, &json!({"prompt": "x", "max_tokens": 0})).await;
    assert_eq!(zero["choices"][0]["text"], "");
    assert_eq!(zero["usage"]["completion_tokens"], 0);

    // logit_bias: +100 on "Q" (id 49 in the tiny vocabulary) forces it; bad keys are errors.
    let (status, forced) = post(
        &client,
        &url,
        &json!({"prompt": "x", "max_tokens": 4, "temperature": 0, "logit_bias": {"49": 100}}),
    )
    .await;
    assert_eq!(status, 200, "{forced}");
    assert_eq!(forced["choices"][0]["text"], "QQQQ");
    let (status, body) = post(
        &client,
        &url,
        &json!({"prompt": "x", "logit_bias": {"Q": 1}}),
    )
    .await;
    assert_error(status, &body, 400, Some("logit_bias"));
    let (status, body) = post(
        &client,
        &url,
        &json!({"prompt": "x", "logit_bias": {"999999": 1}}),
    )
    .await;
    assert_error(status, &body, 400, None);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("999999"),
        "{body}"
    );

    // The hexacoder extension: top_k and ignore_eos in, timings out.
    let (status, ext) = post(
        &client,
        &url,
        &json!({"prompt": "x", "max_tokens": 40, "temperature": 0.7,
        "hexacoder": {"top_k": 5, "ignore_eos": true}}),
    )
    .await;
    assert_eq!(status, 200, "{ext}");
    assert_eq!(ext["usage"]["completion_tokens"], 40);
    assert!(
        ext["hexacoder"]["time_to_first_token_ms"]
            .as_f64()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_completions_match_the_whole_response() {
    let server = Server::tiny(&[]);
    let client = client();
    let url = server.url("/v1/completions");
    let (_, whole) = post(&client, &url, &json!({"prompt": ["def f():\n", "x"], "n": 2, "max_tokens": 20, "temperature": 0.8, "seed": 3})).await;
    let response = client
        .post(&url)
        .json(&json!({"prompt": ["def f():\n", "x"], "n": 2, "max_tokens": 20, "temperature": 0.8, "seed": 3,
                      "stream": true, "stream_options": {"include_usage": true}, "logprobs": 1}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/event-stream")
    );
    let data = sse_data(&response.text().await.expect("body"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let mut texts = vec![String::new(); 4];
    let mut finished = [false; 4];
    let mut usage = None;
    for chunk in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(chunk).expect("chunk json");
        assert_eq!(chunk["object"], "text_completion");
        for choice in chunk["choices"].as_array().expect("choices") {
            let i = choice["index"].as_u64().expect("index") as usize;
            texts[i].push_str(choice["text"].as_str().expect("text"));
            if !choice["finish_reason"].is_null() {
                finished[i] = true;
            }
        }
        if !chunk["usage"].is_null() {
            usage = Some(chunk["usage"].clone());
        }
    }
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(text, whole["choices"][i]["text"].as_str().expect("text"));
    }
    assert!(finished.iter().all(|&f| f));
    let usage = usage.expect("usage chunk");
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[field], whole["usage"][field]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_uses_the_model_template_or_a_fallback() {
    // The tiny model ships no template and no chat tokens: the plain fallback.
    let server = Server::tiny(&[]);
    let client = client();
    let url = server.url("/v1/chat/completions");
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]);
    let (status, body) = post(&client, &url, &json!({"model": MODEL, "messages": messages, "max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 2})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    let lps = choice["logprobs"]["content"].as_array().expect("logprobs");
    assert!(!lps.is_empty() && lps[0]["top_logprobs"].as_array().expect("top").len() == 2);
    // "System: Be brief.\n\nUser: Hi\n\nAssistant:" is 40 tokens of this byte-level vocabulary
    // at most (merges shorten it).
    let prompt_tokens = body["usage"]["prompt_tokens"]
        .as_u64()
        .expect("prompt tokens");
    assert!(prompt_tokens > 20 && prompt_tokens <= 40, "{prompt_tokens}");

    let response = client
        .post(&url)
        .json(&json!({"messages": messages, "max_tokens": 6, "temperature": 0, "stream": true}))
        .send()
        .await
        .expect("POST");
    let data = sse_data(&response.text().await.expect("body"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).expect("json"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, content);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );

    // A model template from tokenizer_config.json, rendered with minijinja.
    let dir = tempfile::tempdir().expect("tempdir");
    let model = crate::harness::tiny_model(dir.path());
    let template = "{% for m in messages %}[{{ m.role | upper }}] {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}[ASSISTANT] {% endif %}";
    std::fs::write(
        model.join("tokenizer_config.json"),
        json!({"eos_token": "<|endoftext|>", "chat_template": template}).to_string(),
    )
    .expect("write config");
    let templated = Server::start(&model, &[], &[]);
    let (status, body) = post(
        &client,
        &templated.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "  Hi  "}], "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // "[USER] Hi\n[ASSISTANT] " is 22 characters; the vocabulary merges none of them.
    assert_eq!(body["usage"]["prompt_tokens"], 22);
    let (status, body) = post(
        &client,
        &templated.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "wizard", "content": "x"}]}),
    )
    .await;
    assert_error(status, &body, 400, Some("messages[0].role"));
}

#[tokio::test(flavor = "multi_thread")]
async fn infill_models_health_and_metrics() {
    let server = Server::tiny(&[]);
    let client = client();

    let (status, body) = post(
        &client,
        &server.url("/infill"),
        &json!({
        "input_prefix": "def area(r):\n    ", "input_suffix": "\n", "prompt": "return",
        "input_extra": [{"filename": "util.py", "text": "PI = 3.14159\n"}],
        "n_predict": 10, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["content"].is_string());
    assert_eq!(body["stop"], true);
    assert!(body["tokens_predicted"].as_u64().expect("predicted") <= 10);
    assert!(body["timings"]["predicted_n"].is_u64());
    let content = body["content"].as_str().expect("content").to_string();
    let response = client
        .post(server.url("/infill"))
        .json(&json!({"input_prefix": "def area(r):\n    ", "input_suffix": "\n", "prompt": "return",
            "input_extra": [{"filename": "util.py", "text": "PI = 3.14159\n"}], "n_predict": 10, "temperature": 0, "stream": true}))
        .send()
        .await
        .expect("POST");
    let data = sse_data(&response.text().await.expect("body"));
    let chunks: Vec<Value> = data
        .iter()
        .map(|c| serde_json::from_str(c).expect("llama.cpp streams no [DONE]"))
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["content"].as_str())
        .collect();
    assert_eq!(streamed, content);
    assert_eq!(chunks.last().expect("final")["stop"], true);

    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["max_model_len"], 8192);
    let model = client
        .get(server.url(&format!("/v1/models/{MODEL}")))
        .send()
        .await
        .expect("GET");
    assert_eq!(model.status(), 200);
    let missing = client
        .get(server.url("/v1/models/gpt-4"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);

    let health: Value = client
        .get(server.url("/health"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");

    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    for name in [
        "hexacoder:num_requests_running",
        "hexacoder:num_requests_waiting",
        "hexacoder:num_sequences_running",
        "hexacoder:time_to_first_token_seconds_bucket",
        "hexacoder:inter_token_latency_seconds_bucket",
        "hexacoder:e2e_request_latency_seconds_bucket",
        "hexacoder:prompt_tokens_total",
        "hexacoder:generation_tokens_total",
        "hexacoder:prefix_cache_queries_total",
        "hexacoder:prefix_cache_hits_total",
        "hexacoder:http_requests_total{route=\"/infill\",status=\"200\"} 2",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    let generated = crate::harness::metric_value(&metrics, "hexacoder:generation_tokens_total")
        .expect("counter");
    assert!(generated >= 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_openai_errors() {
    let server = Server::tiny(&["--max-body-bytes", "2000"]);
    let client = client();
    let url = server.url("/v1/completions");
    let raw = |body: &'static str| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("POST");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("error json"))
        }
    };
    let (status, body) = raw("{not json").await;
    assert_error(status, &body, 400, None);
    let (status, body) = raw(r#"{"prompt": "x", "max_tokens": "ten"}"#).await;
    assert_error(status, &body, 400, Some("max_tokens"));
    let (status, body) = raw(r#"{"prompt": 42}"#).await;
    assert_error(status, &body, 400, Some("prompt"));
    let (status, body) = raw(r#"{"max_tokens": 3}"#).await;
    assert_error(status, &body, 400, None);

    for (field, value) in [
        ("n", json!(0)),
        ("n", json!(17)),
        ("max_tokens", json!(-1)),
        ("max_tokens", json!(100000)),
        ("temperature", json!(2.5)),
        ("temperature", json!(-0.1)),
        ("top_p", json!(0)),
        ("logprobs", json!(21)),
    ] {
        let mut request = json!({"prompt": "x"});
        request[field] = value.clone();
        let (status, body) = post(&client, &url, &request).await;
        assert_error(status, &body, 400, Some(field));
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains(&value.to_string()),
            "{body}"
        );
    }

    // A prompt that does not fit says by how much.
    let long = "a ".repeat(900);
    let (status, body) = post(&client, &url, &json!({"prompt": long, "max_tokens": 8000})).await;
    assert_error(status, &body, 400, Some("prompt"));
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("by"),
        "{body}"
    );

    let (status, body) = post(&client, &url, &json!({"model": "gpt-4", "prompt": "x"})).await;
    assert_error(status, &body, 404, Some("model"));
    assert_eq!(body["error"]["code"], "model_not_found");

    let (status, body) = post(&client, &url, &json!({"prompt": "x".repeat(5000)})).await;
    assert_error(status, &body, 413, None);

    let (status, body) = post(&client, &server.url("/v1/nothing"), &json!({})).await;
    assert_error(status, &body, 404, None);
    let response = client.get(&url).send().await.expect("GET");
    let status = response.status().as_u16();
    assert_error(status, &response.json().await.expect("json"), 405, None);

    let (status, body) = post(
        &client,
        &server.url("/v1/chat/completions"),
        &json!({"messages": []}),
    )
    .await;
    assert_error(status, &body, 400, Some("messages"));
    let (status, body) = post(
        &client,
        &url,
        &json!({"prompt": "x", "hexacoder": {"bogus": 1}}),
    )
    .await;
    assert_error(status, &body, 400, Some("hexacoder.bogus"));

    // Each route reads the shared fields and its own from one body; a value of the wrong
    // type is named by its path in either.
    let chat = json!({"messages": [{"role": "user", "content": "x"}]});
    let infill = json!({"input_prefix": "x", "input_suffix": ""});
    for (route, base, own, bad_own) in [
        (
            "/v1/completions",
            json!({"prompt": "x"}),
            "echo",
            json!("yes"),
        ),
        (
            "/v1/chat/completions",
            chat,
            "max_completion_tokens",
            json!("ten"),
        ),
        ("/infill", infill, "n_predict", json!([1])),
    ] {
        for (field, value) in [
            ("temperature", json!("hot")),
            ("stop", json!(5)),
            ("logit_bias", json!([1])),
            ("seed", json!(1.5)),
            ("stream", json!("no")),
            (own, bad_own),
        ] {
            let mut request = base.clone();
            request[field] = value;
            let (status, body) = post(&client, &server.url(route), &request).await;
            assert_error(status, &body, 400, Some(field));
            let message = body["error"]["message"].as_str().expect("message");
            assert!(
                message.starts_with(&format!("Invalid `{field}`")),
                "{route}: {body}"
            );
        }
        let mut request = base.clone();
        request["hexacoder"] = json!({"candidates": "four"});
        let (status, body) = post(&client, &server.url(route), &request).await;
        assert_error(status, &body, 400, Some("hexacoder.candidates"));
    }
    let (status, body) = post(
        &client,
        &server.url("/infill"),
        &json!({"input_prefix": "x", "n": 2}),
    )
    .await;
    assert_error(status, &body, 400, Some("n"));

    // The server is still healthy after all of that.
    let (status, _) = post(&client, &url, &greedy("x", 2)).await;
    assert_eq!(status, 200);
}
