//! What every generating route puts in its responses: token counts and timings, the adapter
//! that answered (in the body and a header), and how tokens are shown.

use axum::response::Response;
use hexacoder_api as api;
use hexacoder_engine::tokenizer::Tokenizer;
use hexacoder_engine::{GeneratedToken, Generation, SharedAdapter};

use super::AppState;

/// Token counts and timings summed over a request's prompts.
#[derive(Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    pub ttft_ms: f64,
    pub elapsed_ms: f64,
}

impl Usage {
    pub fn add(&mut self, generation: &Generation) {
        self.add_counts(generation);
        self.ttft_ms = self
            .ttft_ms
            .max(generation.time_to_first_token.as_secs_f64() * 1e3);
        self.elapsed_ms = self.elapsed_ms.max(generation.elapsed.as_secs_f64() * 1e3);
    }

    /// Adds token counts only (two-step's first step, whose time the second's includes).
    pub fn add_counts(&mut self, generation: &Generation) {
        self.prompt_tokens += generation.prompt_tokens.len();
        self.completion_tokens += generation.completion_tokens();
        self.cached_tokens += generation.cached_prompt_tokens;
    }

    /// OpenAI's `usage`.
    pub fn wire(&self) -> api::Usage {
        api::Usage {
            completion_tokens: self.completion_tokens as u64,
            prompt_tokens: self.prompt_tokens as u64,
            prompt_tokens_details: Some(api::PromptTokensDetails {
                cached_tokens: self.cached_tokens as u64,
            }),
            total_tokens: (self.prompt_tokens + self.completion_tokens) as u64,
        }
    }

    /// The response's `hexacoder` object: timings and which adapter version answered.
    pub fn extension(&self, adapter: &Option<SharedAdapter>) -> api::HexacoderResponse {
        api::HexacoderResponse {
            adapter: adapter.as_ref().map(|a| a.name().to_string()),
            adapter_generation: adapter.as_ref().map(|a| a.generation()),
            cached_prompt_tokens: Some(self.cached_tokens as u64),
            elapsed_ms: Some(self.elapsed_ms),
            time_to_first_token_ms: Some(self.ttft_ms),
        }
    }
}

/// `x-hexacoder-adapter: NAME@GENERATION` on a response an adapter produced, so that even a
/// stream without a usage chunk says which version answered.
pub fn adapter_header(mut response: Response, adapter: &Option<SharedAdapter>) -> Response {
    if let Some(adapter) = adapter
        && let Ok(value) = axum::http::HeaderValue::from_str(&format!(
            "{}@{}",
            adapter.name(),
            adapter.generation()
        ))
    {
        response.headers_mut().insert("x-hexacoder-adapter", value);
    }
    response
}

/// The `model` a response names: the adapter's name, or the base model's.
pub fn model_label(state: &AppState, adapter: &Option<SharedAdapter>) -> String {
    adapter
        .as_ref()
        .map_or_else(|| state.model.id.clone(), |a| a.name().to_string())
}

/// How a token is shown in logprobs: its text, or its name for control tokens.
pub fn token_string(tokenizer: &Tokenizer, id: u32) -> String {
    if tokenizer.is_special(id) {
        return tokenizer.token_text(id).unwrap_or_default();
    }
    String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned()
}

/// OpenAI's legacy logprobs object; `offset` is the text offset of the first token, and
/// moves past the tokens.
pub fn logprobs(
    tokenizer: &Tokenizer,
    tokens: &[GeneratedToken],
    offset: &mut usize,
) -> api::Logprobs {
    let mut wire = api::Logprobs {
        top_logprobs: Some(Vec::with_capacity(tokens.len())),
        ..Default::default()
    };
    for token in tokens {
        let text = token_string(tokenizer, token.id);
        wire.text_offset.push(*offset);
        *offset += text.len();
        wire.tokens.push(text);
        wire.token_logprobs.push(Some(f64::from(token.logprob)));
        let top = token
            .top
            .iter()
            .map(|&(id, lp)| (token_string(tokenizer, id), f64::from(lp)))
            .collect();
        if let Some(tops) = wire.top_logprobs.as_mut() {
            tops.push(Some(top));
        }
    }
    wire
}

/// A fresh response id with this prefix.
pub fn response_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}
