//! `--model` to files: a catalogue id is fetched into our cache and verified (as `serve`
//! does), anything else must be a local GGUF file or HF directory.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The model's path and a name for it (the catalogue id, or the file name).
pub fn resolve(model: &str) -> Result<(PathBuf, String)> {
    if let Some(entry) = hexacoder_catalog::find(model) {
        let progress = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            hexacoder_catalog::Progress::Bars
        } else {
            hexacoder_catalog::Progress::Quiet
        };
        let path = hexacoder_catalog::ensure(entry, &hexacoder_catalog::cache_dir(), progress)
            .with_context(|| format!("fetching catalogue model {}", entry.id))?;
        return Ok((path, entry.id.to_string()));
    }
    let path = PathBuf::from(model);
    if !path.exists() {
        anyhow::bail!(
            "--model {model:?} is neither a catalogue id ({}) nor an existing file or directory",
            hexacoder_catalog::MODELS
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let name = path
        .file_name()
        .map_or_else(|| model.to_string(), |n| n.to_string_lossy().into_owned());
    Ok((path, name))
}
