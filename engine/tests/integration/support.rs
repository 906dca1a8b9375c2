//! Tiny random-weight checkpoints written to disk, so tests load them through the real paths.

use candle_core::{DType, Device, Tensor};
use hexacoder_engine::ModelFiles;
use hexacoder_engine::fim::FimSetting;
use hexacoder_engine::load::{self, LoadOptions, Requantize};
use hexacoder_engine::nn::KvDtype;
use hexacoder_engine::{Engine, GenerateRequest, SamplingParams};
pub use hexacoder_testkit::{SPECIAL, Tiny, real_model, shared_dir, vocab};

/// A plain request: no suffix, one sample, no stops, logprobs, context, bias or adapter.
pub fn request(prompt: &str, max_tokens: usize, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        suffix: None,
        max_tokens,
        sampling,
        n: 1,
        stop: vec![],
        top_logprobs: 0,
        context_files: vec![],
        logit_bias: vec![],
        adapter: None,
        ignore_eos: false,
        ..Default::default()
    }
}

pub fn options() -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        max_context: None,
        requantize: Requantize::Keep,
        fim: FimSetting::Auto,
        prefix_cache_bytes: 64 << 20,
        prefill_chunk: 512,
        q8_kernel: hexacoder_engine::nn::Q8Kernel::Fastest,
        kv_dtype: KvDtype::default(),
    }
}

/// [`options`] with keys and values kept in f32, for comparisons with a reference that
/// computes in f32 (candle-transformers, PEFT, transformers' fixtures, merged weights):
/// the default f16 KV cache moves these random-weight models' logits by up to 2e-2.
pub fn exact_options() -> LoadOptions {
    LoadOptions {
        kv_dtype: KvDtype::F32,
        ..options()
    }
}

/// A tiny engine loaded from a fresh HF directory.
pub fn tiny_engine(tiny: Tiny, seed: u64, options: &LoadOptions) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny.write_hf_dir(&dir.path().join("model"), seed);
    let engine = load::load(&ModelFiles::HfDir(path), options).expect("load tiny model");
    (dir, engine)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).expect("f32") - b.to_dtype(DType::F32).expect("f32"))
        .expect("sub")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flatten")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar")
}
