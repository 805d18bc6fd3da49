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
mod queue_eta;
mod rate_limit;
mod server;

pub use api_error::{ApiErrorResponse, status_for};
pub use client::{FluxClient, FluxClientBuilder};
pub use config::{
    DEFAULT_FILES_QUOTA_BYTES, DEFAULT_MAX_BODY_BYTES, MAX_QUEUE_DEPTH, MIN_API_KEY_CHARS,
    RateLimit, ServerConfig, default_files_dir, load_api_keys,
};
pub use error::{ClientError, RemoteError};
pub use files::FileDurability;
pub use server::{
    AppState, FILES_PATH, GENERATE_PATH, Server, ShutdownSignals, router, serve, shutdown_signal,
};
