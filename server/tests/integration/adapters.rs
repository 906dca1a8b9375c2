//! LoRA adapters over HTTP: startup loading, selection by `model`, vLLM's run-time routes
//! with their guards, rejections that leave the server healthy, and hot-swap under load.
//!
//! Why one file of about 600 lines: every test here starts a server with adapters on disk and
//! shares the helpers that write them; split, each part would re-import the same half.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hexacoder_testkit::{Arch, Tiny};
use serde_json::{Value, json};

use crate::harness::{Server, assert_error, client, post, tiny_model};

const ALL: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
const TOKEN: &str = "admin-secret";

fn tiny() -> Tiny {
    Tiny {
        max_positions: 8192,
        ..Tiny::small(Arch::Qwen2)
    }
}

fn write_adapter(dir: &Path, seed: u64) -> PathBuf {
    tiny().write_lora(dir, seed, 4, &ALL, 0.5)
}

fn greedy(model: &str) -> Value {
    json!({"model": model, "prompt": "def load(path):\n", "max_tokens": 12, "temperature": 0})
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_adapters_are_listed_and_selected_by_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path());
    let sec = write_adapter(&dir.path().join("sec"), 1);
    write_adapter(&dir.path().join("many/alpha"), 2);
    write_adapter(&dir.path().join("many/beta"), 3);
    let server = Server::start(
        &model,
        &[
            "--adapter",
            &format!("sec={}", sec.display()),
            "--adapter-dir",
            dir.path().join("many").to_str().expect("utf-8"),
        ],
        &[],
    );
    let client = client();
    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["tiny-coder", "alpha", "beta", "sec"]);
    assert_eq!(models["data"][3]["parent"], "tiny-coder");
    assert_eq!(models["data"][3]["hexacoder"]["kind"], "lora");

    let url = server.url("/v1/completions");
    let (_, base) = post(&client, &url, &greedy("tiny-coder")).await;
    let response = client
        .post(&url)
        .json(&json!({"model": "sec", "prompt": "x", "max_tokens": 2, "stream": true}))
        .send()
        .await
        .expect("POST");
    assert_eq!(
        response.headers()["x-hexacoder-adapter"],
        "sec@1",
        "streams say which version answers"
    );
    let (status, adapted) = post(&client, &url, &greedy("sec")).await;
    assert_eq!(status, 200, "{adapted}");
    assert_eq!(adapted["model"], "sec");
    assert_eq!(adapted["hexacoder"]["adapter"], "sec");
    assert_eq!(adapted["hexacoder"]["adapter_generation"], 1);
    assert!(base["hexacoder"]["adapter"].is_null());
    assert_ne!(
        base["choices"][0]["text"], adapted["choices"][0]["text"],
        "the adapter changes the output"
    );

    let mut by_extension = greedy("tiny-coder");
    by_extension["model"] = Value::Null;
    by_extension["hexacoder"] = json!({"adapter": "sec"});
    let (_, extension) = post(&client, &url, &by_extension).await;
    assert_eq!(
        extension["choices"][0]["text"],
        adapted["choices"][0]["text"]
    );

    let (status, chat) = post(&client, &server.url("/v1/chat/completions"), &json!({"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})).await;
    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["hexacoder"]["adapter"], "alpha");

    let (status, body) = post(&client, &url, &greedy("gamma")).await;
    assert_error(status, &body, 404, Some("model"));
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("`sec`"),
        "{body}"
    );

    // Mutation is off by default.
    let response = client
        .post(server.url("/v1/load_lora_adapter"))
        .header("x-admin-token", TOKEN)
        .json(&json!({"lora_name": "x", "lora_path": "sec"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 403);
    let requests = server
        .metric(&client, "hexacoder:lora_requests_total{adapter=\"sec\"}")
        .await;
    assert_eq!(requests, 3.0);

    // `/infill` picks adapters the same ways: by `model` or the extension; llama.vim's empty
    // `model` is the base model.
    let fim = |model: &str| json!({"model": model, "prompt": "def load(path):\n", "suffix": "\n", "max_tokens": 12, "temperature": 0});
    let (_, fim_base) = post(&client, &url, &fim("tiny-coder")).await;
    let (_, fim_adapted) = post(&client, &url, &fim("sec")).await;
    assert_ne!(
        fim_base["choices"][0]["text"],
        fim_adapted["choices"][0]["text"]
    );
    let infill = server.url("/infill");
    let body = |model: &str, extension: Value| {
        json!({"model": model, "input_prefix": "def load(path):\n", "input_suffix": "\n", "n_predict": 12,
               "temperature": 0, "hexacoder": extension})
    };
    for (request, expected, header) in [
        (body("sec", json!({})), &fim_adapted, "sec@1"),
        (body("", json!({"adapter": "sec"})), &fim_adapted, "sec@1"),
        (body("", json!({})), &fim_base, ""),
    ] {
        let response = client
            .post(&infill)
            .json(&request)
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 200);
        let answered = response
            .headers()
            .get("x-hexacoder-adapter")
            .map(|v| v.to_str().expect("ascii").to_string())
            .unwrap_or_default();
        assert_eq!(answered, header, "{request}");
        let got: Value = response.json().await.expect("json");
        assert_eq!(got["content"], expected["choices"][0]["text"], "{request}");
    }
}

async fn admin(
    client: &reqwest::Client,
    server: &Server,
    route: &str,
    body: Value,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = client.post(server.url(route)).json(&body);
    if let Some(token) = token {
        request = request.header("x-admin-token", token);
    }
    let response = request.send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

fn mutable_server(root: &Path, extra: &[&str]) -> Server {
    let model = tiny_model(root.parent().expect("parent"));
    let mut args = vec![
        "--enable-adapter-mutation",
        "--admin-token",
        TOKEN,
        "--adapter-root",
        root.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    Server::start(&model, &args, &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_loading_is_guarded_and_bad_adapters_are_4xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    write_adapter(&root.join("good"), 1);
    write_adapter(&dir.path().join("outside"), 2);
    let server = mutable_server(&root, &["--max-adapters", "2"]);
    let client = client();
    let load = |name: &str, path: &str| json!({"lora_name": name, "lora_path": path});

    let (status, body) = admin(
        &client,
        &server,
        "/v1/load_lora_adapter",
        load("a", "good"),
        None,
    )
    .await;
    assert_error(status, &body, 401, None);
    let (status, body) = admin(
        &client,
        &server,
        "/v1/load_lora_adapter",
        load("a", "good"),
        Some("wrong"),
    )
    .await;
    assert_error(status, &body, 401, None);

    let (status, body) = admin(
        &client,
        &server,
        "/v1/load_lora_adapter",
        load("a", "good"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["adapter"]["generation"], 1);
    let (_, body) = admin(
        &client,
        &server,
        "/v1/load_lora_adapter",
        load("a", "good"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        body["adapter"]["generation"], 2,
        "loading under the same name replaces it"
    );
    let listed: Value = client
        .get(server.url("/v1/lora_adapters"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["data"].as_array().expect("data").len(), 1);
    let (_, used) = post(&client, &server.url("/v1/completions"), &greedy("a")).await;
    assert_eq!(used["hexacoder"]["adapter_generation"], 2);

    // Paths: traversal, outside the root, a symlink that escapes it.
    std::os::unix::fs::symlink(dir.path().join("outside"), root.join("escape")).expect("symlink");
    for path in [
        "../outside",
        dir.path().join("outside").to_str().expect("utf-8"),
        "escape",
        "missing",
    ] {
        let (status, body) = admin(
            &client,
            &server,
            "/v1/load_lora_adapter",
            load("b", path),
            Some(TOKEN),
        )
        .await;
        assert_error(status, &body, 400, Some("lora_path"));
    }
    // Bad files: truncated weights, wrong shapes, NaN weights.
    let truncated = write_adapter(&root.join("truncated"), 3);
    let weights = truncated.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
    Tiny {
        hidden: 32,
        ..tiny()
    }
    .write_lora(&root.join("wrong-shape"), 4, 4, &ALL, 0.5);
    let nan = write_adapter(&root.join("nan"), 5);
    let mut weights = candle_core::safetensors::load(
        nan.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("load");
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string();
    let shape = weights[&key].dims().to_vec();
    weights.insert(
        key,
        candle_core::Tensor::full(f32::NAN, shape, &candle_core::Device::Cpu).expect("nan"),
    );
    candle_core::safetensors::save(&weights, nan.join("adapter_model.safetensors")).expect("save");
    // A tensor for a module that is not a decoder projection.
    let unknown = tiny().write_lora(&root.join("unknown"), 6, 4, &["q_proj"], 0.5);
    let mut weights = candle_core::safetensors::load(
        unknown.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("load");
    weights.insert(
        "base_model.model.lm_head.lora_A.weight".into(),
        candle_core::Tensor::zeros((4, 64), candle_core::DType::F32, &candle_core::Device::Cpu)
            .expect("zeros"),
    );
    candle_core::safetensors::save(&weights, unknown.join("adapter_model.safetensors"))
        .expect("save");
    for (path, needle) in [
        ("truncated", "safetensors"),
        ("wrong-shape", "shape"),
        ("nan", "NaN"),
        ("unknown", "lm_head"),
    ] {
        let (status, body) = admin(
            &client,
            &server,
            "/v1/load_lora_adapter",
            load("b", path),
            Some(TOKEN),
        )
        .await;
        assert_error(status, &body, 400, Some("lora_path"));
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains(needle),
            "{body}"
        );
    }
    let (status, body) = admin(
        &client,
        &server,
        "/v1/load_lora_adapter",
        load("bad name!", "good"),
        Some(TOKEN),
    )
    .await;
    assert_error(status, &body, 400, Some("lora_name"));

    // The cap.
    let (status, _) = admin(
        &client,
        &server,
        "/v1/load_lora_adapter",
        load("b", "good"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = admin(
        &client,
        &server,
        "/v1/load_lora_adapter",
        load("c", "good"),
        Some(TOKEN),
    )
    .await;
    assert_error(status, &body, 409, None);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("--max-adapters"),
        "{body}"
    );

    let (status, _) = admin(
        &client,
        &server,
        "/v1/unload_lora_adapter",
        json!({"lora_name": "a"}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = admin(
        &client,
        &server,
        "/v1/unload_lora_adapter",
        json!({"lora_name": "a"}),
        Some(TOKEN),
    )
    .await;
    assert_error(status, &body, 404, None);
    let (status, body) = post(&client, &server.url("/v1/completions"), &greedy("a")).await;
    assert_error(status, &body, 404, Some("model"));

    let health: Value = client
        .get(server.url("/health"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(
        server
            .metric(&client, "hexacoder:lora_adapters_loaded")
            .await,
        1.0
    );
    assert!(
        server
            .metric(&client, "hexacoder:lora_loads_total{result=\"error\"}")
            .await
            >= 8.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_swap_under_load_never_fails_or_misattributes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    write_adapter(&root.join("v-a"), 11);
    write_adapter(&root.join("v-b"), 12);
    let server = Arc::new(mutable_server(&root, &[]));
    let client = client();
    let loaded: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let (status, body) = admin(
        &client,
        &server,
        "/v1/load_lora_adapter",
        json!({"lora_name": "hot", "lora_path": "v-a"}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    loaded
        .lock()
        .expect("lock")
        .insert(body["adapter"]["generation"].as_u64().expect("generation"));

    let mut workers = Vec::new();
    for worker in 0..4 {
        let (client, server, loaded) = (client.clone(), Arc::clone(&server), Arc::clone(&loaded));
        workers.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..12 {
                let body = json!({"model": "hot", "prompt": format!("def f{worker}_{i}(x):\n"), "max_tokens": 6, "temperature": 0, "stream": i % 2 == 0, "stream_options": {"include_usage": true}});
                let response = client.post(server.url("/v1/completions")).json(&body).send().await.expect("POST");
                let status = response.status().as_u16();
                assert!(status < 500, "5xx during hot-swap: {status}");
                if status == 404 {
                    continue; // unloaded at that moment
                }
                assert_eq!(status, 200);
                let text = response.text().await.expect("body");
                let generation = if i % 2 == 0 {
                    let last = text.lines().filter_map(|l| l.strip_prefix("data: ")).rfind(|l| *l != "[DONE]").expect("chunks");
                    let chunk: Value = serde_json::from_str(last).expect("json");
                    chunk["hexacoder"]["adapter_generation"].as_u64()
                } else {
                    let whole: Value = serde_json::from_str(&text).expect("json");
                    whole["hexacoder"]["adapter_generation"].as_u64()
                };
                let generation = generation.expect("every response names its adapter generation");
                assert!(loaded.lock().expect("lock").contains(&generation), "generation {generation} was never loaded");
                ok += 1;
            }
            ok
        }));
    }
    for round in 0..10 {
        let path = if round % 2 == 0 { "v-b" } else { "v-a" };
        if round % 4 == 3 {
            let (status, _) = admin(
                &client,
                &server,
                "/v1/unload_lora_adapter",
                json!({"lora_name": "hot"}),
                Some(TOKEN),
            )
            .await;
            assert_eq!(status, 200);
        }
        // Record the generation before anyone can be served by it.
        let next = loaded
            .lock()
            .expect("lock")
            .iter()
            .max()
            .copied()
            .unwrap_or(0)
            + 1;
        loaded.lock().expect("lock").insert(next);
        let (status, body) = admin(
            &client,
            &server,
            "/v1/load_lora_adapter",
            json!({"lora_name": "hot", "lora_path": path}),
            Some(TOKEN),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["adapter"]["generation"], next);
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let mut served = 0;
    for worker in workers {
        served += worker.await.expect("worker");
    }
    assert!(served >= 24, "only {served} requests were served");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_byte_cap_is_a_clear_409() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    write_adapter(&root.join("good"), 1);
    let server = mutable_server(&root, &["--max-adapter-bytes", "1000"]);
    let client = client();
    let (status, body) = admin(
        &client,
        &server,
        "/v1/load_lora_adapter",
        json!({"lora_name": "a", "lora_path": "good"}),
        Some(TOKEN),
    )
    .await;
    assert_error(status, &body, 409, None);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("--max-adapter-bytes"),
        "{body}"
    );
    let listed: Value = client
        .get(server.url("/v1/lora_adapters"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["data"].as_array().expect("data").len(), 0);
}

/// Real-model tier: on a catalogue model with a shipped security adapter, `serve` offers it as
/// `hexacoder-secure` beside the base, it changes what the model writes, its requests default
/// to two-step generation, and `--no-default-adapter` turns it off.
#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_security_adapter_is_served_by_default() {
    if std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() != Some("1") {
        eprintln!("skipping: set HEXACODER_TEST_MODELS=1 to run real-model tests");
        return;
    }
    let client = client();
    let ids = |models: &Value| -> Vec<String> {
        models["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect()
    };
    let server = Server::start(Path::new("smollm2-135m"), &[], &[]);
    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(ids(&models), ["smollm2-135m", "hexacoder-secure"]);
    let prompt = "import os\n\ndef read_user_file(name):\n";
    let body = |model: &str, two_step: Option<bool>| {
        let mut body = json!({"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 1});
        if let Some(on) = two_step {
            body["hexacoder"] = json!({"two_step": on});
        }
        body
    };
    let url = server.url("/v1/completions");
    let (status, secure) = post(&client, &url, &body("hexacoder-secure", None)).await;
    assert_eq!(status, 200, "{secure}");
    assert_eq!(
        secure["choices"][0]["hexacoder"]["two_step"], true,
        "the adapter's metadata turns two-step on: {secure}"
    );
    let (status, base) = post(&client, &url, &body("smollm2-135m", Some(true))).await;
    assert_eq!(status, 200, "{base}");
    assert_ne!(
        base["choices"][0]["logprobs"], secure["choices"][0]["logprobs"],
        "the adapter changes nothing"
    );
    drop(server);

    let server = Server::start(Path::new("smollm2-135m"), &["--no-default-adapter"], &[]);
    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(ids(&models), ["smollm2-135m"]);
}
