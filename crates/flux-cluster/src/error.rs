//! The one error type of the cluster crate.

/// What can go wrong talking to NATS, the image store, or the processes the tests start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// NATS refused or could not be reached.
    #[error("NATS {operation}: {message}")]
    Nats {
        operation: &'static str,
        message: String,
    },
    /// A stored record or message could not be read.
    #[error("cannot decode {what}: {message}")]
    Decode { what: &'static str, message: String },
    /// The image store failed.
    #[error("image store: {0}")]
    Images(String),
    /// This process's fleet settings differ from the fleet's.
    #[error("fleet settings: {0}")]
    Settings(String),
    /// A server binary could not be provisioned or started.
    #[error("{server}: {message}")]
    Server {
        server: &'static str,
        message: String,
    },
}

impl ClusterError {
    pub(crate) fn nats(operation: &'static str, error: impl std::fmt::Display) -> Self {
        ClusterError::Nats {
            operation,
            message: error.to_string(),
        }
    }
}
