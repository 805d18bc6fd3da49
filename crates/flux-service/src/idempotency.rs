//! Finished idempotency records behind a trait, so that a durable store keeps them across a
//! restart. The transport keeps the live table (who is running, memory caps) and writes each
//! finished answer through to an [`IdempotencyLog`] when it has one.

use std::time::SystemTime;

use bytes::Bytes;

use crate::error::ServiceError;

/// One finished answer to a request that carried an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The caller's digest (as [`Owner`](crate::Owner) holds it).
    pub caller: [u8; 32],
    /// The key as the transport scopes it (e.g. with a route prefix).
    pub key: String,
    /// SHA-256 of the request body: the same key with another body is a mismatch.
    pub body_digest: [u8; 32],
    /// The stored answer.
    pub body: Bytes,
    /// When the answer's files began to be written: the record expires with them.
    pub files_written_at: SystemTime,
}

/// Where finished idempotency records survive the process.
pub trait IdempotencyLog: Send + Sync + 'static {
    /// Inserts or replaces the record of `(caller, key)`.
    fn put(&self, record: &IdempotencyRecord) -> Result<(), ServiceError>;
    fn remove(&self, caller: &[u8; 32], key: &str) -> Result<(), ServiceError>;
    /// Every record kept, for a restart.
    fn all(&self) -> Result<Vec<IdempotencyRecord>, ServiceError>;
}
