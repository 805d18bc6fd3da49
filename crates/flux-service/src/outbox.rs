//! The webhook outbox: deliveries waiting to be made, behind a trait (the one-machine outbox is
//! in memory; a durable one keeps them across restarts). Whoever delivers takes the due ones,
//! tries each, and puts it back with its next attempt time, or removes it.
//!
//! A job has at most one delivery, whose id is derived from the job's id, so queuing it twice
//! (a restart re-creating a delivery whose queuing it did not see acknowledged) never makes a
//! second one with another `webhook-id`: [`Outbox::put_new`] leaves a pending one as it is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;

use crate::error::ServiceError;

/// One webhook delivery: the same `id` (the `webhook-id` header) on every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// `msg_` + the job's id (128 random bits in hex): one job, one `webhook-id`.
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
    /// The delivery of `job`'s end, due now; its id is [`WebhookDelivery::id_for`] `job`.
    pub fn new(job: String, url: String, body: Bytes) -> Self {
        let now = SystemTime::now();
        WebhookDelivery {
            id: Self::id_for(&job),
            job,
            url,
            body,
            attempts: 0,
            created_at: now,
            next_attempt_at: now,
        }
    }

    /// The delivery id (`webhook-id`) of a job's webhook: the same however often it is made.
    pub fn id_for(job: &str) -> String {
        format!("msg_{job}")
    }
}

/// Where pending deliveries wait.
pub trait Outbox: Send + Sync + 'static {
    /// Inserts or replaces (by id).
    fn put(&self, delivery: WebhookDelivery) -> Result<(), ServiceError>;
    /// Inserts unless a delivery with its id is pending (one being retried keeps its attempts
    /// and schedule); returns whether it inserted. Durable before it returns, in a durable
    /// outbox. A key-value store does this with a create-if-absent.
    fn put_new(&self, delivery: WebhookDelivery) -> Result<bool, ServiceError>;
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

    fn put_new(&self, delivery: WebhookDelivery) -> Result<bool, ServiceError> {
        let mut pending = self.lock();
        if pending.contains_key(&delivery.id) {
            return Ok(false);
        }
        pending.insert(delivery.id.clone(), delivery);
        Ok(true)
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

/// A job whose webhook is due, from a queue that keeps deliveries outside this process (a
/// fleet's durable stream): whoever takes it attempts the delivery and settles it.
pub struct QueuedWebhook {
    /// The completed job, its result's URLs resolved.
    pub record: crate::store::JobRecord,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When the delivery was first queued (retries stop a bounded time after it).
    pub queued_at: SystemTime,
    /// The queue's handle on the item (its message), for [`WebhookQueue::settle`].
    pub token: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for QueuedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedWebhook")
            .field("job", &self.record.id)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// How an attempt left a queued webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Delivered, refused for good, or given up: never again.
    Done,
    /// Not accepted: attempt again after this long.
    RetryIn(std::time::Duration),
}

/// Webhook deliveries queued elsewhere, taken one at a time.
pub trait WebhookQueue: Send + Sync + 'static {
    /// The next due delivery (waits for one).
    fn next(&self) -> flux_types::BoxFuture<'_, Result<QueuedWebhook, ServiceError>>;
    /// Records the attempt's outcome.
    fn settle(&self, item: QueuedWebhook, outcome: Settle) -> flux_types::BoxFuture<'_, ()>;
}
