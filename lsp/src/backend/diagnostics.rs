//! Diagnostics on accepted code: the oracle's findings from verify mode, placed where the
//! suggestion landed and moved with later edits.

use super::*;

impl Backend {
    /// Publishes the oracle's findings on an accepted suggestion (verify mode), found where
    /// the editor inserted it.
    pub(super) async fn flag_accepted(&self, issued: &Issued) {
        if issued.completion.verification.is_none() {
            return;
        }
        let diagnostics = {
            let documents = lock(&self.state.documents);
            let Some(open) = documents.get(&issued.uri) else {
                return;
            };
            let text = open.doc.text();
            let Some(at) = findings::locate(text, &issued.inserted, issued.cursor) else {
                tracing::debug!("accepted text not found in the document; no diagnostics");
                return;
            };
            let new = findings::flag_accepted(&issued.completion, &issued.inserted, at, text);
            let mut flagged = lock(&self.state.flagged);
            let entry = flagged.entry(issued.uri.clone()).or_default();
            for f in new {
                if !entry.contains(&f) {
                    entry.push(f);
                }
            }
            (
                findings::diagnostics(entry, &open.doc, self.encoding()),
                open.doc.version(),
            )
        };
        self.client
            .publish_diagnostics(issued.uri.clone(), diagnostics.0, Some(diagnostics.1))
            .await;
    }
}
