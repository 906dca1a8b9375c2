//! The official `openai` Python client against the server on the real SmolLM2-135M.

use std::process::Command;

use crate::harness::{Server, assert_driver_ok, real_models};

#[test]
fn official_openai_python_client_works_end_to_end() {
    if !real_models() {
        return;
    }
    let python = std::env::var("HEXACODER_TEST_PYTHON")
        .expect("HEXACODER_TEST_MODELS=1 needs HEXACODER_TEST_PYTHON: a Python with `openai` (scripts/test makes one)");
    let model = hexacoder_catalog::ensure(
        hexacoder_catalog::find("smollm2-135m").expect("catalogue id"),
        &hexacoder_catalog::cache_dir(),
        hexacoder_catalog::Progress::Quiet,
    )
    .expect("smollm2-135m is fetched by scripts/test");
    let server = Server::start(&model, &["--served-model-name", "smollm2"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/openai_e2e.py");
    let output = Command::new(python)
        .arg(script)
        .env("HEXACODER_BASE_URL", server.url("/v1"))
        .env("HEXACODER_MODEL_ID", "smollm2")
        .output()
        .expect("run python");
    assert_driver_ok(
        "the openai client",
        &output,
        "all openai client checks passed",
    );
}
