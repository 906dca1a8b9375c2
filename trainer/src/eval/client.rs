//! An OpenAI-compatible completions client: ours, llama.cpp's server, vLLM. Typed with
//! `hexacoder-api`; transient failures (connection errors, timeouts, 429, 5xx) are retried
//! with backoff.

use std::time::Duration;

use hexacoder_api::{
    ChatRequest, ChatResponse, CompletionRequest, CompletionResponse, ErrorResponse, ModelList,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;

/// Tries per request before its failure is recorded.
const ATTEMPTS: u32 = 5;

/// One endpoint.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `http://host:port` (with any path prefix before `/v1`).
    base: String,
    api_key: Option<String>,
}

/// A request that failed for good.
#[derive(Clone, Debug)]
pub struct RequestFailure {
    /// What the last try said.
    pub message: String,
    /// Tries made.
    pub attempts: u32,
}

impl Client {
    /// A client of `base` (`http://127.0.0.1:8080`, with or without a trailing `/v1`).
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(base: &str, api_key: Option<String>, timeout: Duration) -> Result<Self, Error> {
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base).to_string();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Endpoint(format!("building the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            api_key,
        })
    }

    /// The endpoint's base address.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /v1/models`.
    ///
    /// # Errors
    /// The endpoint is unreachable or does not answer with a model list.
    pub async fn models(&self) -> Result<ModelList, Error> {
        let url = format!("{}/v1/models", self.base);
        let mut request = self.http.get(&url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::Endpoint(format!("{url}: {}", describe(&e))))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| Error::Endpoint(format!("{url}: reading the answer: {e}")))?;
        if !status.is_success() {
            return Err(Error::Endpoint(format!(
                "{url} answered {status}: {}",
                error_message(&body)
            )));
        }
        serde_json::from_str(&body)
            .map_err(|e| Error::Endpoint(format!("{url}: not a model list ({e}): {body:.200}")))
    }

    /// `POST /v1/completions`, retried on transient failures with exponential backoff.
    pub async fn complete(
        &self,
        request: &CompletionRequest,
    ) -> Result<CompletionResponse, RequestFailure> {
        self.post("/v1/completions", request).await
    }

    /// `POST /v1/chat/completions`, retried as [`Client::complete`] is.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, RequestFailure> {
        self.post("/v1/chat/completions", request).await
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, RequestFailure> {
        let url = format!("{}{path}", self.base);
        let mut delay = Duration::from_millis(500);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (message, retryable) = match self.try_post(&url, request).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            if !retryable || attempts >= ATTEMPTS {
                return Err(RequestFailure { message, attempts });
            }
            tracing::warn!(%message, attempts, "retrying a failed request");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// One try; on failure, what went wrong and whether another try may succeed.
    async fn try_post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        url: &str,
        request: &Req,
    ) -> Result<Resp, (String, bool)> {
        let mut builder = self.http.post(url).json(request);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = builder.send().await.map_err(|e| (describe(&e), true))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| (format!("reading the answer: {e}"), true))?;
        if !status.is_success() {
            let retryable = status.as_u16() == 429 || status.is_server_error();
            return Err((format!("{status}: {}", error_message(&body)), retryable));
        }
        serde_json::from_str(&body)
            .map_err(|e| (format!("not the expected answer ({e}): {body:.200}"), false))
    }
}

/// The message of an OpenAI error body, or the body itself.
fn error_message(body: &str) -> String {
    match serde_json::from_str::<ErrorResponse>(body) {
        Ok(error) => error.error.message,
        Err(_) => body.chars().take(300).collect(),
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        format!("cannot connect: {error}")
    } else {
        error.to_string()
    }
}
