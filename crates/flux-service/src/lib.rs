//! The flux-rs generation service, with no transport: admission (one bound for queued + running
//! jobs), seeds drawn at submit, job records and their state machine (`IN_QUEUE` → `IN_PROGRESS`
//! → `COMPLETED` succeeded / failed / cancelled), live status events, cancel, and results.
//!
//! HTTP (flux-remote) is a thin layer over [`GenerationService`]: the sync route is a submit and
//! a wait, the queue routes are submit, status, events, result and cancel. Job records live
//! behind [`JobStore`] and results are made durable by a [`ResultStore`], so another deployment
//! (NATS, S3) can replace the one-machine implementations without touching the handlers.
//! [`ServedModels`] is the model registry: one generator per variant, each job run on its
//! variant's. [`RedbStore`] is the durable one-machine store (job records, webhook outbox, idempotency
//! records); [`GenerationService::recover`] queues again, after a restart, what it had accepted,
//! and the webhooks of jobs that ended just before the crash with their delivery not yet queued.

mod clock;
mod error;
mod events;
mod idempotency;
mod job;
mod jobs;
mod models;
mod outbox;
mod queue_eta;
mod redb_store;
mod service;
mod store;

pub use clock::rfc3339_millis;
pub use error::ServiceError;
pub use events::{JobEvents, StatusStream};
pub use idempotency::{IdempotencyLog, IdempotencyRecord};
pub use job::{JobFailure, JobId, JobResult, JobState, JobStatus, Owner, StoredResult};
pub use jobs::JobService;
pub use models::{Listed, ModelLookup, ServedModels};
pub use outbox::{MemoryOutbox, Outbox, QueuedWebhook, Settle, WebhookDelivery, WebhookQueue};
pub use queue_eta::{Place, QueueClock};
pub use redb_store::{DATABASE_FILE, RedbStore};
pub use redb_store::{decode_job_record, encode_job_record};
pub use service::{
    Cancelled, CompletionListener, FinishHook, GenerationService, IdempotencyScope, ResultStore,
    ServiceConfig, Submission, Submitted,
};
pub use store::{JobRecord, JobStore, MemoryJobStore};
