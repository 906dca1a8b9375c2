//! API keys: the digest the server keeps instead of the key, and the middleware that
//! requires it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// SHA-256 of an API key, as [`AppState::api_key_digest`] holds it.
pub fn api_key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether `presented` is the key whose digest is `expected`, compared in constant time.
pub fn matches(presented: Option<&str>, expected: &[u8; 32]) -> bool {
    presented.is_some_and(|key| api_key_digest(key.trim()).ct_eq(expected).into())
}

/// Requires the API key, when one is set, everywhere but `/health`.
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.api_key_digest else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let headers = request.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    if matches(presented, expected) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}
