//! Tabby's API under `/tabby`, for Tabby's editor extensions: completions and health.

use serde::{Deserialize, Serialize};

/// `POST /tabby/v1/completions`' answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TabbyCompletion {
    pub choices: Vec<TabbyChoice>,
    pub id: String,
}

/// One completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TabbyChoice {
    pub index: u32,
    pub text: String,
}

/// `GET /tabby/v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TabbyHealth {
    pub accelerators: Vec<String>,
    pub arch: String,
    pub cpu_count: u64,
    pub cpu_info: String,
    pub device: String,
    pub model: String,
    pub version: TabbyVersion,
}

/// Which server this is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TabbyVersion {
    pub git_describe: String,
}
