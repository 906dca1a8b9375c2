//! A PEFT LoRA adapter directory (`adapter_config.json` and `adapter_model.safetensors`, the
//! input split in two) validated against the tiny base model ([`crate::tiny_model`]), as the
//! server loads an adapter a platform team hands it.

use std::sync::OnceLock;

use hexacoder_adapters::Adapter;
use hexacoder_engine::Engine;
use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions};

/// The tiny model, loaded once: adapters are validated against its real projections.
fn base() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let files = ModelFiles::HfDir(crate::tiny_model().to_path_buf());
        load::load(&files, &LoadOptions::cpu()).expect("the tiny model loads")
    })
}

/// What the target sets up once, before its first input.
pub fn init() {
    base();
}

/// One input.
pub fn run(data: &[u8]) {
    let (config, weights) = crate::split(data);
    let dir = crate::scratch().join("adapter");
    std::fs::create_dir_all(&dir).expect("adapter directory");
    std::fs::write(dir.join("adapter_config.json"), config).expect("write the config");
    std::fs::write(dir.join("adapter_model.safetensors"), weights).expect("write the weights");
    if let Ok(adapter) = Adapter::load(&dir, base().model()) {
        let _ = adapter.two_step_default();
        let _ = adapter.bytes();
    }
}
