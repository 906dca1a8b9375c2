//! Issued suggestions, the accept command that applies their imports edit, and the editor
//! events reported to the server.

use super::*;

impl Backend {
    pub(super) fn issue(
        &self,
        request: &Request,
        suggestion: &Suggestion,
        kind: &'static str,
    ) -> String {
        // One id per shown item: the response id plus the kind, so popup and inline copies
        // of one completion are told apart.
        let id = format!("{}:{kind}:{}", suggestion.completion.id, request.generation);
        let cursor = request
            .doc
            .offset(request.cursor, self.encoding())
            .unwrap_or_default();
        lock(&self.state.issued).put(
            id.clone(),
            Issued {
                uri: request.uri.clone(),
                kind,
                completion: suggestion.completion.clone(),
                imports_edit: suggestion.imports_edit.clone(),
                accepted: false,
                inserted: suggestion.text.clone(),
                cursor,
            },
        );
        id
    }

    pub(super) fn lsp_edit(&self, doc: &Document, edit: &DocumentEdit) -> TextEdit {
        let encoding = self.encoding();
        TextEdit {
            range: Range {
                start: doc.position(edit.start, encoding),
                end: doc.position(edit.end, encoding),
            },
            new_text: edit.new_text.clone(),
        }
    }

    /// Sends an editor event to the server (in the background; telemetry never blocks).
    pub(super) fn forward_event(&self, event: &'static str, id: &str) {
        let Some(issued) = lock(&self.state.issued).get(id).cloned() else {
            tracing::debug!(id, event, "event for an unknown completion");
            return;
        };
        let event = hexacoder_api::EditorEvent {
            event: event.to_string(),
            completion_id: issued.completion.id.clone(),
            model: issued.completion.model.clone(),
            two_step: issued.completion.two_step,
            kind: issued.kind.to_string(),
        };
        let settings = self.settings();
        let server = self.state.server.clone();
        tokio::spawn(async move {
            if let Err(error) = server.send_event(&settings, &event).await {
                tracing::debug!(%error, "event not delivered");
            }
        });
    }

    /// Applies an accepted inline suggestion's imports edit, if the text before it is still
    /// what it was, and reports the accept.
    pub(super) async fn accept(&self, id: &str) -> RpcResult<()> {
        let issued = {
            let mut issued = lock(&self.state.issued);
            let Some(entry) = issued.get_mut(id) else {
                return Err(RpcError::invalid_params(format!(
                    "unknown or expired HexaCoder completion {id:?}"
                )));
            };
            if entry.accepted {
                return Ok(());
            }
            entry.accepted = true;
            entry.clone()
        };
        self.forward_event("accept", id);
        self.flag_accepted(&issued).await;
        let Some(edit) = issued
            .imports_edit
            .clone()
            .filter(|_| issued.kind == "inline")
        else {
            return Ok(());
        };
        let text_edit = {
            let documents = lock(&self.state.documents);
            let Some(open) = documents.get(&issued.uri) else {
                return Ok(());
            };
            let text = open.doc.text();
            if edit.end > text.len()
                || !text.is_char_boundary(edit.start)
                || hash_of(&[&text[..edit.start]]) != edit.before_hash
            {
                tracing::info!(id, "imports edit skipped: the file head changed");
                return Ok(());
            }
            self.lsp_edit(&open.doc, &edit)
        };
        let workspace_edit = WorkspaceEdit {
            changes: Some(HashMap::from([(issued.uri.clone(), vec![text_edit])])),
            ..WorkspaceEdit::default()
        };
        match self.client.apply_edit(workspace_edit).await {
            Ok(result) if !result.applied => tracing::info!(
                reason = ?result.failure_reason,
                "the editor did not apply the imports edit"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "workspace/applyEdit failed"),
        }
        Ok(())
    }

    /// `hexacoder/didShowCompletion`.
    pub async fn did_show(&self, params: CompletionEventParams) {
        self.forward_event("show", &params.id);
    }

    /// `hexacoder/didAcceptCompletion` (for clients that apply the edit themselves).
    pub async fn did_accept(&self, params: CompletionEventParams) {
        let first = lock(&self.state.issued)
            .get_mut(&params.id)
            .and_then(|entry| {
                (!std::mem::replace(&mut entry.accepted, true)).then(|| entry.clone())
            });
        if let Some(issued) = first {
            self.forward_event("accept", &params.id);
            self.flag_accepted(&issued).await;
        }
    }

    /// `hexacoder/didRejectCompletion`.
    pub async fn did_reject(&self, params: CompletionEventParams) {
        self.forward_event("reject", &params.id);
    }
}
