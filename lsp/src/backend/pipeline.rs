//! The completion pipeline: snapshot the document, supersede older requests, debounce,
//! answer from type-ahead or the cache, else ask the server and map its imports edit.

use super::*;

impl Backend {
    /// Snapshots what a request needs, synchronously, so that it sees every change the client
    /// sent before it, and supersedes older requests for the document.
    pub(super) fn begin(&self, uri: &Uri, position: Position) -> Option<(Request, Duration)> {
        let encoding = self.encoding();
        let settings = self.settings();
        let mut documents = lock(&self.state.documents);
        let open = documents.get_mut(uri)?;
        let cursor = open.doc.offset(position, encoding).ok()?;
        let text = open.doc.text();
        let language = Language::from_name(open.doc.language_id());
        let prompt = build_prompt(text, cursor, settings.context_tokens, language);
        let line_start = text[..cursor].rfind('\n').map_or(0, |i| i + 1);
        let word_len = text[line_start..cursor]
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .map(char::len_utf8)
            .sum::<usize>();
        let word_start = cursor - word_len;
        let after_cursor: String = text[cursor..].chars().take(2000).collect();
        let line_end = text[cursor..].find('\n').map_or(text.len(), |i| cursor + i);
        let line = &text[line_start..line_end];
        let indent = if line.trim().is_empty() {
            0
        } else {
            line.bytes()
                .take_while(|&b| b == b' ' || b == b'\t')
                .count()
        };
        let generation = *open.generation.borrow() + 1;
        open.generation.send_replace(generation);
        let debounce = match open.typing_gap {
            // Wait a little longer than the user's usual gap between keystrokes.
            Some(gap) => settings
                .debounce()
                .max((gap * 3 / 2).min(settings.debounce() * 4)),
            None => settings.debounce(),
        };
        let request = Request {
            uri: uri.clone(),
            word: text[word_start..cursor].to_string(),
            word_start: open.doc.position(word_start, encoding),
            prompt,
            language_id: open.doc.language_id().to_string(),
            cursor: position,
            generation,
            superseded: open.generation.subscribe(),
            after_cursor,
            doc: open.doc.clone(),
            indent,
        };
        Some((request, debounce))
    }

    pub(super) fn is_current(&self, request: &Request) -> bool {
        *request.superseded.borrow() == request.generation
    }

    /// The suggestion for `request`: from type-ahead, the cache, or the server. `None` when
    /// there is none, the request was superseded, or the server failed (reported separately).
    pub(super) async fn suggest(
        &self,
        request: &mut Request,
        debounce: Option<Duration>,
    ) -> Option<Suggestion> {
        if let Some(suggestion) = self.type_ahead(request) {
            return Some(suggestion);
        }
        let settings = self.settings();
        let model = self.model(&settings).await?;
        let key = hash_of(&[
            &model,
            &format!(
                "{}|{}|{}|{}|{}|{}|{}|{:?}|{}|{}|{}",
                settings.two_step,
                settings.max_tokens,
                settings.temperature,
                request.language_id,
                settings.verify,
                settings.candidates,
                settings.verify_temperature,
                settings.seed,
                settings.stop_at_block_end,
                settings.max_predict_ms,
                request.indent,
            ),
            &request.prompt.prefix,
            &request.prompt.suffix,
        ]);
        if let Some(hit) = lock(&self.state.cache).get(&key).cloned() {
            return Some(hit);
        }
        if let Some(delay) = debounce
            && !delay.is_zero()
        {
            let mut superseded = request.superseded.clone();
            let generation = request.generation;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = superseded.wait_for(|g| *g != generation) => return None,
            }
        }
        if !self.is_current(request) {
            return None;
        }
        let query = CompletionQuery {
            prefix: request.prompt.prefix.clone(),
            suffix: request.prompt.suffix.clone(),
            language: Some(request.language_id.clone()),
            indent: request.indent,
        };
        let generation = request.generation;
        let mut superseded = request.superseded.clone();
        // A newer request or a change drops this call, which closes the connection, which
        // stops the server's generation.
        let result = tokio::select! {
            result = self.state.server.complete(&settings, &model, &query) => result,
            _ = superseded.wait_for(|g| *g != generation) => {
                tracing::debug!("superseded; server call dropped");
                return None;
            }
        };
        let completion = match result {
            Ok(completion) => {
                self.server_is(Health::Up, None).await;
                completion
            }
            Err(error) => {
                self.report(&error).await;
                return None;
            }
        };
        let text = clean_completion(&completion.text, &request.after_cursor);
        let imports_edit = completion
            .imports_edit
            .as_ref()
            .and_then(|edit| map_imports_edit(edit, &request.prompt, &request.doc));
        let suggestion = Suggestion {
            text,
            completion: Arc::new(completion),
            imports_edit,
        };
        lock(&self.state.cache).put(key, suggestion.clone());
        if let Some(open) = lock(&self.state.documents).get_mut(&request.uri) {
            open.last = Some((
                request.prompt.prefix.clone(),
                request.prompt.suffix.clone(),
                suggestion.clone(),
            ));
        }
        Some(suggestion)
    }

    /// When the user typed the start of the last suggestion, the rest of it.
    pub(super) fn type_ahead(&self, request: &Request) -> Option<Suggestion> {
        let documents = lock(&self.state.documents);
        let (prefix, suffix, last) = documents.get(&request.uri)?.last.as_ref()?;
        let typed = request.prompt.prefix.strip_prefix(prefix.as_str())?;
        if typed.is_empty() || *suffix != request.prompt.suffix {
            return None;
        }
        let rest = last.text.strip_prefix(typed)?;
        if rest.trim().is_empty() {
            return None;
        }
        Some(Suggestion {
            text: rest.to_string(),
            ..last.clone()
        })
    }

    /// The model to ask: the configured one, else the server's first.
    pub(super) async fn model(&self, settings: &Settings) -> Option<String> {
        if let Some(model) = &settings.model {
            return Some(model.clone());
        }
        if let Some(model) = lock(&self.state.default_model).clone() {
            return Some(model);
        }
        match self.state.server.models(settings).await {
            Ok(models) => {
                let first = models.into_iter().next()?;
                *lock(&self.state.default_model) = Some(first.clone());
                Some(first)
            }
            Err(error) => {
                self.report(&error).await;
                None
            }
        }
    }
}

/// Maps the server's edit of the prompt into the document: only an edit inside the prompt's
/// head (the document's own first bytes) can be placed.
pub(super) fn map_imports_edit(
    edit: &hexacoder_api::TextEdit,
    prompt: &Prompt,
    doc: &Document,
) -> Option<DocumentEdit> {
    let prompt_doc = Document::new(prompt.prefix.clone(), 0, String::new());
    let position = |p: hexacoder_api::Position| Position::new(p.line, p.character);
    let start = prompt_doc
        .offset(position(edit.range.start), PositionEncoding::Utf16)
        .ok()?;
    let end = prompt_doc
        .offset(position(edit.range.end), PositionEncoding::Utf16)
        .ok()?;
    if start > end || end > prompt.head_len || end > doc.text().len() {
        tracing::debug!("imports edit outside the prompt head; dropped");
        return None;
    }
    Some(DocumentEdit {
        start,
        end,
        new_text: edit.new_text.clone(),
        before_hash: hash_of(&[&doc.text()[..start]]),
    })
}

pub(super) fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text)
}
