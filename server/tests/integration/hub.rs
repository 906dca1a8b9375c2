//! Model-hub ids resolved offline against a cache directory laid out by the test the way
//! `hf-hub` lays it out: `models--owner--name/{refs/main, blobs/, snapshots/HASH/ -> blobs}`.

use std::path::Path;

use hexacoder_engine::fim::FimSetting;
use hexacoder_engine::load::{self, LoadOptions, Requantize};
use hexacoder_engine::{GenerateRequest, ModelFiles, SamplingParams, local_files};
use hexacoder_server::hub::{self, HubOptions};
use hexacoder_testkit::{Arch, Tiny};

fn load_options() -> LoadOptions {
    LoadOptions {
        device: candle_core::Device::Cpu,
        max_context: None,
        requantize: Requantize::Keep,
        fim: FimSetting::Auto,
        prefix_cache_bytes: 64 << 20,
        prefill_chunk: 512,
        q8_kernel: hexacoder_engine::nn::Q8Kernel::Fastest,
        kv_dtype: hexacoder_engine::nn::KvDtype::default(),
    }
}

/// Moves every file of `files_dir` into the cache as blob + snapshot symlink.
fn add_to_cache(cache: &Path, repo: &str, revision: &str, commit: &str, files_dir: &Path) {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let blobs = repo_dir.join("blobs");
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&blobs).expect("blobs");
    std::fs::create_dir_all(&snapshot).expect("snapshot");
    std::fs::create_dir_all(repo_dir.join("refs")).expect("refs");
    std::fs::write(repo_dir.join("refs").join(revision), commit).expect("ref");
    for (idx, entry) in std::fs::read_dir(files_dir).expect("read dir").enumerate() {
        let path = entry.expect("entry").path();
        let blob = blobs.join(format!("blob{idx}"));
        std::fs::rename(&path, &blob).expect("move");
        std::os::unix::fs::symlink(
            format!("../../blobs/blob{idx}"),
            snapshot.join(path.file_name().expect("name")),
        )
        .expect("symlink");
    }
}

#[test]
fn hub_id_resolves_offline_from_the_cache_and_loads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("hub");
    let files = Tiny::small(Arch::Qwen2).write_hf_dir(&tmp.path().join("files"), 4);
    add_to_cache(&cache, "acme/tiny-coder", "main", "0123abcd", &files);
    let options = HubOptions {
        cache_dir: Some(cache.clone()),
        offline: true,
    };

    let resolved = hub::resolve("acme/tiny-coder", &options).expect("resolve");
    let expected = cache.join("models--acme--tiny-coder/snapshots/0123abcd");
    assert_eq!(resolved, ModelFiles::HfDir(expected));
    let mut engine = load::load(&resolved, &load_options()).expect("load from cache");
    let request = GenerateRequest {
        prompt: "def f(".into(),
        suffix: None,
        max_tokens: 5,
        sampling: SamplingParams::greedy(),
        n: 1,
        stop: vec![],
        top_logprobs: 0,
        context_files: vec![],
        logit_bias: vec![],
        adapter: None,
        ignore_eos: false,
        ..Default::default()
    };
    assert!(
        !engine
            .generate(&request, &mut |_, _| true)
            .expect("generate")
            .samples[0]
            .tokens
            .is_empty()
    );

    // A revision that is not cached is a clear error in offline mode.
    let err = hub::resolve("acme/tiny-coder@v2", &options).expect_err("uncached revision");
    assert!(err.to_string().contains("offline"), "{err}");
    // An unknown repository likewise.
    assert!(hub::resolve("acme/other", &options).is_err());
}

#[test]
fn gguf_repository_resolves_to_the_named_or_only_gguf_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("hub");
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    std::fs::write(files.join("model-q4_k_m.gguf"), b"GGUF....").expect("write");
    std::fs::write(files.join("README.md"), b"# model").expect("write");
    add_to_cache(&cache, "acme/coder-gguf", "main", "feed", &files);
    let options = HubOptions {
        cache_dir: Some(cache.clone()),
        offline: true,
    };
    let snapshot = cache.join("models--acme--coder-gguf/snapshots/feed");
    assert_eq!(
        hub::resolve("acme/coder-gguf", &options).expect("only gguf"),
        ModelFiles::Gguf(snapshot.join("model-q4_k_m.gguf"))
    );
    assert_eq!(
        hub::resolve("acme/coder-gguf:model-q4_k_m.gguf", &options).expect("named gguf"),
        ModelFiles::Gguf(snapshot.join("model-q4_k_m.gguf"))
    );
    assert!(hub::resolve("acme/coder-gguf:missing.gguf", &options).is_err());
    // A commit hash works as a revision.
    assert!(hub::resolve("acme/coder-gguf@feed", &options).is_ok());
}

#[test]
fn local_paths_win_over_hub_ids_and_bad_paths_are_explained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = Tiny::small(Arch::Llama).write_hf_dir(&tmp.path().join("m"), 1);
    assert_eq!(
        local_files(&dir).expect("dir"),
        ModelFiles::HfDir(dir.clone())
    );
    let not_gguf = tmp.path().join("weights.bin");
    std::fs::write(&not_gguf, b"not a model").expect("write");
    let err = hub::resolve(not_gguf.to_str().expect("utf8"), &HubOptions::default())
        .expect_err("not gguf");
    assert!(err.to_string().contains("GGUF"), "{err}");
    let err = hub::resolve("definitely missing file", &HubOptions::default()).expect_err("missing");
    assert!(err.to_string().contains("no such file"), "{err}");
}
