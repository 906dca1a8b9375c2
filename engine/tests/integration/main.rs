//! The engine's integration tests: one binary, one module per feature.

mod generation;
mod gguf;
mod invariance;
mod lora;
mod parity;
mod peft;
mod real_model;
mod scheduler;
mod support;
mod tokenizer;
