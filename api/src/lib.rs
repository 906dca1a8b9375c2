//! HexaCoder's wire format: the JSON that crosses between the server and its clients (the
//! evaluation harness today; the bridge, the benches and the tests next), as serde types.
//!
//! Requests are written by clients and must be exactly what the server reads, so they skip
//! absent fields. Responses are read from any OpenAI-compatible server (ours, llama.cpp's,
//! vLLM), so unknown fields are tolerated and most fields are optional.

pub mod adapters;
pub mod chat;
pub mod completions;
pub mod error;
pub mod events;
pub mod infill;
pub mod models;
pub mod tabby;

pub use adapters::{
    AdapterChange, AdapterInfo, AdapterList, LoadAdapterRequest, UnloadAdapterRequest,
};
pub use chat::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatDelta, ChatLogprobs, ChatMessage, ChatRequest,
    ChatResponse, TokenLogprob,
};
pub use completions::{
    CandidateSummary, Choice, CompletionChunk, CompletionRequest, CompletionResponse, FindingSpan,
    HexacoderChoice, HexacoderRequest, HexacoderResponse, Logprobs, Position, Prompt,
    PromptTokensDetails, Range, TextEdit, Usage, Verification, VerificationOutcome,
    VerifiedFinding,
};
pub use error::{ErrorBody, ErrorResponse};
pub use events::EditorEvent;
pub use infill::{InfillChunk, InfillResponse, InfillTimings};
pub use models::{Health, Model, ModelDetails, ModelList};
pub use tabby::{TabbyChoice, TabbyCompletion, TabbyHealth, TabbyVersion};
