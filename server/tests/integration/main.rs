//! The `hexacoder-server` binary, driven as a user drives it. The tests with real outside
//! clients (the `openai` package, llama.vim) are in the workspace's `tests/` crate.

mod adapters;
mod api;
mod cli;
mod golden;
mod harness;
mod hub;
mod infill;
mod production;
mod two_step;
mod verify;
