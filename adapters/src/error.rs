use std::path::{Path, PathBuf};

/// Why an adapter cannot be read, used or written. Messages name the file, field or tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `adapter_config.json` is not valid JSON or has a field of the wrong type.
    #[error("{path}: invalid adapter config: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The adapter uses a PEFT feature we do not serve.
    #[error("unsupported adapter: `{field}` {reason}")]
    Unsupported {
        /// The config field or file that asks for it.
        field: String,
        /// What is not supported.
        reason: String,
    },
    /// The weights file is not a well-formed safetensors file.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor does not fit the adapter's config or the base model.
    #[error("tensor `{key}`: {reason}")]
    Tensor {
        /// The tensor's key in the weights file.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A FIFO, a device or a directory where a file should be: reading it could block
    /// forever or never end.
    #[error("{path}: not a regular file ({kind}); an adapter's files must be plain files")]
    NotAFile {
        /// The path, as given.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Tensor arithmetic failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The size of `path` when it is a regular file (symlinks followed), else why not.
    pub(crate) fn regular_file(path: &Path) -> Result<u64> {
        let metadata = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let kind = metadata.file_type();
        if kind.is_file() {
            return Ok(metadata.len());
        }
        use std::os::unix::fs::FileTypeExt;
        let kind = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        Err(Error::NotAFile {
            path: path.to_path_buf(),
            kind,
        })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tensor(key: &str, reason: impl Into<String>) -> Self {
        Error::Tensor {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(field: &str, reason: impl Into<String>) -> Self {
        Error::Unsupported {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}
