//! A real `hexacoder-server serve` on a loopback port, and what the tests read back from it.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// How long a server may take to start listening (a real model loads in seconds, a debug
/// build on a busy machine in more).
const START: Duration = Duration::from_secs(120);

/// Whether the real-model tier runs (`scripts/test` sets `HEXACODER_TEST_MODELS=1`).
pub fn real_models() -> bool {
    let enabled = std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() == Some("1");
    if !enabled {
        eprintln!(
            "skipping: set HEXACODER_TEST_MODELS=1 (scripts/test does) to run real-model tests"
        );
    }
    enabled
}

pub struct Server {
    child: Child,
    pub base: String,
    /// Where a generated model lives, removed with the server.
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// `hexacoder-server serve --model MODEL --port 0 ARGS`.
    pub fn start(model: &Path, args: &[&str]) -> Server {
        Server::spawn(None, model, 0, args)
    }

    /// `hexacoder-server serve --model MODEL --port PORT ARGS`, where `MODEL` lives in `dir`,
    /// which is removed when the server stops.
    pub fn spawn(dir: Option<tempfile::TempDir>, model: &Path, port: u16, args: &[&str]) -> Server {
        let mut command = Command::new(hexacoder_testkit::server::workspace_binary(
            "hexacoder-server",
        ));
        command
            .args(["serve", "--port", &port.to_string(), "--model"])
            .arg(model)
            .args(args)
            .env("HEXACODER_LOG", "warn")
            .stderr(Stdio::inherit());
        let (child, base) = hexacoder_testkit::server::spawn_listening(command, START)
            .unwrap_or_else(|e| panic!("{e}"));
        Server {
            child,
            base,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The sum of a metric's samples whose label set contains every `labels` pair.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = blocking_get(&self.url("/metrics"));
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                (metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
            })
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking GET over a plain TCP socket (no async runtime in these tests).
pub fn blocking_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(hexacoder_testkit::lsp::WAIT))
        .expect("read timeout");
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// Checks that a client's driver script exited 0 and printed `marker`; otherwise fails with
/// everything it printed. Returns its stdout.
pub fn assert_driver_ok(client: &str, output: &Output, marker: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(marker),
        "{client} end-to-end test failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout.into_owned()
}
