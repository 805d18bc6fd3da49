//! The flux-rs HTTP API: an axum server that fronts any `flux_types::Generator`, and the reqwest
//! client that speaks the same contract (documented in `docs/api.md`).
//!
//! Server: [`ServerConfig`] → [`Server::bind`] → [`Server::run`] (or [`serve`]), with
//! [`router`] for in-process tests. Client: [`FluxClient`].

mod api_error;
mod auth;
mod client;
mod config;
mod error;
mod files;
mod idempotency;
mod listener;
mod metrics;
mod rate_limit;
mod server;

pub use api_error::{ApiErrorResponse, status_for};
pub use client::{FluxClient, FluxClientBuilder};
pub use config::{DEFAULT_MAX_BODY_BYTES, MAX_QUEUE_DEPTH, RateLimit, ServerConfig, load_api_keys};
pub use error::{ClientError, RemoteError};
pub use files::FileDurability;
pub use server::{
    AppState, FILES_PATH, GENERATE_PATH, Server, ShutdownSignals, router, serve, shutdown_signal,
};

/// Installs the global `tracing` subscriber: JSON lines when `json` is true, readable text
/// otherwise; the filter comes from `RUST_LOG` (default `info`).
pub fn init_logging(json: bool) -> Result<(), RemoteError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|error| RemoteError::Logging(error.to_string()))
}
