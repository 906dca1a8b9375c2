//! The bridge's integration tests: one binary.

mod bridge;
mod harness;
mod neovim;
mod vscode;
