//! A worker's own HTTP endpoints: `/health` (alive), `/ready` (registered and taking jobs) and
//! `/metrics` (Prometheus text: jobs by outcome, attempts, whether one is running).

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use flux_cluster::WorkerStats;

/// Serves the endpoints on `listener` for the life of the process.
pub async fn serve(listener: tokio::net::TcpListener, stats: WorkerStats) {
    let ready_stats = stats.clone();
    let app = Router::new()
        .route(
            "/health",
            get(|| async { json(StatusCode::OK, r#"{"status":"ok"}"#) }),
        )
        .route(
            "/ready",
            get(move || async move {
                if ready_stats.is_taking_jobs() {
                    json(StatusCode::OK, r#"{"status":"ready"}"#)
                } else {
                    json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"starting"}"#)
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    stats.render_prometheus(),
                )
            }),
        );
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the worker's health endpoint stopped");
    }
}

fn json(status: StatusCode, body: &'static str) -> axum::response::Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
