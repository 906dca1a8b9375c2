//! Every fuzz target on every committed seed (`fuzz/seeds/<target>/`), in the normal test
//! build: what a target must hold for the inputs it starts from, checked without the nightly
//! toolchain and the sanitizer build that `scripts/fuzz` needs for the search itself.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use hexacoder_fuzz_targets as targets;

/// A target's `init` (if it has one) and `run`.
struct Target {
    name: &'static str,
    init: fn(),
    run: fn(&[u8]),
}

const TARGETS: [Target; 8] = [
    Target {
        name: "adapter",
        init: targets::adapter::init,
        run: targets::adapter::run,
    },
    Target {
        name: "chat_template",
        init: targets::chat_template::init,
        run: targets::chat_template::run,
    },
    Target {
        name: "gguf",
        init: || {},
        run: targets::gguf::run,
    },
    Target {
        name: "gguf_tokenizer",
        init: || {},
        run: targets::gguf_tokenizer::run,
    },
    Target {
        name: "imports",
        init: || {},
        run: targets::imports::run,
    },
    Target {
        name: "lsp_document",
        init: || {},
        run: targets::lsp_document::run,
    },
    Target {
        name: "oracle",
        init: targets::oracle::init,
        run: targets::oracle::run,
    },
    Target {
        name: "request",
        init: targets::request::init,
        run: targets::request::run,
    },
];

/// The fuzzing workspace, beside this crate.
fn fuzz_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).join("fuzz")
}

/// The seed files of `target`, in name order.
fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_holds_on_every_committed_seed() {
    let mut failures = Vec::new();
    for target in &TARGETS {
        (target.init)();
        let files = seeds(target.name);
        assert!(!files.is_empty(), "no seeds for {}", target.name);
        for file in files {
            let data = std::fs::read(&file).expect("read the seed");
            if catch_unwind(AssertUnwindSafe(|| (target.run)(&data))).is_err() {
                let name = file.file_name().unwrap_or_default().to_string_lossy();
                failures.push(format!("fuzz/seeds/{}/{name}", target.name));
            }
        }
    }
    // One process, one scratch directory: removed once every target is done with it.
    let _ = std::fs::remove_dir_all(targets::scratch());
    assert!(
        failures.is_empty(),
        "targets failed on seeds: {failures:#?}"
    );
}

#[test]
fn every_target_has_its_seeds_and_a_binary() {
    let binaries: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".rs")?.to_string())
        })
        .collect();
    let mut names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    names.sort();
    let mut binaries: Vec<&str> = binaries.iter().map(String::as_str).collect();
    binaries.sort();
    assert_eq!(
        names, binaries,
        "fuzz/fuzz_targets and this test's list differ"
    );
}
