//! The Neovim plugin end to end in a real headless Neovim, against the real bridge and server:
//! `editor-clients/neovim/tests/e2e.py` drives Neovim over its RPC API (pynvim) like a user:
//! opens a Python buffer, types, waits for the ghost text, accepts it and checks the buffer,
//! including the added import.

use std::path::Path;
use std::process::Command;

use crate::harness::{Server, lsp_binary};

fn neovim() -> Option<String> {
    let nvim = std::env::var("HEXACODER_NVIM").unwrap_or_else(|_| "nvim".into());
    match Command::new(&nvim).arg("--version").output() {
        Ok(output) if output.status.success() => Some(nvim),
        _ => {
            assert!(
                std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() != Some("1"),
                "Neovim is missing: the full suite (scripts/test) needs `nvim` (.ci/run installs Debian's)"
            );
            eprintln!("skipping: no nvim on PATH (set HEXACODER_NVIM)");
            None
        }
    }
}

#[test]
fn neovim_shows_ghost_text_and_accepting_adds_the_import() {
    let Some(nvim) = neovim() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.py");
    std::fs::write(&file, "import abc\n\n\n").expect("write the buffer's file");
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../editor-clients/neovim");
    let Ok(python) = std::env::var("HEXACODER_TEST_PYTHON") else {
        assert!(
            std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() != Some("1"),
            "HEXACODER_TEST_PYTHON must name a Python with pynvim (scripts/test makes one)"
        );
        eprintln!(
            "skipping: set HEXACODER_TEST_PYTHON to a Python with pynvim (scripts/test does)"
        );
        return;
    };
    let server = Server::start(0, &[]);
    let output = Command::new(python)
        .arg(plugin.join("tests/e2e.py"))
        .env("NVIM", nvim)
        .env("HEXACODER_LSP_BIN", lsp_binary())
        .env("HEXACODER_URL", &server.base)
        .env("HEXACODER_E2E_FILE", &file)
        .env("HOME", dir.path())
        .output()
        .expect("run the Neovim driver");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("e2e ok"),
        "Neovim end-to-end test failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
}
