//! Calls to the HexaCoder server: completions, the model list and editor events.

use serde::{Deserialize, Serialize};
use serde_json::json;

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

/// The server's imports edit: replace `range` of the prompt (lines and UTF-16 columns) with
/// `new_text`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptEdit {
    /// Range in the prompt.
    pub range: crate::lsp_types::Range,
    /// Replacement.
    pub new_text: String,
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
    /// Those imports as an edit of the prompt.
    pub imports_edit: Option<PromptEdit>,
    /// What the security oracle found, in verify mode.
    pub verification: Option<Verification>,
}

/// The server's check of a verified completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// `first_clean`, `replaced` or `all_flagged`.
    pub outcome: String,
    /// Findings in the returned completion.
    pub findings: Vec<VerifiedFinding>,
    /// CWEs of the more probable candidates this one replaced.
    pub replaced_cwes: Vec<String>,
}

/// One finding in a verified completion.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VerifiedFinding {
    /// `CWE-094` style.
    pub cwe: String,
    /// The oracle's rule.
    pub rule_id: String,
    /// What is wrong.
    pub message: String,
    /// `error`, `warning` or `note`.
    pub severity: String,
    /// Character offsets `[start, end)` in the completion text.
    pub completion_range: [usize; 2],
}

/// Languages the server's oracle checks (LSP language ids).
pub fn verifiable(language_id: &str) -> bool {
    matches!(language_id, "python" | "c" | "cpp")
}

/// An editor event about a shown completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EditorEvent {
    /// `show`, `accept` or `reject`.
    pub event: &'static str,
    /// The completion's id.
    pub completion_id: String,
    /// The model or adapter that produced it.
    pub model: String,
    /// Whether two-step generation produced it.
    pub two_step: bool,
    /// `inline` or `popup`.
    pub kind: &'static str,
}

/// An HTTP client for one server (connections are pooled).
#[derive(Clone, Debug, Default)]
pub struct ServerClient {
    http: reqwest::Client,
}

impl ServerClient {
    /// A client with a pool of keep-alive connections.
    pub fn new() -> Self {
        ServerClient {
            http: reqwest::Client::new(),
        }
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
        let mut extension = json!({"two_step": settings.two_step});
        if let Some(language) = &query.language {
            extension["language"] = json!(language);
        }
        if settings.stop_at_block_end && query.indent > 0 {
            extension["n_indent"] = json!(query.indent);
        }
        if settings.max_predict_ms > 0 {
            extension["t_max_predict_ms"] = json!(settings.max_predict_ms);
        }
        let verify = settings.verify && query.language.as_deref().is_some_and(verifiable);
        if verify {
            extension["verify"] = json!(true);
            extension["candidates"] = json!(settings.candidates);
        }
        let mut body = json!({
            "model": model,
            "prompt": query.prefix,
            "max_tokens": settings.max_tokens,
            "temperature": if verify { settings.verify_temperature } else { settings.temperature },
            "hexacoder": extension,
        });
        if let Some(seed) = settings.seed {
            body["seed"] = json!(seed);
        }
        if !query.suffix.is_empty() {
            body["suffix"] = json!(query.suffix);
        }
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
        let value = json_body(response, &url, settings).await?;
        parse_completion(&value, adapter)
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
        let value = json_body(response, &url, settings).await?;
        let ids = value["data"]
            .as_array()
            .ok_or_else(|| ClientError::Malformed("`data` is not a list".into()))?
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect();
        Ok(ids)
    }

    /// Reports an editor event to the server's events route.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn send_event(
        &self,
        settings: &Settings,
        event: &EditorEvent,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/hexacoder/events", settings.base_url());
        let response = self
            .post(settings, "/v1/hexacoder/events")
            .json(event)
            .send()
            .await
            .map_err(|e| transport_error(&url, settings, e))?;
        json_body(response, &url, settings).await.map(|_| ())
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

async fn json_body(
    response: reqwest::Response,
    url: &str,
    settings: &Settings,
) -> Result<serde_json::Value, ClientError> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transport_error(url, settings, e))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        return Err(ClientError::Status {
            status: status.as_u16(),
            message,
        });
    }
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Malformed(e.to_string()))
}

fn parse_completion(
    value: &serde_json::Value,
    adapter: Option<String>,
) -> Result<Completion, ClientError> {
    let choice = &value["choices"][0];
    let text = choice["text"]
        .as_str()
        .ok_or_else(|| ClientError::Malformed("no `choices[0].text`".into()))?;
    let extension = &choice["hexacoder"];
    let imports_edit = match &extension["imports_edit"] {
        serde_json::Value::Null => None,
        edit => Some(
            serde_json::from_value(edit.clone())
                .map_err(|e| ClientError::Malformed(format!("imports_edit: {e}")))?,
        ),
    };
    let verification = match &extension["verification"] {
        serde_json::Value::Null => None,
        v => {
            let findings = serde_json::from_value(v["findings"].clone())
                .map_err(|e| ClientError::Malformed(format!("verification findings: {e}")))?;
            let chosen_rank = v["chosen_rank"].as_u64().unwrap_or(0) as usize;
            let mut replaced_cwes: Vec<String> = v["candidate_summaries"]
                .as_array()
                .map(|s| &s[..chosen_rank.min(s.len())])
                .unwrap_or_default()
                .iter()
                .flat_map(|s| s["cwes"].as_array().cloned().unwrap_or_default())
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            replaced_cwes.sort();
            replaced_cwes.dedup();
            Some(Verification {
                outcome: v["outcome"].as_str().unwrap_or_default().to_string(),
                findings,
                replaced_cwes,
            })
        }
    };
    Ok(Completion {
        id: value["id"].as_str().unwrap_or_default().to_string(),
        model: value["model"].as_str().unwrap_or_default().to_string(),
        adapter,
        text: text.to_string(),
        two_step: extension["two_step"].as_bool().unwrap_or(false),
        added_imports: extension["added_imports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        imports_edit,
        verification,
    })
}
