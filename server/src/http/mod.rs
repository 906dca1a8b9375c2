//! The HTTP API: routes, shared state and the middleware every request passes through.
//!
//! Handlers are thin: they validate and translate wire formats into engine requests
//! ([`run::Run`]) and engine events back into wire formats. Everything about batching,
//! admission and cancellation lives in the engine's `Scheduler`.

pub mod adapters;
pub mod auth;
pub mod chat;
pub mod completions;
pub mod error;
pub mod events;
pub mod infill;
pub mod params;
pub mod response;
pub mod run;
pub mod sse;
pub mod tabby;
pub mod two_step;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hexacoder_api as api;
use hexacoder_engine::tokenizer::Tokenizer;
use hexacoder_engine::{Scheduler, SharedAdapter};
use tracing::Instrument;

use crate::adapter_registry::AdapterRegistry;
use crate::chat_template::ChatTemplate;
use crate::metrics::Metrics;
use error::ApiError;

/// The served model, as handlers need it.
pub struct ModelCard {
    /// The name clients send in `model`.
    pub id: String,
    /// Unix time the server loaded it.
    pub created: u64,
    pub context_length: usize,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: ChatTemplate,
    pub has_fim: bool,
}

/// Everything handlers share.
pub struct AppState {
    pub scheduler: Arc<Scheduler>,
    pub model: ModelCard,
    pub metrics: Metrics,
    /// SHA-256 of the API key: comparing digests takes the same time whatever the guess.
    pub api_key_digest: Option<[u8; 32]>,
    pub request_timeout: Option<Duration>,
    pub max_body_bytes: usize,
    pub shutting_down: AtomicBool,
    pub adapters: AdapterRegistry,
    /// SHA-256 of the admin token; `None` while run-time adapter mutation is disabled.
    pub admin_token_digest: Option<[u8; 32]>,
    /// Canonical directory run-time adapter loads must stay inside.
    pub adapter_root: Option<std::path::PathBuf>,
    /// Two-step generation's defaults.
    pub two_step: two_step::TwoStepDefaults,
    /// The security oracle's embedded analyzer, for verify mode.
    pub oracle: Arc<hexacoder_oracle::EmbeddedAnalyzer>,
    /// In-flight requests per adapter, for `lora_requests_info`.
    pub adapter_requests: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
}

impl AppState {
    /// Checks the `model` a client asked for (the base model or an adapter's name).
    pub fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        self.resolve_model(requested, None).map(|_| ())
    }

    /// The adapter a request selects: `model: "<adapter>"` as in vLLM, or the `hexacoder`
    /// extension's `adapter`; `None` for the base model.
    pub fn resolve_model(
        &self,
        model: Option<&str>,
        extension_adapter: Option<&str>,
    ) -> Result<Option<SharedAdapter>, ApiError> {
        let known = || {
            let mut names = vec![self.model.id.clone()];
            names.extend(self.adapters.names());
            names
        };
        let by_model = match model {
            None => None,
            Some(m) if m == self.model.id => None,
            Some(m) => Some(
                self.adapters
                    .get(m)
                    .ok_or_else(|| ApiError::model_not_found(m, &known()))?,
            ),
        };
        match extension_adapter {
            None => Ok(by_model),
            Some(name) => {
                let adapter = self.adapters.get(name).ok_or_else(|| {
                    let mut err = ApiError::model_not_found(name, &known());
                    err.param = Some("hexacoder.adapter".into());
                    err
                })?;
                if by_model.as_ref().is_some_and(|m| m.name() != name) {
                    return Err(ApiError::bad_param(
                        "hexacoder.adapter",
                        "`model` and `hexacoder.adapter` name different adapters.",
                    ));
                }
                Ok(Some(adapter))
            }
        }
    }
}

/// The application with every route and middleware.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions::handle))
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/infill", post(infill::handle))
        .route("/v1/load_lora_adapter", post(adapters::load))
        .route("/v1/unload_lora_adapter", post(adapters::unload))
        .route("/v1/lora_adapters", get(adapters::list))
        .route("/tabby/v1/completions", post(tabby::completions))
        .route("/tabby/v1/health", get(tabby::health).post(tabby::health))
        .route("/v1/hexacoder/events", post(events::record))
        .route("/tabby/v1/events", post(tabby::events))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::authorize,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .with_state(state)
}

/// Gives every request an id (the client's `x-request-id` if sane), a tracing span carrying
/// it, the header on the response, and a count by route and status.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let span = tracing::info_span!("request", %id, %method, route);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.in_scope(
        || tracing::info!(status = status.as_u16(), elapsed = ?started.elapsed(), "response"),
    );
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.scheduler.stats();
    let shutting_down = state.shutting_down.load(Ordering::Relaxed);
    let body = api::Health {
        model: state.model.id.clone(),
        requests_running: stats.running_requests as u64,
        requests_waiting: stats.waiting_requests as u64,
        status: if shutting_down { "shutting_down" } else { "ok" }.into(),
    };
    let status = if state.shutting_down.load(Ordering::Relaxed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let running: Vec<String> = state
        .adapter_requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, _)| name.clone())
        .collect();
    state.metrics.set_adapters(
        state.adapters.list().len(),
        state.adapters.total_bytes(),
        &running,
    );
    let body = state.metrics.render(state.scheduler.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn model_object(state: &AppState) -> api::Model {
    api::Model {
        created: Some(state.model.created),
        hexacoder: Some(api::ModelDetails {
            bytes: None,
            fill_in_the_middle: Some(state.model.has_fim),
            generation: None,
            kind: "base".into(),
            two_step_default: None,
        }),
        id: state.model.id.clone(),
        max_model_len: Some(state.model.context_length as u64),
        object: Some("model".into()),
        owned_by: Some("hexacoder".into()),
        parent: None,
        root: None,
    }
}

fn adapter_objects(state: &AppState) -> Vec<api::Model> {
    state
        .adapters
        .list()
        .into_iter()
        .map(|a| api::Model {
            created: Some(a.created),
            hexacoder: Some(api::ModelDetails {
                bytes: Some(a.bytes),
                fill_in_the_middle: None,
                generation: Some(a.generation),
                kind: "lora".into(),
                two_step_default: Some(a.two_step_default),
            }),
            id: a.name,
            max_model_len: Some(state.model.context_length as u64),
            object: Some("model".into()),
            owned_by: Some("hexacoder".into()),
            parent: Some(state.model.id.clone()),
            root: Some(a.path),
        })
        .collect()
}

async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    let mut data = vec![model_object(&state)];
    data.extend(adapter_objects(&state));
    let list = api::ModelList {
        data,
        object: Some("list".into()),
    };
    axum::Json(list).into_response()
}

async fn get_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == state.model.id {
        return axum::Json(model_object(&state)).into_response();
    }
    match adapter_objects(&state).into_iter().find(|a| a.id == id) {
        Some(adapter) => axum::Json(adapter).into_response(),
        None => state
            .check_model(Some(&id))
            .err()
            .unwrap_or_else(|| ApiError::not_found(format!("no model {id}")))
            .into_response(),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "No route {} {}; see the README for the API.",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: Some("method_not_allowed"),
        ..ApiError::invalid(
            None,
            format!(
                "{} is not allowed on {}.",
                request.method(),
                request.uri().path()
            ),
        )
    }
}
