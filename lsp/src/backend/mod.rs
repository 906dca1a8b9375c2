//! The language server: its state and the LSP methods, each handed to the module of its
//! concern: `sync` (documents), `pipeline` (completion requests with debouncing,
//! superseding, caching and cancellation), `accept` (the accept command that applies the
//! imports edit, and telemetry), `diagnostics` (findings on accepted code) and `health` (the
//! server-health notices).

mod accept;
mod diagnostics;
mod health;
mod pipeline;
mod sync;

use pipeline::first_line;

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
        self.open_document(params).await;
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        self.change_document(params).await;
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        self.close_document(params).await;
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
