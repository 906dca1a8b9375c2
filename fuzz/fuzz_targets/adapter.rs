//! A PEFT LoRA adapter directory (`adapter_config.json` and `adapter_model.safetensors`, the
//! input split in two) validated against a tiny base model's shapes, as the server loads an
//! adapter a platform team hands it.
#![no_main]

use hexacoder_adapters::{Adapter, BaseModel};
use libfuzzer_sys::fuzz_target;

/// The tiny model's projections: hidden 64, 4 heads and 2 KV heads of 16, MLP 128, 2 layers.
struct TinyShapes;

impl BaseModel for TinyShapes {
    fn n_layers(&self) -> usize {
        2
    }

    fn projection_shape(
        &self,
        _layer: usize,
        parent: &str,
        module: &str,
    ) -> Option<(usize, usize)> {
        match (parent, module) {
            ("self_attn", "q_proj" | "o_proj") => Some((64, 64)),
            ("self_attn", "k_proj" | "v_proj") => Some((64, 32)),
            ("mlp", "gate_proj" | "up_proj") => Some((64, 128)),
            ("mlp", "down_proj") => Some((128, 64)),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (config, weights) = hexacoder_fuzz::split(data);
    let dir = hexacoder_fuzz::scratch().join("adapter");
    std::fs::create_dir_all(&dir).expect("adapter directory");
    std::fs::write(dir.join("adapter_config.json"), config).expect("write the config");
    std::fs::write(dir.join("adapter_model.safetensors"), weights).expect("write the weights");
    if let Ok(adapter) = Adapter::load(&dir, &TinyShapes) {
        let _ = adapter.two_step_default();
        let _ = adapter.bytes();
    }
});
