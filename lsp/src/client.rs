//! Calls to the HexaCoder server: completions, the model list and editor events.

use hexacoder_api as api;
use serde::de::DeserializeOwned;

use crate::config::Settings;

/// Why a server call gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection (the server is down, or the URL is wrong).
    #[error("cannot reach the HexaCoder server at {url}: {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport's explanation.
        reason: String,
    },
    /// No answer within `requestTimeoutMs`.
    #[error("the HexaCoder server did not answer within {0} ms")]
    Timeout(u64),
    /// An HTTP error, with the server's message.
    #[error("the HexaCoder server answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The OpenAI-style error message, or the body.
        message: String,
    },
    /// A body that is not what the API promises.
    #[error("unexpected answer from the HexaCoder server: {0}")]
    Malformed(String),
}

impl ClientError {
    /// Whether the server itself is unavailable (as opposed to refusing one request).
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Timeout(_)
        ) || matches!(self, ClientError::Status { status, .. } if *status >= 500)
    }
}

/// One completion request.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionQuery {
    /// Text before the cursor.
    pub prefix: String,
    /// Text after the cursor (FIM); empty for none.
    pub suffix: String,
    /// `languageId`, which helps the server find the import block.
    pub language: Option<String>,
    /// The cursor line's indentation, 0 on a blank line (as llama.vim measures it): with
    /// `stopAtBlockEnd`, the suggestion ends at the first line indented less.
    pub indent: usize,
}

/// A completion as the server returned it.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The response id (`cmpl-…`), used to attribute editor events.
    pub id: String,
    /// The model or adapter that answered.
    pub model: String,
    /// `NAME@GENERATION` of the adapter, when one was used.
    pub adapter: Option<String>,
    /// The completion at the cursor.
    pub text: String,
    /// Whether it came from two-step generation.
    pub two_step: bool,
    /// The import statements step 1 added (and the completion uses).
    pub added_imports: Vec<String>,
    /// Those imports as an edit of the prompt (lines and UTF-16 columns).
    pub imports_edit: Option<api::TextEdit>,
    /// What the security oracle found, in verify mode.
    pub verification: Option<Verification>,
}

/// The server's check of a verified completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    /// How the returned candidate was chosen.
    pub outcome: api::VerificationOutcome,
    /// Findings in the returned completion.
    pub findings: Vec<api::VerifiedFinding>,
    /// CWEs of the more probable candidates this one replaced.
    pub replaced_cwes: Vec<String>,
}

/// Languages the server's oracle checks (LSP language ids).
pub fn verifiable(language_id: &str) -> bool {
    matches!(language_id, "python" | "c" | "cpp")
}

/// How long an unused keep-alive connection is kept (see [`ServerClient::new`]).
pub const POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// An HTTP client for one server (connections are pooled).
#[derive(Clone, Debug)]
pub struct ServerClient {
    http: reqwest::Client,
}

impl Default for ServerClient {
    fn default() -> Self {
        ServerClient::new()
    }
}

impl ServerClient {
    /// A client with a pool of keep-alive connections, each dropped after
    /// [`POOL_IDLE_TIMEOUT`] unused: before the server's own idle timeout (10 s by default)
    /// closes it, so that a request after a pause never goes out on a connection the server
    /// is closing.
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        ServerClient { http }
    }

    fn post(&self, settings: &Settings, path: &str) -> reqwest::RequestBuilder {
        self.with_key(
            settings,
            self.http.post(format!("{}{path}", settings.base_url())),
        )
    }

    fn with_key(
        &self,
        settings: &Settings,
        request: reqwest::RequestBuilder,
    ) -> reqwest::RequestBuilder {
        let request = request.timeout(settings.request_timeout());
        match settings.resolved_api_key() {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// One completion. Dropping the future closes the connection, which makes the server stop
    /// generating.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn complete(
        &self,
        settings: &Settings,
        model: &str,
        query: &CompletionQuery,
    ) -> Result<Completion, ClientError> {
        let verify = settings.verify && query.language.as_deref().is_some_and(verifiable);
        let body = api::CompletionRequest {
            model: Some(model.to_string()),
            prompt: api::Prompt::One(query.prefix.clone()),
            suffix: (!query.suffix.is_empty()).then(|| query.suffix.clone()),
            max_tokens: Some(settings.max_tokens),
            temperature: Some(f64::from(if verify {
                settings.verify_temperature
            } else {
                settings.temperature
            })),
            seed: settings.seed.map(|s| s as i64),
            hexacoder: Some(api::HexacoderRequest {
                two_step: Some(settings.two_step),
                language: query.language.clone(),
                verify: verify.then_some(true),
                candidates: verify.then_some(settings.candidates),
                n_indent: (settings.stop_at_block_end && query.indent > 0)
                    .then_some(query.indent as u32),
                t_max_predict_ms: (settings.max_predict_ms > 0).then_some(settings.max_predict_ms),
                ..Default::default()
            }),
            ..Default::default()
        };
        let url = format!("{}/v1/completions", settings.base_url());
        let response = self
            .post(settings, "/v1/completions")
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error(&url, settings, e))?;
        let adapter = response
            .headers()
            .get("x-hexacoder-adapter")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answer: api::CompletionResponse = json_body(response, &url, settings).await?;
        completion(answer, adapter)
    }

    /// The ids the server serves (base models and adapters).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn models(&self, settings: &Settings) -> Result<Vec<String>, ClientError> {
        let url = format!("{}/v1/models", settings.base_url());
        let response = self
            .with_key(settings, self.http.get(&url))
            .send()
            .await
            .map_err(|e| transport_error(&url, settings, e))?;
        let list: api::ModelList = json_body(response, &url, settings).await?;
        Ok(list.data.into_iter().map(|m| m.id).collect())
    }

    /// Reports an editor event to the server's events route.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn send_event(
        &self,
        settings: &Settings,
        event: &api::EditorEvent,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/hexacoder/events", settings.base_url());
        let response = self
            .post(settings, "/v1/hexacoder/events")
            .json(event)
            .send()
            .await
            .map_err(|e| transport_error(&url, settings, e))?;
        checked_body(response, &url, settings).await.map(|_| ())
    }
}

fn transport_error(url: &str, settings: &Settings, error: reqwest::Error) -> ClientError {
    if error.is_timeout() {
        ClientError::Timeout(settings.request_timeout_ms)
    } else {
        ClientError::Unreachable {
            url: url.to_string(),
            reason: std::error::Error::source(&error)
                .map_or_else(|| error.to_string(), |s| s.to_string()),
        }
    }
}

/// The body of a successful answer; an error status becomes [`ClientError::Status`] with the
/// server's message.
async fn checked_body(
    response: reqwest::Response,
    url: &str,
    settings: &Settings,
) -> Result<Vec<u8>, ClientError> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transport_error(url, settings, e))?
        .to_vec();
    if !status.is_success() {
        let message = serde_json::from_slice::<api::ErrorResponse>(&bytes)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        return Err(ClientError::Status {
            status: status.as_u16(),
            message,
        });
    }
    Ok(bytes)
}

/// A successful answer as the wire type `T`.
async fn json_body<T: DeserializeOwned>(
    response: reqwest::Response,
    url: &str,
    settings: &Settings,
) -> Result<T, ClientError> {
    let bytes = checked_body(response, url, settings).await?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Malformed(e.to_string()))
}

/// The first choice of an answer, as the bridge uses it.
fn completion(
    answer: api::CompletionResponse,
    adapter: Option<String>,
) -> Result<Completion, ClientError> {
    let choice = answer
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Malformed("no `choices[0]`".into()))?;
    let extension = choice.hexacoder.unwrap_or_default();
    let imports_edit = extension.edit().cloned();
    let verification = extension.verification.map(|v| {
        let chosen_rank = v.chosen_rank.unwrap_or(0) as usize;
        let mut replaced_cwes: Vec<String> = v
            .candidate_summaries
            .iter()
            .take(chosen_rank)
            .flat_map(|s| s.cwes.iter().cloned())
            .collect();
        replaced_cwes.sort();
        replaced_cwes.dedup();
        Verification {
            outcome: v.outcome,
            findings: v.findings,
            replaced_cwes,
        }
    });
    Ok(Completion {
        id: answer.id.unwrap_or_default(),
        model: answer.model.unwrap_or_default(),
        adapter,
        text: choice.text,
        two_step: extension.two_step.unwrap_or(false),
        added_imports: extension.added_imports.unwrap_or_default(),
        imports_edit,
        verification,
    })
}
