//! The bridge's settings, from `initializationOptions` and `workspace/didChangeConfiguration`
//! (camelCase, every field optional). The defaults work against a local
//! `hexacoder-server serve`.

use std::time::Duration;

use serde::Deserialize;

/// What the editor can set. Unknown keys are ignored so that older bridges accept newer
/// clients' settings.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// Where the HexaCoder server listens.
    pub server_url: String,
    /// Bearer token for the server. Never logged.
    pub api_key: Option<String>,
    /// An environment variable holding the token, read when `api_key` is unset.
    pub api_key_env: Option<String>,
    /// A base model or an adapter name; the server's first model when unset.
    pub model: Option<String>,
    /// Two-step generation (imports first), with its imports edit.
    pub two_step: bool,
    /// Verify mode: the server samples `candidates` suggestions, checks each with its
    /// security oracle and returns the most probable clean one; accepted code's findings are
    /// published as diagnostics. Python, C and C++ documents only.
    pub verify: bool,
    /// Candidates per suggestion in verify mode.
    pub candidates: u32,
    /// The sampling temperature in verify mode: candidates drawn greedily would all be the
    /// same text.
    pub verify_temperature: f32,
    /// A sampling seed, for reproducible suggestions; random when unset.
    pub seed: Option<u64>,
    /// Tokens per suggestion.
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    pub temperature: f32,
    /// Wait this long after the last keystroke before asking the server; stretched when the
    /// user types slower than this between keystrokes.
    pub debounce_ms: u64,
    /// Prompt budget (prefix plus suffix), in tokens.
    pub context_tokens: usize,
    /// Give up on a server call after this long.
    pub request_timeout_ms: u64,
    /// End a suggestion with the block the cursor is in: at the first line indented less
    /// than the cursor's line (llama.cpp's `n_indent`, which llama.vim sends too).
    pub stop_at_block_end: bool,
    /// Once the server has spent this long generating, it ends the suggestion at the next
    /// line end (llama.cpp's `t_max_predict_ms`); 0 is no limit.
    pub max_predict_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server_url: "http://127.0.0.1:8080".into(),
            api_key: None,
            api_key_env: None,
            model: None,
            two_step: true,
            verify: false,
            candidates: 4,
            verify_temperature: 0.4,
            seed: None,
            max_tokens: 128,
            temperature: 0.0,
            debounce_ms: 75,
            context_tokens: 2048,
            request_timeout_ms: 10_000,
            stop_at_block_end: true,
            max_predict_ms: 1000,
        }
    }
}

/// A setting with a value the bridge cannot use.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Not an object of the expected shape.
    #[error("invalid HexaCoder settings: {0}")]
    Shape(#[from] serde_json::Error),
    /// A field outside its range.
    #[error("invalid HexaCoder setting `{field}`: {reason}")]
    Value {
        /// The camelCase field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Settings {
    /// Reads settings from `value`: the object itself, or its `hexacoder` member (clients send
    /// either the section or the whole configuration). `null` gives the defaults.
    ///
    /// # Errors
    /// A wrong type or an out-of-range value, naming the field.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, SettingsError> {
        let section = value.get("hexacoder").unwrap_or(value);
        if section.is_null() {
            return Ok(Settings::default());
        }
        let settings: Settings = serde_json::from_value(section.clone())?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field, reason: String| Err(SettingsError::Value { field, reason });
        if !(self.server_url.starts_with("http://") || self.server_url.starts_with("https://")) {
            return invalid(
                "serverUrl",
                format!("{:?} is not an http(s) URL", self.server_url),
            );
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return invalid(
                "temperature",
                format!("{} is outside [0, 2]", self.temperature),
            );
        }
        if !(0.0..=2.0).contains(&self.verify_temperature) {
            return invalid(
                "verifyTemperature",
                format!("{} is outside [0, 2]", self.verify_temperature),
            );
        }
        if !(1..=16).contains(&self.candidates) {
            return invalid(
                "candidates",
                format!("{} is outside [1, 16]", self.candidates),
            );
        }
        if self.max_tokens == 0 || self.max_tokens > 4096 {
            return invalid(
                "maxTokens",
                format!("{} is outside [1, 4096]", self.max_tokens),
            );
        }
        if self.context_tokens < 64 {
            return invalid(
                "contextTokens",
                format!("{} is below 64", self.context_tokens),
            );
        }
        if self.request_timeout_ms == 0 {
            return invalid("requestTimeoutMs", "must be positive".into());
        }
        Ok(())
    }

    /// The token to send: `apiKey`, else the variable `apiKeyEnv` names.
    pub fn resolved_api_key(&self) -> Option<String> {
        self.api_key.clone().filter(|k| !k.is_empty()).or_else(|| {
            self.api_key_env
                .as_deref()
                .and_then(|name| std::env::var(name).ok())
                .filter(|k| !k.is_empty())
        })
    }

    /// The debounce before an automatic request.
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }

    /// The server-call timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The server URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.server_url.trim_end_matches('/')
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("Settings")
            .field("server_url", &self.server_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_env", &self.api_key_env)
            .field("model", &self.model)
            .field("two_step", &self.two_step)
            .field("verify", &self.verify)
            .field("candidates", &self.candidates)
            .field("verify_temperature", &self.verify_temperature)
            .field("seed", &self.seed)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("debounce_ms", &self.debounce_ms)
            .field("context_tokens", &self.context_tokens)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("stop_at_block_end", &self.stop_at_block_end)
            .field("max_predict_ms", &self.max_predict_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_camel_case_from_the_section_or_the_whole_object() {
        let section = json!({"serverUrl": "http://127.0.0.1:9", "twoStep": false, "maxTokens": 64,
            "debounceMs": 10, "contextTokens": 512, "model": "secure", "unknownKey": 1});
        let direct = Settings::from_json(&section).expect("direct");
        let nested = Settings::from_json(&json!({"hexacoder": section})).expect("nested");
        assert_eq!(direct, nested);
        assert_eq!(
            (
                direct.base_url(),
                direct.two_step,
                direct.max_tokens,
                direct.model.as_deref()
            ),
            ("http://127.0.0.1:9", false, 64, Some("secure"))
        );
        assert_eq!(
            Settings::from_json(&serde_json::Value::Null).expect("null"),
            Settings::default()
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        for (value, field) in [
            (json!({"temperature": 9.0}), "temperature"),
            (json!({"maxTokens": 0}), "maxTokens"),
            (json!({"serverUrl": "localhost:8080"}), "serverUrl"),
            (json!({"contextTokens": 3}), "contextTokens"),
            (json!({"candidates": 0}), "candidates"),
            (json!({"verifyTemperature": -1.0}), "verifyTemperature"),
        ] {
            let err = Settings::from_json(&value).expect_err(field);
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = Settings::from_json(&json!({"maxTokens": "many"})).expect_err("type");
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn the_key_comes_from_the_environment_and_never_shows_in_debug() {
        let settings = Settings {
            api_key: Some("sk-secret".into()),
            ..Settings::default()
        };
        assert!(!format!("{settings:?}").contains("sk-secret"));
        assert_eq!(settings.resolved_api_key().as_deref(), Some("sk-secret"));
        let from_env = Settings {
            api_key_env: Some("PATH".into()),
            ..Settings::default()
        };
        assert_eq!(from_env.resolved_api_key(), std::env::var("PATH").ok());
    }
}
