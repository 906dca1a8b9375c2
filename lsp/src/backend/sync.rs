//! Document sync: the bridge's copy of each open document, kept in step with the editor.

use super::*;

impl Backend {
    /// `didOpen`: the document as the editor has it.
    pub(super) async fn open_document(&self, params: DidOpenTextDocumentParams) {
        let item = params.text_document;
        let (generation, _) = watch::channel(0);
        lock(&self.state.documents).insert(
            item.uri,
            OpenDocument {
                doc: Document::new(item.text, item.version, item.language_id.to_string()),
                generation,
                last_change: None,
                typing_gap: None,
                last: None,
            },
        );
    }

    /// `didChange`: applies the edits in order (UTF-16 or the negotiated encoding), learns
    /// the user's typing pace, supersedes pending requests, and moves flagged findings with
    /// the text. A change that does not apply leaves the document out of sync: it is dropped
    /// until the editor reopens it.
    pub(super) async fn change_document(&self, params: DidChangeTextDocumentParams) {
        let encoding = self.encoding();
        let uri = params.text_document.text_document_identifier.uri;
        let failed = {
            let mut documents = lock(&self.state.documents);
            let Some(open) = documents.get_mut(&uri) else {
                return;
            };
            let mut failed = None;
            for change in &params.content_changes {
                let (range, text) = match change {
                    TextDocumentContentChangeEvent::TextDocumentContentChangePartial(c) => {
                        (Some(c.range), &c.text)
                    }
                    TextDocumentContentChangeEvent::TextDocumentContentChangeWholeDocument(c) => {
                        (None, &c.text)
                    }
                };
                if let Err(error) = open.doc.apply(range, text, encoding) {
                    failed = Some(error);
                    break;
                }
            }
            open.doc.set_version(params.text_document.version);
            let now = Instant::now();
            if let Some(last) = open.last_change.replace(now) {
                let gap = now - last;
                if gap < TYPING_GAP_LIMIT {
                    open.typing_gap = Some(match open.typing_gap {
                        Some(average) => (average * 3 + gap) / 4,
                        None => gap,
                    });
                }
            }
            open.generation.send_modify(|g| *g += 1);
            if failed.is_some() {
                // Out of sync: no completions for it until the editor reopens it.
                documents.remove(&uri);
            }
            failed
        };
        let moved = {
            let documents = lock(&self.state.documents);
            let mut flagged = lock(&self.state.flagged);
            match (documents.get(&uri), flagged.get_mut(&uri)) {
                (Some(open), Some(entries)) => {
                    findings::follow(entries, open.doc.text()).then(|| {
                        (
                            findings::diagnostics(entries, &open.doc, encoding),
                            open.doc.version(),
                        )
                    })
                }
                _ => None,
            }
        };
        if let Some((diagnostics, version)) = moved {
            self.client
                .publish_diagnostics(uri.clone(), diagnostics, Some(version))
                .await;
        }
        if let Some(error) = failed {
            tracing::error!(%error, uri = %uri, "document out of sync");
            self.client
                .log_message(
                    MessageType::Error,
                    format!("HexaCoder: {} is out of sync ({error}); reopen it", uri),
                )
                .await;
        }
    }

    /// `didClose`: forgets the document and its diagnostics.
    pub(super) async fn close_document(&self, params: DidCloseTextDocumentParams) {
        let uri = params.text_document.uri;
        lock(&self.state.documents).remove(&uri);
        if lock(&self.state.flagged).remove(&uri).is_some() {
            self.client.publish_diagnostics(uri, Vec::new(), None).await;
        }
    }
}
