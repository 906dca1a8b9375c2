//! Production behaviour: admission control, cancellation on disconnect, auth, timeouts,
//! graceful shutdown and configuration precedence.

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Server, assert_error, client, post};

/// A request that runs for seconds on the tiny model unless cancelled.
fn long_request(stream: bool) -> Value {
    json!({"prompt": "x", "max_tokens": 6000, "temperature": 0, "stream": stream,
           "hexacoder": {"ignore_eos": true}})
}

/// Polls `/metrics` until `name` satisfies `ok`, for at most 20 s.
async fn wait_for_metric(
    server: &Server,
    client: &reqwest::Client,
    name: &str,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = server.metric(client, name).await;
        if ok(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{name} stuck at {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a streaming response until its first chunk arrives.
async fn first_chunk(response: &mut reqwest::Response) {
    let chunk = response
        .chunk()
        .await
        .expect("chunk")
        .expect("a first chunk");
    assert!(!chunk.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_gets_429_with_retry_after() {
    let server = Server::tiny(&["--max-concurrent", "1", "--max-queue", "0"]);
    let client = client();
    let url = server.url("/v1/completions");
    let mut running = client
        .post(&url)
        .json(&long_request(true))
        .send()
        .await
        .expect("POST");
    first_chunk(&mut running).await;

    let response = client
        .post(&url)
        .json(&long_request(false))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let body: Value = response.json().await.expect("json");
    assert_error(429, &body, 429, None);
    assert_eq!(body["error"]["code"], "server_overloaded");

    drop(running);
    wait_for_metric(&server, &client, "hexacoder:num_requests_running", |v| {
        v == 0.0
    })
    .await;
    let (status, _) = post(&client, &url, &json!({"prompt": "x", "max_tokens": 2})).await;
    assert_eq!(status, 200, "a place frees up once the client leaves");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_stops_its_generation() {
    let server = Server::tiny(&[]);
    let client = client();
    let url = server.url("/v1/completions");

    // Streaming: drop the response after a few chunks.
    let mut response = client
        .post(&url)
        .json(&long_request(true))
        .send()
        .await
        .expect("POST");
    for _ in 0..3 {
        first_chunk(&mut response).await;
    }
    wait_for_metric(&server, &client, "hexacoder:num_sequences_running", |v| {
        v == 1.0
    })
    .await;
    drop(response);
    wait_for_metric(&server, &client, "hexacoder:num_sequences_running", |v| {
        v == 0.0
    })
    .await;
    let generated = server
        .metric(&client, "hexacoder:generation_tokens_total")
        .await;
    assert!(generated < 6000.0, "generation ran to the end: {generated}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server
            .metric(&client, "hexacoder:generation_tokens_total")
            .await,
        generated,
        "tokens kept growing"
    );

    // Non-streaming: the client closes its socket while waiting for the whole answer.
    let address = server.base.trim_start_matches("http://").to_string();
    let body = long_request(false).to_string();
    let mut socket = std::net::TcpStream::connect(&address).expect("connect");
    write!(socket, "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).expect("send");
    wait_for_metric(&server, &client, "hexacoder:num_sequences_running", |v| {
        v == 1.0
    })
    .await;
    socket.shutdown(std::net::Shutdown::Both).expect("shutdown");
    drop(socket);
    wait_for_metric(&server, &client, "hexacoder:num_sequences_running", |v| {
        v == 0.0
    })
    .await;
    let generated = server
        .metric(&client, "hexacoder:generation_tokens_total")
        .await;
    assert!(
        generated < 12000.0,
        "generation ran to the end: {generated}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server
            .metric(&client, "hexacoder:generation_tokens_total")
            .await,
        generated,
        "tokens kept growing"
    );
    let cancelled = server
        .metric(
            &client,
            "hexacoder:request_success_total{finished_reason=\"abort\"}",
        )
        .await;
    assert_eq!(cancelled, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_protects_everything_but_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "s3cret-key\n").expect("write key");
    let server = Server::tiny(&["--api-key-file", key_file.to_str().expect("utf-8")]);
    let client = client();
    assert_eq!(
        client
            .get(server.url("/health"))
            .send()
            .await
            .expect("GET")
            .status(),
        200
    );
    for key in [None, Some("wrong"), Some("s3cret-ke"), Some("s3cret-key2")] {
        let mut request = client.get(server.url("/v1/models"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("GET");
        assert_eq!(response.status(), 401, "key {key:?}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    let response = client
        .get(server.url("/v1/models"))
        .bearer_auth("s3cret-key")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let response = client
        .get(server.url("/metrics"))
        .header("x-api-key", "s3cret-key")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let response = client
        .post(server.url("/v1/completions"))
        .json(&json!({"prompt": "x", "max_tokens": 1}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 401);

    // Without a key everything is open.
    let open = Server::tiny(&[]);
    assert_eq!(
        client
            .get(open.url("/v1/models"))
            .send()
            .await
            .expect("GET")
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_requests_time_out_with_504() {
    let server = Server::tiny(&["--request-timeout", "1"]);
    let client = client();
    let started = Instant::now();
    let (status, body) = post(
        &client,
        &server.url("/v1/completions"),
        &long_request(false),
    )
    .await;
    assert_error(status, &body, 504, None);
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_for_metric(&server, &client, "hexacoder:num_sequences_running", |v| {
        v == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_loris_client_is_disconnected_and_others_are_served() {
    use std::io::Read;

    let server = Server::tiny(&["--header-read-timeout", "1"]);
    let address = server.base.trim_start_matches("http://").to_string();
    // Headers started, never finished: the server hangs up after the limit.
    let mut slow = std::net::TcpStream::connect(&address).expect("connect");
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        .expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let started = Instant::now();
    let mut buffer = Vec::new();
    let read = slow.read_to_end(&mut buffer);
    let waited = started.elapsed();
    assert!(
        read.is_ok() && waited < Duration::from_secs(10),
        "the slow client was not disconnected: {read:?} after {waited:?}"
    );
    // Meanwhile and afterwards the server answers.
    let (status, body) = post(
        &client(),
        &server.url("/v1/completions"),
        &json!({"prompt": "x", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A zero limit is refused up front, naming the flag.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hexacoder-server"))
        .args(["serve", "--model", "x", "--header-read-timeout", "0"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--header-read-timeout"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let mut server = Server::tiny(&["--shutdown-timeout", "60"]);
    let client = client();
    let url = server.url("/v1/completions");
    let request = json!({"prompt": "x", "max_tokens": 1500, "temperature": 0, "stream": true, "hexacoder": {"ignore_eos": true}});
    let mut response = client.post(&url).json(&request).send().await.expect("POST");
    first_chunk(&mut response).await;
    server.terminate();
    // New connections are refused or answered 503 while the old one finishes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok(late) = client.get(server.url("/v1/models")).send().await {
        assert_eq!(late.status(), 503);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("stream continues") {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).expect("utf-8");
    assert!(
        text.contains("\"finish_reason\":\"length\""),
        "request did not finish"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let status = server.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_deadline_cancels_what_is_left() {
    let mut server = Server::tiny(&["--shutdown-timeout", "1"]);
    let client = client();
    let mut response = client
        .post(server.url("/v1/completions"))
        .json(&long_request(true))
        .send()
        .await
        .expect("POST");
    first_chunk(&mut response).await;
    let started = Instant::now();
    server.terminate();
    let mut rest = response.bytes_stream();
    while let Some(Ok(_)) = rest.next().await {}
    let status = server.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn config_file_fills_in_below_flags() {
    use hexacoder_server::cli::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hexacoder.toml");
    std::fs::write(
        &file,
        "port = 9001\nmax-queue = 3\nmax_concurrent = 2\nserved-model-name = \"from-file\"\n",
    )
    .expect("write");
    let cli = hexacoder_server::config::parse_from(
        [
            "hexacoder-server",
            "serve",
            "--config",
            file.to_str().expect("utf-8"),
            "--port",
            "9002",
        ]
        .map(Into::into)
        .to_vec(),
    )
    .expect("parse");
    let Command::Serve(args) = cli.command else {
        panic!("serve")
    };
    assert_eq!(args.port, 9002, "the flag wins over the file");
    assert_eq!(args.max_queue, 3);
    assert_eq!(args.max_concurrent, 2);
    assert_eq!(args.served_model_name.as_deref(), Some("from-file"));
    assert_eq!(args.request_timeout, 300, "defaults stay");

    std::fs::write(&file, "prot = 1\n").expect("write");
    let err = hexacoder_server::config::parse_from(
        [
            "hexacoder-server",
            "serve",
            "--config",
            file.to_str().expect("utf-8"),
        ]
        .map(Into::into)
        .to_vec(),
    )
    .expect_err("unknown key");
    assert!(format!("{err:#}").contains("\"prot\""), "{err:#}");
    std::fs::write(&file, "port = \"eighty\"\n").expect("write");
    let err = hexacoder_server::config::parse_from(
        [
            "hexacoder-server",
            "serve",
            "--config",
            file.to_str().expect("utf-8"),
        ]
        .map(Into::into)
        .to_vec(),
    )
    .expect_err("bad value");
    assert!(format!("{err:#}").contains("eighty"), "{err:#}");
}

#[test]
fn environment_sits_between_flags_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hexacoder.toml");
    std::fs::write(&file, "served-model-name = \"from-file\"\nmax-queue = 3\n").expect("write");
    let model = crate::harness::tiny_model(dir.path());
    let mut server = Server::start(
        &model,
        &["--config", file.to_str().expect("utf-8")],
        &[("HEXACODER_SERVED_MODEL_NAME", "from-env")],
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let models: Value = runtime.block_on(async {
        client()
            .get(server.url("/v1/models"))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("json")
    });
    assert_eq!(models["data"][0]["id"], "from-env");
    server.terminate();
    assert!(server.wait(Duration::from_secs(30)).success());
}

/// Scripts read the address line and may close the pipe; the server must keep serving.
#[tokio::test]
async fn closing_stdout_after_the_address_line_does_not_stop_the_server() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let model = crate::harness::tiny_model(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hexacoder-server"))
        .args(["serve", "--port", "0", "--model"])
        .arg(&model)
        .env("HEXACODER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    {
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        stdout.read_line(&mut line).expect("address line");
    } // The pipe's read end closes here.
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address")
        .to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = client()
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": "def f(", "max_tokens": 4}))
        .send()
        .await
        .expect("the server is still up");
    assert_eq!(response.status(), 200);
    let _ = child.kill();
    let _ = child.wait();
}
