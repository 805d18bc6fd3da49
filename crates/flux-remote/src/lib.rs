//! The flux-rs HTTP API: an axum server that fronts any `flux_types::Generator`, and the reqwest
//! client that speaks the same contract (documented in `docs/api.md`).
//!
//! Server (feature `server`): `ServerConfig` → `Server::bind` → `Server::run` (or `serve`), with
//! `router` for in-process tests. Client (feature `client`): `FluxClient`. Both are default
//! features; a program that only calls a server takes `default-features = false, features =
//! ["client"]` and links no axum or hyper server.

#[cfg(feature = "server")]
mod api_error;
#[cfg(feature = "server")]
mod app_state;
#[cfg(feature = "server")]
mod auth;
#[cfg(feature = "server")]
mod auth_throttle;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "server")]
mod client_addr;
#[cfg(feature = "client")]
mod client_queue;
#[cfg(feature = "server")]
mod config;
#[cfg(feature = "server")]
mod conn_io;
mod error;
#[cfg(feature = "server")]
mod file_index;
#[cfg(feature = "server")]
mod files;
#[cfg(feature = "server")]
mod half_close;
#[cfg(feature = "server")]
mod http_errors;
#[cfg(feature = "server")]
mod idempotency;
mod ids;
#[cfg(feature = "server")]
mod listener;
#[cfg(feature = "server")]
mod metrics;
#[cfg(feature = "server")]
mod observe;
#[cfg(feature = "server")]
mod ops;
#[cfg(feature = "server")]
mod playground;
#[cfg(feature = "server")]
mod preflight;
#[cfg(feature = "server")]
mod queue_routes;
#[cfg(feature = "server")]
mod rate_limit;
#[cfg(feature = "server")]
mod results;
mod routes;
#[cfg(feature = "server")]
mod served_models;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod serving;
#[cfg(feature = "server")]
mod stores;
mod webhook_sig;
#[cfg(feature = "server")]
mod webhooks;

#[cfg(feature = "server")]
pub use api_error::{ApiErrorResponse, status_for};
#[cfg(feature = "server")]
pub use app_state::AppState;
#[cfg(feature = "client")]
pub use client::{FluxClient, FluxClientBuilder};
#[cfg(feature = "server")]
pub use config::{
    DEFAULT_FILES_QUOTA_BYTES, DEFAULT_MAX_BODY_BYTES, MAX_QUEUE_DEPTH, MIN_API_KEY_CHARS,
    RateLimit, ServerConfig, WebhookConfig, default_data_dir, default_files_dir, load_api_keys,
    load_webhook_secret,
};
pub use error::{ClientError, RemoteError};
#[cfg(feature = "server")]
pub use files::FileDurability;
#[cfg(feature = "server")]
pub use flux_service::{JobService, ServedModels, WebhookQueue};
pub use routes::{FILES_PATH, GENERATE_PATH, QUEUE_PATH, SYNC_PREFIX};
#[cfg(feature = "server")]
pub use server::router;
#[cfg(feature = "server")]
pub use serving::{Server, ShutdownSignals, serve, shutdown_signal};
pub use webhook_sig::{WEBHOOK_TOLERANCE_SECS, WebhookSecret, WebhookVerifyError, verify_webhook};
