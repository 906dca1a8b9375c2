//! The language server: document sync, completion requests with debouncing, superseding,
//! caching and cancellation, the accept command that applies the imports edit, telemetry, and
//! the server-health notices.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hexacoder_imports::Language;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tower_lsp_server::jsonrpc::{Error as RpcError, Result as RpcResult};
use tower_lsp_server::{Client, LanguageServer};

use crate::client::{ClientError, Completion, CompletionQuery, ServerClient};
use crate::config::Settings;
use crate::document::{Document, PositionEncoding};
use crate::findings::{self, Flagged};
use crate::lsp_types::*;
use crate::suggestion::{Prompt, build_prompt, clean_completion};

/// The command an accepted inline item runs: applies its imports edit, reports the accept.
pub const ACCEPT_COMMAND: &str = "hexacoder.accept";
/// Suggestions remembered per prompt.
const CACHE_ENTRIES: usize = 64;
/// Issued suggestions remembered for their accept command and telemetry.
const ISSUED_ENTRIES: usize = 256;
/// Keystroke gaps longer than this are pauses, not typing speed.
const TYPING_GAP_LIMIT: Duration = Duration::from_millis(1000);
/// The pause before the first probe of a server that went down; it doubles up to the next.
const RECOVERY_FIRST_PAUSE: Duration = Duration::from_secs(1);
const RECOVERY_LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// `hexacoder/status`: the bridge's state, for a status bar.
pub enum StatusNotification {}

impl Notification for StatusNotification {
    type Params = serde_json::Value;
    const METHOD: LspNotificationMethod<'static> =
        LspNotificationMethod::Custom("hexacoder/status");
    const MESSAGE_DIRECTION: MessageDirection = MessageDirection::ServerToClient;
}

/// Parameters of the `hexacoder/did*Completion` notifications.
#[derive(Debug, Deserialize)]
pub struct CompletionEventParams {
    /// The id in the item's command arguments (or `data` of a popup item).
    pub id: String,
}

/// A suggestion ready for the editor, in document coordinates.
#[derive(Clone, Debug)]
struct Suggestion {
    text: String,
    completion: Arc<Completion>,
    /// The imports edit mapped into the document, if it lies in the prompt's head.
    imports_edit: Option<DocumentEdit>,
}

#[derive(Clone, Debug)]
struct DocumentEdit {
    /// Byte range in the document at request time.
    start: usize,
    end: usize,
    new_text: String,
    /// A hash of the document's text before `start`, to check it is still where it was.
    before_hash: u64,
}

/// What the accept command and telemetry need to know about a suggestion.
#[derive(Clone, Debug)]
struct Issued {
    uri: Uri,
    kind: &'static str,
    completion: Arc<Completion>,
    imports_edit: Option<DocumentEdit>,
    accepted: bool,
    /// The text the editor inserts, and the byte offset of the cursor it goes at.
    inserted: String,
    cursor: usize,
}

struct OpenDocument {
    doc: Document,
    /// Bumped by every change and every completion request; a request whose number is no
    /// longer current has been superseded.
    generation: watch::Sender<u64>,
    last_change: Option<Instant>,
    /// Moving average of the gap between keystrokes.
    typing_gap: Option<Duration>,
    /// The last suggestion for this document, for type-ahead.
    last: Option<(String, String, Suggestion)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Unknown,
    Up,
    Down,
}

struct State {
    settings: RwLock<Settings>,
    encoding: RwLock<PositionEncoding>,
    documents: Mutex<HashMap<Uri, OpenDocument>>,
    server: ServerClient,
    cache: Mutex<lru::LruCache<u64, Suggestion>>,
    issued: Mutex<lru::LruCache<String, Issued>>,
    health: Mutex<Health>,
    /// Counts the server's outages, so that one recovery task runs per outage.
    outages: AtomicU64,
    /// The server's first model, when the settings name none.
    default_model: Mutex<Option<String>>,
    /// The oracle's findings on accepted suggestions, per document.
    flagged: Mutex<HashMap<Uri, Vec<Flagged>>>,
}

/// The LSP backend.
#[derive(Clone)]
pub struct Backend {
    client: Client,
    state: Arc<State>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take completion down with it.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn hash_of(parts: &[&str]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// Where and how one request completes.
struct Request {
    uri: Uri,
    prompt: Prompt,
    language_id: String,
    cursor: Position,
    /// The start of the word being typed, for popup items.
    word_start: Position,
    word: String,
    generation: u64,
    superseded: watch::Receiver<u64>,
    /// The text after the cursor, to trim repetitions.
    after_cursor: String,
    /// A snapshot for mapping the imports edit.
    doc: Document,
    /// The cursor line's indentation; 0 when the line is blank.
    indent: usize,
}

impl Backend {
    /// A backend that talks to the editor through `client`.
    pub fn new(client: Client) -> Self {
        let cache = NonZeroUsize::new(CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        let issued = NonZeroUsize::new(ISSUED_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Backend {
            client,
            state: Arc::new(State {
                settings: RwLock::new(Settings::default()),
                encoding: RwLock::new(PositionEncoding::Utf16),
                documents: Mutex::new(HashMap::new()),
                server: ServerClient::new(),
                cache: Mutex::new(lru::LruCache::new(cache)),
                issued: Mutex::new(lru::LruCache::new(issued)),
                health: Mutex::new(Health::Unknown),
                outages: AtomicU64::new(0),
                default_model: Mutex::new(None),
                flagged: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn settings(&self) -> Settings {
        self.state
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn encoding(&self) -> PositionEncoding {
        *self
            .state
            .encoding
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn set_settings(&self, settings: Settings) {
        tracing::info!(?settings, "settings");
        *self
            .state
            .settings
            .write()
            .unwrap_or_else(|e| e.into_inner()) = settings;
        *lock(&self.state.default_model) = None;
        lock(&self.state.cache).clear();
        // The server may be another one now; the next probe or request tells.
        *lock(&self.state.health) = Health::Unknown;
    }

    /// Asks the server for its models in the background, so that the status bar says "ready"
    /// or "disconnected" when the editor starts or the settings change, not at the first
    /// completion, and a configured model the server does not serve is named at once.
    fn probe_server(&self) {
        let backend = self.clone();
        tokio::spawn(async move {
            if let Err(error) = backend.probe().await {
                backend.report(&error).await;
            }
        });
    }

    /// One probe: on an answer, notes the server as up, remembers its first model when the
    /// settings name none, and warns when the configured model is not among its models.
    async fn probe(&self) -> Result<(), ClientError> {
        let settings = self.settings();
        let models = self.state.server.models(&settings).await;
        if self.settings() != settings {
            // Superseded by a settings change, which probes again.
            return Ok(());
        }
        let models = models?;
        match &settings.model {
            Some(model) if !models.contains(model) => {
                let message = format!(
                    "HexaCoder: the server at {} does not serve the model {model:?}; it serves {}",
                    settings.base_url(),
                    models.join(", ")
                );
                tracing::warn!(%message, "unknown model");
                self.client
                    .show_message(MessageType::Warning, message)
                    .await;
            }
            Some(_) => {}
            None => *lock(&self.state.default_model) = models.into_iter().next(),
        }
        self.server_is(Health::Up, None).await;
        Ok(())
    }

    /// While the server is down, probes it with growing pauses, so that the status bar turns
    /// ready when it comes back even if nobody types. Stops once the health has moved on (a
    /// probe or a completion got an answer, or the settings changed, which probes anew) or a
    /// later outage has its own task.
    fn watch_for_recovery(&self) {
        let backend = self.clone();
        let outage = self.state.outages.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            let mut pause = RECOVERY_FIRST_PAUSE;
            loop {
                tokio::time::sleep(pause).await;
                if *lock(&backend.state.health) != Health::Down
                    || backend.state.outages.load(Ordering::Relaxed) != outage
                {
                    return;
                }
                match backend.probe().await {
                    Ok(()) => return,
                    Err(error) if error.is_outage() => {
                        pause = (pause * 2).min(RECOVERY_LONGEST_PAUSE);
                    }
                    // Reachable, but refusing (a bad key, say): up, and the refusal reported.
                    Err(error) => {
                        backend.server_is(Health::Up, None).await;
                        backend.report(&error).await;
                        return;
                    }
                }
            }
        });
    }

    /// Snapshots what a request needs, synchronously, so that it sees every change the client
    /// sent before it, and supersedes older requests for the document.
    fn begin(&self, uri: &Uri, position: Position) -> Option<(Request, Duration)> {
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

    fn is_current(&self, request: &Request) -> bool {
        *request.superseded.borrow() == request.generation
    }

    /// The suggestion for `request`: from type-ahead, the cache, or the server. `None` when
    /// there is none, the request was superseded, or the server failed (reported separately).
    async fn suggest(
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
    fn type_ahead(&self, request: &Request) -> Option<Suggestion> {
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
    async fn model(&self, settings: &Settings) -> Option<String> {
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

    async fn report(&self, error: &ClientError) {
        if error.is_outage() {
            self.server_is(Health::Down, Some(error.to_string())).await;
        } else {
            // A refused request (bad model name, prompt too long): say so once per message.
            tracing::warn!(%error, "completion failed");
            self.client
                .log_message(MessageType::Warning, format!("HexaCoder: {error}"))
                .await;
        }
    }

    /// Notes the server's health; a change is logged once and shown in the status bar.
    async fn server_is(&self, health: Health, reason: Option<String>) {
        let previous = std::mem::replace(&mut *lock(&self.state.health), health);
        if previous == health {
            return;
        }
        let settings = self.settings();
        match health {
            Health::Down => {
                let reason = reason.unwrap_or_default();
                tracing::warn!(%reason, "server unavailable");
                self.client
                    .log_message(MessageType::Error, format!("HexaCoder: {reason}"))
                    .await;
                self.client
                    .show_message(
                        MessageType::Warning,
                        format!(
                            "HexaCoder: no completions while the server at {} is unavailable",
                            settings.base_url()
                        ),
                    )
                    .await;
                self.send_status("disconnected", Some(reason)).await;
                self.watch_for_recovery();
            }
            Health::Up => {
                if previous == Health::Down {
                    self.client
                        .log_message(MessageType::Info, "HexaCoder: server reachable again")
                        .await;
                }
                self.send_status("ready", None).await;
            }
            Health::Unknown => {}
        }
    }

    async fn send_status(&self, state: &str, message: Option<String>) {
        let settings = self.settings();
        self.client
            .send_notification::<StatusNotification>(json!({
                "state": state,
                "message": message,
                "serverUrl": settings.base_url(),
                "model": settings.model,
                "twoStep": settings.two_step,
            }))
            .await;
    }

    fn issue(&self, request: &Request, suggestion: &Suggestion, kind: &'static str) -> String {
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

    /// Publishes the oracle's findings on an accepted suggestion (verify mode), found where
    /// the editor inserted it.
    async fn flag_accepted(&self, issued: &Issued) {
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

    fn lsp_edit(&self, doc: &Document, edit: &DocumentEdit) -> TextEdit {
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
    fn forward_event(&self, event: &'static str, id: &str) {
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
    async fn accept(&self, id: &str) -> RpcResult<()> {
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

/// Maps the server's edit of the prompt into the document: only an edit inside the prompt's
/// head (the document's own first bytes) can be placed.
fn map_imports_edit(
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

fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text)
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> RpcResult<InitializeResult> {
        if let Some(options) = &params.initialization_options {
            let settings = Settings::from_json(options)
                .map_err(|e| RpcError::invalid_params(e.to_string()))?;
            self.set_settings(settings);
        }
        let offered = params
            .capabilities
            .general
            .as_ref()
            .and_then(|g| g.position_encodings.clone())
            .unwrap_or_default();
        // The client lists encodings in order of preference; UTF-16 is the fallback.
        let encoding = offered
            .iter()
            .find_map(|kind| PositionEncoding::from_name(&String::from(kind.clone())))
            .unwrap_or_default();
        *self
            .state
            .encoding
            .write()
            .unwrap_or_else(|e| e.into_inner()) = encoding;
        Ok(InitializeResult {
            capabilities: ServerCapabilities {
                position_encoding: Some(PositionEncodingKind::from(encoding.as_str())),
                text_document_sync: Some(TextDocumentSync::Options(TextDocumentSyncOptions {
                    open_close: Some(true),
                    change: Some(TextDocumentSyncKind::Incremental),
                    ..TextDocumentSyncOptions::default()
                })),
                completion_provider: Some(CompletionOptions::default()),
                inline_completion_provider: Some(InlineCompletionProvider::Bool(true)),
                execute_command_provider: Some(ExecuteCommandOptions {
                    commands: vec![ACCEPT_COMMAND.to_string()],
                    ..ExecuteCommandOptions::default()
                }),
                ..ServerCapabilities::default()
            },
            server_info: Some(ServerInfo {
                name: "hexacoder-lsp".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        self.send_status("starting", None).await;
        self.probe_server();
    }

    async fn shutdown(&self) -> RpcResult<()> {
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
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

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
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

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        let uri = params.text_document.uri;
        lock(&self.state.documents).remove(&uri);
        if lock(&self.state.flagged).remove(&uri).is_some() {
            self.client.publish_diagnostics(uri, Vec::new(), None).await;
        }
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        let settings = if params.settings.is_null()
            || params.settings.as_object().is_some_and(|o| o.is_empty())
        {
            // Pull-style clients send an empty notification; ask for the section.
            let items = vec![ConfigurationItem {
                scope_uri: None,
                section: Some("hexacoder".into()),
            }];
            match self.client.configuration(items).await {
                Ok(mut values) if !values.is_empty() => values.swap_remove(0),
                _ => return,
            }
        } else {
            params.settings
        };
        match Settings::from_json(&settings) {
            Ok(settings) => {
                self.set_settings(settings);
                self.send_status("configured", None).await;
                self.probe_server();
            }
            Err(error) => {
                self.client
                    .show_message(MessageType::Error, format!("HexaCoder: {error}"))
                    .await;
            }
        }
    }

    async fn inline_completion(
        &self,
        params: InlineCompletionParams,
    ) -> RpcResult<Option<InlineCompletionResponse>> {
        let position = params.text_document_position_params;
        let Some((mut request, debounce)) =
            self.begin(&position.text_document.uri, position.position)
        else {
            return Ok(None);
        };
        let debounce = match params.context.trigger_kind {
            InlineCompletionTriggerKind::Automatic => Some(debounce),
            _ => None,
        };
        let Some(suggestion) = self.suggest(&mut request, debounce).await else {
            return Ok(None);
        };
        if suggestion.text.is_empty() {
            return Ok(Some(InlineCompletionResponse::InlineCompletionList(
                InlineCompletionList { items: vec![] },
            )));
        }
        let id = self.issue(&request, &suggestion, "inline");
        let item = InlineCompletionItem {
            insert_text: InsertText::String(suggestion.text.clone()),
            filter_text: None,
            range: Some(Range {
                start: request.cursor,
                end: request.cursor,
            }),
            command: Some(Command {
                title: "Accept HexaCoder suggestion".into(),
                command: ACCEPT_COMMAND.into(),
                arguments: Some(vec![json!({
                    "id": id,
                    "addedImports": suggestion.completion.added_imports,
                })]),
                ..Command::default()
            }),
        };
        Ok(Some(InlineCompletionResponse::InlineCompletionList(
            InlineCompletionList { items: vec![item] },
        )))
    }

    async fn completion(&self, params: CompletionParams) -> RpcResult<Option<CompletionResponse>> {
        let position = params.text_document_position_params;
        let Some((mut request, debounce)) =
            self.begin(&position.text_document.uri, position.position)
        else {
            return Ok(None);
        };
        let invoked = params
            .context
            .as_ref()
            .is_none_or(|c| c.trigger_kind == CompletionTriggerKind::Invoked);
        let debounce = (!invoked).then_some(debounce);
        let Some(suggestion) = self.suggest(&mut request, debounce).await else {
            return Ok(None);
        };
        if suggestion.text.is_empty() {
            return Ok(Some(CompletionResponse::CompletionList(CompletionList {
                is_incomplete: true,
                items: vec![],
                ..CompletionList::default()
            })));
        }
        let id = self.issue(&request, &suggestion, "popup");
        let additional = suggestion
            .imports_edit
            .as_ref()
            .map(|edit| vec![self.lsp_edit(&request.doc, edit)]);
        let new_text = format!("{}{}", request.word, suggestion.text);
        let mut detail = "HexaCoder".to_string();
        if !suggestion.completion.added_imports.is_empty() {
            detail = format!(
                "HexaCoder (+ {})",
                suggestion.completion.added_imports.join("; ")
            );
        }
        let label: String = first_line(&new_text).trim().chars().take(80).collect();
        let item = CompletionItem {
            label,
            kind: Some(CompletionItemKind::Snippet),
            detail: Some(detail),
            documentation: Some(Documentation::MarkupContent(MarkupContent {
                kind: MarkupKind::Markdown,
                value: format!("```{}\n{}\n```", request.language_id, new_text),
            })),
            preselect: Some(true),
            sort_text: Some("0".into()),
            filter_text: Some(new_text.clone()),
            insert_text_format: Some(InsertTextFormat::PlainText),
            // Multi-line text keeps its own indentation.
            insert_text_mode: Some(InsertTextMode::AsIs),
            text_edit: Some(CompletionItemTextEdit::TextEdit(TextEdit {
                range: Range {
                    start: request.word_start,
                    end: request.cursor,
                },
                new_text,
            })),
            additional_text_edits: additional,
            command: Some(Command {
                title: "HexaCoder suggestion accepted".into(),
                command: ACCEPT_COMMAND.into(),
                arguments: Some(vec![json!({"id": id})]),
                ..Command::default()
            }),
            data: Some(json!({"id": id})),
            ..CompletionItem::default()
        };
        Ok(Some(CompletionResponse::CompletionList(CompletionList {
            is_incomplete: true,
            items: vec![item],
            ..CompletionList::default()
        })))
    }

    async fn execute_command(
        &self,
        params: ExecuteCommandParams,
    ) -> RpcResult<Option<serde_json::Value>> {
        if params.command != ACCEPT_COMMAND {
            return Err(RpcError::invalid_params(format!(
                "unknown command {:?}; this server has {ACCEPT_COMMAND:?}",
                params.command
            )));
        }
        let id = params
            .arguments
            .as_ref()
            .and_then(|args| args.first())
            .and_then(|arg| arg["id"].as_str())
            .ok_or_else(|| {
                RpcError::invalid_params(format!("{ACCEPT_COMMAND} takes [{{\"id\": \"…\"}}]"))
            })?
            .to_string();
        self.accept(&id).await?;
        Ok(None)
    }
}
