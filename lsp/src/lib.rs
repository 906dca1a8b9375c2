//! `hexacoder-lsp`: the language server editors spawn. It keeps the open documents, turns
//! inline-completion and completion requests into calls to a HexaCoder server, and hands the
//! two-step imports edit back to the editor.
#![deny(missing_docs)]

pub mod backend;
pub mod client;
pub mod config;
pub mod document;
pub mod findings;
pub mod suggestion;

pub use tower_lsp_server::gen_lsp_types as lsp_types;

use backend::Backend;
use tower_lsp_server::{LspService, Server};

/// Serves LSP over `input`/`output` (stdin/stdout when an editor spawns the bridge) until the
/// client exits.
pub async fn serve<I, O>(input: I, output: O)
where
    I: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite,
{
    let (service, socket) = LspService::build(Backend::new)
        .custom_method("hexacoder/didShowCompletion", Backend::did_show)
        .custom_method("hexacoder/didAcceptCompletion", Backend::did_accept)
        .custom_method("hexacoder/didRejectCompletion", Backend::did_reject)
        .finish();
    Server::new(input, output, socket).serve(service).await;
}
