//! `hexacoder-server`: the OpenAI-compatible HTTP server and the command line over the engine.
//!
//! [`cli`] defines every option once and [`config`] merges environment and TOML file under
//! it; [`model_source`] turns `--model` into a loaded engine; [`serve`] starts the engine's
//! scheduler and the [`http`] API over it; [`generate`] is the one-off terminal mode.

pub mod adapter_registry;
pub mod chat_template;
pub mod cli;
pub mod config;
pub mod generate;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod model_source;
pub mod serve;
pub mod time;
