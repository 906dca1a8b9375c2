//! A real `hexacoder-server serve` process on a loopback port, over a tiny random model.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hexacoder_testkit::{Arch, Tiny};
use serde_json::Value;

/// A tiny Qwen2-shaped model with room for long generations (cancellation tests).
pub fn tiny_model(dir: &Path) -> PathBuf {
    let tiny = Tiny {
        max_positions: 8192,
        ..Tiny::small(Arch::Qwen2)
    };
    tiny.write_hf_dir(&dir.join("tiny-coder"), 7)
}

pub struct Server {
    child: Child,
    pub base: String,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server on a tiny model with `args` added.
    pub fn tiny(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = tiny_model(dir.path());
        let mut server = Server::start(&model, args, &[]);
        server._dir = Some(dir);
        server
    }

    /// Starts `serve --model MODEL --port 0 ARGS` with extra environment variables.
    pub fn start(model: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hexacoder-server"));
        command
            .args(["serve", "--port", "0", "--model"])
            .arg(model)
            .args(args)
            .env("HEXACODER_LOG", "warn")
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let (child, base) =
            hexacoder_testkit::server::spawn_listening(command, Duration::from_secs(120))
                .unwrap_or_else(|e| panic!("{e}"));
        Server {
            child,
            base,
            _dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of a metric (first sample with that exact name and labels prefix).
    pub async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        metric_value(&text, name).unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok())?
    })
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// POSTs JSON; returns status and parsed body.
pub async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = client.post(url).json(body).send().await.expect("POST");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// Asserts an OpenAI-shaped error.
pub fn assert_error(status: u16, body: &Value, expected_status: u16, param: Option<&str>) {
    assert_eq!(status, expected_status, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
    }
}
