use std::path::PathBuf;

/// Everything the engine can fail at. Messages carry the offending value so a caller can
/// show them to a user unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Reading a model file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model file is present but its contents are not what the engine can load.
    #[error("invalid model {path}: {reason}")]
    InvalidModel {
        /// The file or directory being loaded.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model uses an architecture, tensor type or tokenizer this engine does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The tokenizer rejected the input or could not be built.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A model id could not be resolved to local files.
    #[error("cannot resolve model {id:?}: {reason}")]
    Resolve {
        /// The id as the user gave it.
        id: String,
        /// Why it could not be resolved.
        reason: String,
    },
    /// A generation request is invalid (a bad parameter, or a prompt that does not fit).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request asked for fill-in-the-middle on a model that has no FIM tokens.
    #[error(
        "model has no fill-in-the-middle tokens, so `suffix` cannot be used; set a FIM template explicitly if the model supports one"
    )]
    NoFim,
    /// The prompt is longer than the model's context window.
    #[error(
        "prompt is {n_prompt} tokens and max_tokens is {max_tokens}, which exceeds the context of {context} tokens by {excess}"
    )]
    ContextOverflow {
        /// Tokens in the prompt.
        n_prompt: usize,
        /// Requested new tokens.
        max_tokens: usize,
        /// The model's context length.
        context: usize,
        /// How many tokens too many.
        excess: usize,
    },
    /// The request was cancelled before it finished (shutdown).
    #[error("request cancelled")]
    Cancelled,
    /// The engine failed while running the request; other requests may have failed with it.
    #[error("engine failure: {0}")]
    Internal(String),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid_model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidModel {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
