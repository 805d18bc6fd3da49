//! The webhook outbox: deliveries waiting to be made, behind a trait (the one-machine outbox is
//! in memory; a durable one keeps them across restarts). Whoever delivers takes the due ones,
//! tries each, and puts it back with its next attempt time, or removes it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;

use crate::error::ServiceError;

/// One webhook delivery: the same `id` (the `webhook-id` header) on every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// `msg_` + 128 random bits in hex.
    pub id: String,
    pub job: String,
    pub url: String,
    /// The JSON body, signed afresh on every attempt (the timestamp changes).
    pub body: Bytes,
    /// Attempts made so far.
    pub attempts: u32,
    pub created_at: SystemTime,
    pub next_attempt_at: SystemTime,
}

impl WebhookDelivery {
    pub fn new(job: String, url: String, body: Bytes) -> Self {
        let bits: u128 = rand::random();
        let now = SystemTime::now();
        WebhookDelivery {
            id: format!("msg_{bits:032x}"),
            job,
            url,
            body,
            attempts: 0,
            created_at: now,
            next_attempt_at: now,
        }
    }
}

/// Where pending deliveries wait.
pub trait Outbox: Send + Sync + 'static {
    /// Inserts or replaces (by id).
    fn put(&self, delivery: WebhookDelivery) -> Result<(), ServiceError>;
    /// Deliveries whose next attempt is due at `now`.
    fn due(&self, now: SystemTime) -> Result<Vec<WebhookDelivery>, ServiceError>;
    /// The earliest next attempt of any pending delivery.
    fn next_due(&self) -> Result<Option<SystemTime>, ServiceError>;
    fn remove(&self, id: &str) -> Result<(), ServiceError>;
}

/// Pending deliveries in memory: lost with the process.
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    pending: Mutex<HashMap<String, WebhookDelivery>>,
}

impl MemoryOutbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WebhookDelivery>> {
        // Single map operations only: a panic leaves it consistent.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Outbox for MemoryOutbox {
    fn put(&self, delivery: WebhookDelivery) -> Result<(), ServiceError> {
        self.lock().insert(delivery.id.clone(), delivery);
        Ok(())
    }

    fn due(&self, now: SystemTime) -> Result<Vec<WebhookDelivery>, ServiceError> {
        Ok(self
            .lock()
            .values()
            .filter(|delivery| delivery.next_attempt_at <= now)
            .cloned()
            .collect())
    }

    fn next_due(&self) -> Result<Option<SystemTime>, ServiceError> {
        Ok(self
            .lock()
            .values()
            .map(|delivery| delivery.next_attempt_at)
            .min())
    }

    fn remove(&self, id: &str) -> Result<(), ServiceError> {
        self.lock().remove(id);
        Ok(())
    }
}
