//! The crate's one error type, shared by the server (start-up and configuration) and the client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flux_types::ErrorBody;

/// Everything that can go wrong in this crate: configuring or running the server, and client
/// calls. Server start-up errors and client errors share one enum because both are I/O errors at
/// the same HTTP boundary; callers match on the variants they can meet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// A configuration value is unusable (no API keys, a zero limit, a bad URL, ...).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The API key file could not be read.
    #[error("cannot read API key file {path}: {source}")]
    ApiKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The files directory could not be created or used.
    #[error("files directory {path}: {source}")]
    FilesDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The data directory's job database could not be opened or read.
    #[error("data directory {path}: {message}")]
    DataDir { path: PathBuf, message: String },

    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The server stopped with an I/O error.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),

    /// The server answered with a non-2xx status. `body` is the parsed error body when the answer
    /// had one; `raw_body` is always the text received, so nothing is lost when parsing fails.
    #[error("{}", api_error_message(*.status, .body.as_ref(), .raw_body))]
    Api {
        status: u16,
        body: Option<ErrorBody>,
        raw_body: String,
        /// The `Retry-After` hint of a 429/503 answer.
        retry_after: Option<Duration>,
    },

    /// The request could not be sent or the answer could not be received (connection refused or
    /// dropped, DNS, TLS, a timeout).
    #[cfg(feature = "client")]
    #[error("HTTP transport error: {0}")]
    Transport(#[from] reqwest::Error),

    /// The call's total timeout elapsed before an answer (including retries).
    #[error("no answer within the total timeout of {0:?}")]
    Timeout(Duration),

    /// A 2xx answer or a `data:` URI that does not have the documented form.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

/// The client's errors are this crate's errors; the alias reads better at call sites.
pub type ClientError = RemoteError;

impl RemoteError {
    /// The HTTP status of an API error answer, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The parsed error body of an API error answer, if it had one.
    pub fn error_body(&self) -> Option<&ErrorBody> {
        match self {
            RemoteError::Api { body, .. } => body.as_ref(),
            _ => None,
        }
    }
}

fn api_error_message(status: u16, body: Option<&ErrorBody>, raw_body: &str) -> String {
    match body {
        Some(body) => {
            let code = serde_json::to_value(body.error.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            format!(
                "HTTP {status} {code}: {} (request id {})",
                body.error.message, body.request_id
            )
        }
        None => {
            const SHOWN: usize = 200;
            let shown: String = raw_body.chars().take(SHOWN).collect();
            format!("HTTP {status}: {shown}")
        }
    }
}
