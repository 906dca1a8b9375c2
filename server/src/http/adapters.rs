//! vLLM's runtime LoRA routes: `POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`
//! and `GET /v1/lora_adapters`. Mutation is off unless enabled, needs the admin token
//! (`x-admin-token`, separate from the API key) and may only read under `--adapter-root`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hexacoder_api::{
    self as api, LoadAdapterRequest as LoadRequest, UnloadAdapterRequest as UnloadRequest,
};

use super::AppState;
use super::auth;
use super::error::{ApiError, ApiJson};
use crate::adapter_registry::{RegistryError, confine};

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        let message = err.to_string();
        match err {
            RegistryError::NotFound(_) => {
                ApiError::not_found(message).with_code("adapter_not_found")
            }
            RegistryError::BadName(..) => ApiError::bad_param("lora_name", message),
            RegistryError::Path(_) => {
                ApiError::bad_param("lora_path", message).with_code("bad_adapter_path")
            }
            RegistryError::Limit(_) => ApiError {
                status: StatusCode::CONFLICT,
                ..ApiError::invalid(None, message).with_code("adapter_limit")
            },
            RegistryError::Adapter { .. } => {
                ApiError::bad_param("lora_path", message).with_code("invalid_adapter")
            }
            RegistryError::Engine { .. } => ApiError::internal(message),
        }
    }
}

fn authorize_mutation(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let forbidden = |message: &str| ApiError {
        status: StatusCode::FORBIDDEN,
        kind: "permission_error",
        ..ApiError::invalid(None, message.to_string()).with_code("adapter_mutation_disabled")
    };
    let Some(expected) = &state.admin_token_digest else {
        return Err(forbidden(
            "Loading and unloading adapters at run time is disabled; start the server with --enable-adapter-mutation and --admin-token.",
        ));
    };
    let presented = headers.get("x-admin-token").and_then(|v| v.to_str().ok());
    if auth::matches(presented, expected) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            ..ApiError::invalid(None, "Missing or wrong admin token: send `x-admin-token`.")
                .with_code("invalid_admin_token")
        })
    }
}

pub async fn load(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LoadRequest>,
) -> Result<Response, ApiError> {
    authorize_mutation(&state, &headers)?;
    let root = state.adapter_root.clone().ok_or_else(|| {
        ApiError::bad_param(
            "lora_path",
            "The server has no --adapter-root, so no path is allowed.",
        )
    })?;
    let started = Instant::now();
    let worker = Arc::clone(&state);
    let result = tokio::task::spawn_blocking(move || {
        let dir = confine(&root, &req.lora_path)?;
        worker.adapters.load(&req.lora_name, &dir)
    })
    .await
    .map_err(|e| ApiError::internal(format!("adapter load task failed: {e}")))?;
    let metrics = &state.metrics;
    match result {
        Ok(info) => {
            metrics.lora_loads.with_label_values(&["ok"]).inc();
            metrics
                .lora_load_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(adapter = %info.name, generation = info.generation, "adapter loaded");
            Ok(axum::Json(change(info, "loaded")).into_response())
        }
        Err(err) => {
            metrics.lora_loads.with_label_values(&["error"]).inc();
            Err(err.into())
        }
    }
}

pub async fn unload(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UnloadRequest>,
) -> Result<Response, ApiError> {
    authorize_mutation(&state, &headers)?;
    let info = state.adapters.unload(&req.lora_name)?;
    state.metrics.lora_unloads.inc();
    tracing::info!(adapter = %info.name, generation = info.generation, "adapter unloaded");
    Ok(axum::Json(change(info, "unloaded")).into_response())
}

pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    let list = api::AdapterList {
        data: state.adapters.list(),
        object: "list".into(),
    };
    axum::Json(list).into_response()
}

fn change(adapter: api::AdapterInfo, status: &str) -> api::AdapterChange {
    api::AdapterChange {
        adapter,
        object: "lora_adapter".into(),
        status: status.into(),
    }
}
