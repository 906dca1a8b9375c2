//! The real `hexacoder-lsp` binary over stdio, talking to a real `hexacoder-server` on a
//! loopback port that serves a scripted tiny model.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use hexacoder_testkit::{Arch, Tiny};
use serde_json::{Value, json};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// The scripted model's loop: `import gc` lines, so that step 1 adds `import gc` after an
/// import block ending in `c`, and code after `= ` reads `gc`.
pub const CHAIN: [&str; 10] = ["Ċ", "i", "m", "p", "o", "r", "t", "Ġ", "g", "c"];

/// The scripted model's text after `token`, `n` tokens long.
pub fn scripted_text(after: &str, n: usize) -> String {
    let start = CHAIN.iter().position(|t| *t == after).expect("chain token");
    (1..=n)
        .map(|i| match CHAIN[(start + i) % CHAIN.len()] {
            "Ċ" => "\n",
            "Ġ" => " ",
            t => t,
        })
        .collect()
}

/// `hexacoder-server`, built next to this test binary (`cargo test --workspace` builds it;
/// `HEXACODER_SERVER_BIN` overrides).
fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HEXACODER_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = dir.join("hexacoder-server");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p hexacoder-server`; `cargo test --workspace` does)",
        path.display()
    );
    path
}

pub struct Server {
    child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server on the scripted model, on `port` (0 for any), with `args` added.
    pub fn start(port: u16, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let tiny = Tiny {
            max_positions: 8192,
            ..Tiny::small(Arch::Qwen2)
        };
        let model =
            hexacoder_testkit::write_scripted_hf_dir(&tiny, &dir.path().join("scripted"), &CHAIN);
        let mut child = Command::new(server_binary())
            .args(["serve", "--port", &port.to_string(), "--model"])
            .arg(&model)
            .args(["--served-model-name", "scripted"])
            .args(args)
            .env("HEXACODER_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hexacoder-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the server printed no address");
        });
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
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
        let text = reqwest_blocking_get(&self.url("/metrics"));
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
pub fn reqwest_blocking_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
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

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The bridge, spoken to as an editor would.
pub struct Lsp {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    next_id: i64,
    /// Notifications and server-to-client requests seen so far, oldest first.
    pub seen: VecDeque<Value>,
    /// What `workspace/configuration` answers.
    pub configuration: Value,
}

impl Lsp {
    pub fn spawn() -> Lsp {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hexacoder-lsp"))
            .env("HEXACODER_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hexacoder-lsp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            while let Some(message) = read_message(&mut reader) {
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        Lsp {
            child,
            stdin,
            incoming,
            next_id: 1,
            seen: VecDeque::new(),
            configuration: Value::Null,
        }
    }

    fn send(&mut self, message: &Value) {
        let body = message.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).expect("write");
        self.stdin.flush().expect("flush");
    }

    /// Sends a request and returns its id.
    pub fn request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Handles one incoming message: answers server requests, records the rest. Returns it.
    fn receive(&mut self, deadline: Instant) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = self
            .incoming
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no message from the bridge; seen: {:?}", self.seen));
        if let (Some(id), Some(method)) = (message.get("id"), message["method"].as_str()) {
            let result = match method {
                "workspace/applyEdit" => json!({"applied": true}),
                "workspace/configuration" => json!([self.configuration]),
                _ => Value::Null,
            };
            let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
            self.send(&reply);
        }
        if message.get("method").is_some() {
            self.seen.push_back(message.clone());
        }
        message
    }

    /// Waits for the response to request `id`: its `result`, or its `error` as `Err`.
    pub fn response(&mut self, id: i64) -> Result<Value, Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let message = self.receive(deadline);
            if message.get("method").is_none() && message["id"] == json!(id) {
                return match message.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(message["result"].clone()),
                };
            }
        }
    }

    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params);
        self.response(id)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// Waits until a message with `method` matching `accept` has been seen; returns it.
    pub fn wait_for(&mut self, method: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self
                .seen
                .iter()
                .find(|m| m["method"] == method && accept(&m["params"]))
            {
                return found.clone();
            }
            self.receive(deadline);
        }
    }

    /// Collects what arrives within `window` (to check that something did not arrive).
    pub fn drain(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Ok(message) = self
            .incoming
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if message.get("method").is_some() {
                self.seen.push_back(message);
            }
        }
    }

    pub fn count(&self, method: &str, accept: impl Fn(&Value) -> bool) -> usize {
        self.seen
            .iter()
            .filter(|m| m["method"] == method && accept(&m["params"]))
            .count()
    }

    /// `initialize` with these options, then `initialized`.
    pub fn initialize(&mut self, options: Value) -> Value {
        let result = self.call(
            "initialize",
            json!({
                "processId": null,
                "rootUri": null,
                "capabilities": {"general": {"positionEncodings": ["utf-16"]}},
                "initializationOptions": options,
            }),
        );
        self.notify("initialized", json!({}));
        result
    }

    pub fn open(&mut self, uri: &str, language: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}),
        );
    }

    /// Inserts `text` at (`line`, `character`).
    pub fn type_at(&mut self, uri: &str, version: i32, line: u32, character: u32, text: &str) {
        let at = json!({"line": line, "character": character});
        self.notify(
            "textDocument/didChange",
            json!({
                "textDocument": {"uri": uri, "version": version},
                "contentChanges": [{"range": {"start": at, "end": at}, "text": text}],
            }),
        );
    }

    pub fn inline(&mut self, uri: &str, line: u32, character: u32) -> i64 {
        self.request(
            "textDocument/inlineCompletion",
            json!({
                "textDocument": {"uri": uri},
                "position": {"line": line, "character": character},
                "context": {"triggerKind": 1},
            }),
        )
    }

    /// An invoked inline completion, answered.
    pub fn complete_inline(
        &mut self,
        uri: &str,
        line: u32,
        character: u32,
    ) -> Result<Value, Value> {
        let id = self.inline(uri, line, character);
        self.response(id)
    }

    pub fn shutdown(mut self) {
        self.call("shutdown", Value::Null);
        self.notify("exit", Value::Null);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "hexacoder-lsp exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("hexacoder-lsp did not exit after `exit`");
    }
}

impl Drop for Lsp {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn read_message(reader: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("Content-Length: ") {
            length = value.parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// Applies LSP text edits (UTF-16 positions, no overlaps) to `text`.
pub fn apply_edits(text: &str, edits: &[Value]) -> String {
    let offset = |position: &Value| -> usize {
        let line = position["line"].as_u64().expect("line") as usize;
        let character = position["character"].as_u64().expect("character") as usize;
        let start: usize = text.split_inclusive('\n').take(line).map(str::len).sum();
        let line_text = text[start..].split('\n').next().unwrap_or("");
        let mut units = 0;
        for (i, c) in line_text.char_indices() {
            if units >= character {
                return start + i;
            }
            units += c.len_utf16();
        }
        start + line_text.len()
    };
    let mut edits: Vec<(usize, usize, String)> = edits
        .iter()
        .map(|e| {
            (
                offset(&e["range"]["start"]),
                offset(&e["range"]["end"]),
                e["newText"].as_str().expect("newText").to_string(),
            )
        })
        .collect();
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut text = text.to_string();
    for (start, end, new_text) in edits {
        text.replace_range(start..end, &new_text);
    }
    text
}
