//! An editor's side of LSP over stdio, for tests and benchmarks of `hexacoder-lsp`: framing,
//! requests and responses, and automatic answers to the bridge's own requests.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long any single wait may take before the caller fails.
pub const WAIT: Duration = Duration::from_secs(60);

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
    /// Starts the bridge at `binary`.
    pub fn spawn(binary: &Path) -> Lsp {
        let mut child = Command::new(binary)
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

    /// Writes `bytes` to the bridge's stdin as they are: frames a real editor would never send.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).expect("write");
        self.stdin.flush().expect("flush");
    }

    /// Whether the bridge's process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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
