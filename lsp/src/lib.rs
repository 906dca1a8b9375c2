//! `hexacoder-lsp`: the language server editors spawn. It keeps the open documents, turns
//! inline-completion and completion requests into calls to a HexaCoder server, and hands the
//! two-step imports edit back to the editor.
#![deny(missing_docs)]

pub mod backend;
pub mod client;
pub mod config;
pub mod document;
pub mod findings;
pub mod framing;
pub mod suggestion;

pub use tower_lsp_server::gen_lsp_types as lsp_types;

use backend::Backend;
use tower_lsp_server::{LspService, Server};

/// Serves LSP over `input`/`output` (stdin/stdout when an editor spawns the bridge) until the
/// client exits. Frames pass through [`framing`] both ways, so that a frame the server could
/// not decode is answered instead of ending the bridge.
pub async fn serve<I, O>(input: I, output: O)
where
    I: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite + Unpin,
{
    let (service, socket) = LspService::build(Backend::new)
        .custom_method("hexacoder/didShowCompletion", Backend::did_show)
        .custom_method("hexacoder/didAcceptCompletion", Backend::did_accept)
        .custom_method("hexacoder/didRejectCompletion", Backend::did_reject)
        .finish();
    let (to_server, server_input) = tokio::io::duplex(1 << 20);
    let (server_output, from_server) = tokio::io::duplex(1 << 20);
    let (frames, queued) = framing::queue();
    let (finished, server_finished) = tokio::sync::oneshot::channel::<()>();
    let answers = frames.clone();
    tokio::join!(
        async {
            // Stops reading the editor once the server has ended (after `exit`), even if
            // the editor keeps its end of the pipe open.
            tokio::select! {
                () = framing::relay_input(input, to_server, answers) => {}
                _ = server_finished => {}
            }
        },
        async {
            Server::new(server_input, server_output, socket)
                .serve(service)
                .await;
            let _ = finished.send(());
        },
        framing::read_server_frames(from_server, frames),
        framing::write_frames(output, queued),
    );
}
