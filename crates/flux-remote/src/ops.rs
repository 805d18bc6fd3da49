//! The operations endpoints (`/health`, `/ready`, `/metrics`, `/openapi.json`) and the file
//! route (`/api/v1/files/{id}.{ext}`).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api_error::ApiErrorResponse;
use crate::app_state::AppState;
use crate::metrics::Snapshot;
use crate::server::json_response;

/// The committed OpenAPI document, served as is.
const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

pub(crate) async fn health() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        return ApiErrorResponse::shutting_down().into_response();
    }
    // Ready once every model is loaded (and, on a fleet's API node, its job queue reachable).
    if !state.inner.service.is_connected() {
        return ApiErrorResponse::job_store_unavailable().into_response();
    }
    if !state.inner.service.models().all_ready() {
        return ApiErrorResponse::not_ready().into_response();
    }
    if !state.inner.files.is_healthy().await {
        return ApiErrorResponse::storage_unavailable().into_response();
    }
    json_response(StatusCode::OK, br#"{"status":"ready"}"#.to_vec())
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    // Probed (at most once a second) so that a folder that broke while idle shows too.
    let storage_healthy = state.inner.files.is_healthy().await;
    let ready = !state.is_draining()
        && state.inner.service.is_connected()
        && state.inner.service.models().all_ready()
        && storage_healthy;
    let text = state.inner.metrics.render(&Snapshot {
        in_queue: state.in_queue(),
        capacity: state.inner.queue_depth,
        ready,
        storage: state.inner.files.stats(),
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

pub(crate) async fn openapi() -> Response {
    json_response(StatusCode::OK, OPENAPI_JSON.as_bytes().to_vec())
}

pub(crate) async fn serve_file(
    State(state): State<AppState>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Ok(Path(name)) = name else {
        return ApiErrorResponse::not_found().into_response();
    };
    // Only names of the store's own form reach either store.
    let Some(kind) = crate::files::parse_file_name(&name) else {
        return ApiErrorResponse::not_found().into_response();
    };
    let found = match state.inner.service.read_image(&name).await {
        Some(bytes) => Some((bytes.to_vec(), kind)),
        None => state.inner.files.read(&name).await,
    };
    match found {
        Some((bytes, kind)) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(kind.content_type()),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, max-age=3600"),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            bytes,
        )
            .into_response(),
        None => ApiErrorResponse::not_found().into_response(),
    }
}
