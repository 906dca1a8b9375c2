//! The LSP bridge (`hexacoder-lsp`) against a real server: over JSON-RPC on stdio as an
//! editor speaks it, and inside the real editors (Neovim, VS Code) with their plugins.

mod harness;
mod hostile;
mod lsp;
mod neovim;
mod vscode;
