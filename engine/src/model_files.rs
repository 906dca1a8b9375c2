//! The files a model loads from: a GGUF file or an HF checkpoint directory. Finding them
//! by hub id (and fetching them) is the server's business, not the engine's.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Files of a model, ready to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelFiles {
    /// One GGUF file.
    Gguf(PathBuf),
    /// A directory with `config.json`, `tokenizer.json` and safetensors.
    HfDir(PathBuf),
}

/// Files of a local path: a GGUF file, an HF directory, or a directory holding one GGUF file.
pub fn local_files(path: &Path) -> Result<ModelFiles> {
    let err = |reason: String| Error::Resolve {
        id: path.display().to_string(),
        reason,
    };
    if path.is_file() {
        return if is_gguf(path) {
            Ok(ModelFiles::Gguf(path.to_path_buf()))
        } else {
            Err(err(
                "not a GGUF file (bad magic); pass a GGUF file or an HF checkpoint directory"
                    .into(),
            ))
        };
    }
    if path.join("config.json").is_file() {
        return Ok(ModelFiles::HfDir(path.to_path_buf()));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelFiles::Gguf(one.clone())),
        [] => Err(err(
            "directory has neither config.json nor a .gguf file".into()
        )),
        many => Err(err(format!(
            "directory has {} .gguf files; name one",
            many.len()
        ))),
    }
}

fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}
