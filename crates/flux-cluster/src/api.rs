//! [`FleetJobs`]: the job service of a stateless API node. A submit writes the job's record
//! (create-only: the id of an idempotent submit is derived from its key, so two nodes given the
//! same key make one job) and publishes its message (with the job id as `Nats-Msg-Id`); status,
//! events, results and cancel read and change the record, so any node answers any job.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use flux_service::{
    Cancelled, JobEvents, JobId, JobRecord, JobResult, JobService, JobState, JobStatus, Owner,
    ServedModels, ServiceError, Submission, Submitted,
};
use flux_types::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::error::ClusterError;
use crate::fleet::{Fleet, job_subject};
use crate::images::ImageStore;
use crate::record::{FleetRecord, log_line};
use crate::records::{Changed, Records};
use crate::registry::ModelRegistry;
use crate::resolve::resolve_record;
use crate::watch::follow_job;

/// The NATS error code of a publish refused by a full stream (`max_messages`, discard new).
const STREAM_FULL: u64 = 10077;

/// One model's queue, as an API node uses it.
#[derive(Clone)]
pub(crate) struct ModelQueue {
    pub(crate) stream: stream::Stream,
    pub(crate) consumer: consumer::Consumer<consumer::pull::Config>,
}

pub(crate) struct Inner {
    pub(crate) fleet: Fleet,
    pub(crate) records: Records,
    pub(crate) registry: ModelRegistry,
    pub(crate) images: Arc<dyn ImageStore>,
    pub(crate) public_base_url: std::sync::RwLock<String>,
    pub(crate) client: async_nats::Client,
    queues: Mutex<HashMap<String, ModelQueue>>,
}

/// The job service of an API node over a fleet. Cheap to clone.
#[derive(Clone)]
pub struct FleetJobs {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for FleetJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetJobs")
            .field("images", &self.inner.images.describe())
            .finish_non_exhaustive()
    }
}

fn unavailable(error: ClusterError) -> ServiceError {
    ServiceError::Unavailable(error.to_string())
}

/// The id of an idempotent submit: the same caller and key give the same job on every node.
fn derived_id(owner: Owner, key: &str) -> Option<JobId> {
    let mut digest = Sha256::new();
    digest.update(b"flux-rs idempotent job\0");
    digest.update(owner.0);
    digest.update(key.as_bytes());
    let hash = digest.finalize();
    let hex: String = hash[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    JobId::parse(&hex)
}

fn random_id() -> Option<JobId> {
    let bits: u128 = rand::random();
    JobId::parse(&format!("{bits:032x}"))
}

impl FleetJobs {
    /// The service of an API node on `client`'s fleet; image URLs are built on `public_base_url`.
    pub async fn open(
        client: async_nats::Client,
        fleet: Fleet,
        images: Arc<dyn ImageStore>,
        public_base_url: String,
    ) -> Result<FleetJobs, ClusterError> {
        let registry = ModelRegistry::follow(fleet.models.clone()).await?;
        Ok(FleetJobs {
            inner: Arc::new(Inner {
                records: Records::new(fleet.jobs.clone()),
                fleet,
                registry,
                images,
                public_base_url: std::sync::RwLock::new(
                    public_base_url.trim_end_matches('/').to_owned(),
                ),
                client,
                queues: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub(crate) async fn queue(&self, model: &str) -> Result<ModelQueue, ClusterError> {
        let mut queues = self.inner.queues.lock().await;
        if let Some(queue) = queues.get(model) {
            return Ok(queue.clone());
        }
        let (stream, consumer) = self.inner.fleet.model_queue(model).await?;
        let queue = ModelQueue { stream, consumer };
        queues.insert(model.to_owned(), queue.clone());
        Ok(queue)
    }

    /// Jobs ahead of a queued one: messages not yet delivered with a lower stream sequence (an
    /// estimate: a cancelled job's message deleted in between still counts until it goes).
    pub(crate) async fn position(&self, record: &JobRecord) -> Option<u32> {
        if !matches!(record.state, JobState::Queued) {
            return None;
        }
        let queue = self.queue(&record.model).await.ok()?;
        let message = queue
            .stream
            .direct_get_last_for_subject(job_subject(&record.model, record.id.as_str()))
            .await
            .ok()?;
        self.position_at(&record.model, message.sequence).await
    }

    /// The place in `model`'s queue of the message at stream `sequence`: the messages before it
    /// that no worker has taken yet.
    async fn position_at(&self, model: &str, sequence: u64) -> Option<u32> {
        let queue = self.queue(model).await.ok()?;
        let mut consumer = queue.consumer.clone();
        let info = consumer.info().await.ok()?;
        let delivered = info.delivered.stream_sequence;
        let ahead = sequence.saturating_sub(delivered).saturating_sub(1);
        Some(u32::try_from(ahead.min(info.num_pending)).unwrap_or(u32::MAX))
    }

    pub(crate) async fn status_of(&self, record: &FleetRecord) -> JobStatus {
        JobStatus {
            id: record.job.id.clone(),
            queue_position: self.position(&record.job).await,
            state: record.job.state.clone(),
            logs: record.job.logs.clone(),
        }
    }

    async fn owned(&self, id: &JobId, owner: Owner) -> Result<FleetRecord, ServiceError> {
        match self
            .inner
            .records
            .get(id.as_str())
            .await
            .map_err(unavailable)?
        {
            Some((record, _)) if record.job.owner == owner => Ok(record),
            _ => Err(ServiceError::NotFound),
        }
    }

    /// A record with its result's image references resolved for clients.
    pub(crate) async fn resolved(&self, mut record: FleetRecord) -> FleetRecord {
        resolve_record(&self.inner, &mut record.job).await;
        record
    }

    async fn submit_job(&self, submission: Submission) -> Result<Submitted, ServiceError> {
        let Submission {
            request,
            owner,
            model,
            on_finish,
            keep_record: _,
            webhook,
            idempotency,
            deadline,
        } = submission;
        let request = request.with_drawn_seed();
        let seed = request.seed().unwrap_or_default();
        let id = match &idempotency {
            Some(scope) => derived_id(owner, &scope.key),
            None => random_id(),
        }
        .ok_or_else(|| ServiceError::Store("cannot make a job id".to_owned()))?;
        let now = SystemTime::now();
        let job = JobRecord {
            id: id.clone(),
            owner,
            model: model.clone(),
            request,
            state: JobState::Queued,
            logs: vec![log_line("accepted")],
            webhook_owed: webhook.is_some(),
            webhook,
            submitted_at: now,
            completed_at: None,
            // A fleet keeps every record until the bucket's max_age: any node may be asked.
            keep_record: true,
        };
        let mut record = FleetRecord::new(job, idempotency.as_ref().map(|scope| scope.body_digest));
        record.time_limit = deadline;
        let created = self
            .inner
            .records
            .create(&record)
            .await
            .map_err(unavailable)?;
        if created.is_none() {
            // An earlier submit with this key made the job (on this node or another).
            let (existing, _) = self
                .inner
                .records
                .get(id.as_str())
                .await
                .map_err(unavailable)?
                .ok_or(ServiceError::NotFound)?;
            if existing.job.owner != owner || existing.body_digest != record.body_digest {
                return Err(ServiceError::IdempotencyMismatch);
            }
            let seed = existing.job.request.seed().unwrap_or_default();
            let status = self.status_of(&existing).await;
            // Its message may not be published yet (the first submit is still under way), or
            // may have been lost with a crash between the two writes: publishing again is
            // deduplicated by the job id.
            if matches!(existing.job.state, JobState::Queued) {
                let _ = self.publish(&model, &id).await;
            }
            return Ok(Submitted {
                id: id.clone(),
                queue_position: status.queue_position.unwrap_or_default(),
                seed,
                events: self.follow(id, owner),
                replayed: true,
            });
        }
        let sequence = match self.publish(&model, &id).await {
            Ok(sequence) => sequence,
            Err(refused) => {
                if let Err(error) = self.inner.records.purge(id.as_str()).await {
                    tracing::error!(%error, job = %id, "cannot forget a refused job's record; the reaper will end it");
                }
                return Err(refused);
            }
        };
        // The publish's ack says where the message is: no read of it is needed.
        let queue_position = self.position_at(&model, sequence).await.unwrap_or_default();
        let events = self.follow(id.clone(), owner);
        if let Some(hook) = on_finish {
            let service = self.clone();
            let id = id.clone();
            tokio::spawn(async move {
                if let Ok(result) = service.follow(id, owner).wait().await {
                    hook(&result);
                }
            });
        }
        Ok(Submitted {
            id,
            queue_position,
            seed,
            events,
            replayed: false,
        })
    }

    /// Publishes a job's message, deduplicated by its id; its stream sequence. Refused with
    /// `Overloaded` when the model's queue is full.
    pub(crate) async fn publish(&self, model: &str, id: &JobId) -> Result<u64, ServiceError> {
        self.queue(model).await.map_err(unavailable)?;
        let message = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(id.to_string()))
            .message_id(id.as_str());
        let acked = match self
            .inner
            .fleet
            .js
            .send_publish(job_subject(model, id.as_str()), message)
            .await
        {
            Ok(ack) => ack.await,
            Err(error) => Err(error),
        };
        match acked {
            Ok(ack) => Ok(ack.sequence),
            Err(error) if is_stream_full(&error) => Err(ServiceError::Overloaded),
            Err(error) => Err(unavailable(ClusterError::nats("publish a job", error))),
        }
    }

    pub(crate) fn follow(&self, id: JobId, owner: Owner) -> JobEvents {
        JobEvents::from_stream(id.clone(), owner, follow_job(self.clone(), id))
    }

    async fn cancel_job(&self, id: &JobId, owner: Owner) -> Result<Cancelled, ServiceError> {
        self.owned(id, owner).await?;
        let mut was_queued = false;
        let changed = self
            .inner
            .records
            .update(id.as_str(), |record| {
                if record.job.state.is_terminal() {
                    return false;
                }
                was_queued = matches!(record.job.state, JobState::Queued);
                record.job.state = JobState::Completed(JobResult::Cancelled);
                record.job.completed_at = Some(SystemTime::now());
                record.job.logs.push(log_line("cancelled"));
                true
            })
            .await
            .map_err(unavailable)?;
        match changed {
            Changed::Written(record, _) => {
                crate::webhooks::queue_webhook(&self.inner.fleet.js, &self.inner.records, &record)
                    .await;
                if was_queued {
                    // Frees its place in the queue at once (a worker would otherwise take it,
                    // see it cancelled and ack it).
                    self.delete_message(&record.job.model, id).await;
                }
                Ok(Cancelled)
            }
            Changed::Unchanged(..) => Err(ServiceError::AlreadyCompleted),
            Changed::Missing => Err(ServiceError::NotFound),
        }
    }

    pub(crate) async fn delete_message(&self, model: &str, id: &JobId) {
        let Ok(queue) = self.queue(model).await else {
            return;
        };
        if let Ok(message) = queue
            .stream
            .direct_get_last_for_subject(job_subject(model, id.as_str()))
            .await
        {
            let _ = queue.stream.delete_message(message.sequence).await;
        }
    }
}

fn is_stream_full(error: &jetstream::context::PublishError) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(nats) = cause.downcast_ref::<jetstream::Error>() {
            return nats.error_code().0 == STREAM_FULL;
        }
        source = cause.source();
    }
    error.to_string().contains(&STREAM_FULL.to_string())
}

impl JobService for FleetJobs {
    fn models(&self) -> ServedModels {
        self.inner.registry.snapshot()
    }

    fn submit(&self, submission: Submission) -> BoxFuture<'_, Result<Submitted, ServiceError>> {
        Box::pin(self.submit_job(submission))
    }

    fn record<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<JobRecord, ServiceError>> {
        Box::pin(async move {
            let record = self.owned(id, owner).await?;
            Ok(self.resolved(record).await.job)
        })
    }

    fn status<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<JobStatus, ServiceError>> {
        Box::pin(async move {
            let record = self.owned(id, owner).await?;
            let record = self.resolved(record).await;
            Ok(self.status_of(&record).await)
        })
    }

    fn events<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<JobEvents, ServiceError>> {
        Box::pin(async move {
            self.owned(id, owner).await?;
            Ok(self.follow(id.clone(), owner))
        })
    }

    fn cancel<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<Cancelled, ServiceError>> {
        Box::pin(self.cancel_job(id, owner))
    }

    fn in_flight(&self) -> usize {
        // An API node runs nothing; the fleet's queue bound is the streams'.
        0
    }

    fn next_place_in(&self, mean_generation: Duration) -> Duration {
        mean_generation
    }

    fn wait_idle(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn sweep(&self) -> usize {
        // Records expire with the bucket's max_age.
        0
    }

    fn read_image<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            if !self.inner.images.served_by_api_nodes() {
                return None;
            }
            match self.inner.images.get(name).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, name, "cannot read an image from the fleet's store");
                    None
                }
            }
        })
    }

    fn set_public_base_url(&self, url: &str) {
        *self
            .inner
            .public_base_url
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            url.trim_end_matches('/').to_owned();
    }

    fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }
}
