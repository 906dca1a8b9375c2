//! A GGUF file: header, metadata and tensor table, the tokenizer built from its metadata,
//! the weights; then one token generated on whatever loads.

use hexacoder_engine::load::{self, LoadOptions};
use hexacoder_engine::{GenerateRequest, ModelFiles, SamplingParams};

/// One input.
pub fn run(data: &[u8]) {
    let path = crate::scratch().join("input.gguf");
    std::fs::write(&path, data).expect("write the input");
    let options = LoadOptions {
        max_context: Some(64),
        prefix_cache_bytes: 0,
        ..LoadOptions::cpu()
    };
    let Ok(mut engine) = load::load(&ModelFiles::Gguf(path), &options) else {
        return;
    };
    let request = GenerateRequest {
        prompt: "def f(".into(),
        max_tokens: 1,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let _ = engine.generate(&request, &mut |_, _| true);
}
