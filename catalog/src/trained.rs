//! Adapters HexaCoder trained itself, shipped inside the binary so that a new user serves
//! them without training: `hexacoder-server serve` on their base model loads one as the model
//! `hexacoder-secure`. The files live in `adapters/trained/<dir>/` (with the model card that
//! says how they were made) and are pinned here by sha256.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Error;

/// One shipped adapter.
#[derive(Debug)]
pub struct TrainedAdapter {
    /// The model name requests use for it.
    pub name: &'static str,
    /// The catalogue id of its base model.
    pub base: &'static str,
    /// Its directory under `adapters/trained/` and in the cache.
    pub dir_name: &'static str,
    /// `adapter_config.json`.
    pub config: &'static [u8],
    /// `adapter_model.safetensors`.
    pub weights: &'static [u8],
    /// The weights' sha256, lowercase hex.
    pub weights_sha256: &'static str,
}

/// The model name of a base's shipped security adapter.
pub const SECURE_ADAPTER_NAME: &str = "hexacoder-secure";

/// Every shipped adapter.
pub const TRAINED_ADAPTERS: &[TrainedAdapter] = &[
    TrainedAdapter {
        name: SECURE_ADAPTER_NAME,
        base: "qwen2.5-coder-0.5b",
        dir_name: "qwen2.5-coder-0.5b-secure",
        config: include_bytes!(
            "../../adapters/trained/qwen2.5-coder-0.5b-secure/adapter_config.json"
        ),
        weights: include_bytes!(
            "../../adapters/trained/qwen2.5-coder-0.5b-secure/adapter_model.safetensors"
        ),
        weights_sha256: "b9882b5e47c414fae749131cf019d2e6e519d59f1a024439f00743fb8ed1f9ad",
    },
    TrainedAdapter {
        name: SECURE_ADAPTER_NAME,
        base: "smollm2-135m",
        dir_name: "smollm2-135m-secure",
        config: include_bytes!("../../adapters/trained/smollm2-135m-secure/adapter_config.json"),
        weights: include_bytes!(
            "../../adapters/trained/smollm2-135m-secure/adapter_model.safetensors"
        ),
        weights_sha256: "d4410e21333b685a7e3a0615362361f436e32cce2f97042c639fcb47c138c9b0",
    },
];

/// The shipped adapter for the catalogue model `base`, if there is one.
pub fn trained_adapter_for(base: &str) -> Option<&'static TrainedAdapter> {
    TRAINED_ADAPTERS.iter().find(|a| a.base == base)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TrainedAdapter {
    /// Writes the adapter into `cache_dir/adapters/<dir_name>` unless a verified copy is
    /// there, and returns that directory. The files are staged and renamed into place.
    ///
    /// # Errors
    /// Embedded weights that do not match their pin (a broken build), or I/O failures.
    pub fn materialize(&self, cache_dir: &Path) -> Result<PathBuf, Error> {
        let actual = sha256_hex(self.weights);
        if actual != self.weights_sha256 {
            return Err(Error::Mismatch {
                file: format!("{}/adapter_model.safetensors", self.dir_name),
                expected_bytes: self.weights.len() as u64,
                expected_sha256: self.weights_sha256.to_string(),
                actual_bytes: self.weights.len() as u64,
                actual_sha256: actual,
            });
        }
        let parent = cache_dir.join("adapters");
        let target = parent.join(self.dir_name);
        let current =
            |name: &str, want: &[u8]| fs::read(target.join(name)).is_ok_and(|b| b == want);
        if current("adapter_config.json", self.config)
            && current("adapter_model.safetensors", self.weights)
        {
            return Ok(target);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        fs::create_dir_all(&parent).map_err(io(&parent))?;
        let staging = tempfile::Builder::new()
            .prefix(".adapter-")
            .tempdir_in(&parent)
            .map_err(io(&parent))?;
        for (name, bytes) in [
            ("adapter_config.json", self.config),
            ("adapter_model.safetensors", self.weights),
        ] {
            let path = staging.path().join(name);
            fs::write(&path, bytes).map_err(io(&path))?;
        }
        if target.exists() {
            fs::remove_dir_all(&target).map_err(io(&target))?;
        }
        let staged = staging.keep();
        fs::rename(&staged, &target).map_err(io(&target))?;
        Ok(target)
    }
}
