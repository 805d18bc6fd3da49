//! The service's one error type.

/// Why the service refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Queued + running jobs are at the bound; nothing was queued.
    #[error("the generation queue is full")]
    Overloaded,
    /// No such job for this owner (unknown, expired, or someone else's).
    #[error("no such job")]
    NotFound,
    /// A cancel of a job that has already completed.
    #[error("the job has already completed")]
    AlreadyCompleted,
    /// The job store failed.
    #[error("job store: {0}")]
    Store(String),
}
