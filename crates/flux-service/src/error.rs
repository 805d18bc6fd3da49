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
    /// The `Idempotency-Key` was used before with another request body.
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyMismatch,
    /// The job store cannot be reached now (a fleet's NATS server is down); nothing was done.
    #[error("the job store is unavailable: {0}")]
    Unavailable(String),
    /// The job store failed.
    #[error("job store: {0}")]
    Store(String),
}
