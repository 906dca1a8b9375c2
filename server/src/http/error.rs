//! OpenAI-shaped errors (`{"error": {"message", "type", "param", "code"}}`) and the JSON body
//! extractor that produces them for malformed input.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hexacoder_engine::{Error as EngineError, Rejected};
use serde::de::DeserializeOwned;

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.into(),
            code: None,
            retry_after: None,
        }
    }

    /// `param` is out of its range or otherwise unacceptable.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(Some(param.to_string()), message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn model_not_found(model: &str, known: &[String]) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model `{model}` does not exist; this server serves {}.",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: Some("not_found"),
            ..Self::invalid(None, message)
        }
    }

    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            code: Some("invalid_api_key"),
            ..Self::invalid(
                None,
                "Missing or incorrect API key: send `Authorization: Bearer <key>`.",
            )
        }
    }

    pub fn timeout(seconds: u64) -> Self {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            kind: "timeout_error",
            code: Some("request_timeout"),
            ..Self::invalid(
                None,
                format!("The request took longer than the server's limit of {seconds} s."),
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            ..Self::invalid(None, message)
        }
    }

    pub fn shutting_down() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            code: Some("shutting_down"),
            retry_after: Some(5),
            ..Self::invalid(None, "The server is shutting down.")
        }
    }

    /// The JSON body, also used as an SSE error event.
    pub fn body(&self) -> hexacoder_api::ErrorResponse {
        hexacoder_api::ErrorResponse {
            error: hexacoder_api::ErrorBody {
                code: self.code.map(|c| c.into()),
                message: self.message.clone(),
                param: self.param.clone(),
                kind: Some(self.kind.to_string()),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<Rejected> for ApiError {
    fn from(rejected: Rejected) -> Self {
        match rejected {
            Rejected::Overloaded { .. } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                kind: "rate_limit_error",
                code: Some("server_overloaded"),
                retry_after: Some(1),
                ..Self::invalid(None, format!("{rejected}; retry shortly."))
            },
            Rejected::ShuttingDown => Self::shutting_down(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::ContextOverflow { .. } => {
                ApiError::bad_param("prompt", err.to_string()).with_code("context_length_exceeded")
            }
            EngineError::NoFim => ApiError::bad_param("suffix", err.to_string()),
            EngineError::InvalidRequest(message) => ApiError::invalid(None, message),
            EngineError::Tokenizer(_) => ApiError::bad_param("prompt", err.to_string()),
            EngineError::Cancelled => ApiError::shutting_down(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// A JSON body whose every failure is an OpenAI-shaped error naming the offending field.
/// The content type is not checked: `curl -d` sends a form content type.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse(&bytes).map(ApiJson)
    }
}

/// A completion route's body as two structs read from the same bytes: the fields every
/// completion route shares (`C`, declared once) and the route's own (`T`). Two passes rather
/// than `#[serde(flatten)]`, which would lose the path of a bad field in the error.
pub struct ApiBody<C, T>(pub C, pub T);

impl<C: DeserializeOwned, T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiBody<C, T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        // The route's own fields first: the `prompt` or `messages` a body lacks is the
        // error a client most needs to see.
        let own = parse(&bytes)?;
        Ok(ApiBody(parse(&bytes)?, own))
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        let status = rejection.status();
        let mut err = ApiError::invalid(None, rejection.body_text());
        err.status = status;
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            err.message =
                "The request body is larger than the server's limit (--max-body-bytes).".into();
            err.code = Some("request_too_large");
        }
        err
    })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || path.is_empty() {
            ApiError::invalid(
                None,
                format!("The body is not valid JSON for this endpoint: {inner}"),
            )
        } else {
            ApiError::invalid(Some(path.clone()), format!("Invalid `{path}`: {inner}"))
        }
    })
}
