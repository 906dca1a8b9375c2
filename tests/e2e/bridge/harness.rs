//! The bridge's side of the harness: a server on a scripted tiny model whose text the tests
//! can predict, the built `hexacoder-lsp`, and the editor's view of text edits.

use std::path::PathBuf;

use hexacoder_testkit::{Arch, Tiny};
use serde_json::Value;

pub use crate::harness::{Server, assert_driver_ok};
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

/// A server on the scripted model, served as `scripted`, on `port` (0 for any).
pub fn scripted_server(port: u16, args: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let tiny = Tiny {
        max_positions: 8192,
        ..Tiny::small(Arch::Qwen2)
    };
    let model =
        hexacoder_testkit::write_scripted_hf_dir(&tiny, &dir.path().join("scripted"), &CHAIN);
    server_on(dir, &model, port, args)
}

/// A server on `model` (which lives in `dir`), served as `scripted`.
pub fn server_on(
    dir: tempfile::TempDir,
    model: &std::path::Path,
    port: u16,
    args: &[&str],
) -> Server {
    let mut all = vec!["--served-model-name", "scripted"];
    all.extend_from_slice(args);
    Server::spawn(Some(dir), model, port, &all)
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

/// The built `hexacoder-lsp` (`HEXACODER_LSP_BIN` overrides).
pub fn lsp_binary() -> PathBuf {
    hexacoder_testkit::server::workspace_binary("hexacoder-lsp")
}
