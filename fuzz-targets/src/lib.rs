//! The fuzz targets, one module each (`run` takes one input; `init`, where there is one, sets
//! up what the target reuses), and what they share: a scratch directory in memory, a tiny
//! model and adapter written once per process, and the split of one input into two byte
//! strings. The libFuzzer binaries in `fuzz/fuzz_targets/` call them, and `cargo test` runs
//! them on every committed seed (`tests/seeds.rs`).
//!
//! Every target holds the same contract as the product: a malformed input comes back as an
//! error value. A panic, a hang (libFuzzer's `-timeout`) or an allocation past `-rss_limit_mb`
//! is a finding.

pub mod adapter;
pub mod chat_template;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod imports;
pub mod lsp_document;
pub mod oracle;
pub mod request;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hexacoder_testkit::{Arch, Tiny};

/// A directory for the files a target writes, in memory where the machine has `/dev/shm`.
/// It lives as long as the process.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("hexacoder-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// The tiny model's sizes: a 64-token context, so no request can generate for long.
pub fn tiny() -> Tiny {
    Tiny {
        max_positions: 64,
        ..Tiny::small(Arch::Qwen2)
    }
}

/// A tiny random-weight Qwen2 checkpoint (an HF directory), written once.
pub fn tiny_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tiny().write_hf_dir(&scratch().join("tiny-model"), 7))
}

/// A LoRA adapter for [`tiny_model`] on q, k, v and o, written once.
pub fn tiny_adapter() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tiny().write_lora(
            &scratch().join("tiny-adapter"),
            3,
            4,
            &["q_proj", "k_proj", "v_proj", "o_proj"],
            0.05,
        )
    })
}

/// Splits an input into two parts: a little-endian `u32` length, that many bytes, the rest.
/// The seeds are written in this form (`fuzz/seeds/README.md`).
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<4>() else {
        return (data, &[]);
    };
    let n = (u32::from_le_bytes(*head) as usize).min(rest.len());
    rest.split_at(n)
}

/// The inverse of [`split`], for writing seeds.
pub fn join(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + first.len() + second.len());
    out.extend_from_slice(&(first.len() as u32).to_le_bytes());
    out.extend_from_slice(first);
    out.extend_from_slice(second);
    out
}
