//! The `hexacoder-server` binary, driven as a user drives it.

mod adapters;
mod api;
mod cli;
mod golden;
mod harness;
mod hub;
mod infill;
mod llama_vim;
mod openai_client;
mod production;
mod two_step;
mod verify;
