//! The real `hexacoder-lsp` binary over stdio, talking to a real `hexacoder-server` on a
//! loopback port that serves a scripted tiny model.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use hexacoder_testkit::{Arch, Tiny};
use serde_json::Value;

pub use hexacoder_testkit::lsp::{Lsp, WAIT};

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

/// `hexacoder-server`, built next to this test binary (`HEXACODER_SERVER_BIN` overrides).
fn server_binary() -> PathBuf {
    hexacoder_testkit::server::workspace_binary("hexacoder-server")
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
        Server::with_model(dir, &model, port, args)
    }

    /// A server on `model` (which lives in `dir`).
    pub fn with_model(dir: tempfile::TempDir, model: &Path, port: u16, args: &[&str]) -> Server {
        let mut command = Command::new(server_binary());
        command
            .args(["serve", "--port", &port.to_string(), "--model"])
            .arg(model)
            .args(["--served-model-name", "scripted"])
            .args(args)
            .env("HEXACODER_LOG", "warn")
            .stderr(Stdio::inherit());
        let (child, base) = hexacoder_testkit::server::spawn_listening(command, WAIT)
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

/// This crate's `hexacoder-lsp` binary.
pub fn lsp_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hexacoder-lsp"))
}

/// Checks that an editor's end-to-end driver exited 0 and printed `e2e ok`; otherwise fails
/// with everything it printed. Returns its stdout.
pub fn assert_driver_ok(editor: &str, output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("e2e ok"),
        "{editor} end-to-end test failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout.into_owned()
}
