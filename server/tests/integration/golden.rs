//! The wire format, byte for byte: a recorded set of requests to every route, whole and
//! streamed, successes and errors, whose responses (ids, timestamps, timings and temporary
//! paths masked) must come back exactly as `tests/golden/wire.txt` holds them. A refactor of
//! how responses are built must not change a byte a client sees. `HEXACODER_BLESS=1`
//! rewrites the file after an intended change; review its diff.

use std::path::Path;
use std::sync::LazyLock;

use hexacoder_testkit::write_eval_or_int_hf_dir;
use regex::Regex;
use serde_json::{Value, json};

use crate::harness::{Server, client, tiny_model};

const TOKEN: &str = "golden-admin";

/// One exchange: method, path, body (GET when `None`), and whether to send the admin token.
struct Exchange {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    admin: bool,
}

fn post(path: &'static str, body: Value) -> Exchange {
    Exchange {
        method: "POST",
        path,
        body: Some(body),
        admin: false,
    }
}

fn get(path: &'static str) -> Exchange {
    Exchange {
        method: "GET",
        path,
        body: None,
        admin: false,
    }
}

fn admin(mut exchange: Exchange) -> Exchange {
    exchange.admin = true;
    exchange
}

/// Requests against the tiny random model (FIM, chat fallback template), with an adapter
/// `sec` and mutation on.
fn tiny_exchanges(adapter_dir: &str) -> Vec<Exchange> {
    let greedy = |extra: Value| {
        let mut body = json!({"prompt": "def load(path):\n", "max_tokens": 6, "temperature": 0});
        for (key, value) in extra.as_object().expect("object") {
            body[key] = value.clone();
        }
        body
    };
    let chat = json!({"messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Write add(a, b)."}], "max_tokens": 6, "temperature": 0});
    let mut chat_stream = chat.clone();
    chat_stream["stream"] = json!(true);
    chat_stream["stream_options"] = json!({"include_usage": true});
    let infill = json!({"input_prefix": "def area(r):\n", "prompt": "    ", "input_suffix": "\n",
        "input_extra": [{"filename": "consts.py", "text": "PI = 3.14159\n"}], "n_predict": 6, "temperature": 0});
    let mut infill_stream = infill.clone();
    infill_stream["stream"] = json!(true);
    let mut infill_fields = infill.clone();
    infill_fields["response_fields"] = json!(["content", "timings/prompt_n", "tokens_cached"]);
    let two_step = json!({"prompt": "from flask import Flask, request\n\napp = Flask(__name__)\n",
        "max_tokens": 12, "temperature": 0, "hexacoder": {"two_step": true}});
    let mut two_step_stream = two_step.clone();
    two_step_stream["stream"] = json!(true);
    vec![
        get("/health"),
        get("/v1/models"),
        get("/v1/models/sec"),
        get("/v1/models/nope"),
        post("/v1/completions", greedy(json!({}))),
        post(
            "/v1/completions",
            greedy(json!({"n": 2, "temperature": 0.9, "seed": 3, "logprobs": 2})),
        ),
        post(
            "/v1/completions",
            greedy(json!({"prompt": ["a = ", "b = "], "echo": true})),
        ),
        post(
            "/v1/completions",
            greedy(json!({"suffix": "\n    return data\n", "model": "sec"})),
        ),
        post(
            "/v1/completions",
            greedy(json!({"stop": ["e", "\n"], "max_tokens": 0})),
        ),
        post(
            "/v1/completions",
            greedy(
                json!({"stream": true, "stream_options": {"include_usage": true}, "logprobs": 1}),
            ),
        ),
        post("/v1/completions", two_step),
        post("/v1/completions", two_step_stream),
        post(
            "/v1/completions",
            greedy(json!({"hexacoder": {"n_indent": 1, "t_max_predict_ms": 60000}})),
        ),
        post("/v1/completions", greedy(json!({"temperature": 5}))),
        post("/v1/completions", greedy(json!({"model": "nope"}))),
        post("/v1/completions", json!({"max_tokens": 3})),
        post(
            "/v1/completions",
            greedy(json!({"hexacoder": {"bogus": 1}})),
        ),
        post("/v1/chat/completions", chat),
        post("/v1/chat/completions", chat_stream),
        post("/v1/chat/completions", json!({"messages": []})),
        post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0,
                   "logprobs": true, "top_logprobs": 2, "n": 2}),
        ),
        post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0,
                   "logprobs": true, "top_logprobs": 1, "stream": true}),
        ),
        post("/infill", infill),
        post("/infill", infill_stream),
        post("/infill", infill_fields),
        post(
            "/tabby/v1/completions",
            json!({"language": "python", "segments": {"prefix": "def area(r):\n    ", "suffix": "\n"}, "seed": 1}),
        ),
        get("/tabby/v1/health"),
        post(
            "/tabby/v1/events",
            json!({"type": "view", "completion_id": "cmpl-1", "choice_index": 0}),
        ),
        post(
            "/v1/hexacoder/events",
            json!({"event": "show", "id": "cmpl-unknown"}),
        ),
        get("/v1/lora_adapters"),
        post(
            "/v1/load_lora_adapter",
            json!({"lora_name": "late", "lora_path": "sec"}),
        ),
        admin(post(
            "/v1/load_lora_adapter",
            json!({"lora_name": "late", "lora_path": adapter_dir}),
        )),
        admin(get("/v1/lora_adapters")),
        admin(post(
            "/v1/unload_lora_adapter",
            json!({"lora_name": "late"}),
        )),
        admin(post(
            "/v1/unload_lora_adapter",
            json!({"lora_name": "late"}),
        )),
    ]
}

/// Verify mode on the scripted `eval(d)`-or-`int(d)` model.
fn verify_exchanges() -> Vec<Exchange> {
    vec![
        post(
            "/v1/completions",
            json!({"prompt": "def f(d):\n    return ", "max_tokens": 12, "temperature": 1.0, "seed": 11,
                   "hexacoder": {"verify": true, "candidates": 8, "language": "python"}}),
        ),
        post(
            "/v1/completions",
            json!({"prompt": "def f(d):\n    return ", "max_tokens": 12, "temperature": 0,
                   "hexacoder": {"verify": true, "candidates": 1, "language": "python"}}),
        ),
    ]
}

/// Two-step requests that add an import, on the scripted `import gc` model.
fn imports_exchanges() -> Vec<Exchange> {
    let completion = json!({"prompt": "import abc\n\nx = ", "max_tokens": 12, "temperature": 0,
        "hexacoder": {"two_step": true, "prune_unused_imports": false}});
    let mut streamed = completion.clone();
    streamed["stream"] = json!(true);
    let mut echoed = completion.clone();
    echoed["echo"] = json!(true);
    echoed["n"] = json!(2);
    vec![
        post("/v1/completions", completion),
        post("/v1/completions", streamed),
        post("/v1/completions", echoed),
        post(
            "/infill",
            json!({"input_prefix": "import abc\n\ndef f():\n", "prompt": "    x = ", "input_suffix": "\n",
                   "n_predict": 12, "temperature": 0, "n_indent": 4, "hexacoder": {"two_step": true}}),
        ),
    ]
}

/// Replaces what differs from run to run or machine to machine: response ids, timestamps,
/// timings, the temporary directory, the CPU count, and the low digits of log-probabilities
/// (AVX2 and AVX-512 kernels add in different orders; the numbers have tests of their own).
fn mask(text: &str, dir: &str) -> String {
    static FLOAT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"-?\d+\.\d{4,}(e-?\d+)?").expect("regex"));
    static CPUS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#""cpu_count":\d+"#).expect("regex"));
    static ID: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#""(id|completion_id)":"(cmpl|chatcmpl)-[0-9a-f]+""#).expect("regex")
    });
    static CREATED: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#""(created|loaded_at)":\d+"#).expect("regex"));
    static TIMING: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#""(\w*_ms|\w*_per_second|elapsed|uptime_seconds)":[0-9.eE+-]+"#)
            .expect("regex")
    });
    let text = text.replace(dir, "<dir>");
    let text = ID.replace_all(&text, r#""$1":"$2-<id>""#);
    let text = CREATED.replace_all(&text, r#""$1":0"#);
    let text = TIMING.replace_all(&text, r#""$1":0"#);
    let text = CPUS.replace_all(&text, r#""cpu_count":0"#);
    FLOAT.replace_all(&text, "<float>").into_owned()
}

async fn record(server: &Server, exchanges: &[Exchange], dir: &str) -> String {
    let client = client();
    let mut out = String::new();
    for exchange in exchanges {
        let url = server.url(exchange.path);
        let mut request = match &exchange.body {
            Some(body) => client.post(&url).json(body),
            None => client.get(&url),
        };
        if exchange.admin {
            request = request.header("x-admin-token", TOKEN);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii").to_string())
            .unwrap_or_default();
        let adapter = response
            .headers()
            .get("x-hexacoder-adapter")
            .map(|v| format!(" x-hexacoder-adapter: {}", v.to_str().expect("ascii")))
            .unwrap_or_default();
        let body = response.text().await.expect("body");
        let sent = exchange
            .body
            .as_ref()
            .map(|b| mask(&b.to_string(), dir))
            .unwrap_or_default();
        out.push_str(&format!(
            "### {} {}{}\n{sent}\n--- {status} {content_type}{adapter}\n{}\n\n",
            exchange.method,
            exchange.path,
            if exchange.admin { " (admin)" } else { "" },
            mask(body.trim_end(), dir)
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_exactly_as_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("adapters");
    let adapter = hexacoder_testkit::Tiny {
        max_positions: 8192,
        ..hexacoder_testkit::Tiny::small(hexacoder_testkit::Arch::Qwen2)
    }
    .write_lora(
        &root.join("sec"),
        1,
        4,
        &["q_proj", "k_proj", "v_proj", "o_proj"],
        0.5,
    );
    let model = tiny_model(dir.path());
    let server = Server::start(
        &model,
        &[
            "--adapter",
            &format!("sec={}", adapter.display()),
            "--enable-adapter-mutation",
            "--admin-token",
            TOKEN,
            "--adapter-root",
            root.to_str().expect("utf-8"),
        ],
        &[],
    );
    let dir_text = dir.path().to_str().expect("utf-8").to_string();
    let adapter_text = adapter.to_str().expect("utf-8").to_string();
    let mut recorded = record(&server, &tiny_exchanges(&adapter_text), &dir_text).await;
    drop(server);

    let imports_model = crate::infill::import_gc_model(dir.path());
    let server = Server::start(&imports_model, &[], &[]);
    recorded.push_str(&record(&server, &imports_exchanges(), &dir_text).await);
    drop(server);

    let verify_model = write_eval_or_int_hf_dir(&dir.path().join("eval-or-int"));
    let server = Server::start(&verify_model, &["--prefix-cache-bytes", "0"], &[]);
    recorded.push_str(&record(&server, &verify_exchanges(), &dir_text).await);

    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/wire.txt");
    if std::env::var("HEXACODER_BLESS").ok().as_deref() == Some("1") {
        std::fs::create_dir_all(golden.parent().expect("parent")).expect("mkdir");
        std::fs::write(&golden, &recorded).expect("write the golden file");
        return;
    }
    let expected = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (HEXACODER_BLESS=1 records it)", golden.display()));
    if recorded != expected {
        let diff = similar::TextDiff::from_lines(&expected, &recorded);
        panic!(
            "the wire format changed (HEXACODER_BLESS=1 records the new one; review the diff):\n{}",
            diff.unified_diff().context_radius(2)
        );
    }
}
