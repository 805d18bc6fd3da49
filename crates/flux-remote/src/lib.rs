//! The flux-rs HTTP API: an axum server that fronts any `flux_types::Generator`, and the reqwest
//! client that speaks the same contract (documented in `docs/api.md`).
//!
//! Server: [`ServerConfig`] → [`Server::bind`] → [`Server::run`] (or [`serve`]), with
//! [`router`] for in-process tests. Client: [`FluxClient`].

mod api_error;
mod auth;
mod auth_throttle;
mod client;
mod client_addr;
mod client_queue;
mod config;
mod conn_io;
mod error;
mod file_index;
mod files;
mod half_close;
mod http_errors;
mod idempotency;
mod listener;
mod metrics;
mod observe;
mod preflight;
mod queue_routes;
mod rate_limit;
mod results;
mod server;
mod webhook_sig;
mod webhooks;

pub use api_error::{ApiErrorResponse, status_for};
pub use client::{FluxClient, FluxClientBuilder};
pub use config::{
    DEFAULT_FILES_QUOTA_BYTES, DEFAULT_MAX_BODY_BYTES, MAX_QUEUE_DEPTH, MIN_API_KEY_CHARS,
    RateLimit, ServerConfig, WebhookConfig, default_files_dir, load_api_keys, load_webhook_secret,
};
pub use error::{ClientError, RemoteError};
pub use files::FileDurability;
pub use queue_routes::QUEUE_PATH;
pub use server::{
    AppState, FILES_PATH, GENERATE_PATH, Server, ShutdownSignals, router, serve, shutdown_signal,
};
pub use webhook_sig::{WEBHOOK_TOLERANCE_SECS, WebhookSecret, WebhookVerifyError, verify_webhook};

/// Installs the global `tracing` subscriber on stderr (stdout is left to what scripts read):
/// JSON lines when `json` is true, readable text otherwise. The filter is `RUST_LOG` when it is
/// set and valid, at any level (`debug`, `trace`, `flux_remote=debug`, ...), else `default`.
pub fn init_logging(json: bool, default: &str) -> Result<(), RemoteError> {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref(), default);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
    result.map_err(|error| RemoteError::Logging(error.to_string()))
}

/// The log filter: `rust_log` (the value of `RUST_LOG`) when given and valid, else `default`.
pub fn log_filter(rust_log: Option<&str>, default: &str) -> tracing_subscriber::EnvFilter {
    rust_log
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| tracing_subscriber::EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default))
}
