//! What the service is given and what it answers: the result store it writes through, the hooks,
//! its limits, a submission, and what a submit and a cancel give back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flux_types::{BoxFuture, Generation, ValidRequest};

use crate::events::JobEvents;
use crate::job::{JobFailure, JobId, JobResult, Owner, StoredResult};
use crate::store::JobRecord;

/// Turns a finished generation into a stored result (files written, body serialized).
pub trait ResultStore: Send + Sync + 'static {
    /// `started` is when the job was handed to the generator.
    fn store<'a>(
        &'a self,
        request: &'a ValidRequest,
        generation: Generation,
        started: Instant,
    ) -> BoxFuture<'a, Result<StoredResult, JobFailure>>;
}

/// Called once with a job's result, before anyone waiting on the job hears of it; dropped unrun
/// when the job is cancelled.
pub type FinishHook = Box<dyn FnOnce(&JobResult) + Send>;

/// Told of every job's end (after its record says so), e.g. to queue its webhook; and, after a
/// restart, of every completed job whose webhook is still owed (`JobRecord::webhook_owed`).
/// `Ok` says the webhook, if the record asks for one, is queued for good (in the outbox, with
/// [`WebhookDelivery::id_for`](crate::WebhookDelivery::id_for) its job as its id): the mark is
/// then cleared. On `Err` it stays, and the next recovery tells the listener again.
pub type CompletionListener =
    Arc<dyn Fn(&JobRecord) -> Result<(), crate::error::ServiceError> + Send + Sync>;

/// The service's limits.
#[derive(Debug, Clone, Copy)]
pub struct ServiceConfig {
    /// Queued + running jobs at most.
    pub capacity: usize,
    /// How long completed job records are kept.
    pub retention: Duration,
}

/// One job to submit.
pub struct Submission {
    pub request: ValidRequest,
    pub owner: Owner,
    pub model: String,
    /// A job still unfinished this long after its submit fails as timed out.
    pub deadline: Option<Duration>,
    pub on_finish: Option<FinishHook>,
    /// Whether the record outlives the job's end (for the queue API); a sync request's record
    /// is forgotten once its waiter has the result.
    pub keep_record: bool,
    /// Where to POST the job's end.
    pub webhook: Option<String>,
    /// The caller's `Idempotency-Key`, for a deployment that keeps idempotency in its job store
    /// (a fleet, where two API nodes may get the same key at once). This process's service
    /// leaves it to the transport's idempotency store.
    pub idempotency: Option<IdempotencyScope>,
}

/// An `Idempotency-Key` as the transport scopes it (a route prefix), with the digest of the body
/// it came with: the same key with another body is a mismatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyScope {
    pub key: String,
    pub body_digest: [u8; 32],
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("model", &self.model)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// A job accepted.
#[derive(Debug)]
pub struct Submitted {
    pub id: JobId,
    /// Jobs ahead of it when it was accepted.
    pub queue_position: u32,
    pub seed: u64,
    /// Its status changes from the start: waiting on these never misses the end.
    pub events: JobEvents,
    /// Whether this is the job an earlier submit with the same `Idempotency-Key` made.
    pub replayed: bool,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;
