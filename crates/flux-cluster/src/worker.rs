//! A `flux worker`: one engine taking one job at a time from its model's queue.
//!
//! For each message: the record decides. A completed job is acked; a job another live worker is
//! running is put back for later; otherwise the worker claims the next attempt with a
//! compare-and-set, runs it while sending progress acks and heartbeats, and writes the end with a
//! compare-and-set that holds only while the attempt is still its own. It acks only once the
//! record is terminal, so a worker that was stopped past `ack_wait` and wakes up (a zombie)
//! changes nothing: its attempt is no longer the record's, it writes nothing and acks nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind};
use flux_service::{JobFailure, JobId, JobResult, JobState};
use flux_types::{Generator, GeneratorError, ProgressFn, QueueProgress};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};

use crate::attempt_tasks::{AttemptOf, ProgressLeft, step_line};
use crate::error::ClusterError;
use crate::fleet::Fleet;
use crate::images::ImageStore;
use crate::record::{FleetRecord, log_line};
use crate::records::{Changed, Records};
use crate::registry::register;
use crate::stats::{AttemptEnd, WorkerStats};

/// How long one pull waits for a job before it looks at the shutdown signal again.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// A failed attempt that may succeed on another try comes back after this.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The points of an attempt a fault-injection hook is called at (the failure tests stop a
/// worker there: killed as its generation begins, after its images are uploaded but before its
/// record says so, or after the record but before the ack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The job is claimed for this attempt; its generation has not begun.
    Started,
    /// The attempt's images are in the store; its end is not yet written.
    Uploaded,
    /// The attempt's end is written; its message is not yet acked.
    Recorded,
}

/// Called at each [`Stage`] with the job's record as the attempt sees it; the attempt goes on
/// when the future resolves.
pub type StageHook =
    Arc<dyn Fn(Stage, &FleetRecord) -> flux_types::BoxFuture<'static, ()> + Send + Sync>;

/// A worker's settings.
#[derive(Clone)]
pub struct WorkerConfig {
    /// This worker's name in job records and logs.
    pub name: String,
    /// A job still running this long after its attempt began fails as timed out.
    pub job_timeout: Duration,
    /// Counters for its metrics (shared with whoever serves them).
    pub stats: WorkerStats,
    /// Fault injection for the failure tests (`flux worker` sets it from `FLUX_WORKER_FAULT`);
    /// `None` in service.
    pub stage_hook: Option<StageHook>,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("name", &self.name)
            .field("job_timeout", &self.job_timeout)
            .field("stage_hook", &self.stage_hook.is_some())
            .finish_non_exhaustive()
    }
}

impl WorkerConfig {
    /// A worker named by its process id and a random suffix (`worker-<pid>-<hex>`), so that logs
    /// and job records tell which process ran an attempt.
    pub fn named_randomly(job_timeout: Duration) -> Self {
        WorkerConfig {
            name: format!(
                "worker-{}-{:04x}",
                std::process::id(),
                rand::random::<u16>()
            ),
            job_timeout,
            stats: WorkerStats::default(),
            stage_hook: None,
        }
    }
}

/// A worker of one model.
pub struct Worker {
    fleet: Fleet,
    records: Records,
    generator: Arc<dyn Generator>,
    images: Arc<dyn ImageStore>,
    config: WorkerConfig,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.config.name)
            .field("generator", &self.generator.describe())
            .finish_non_exhaustive()
    }
}

/// What the record says to do with a delivered message.
enum Claim {
    /// Run this attempt (the record as claimed, at this revision).
    Run(FleetRecord, u32, u64),
    /// Completed: ack (after queuing its webhook, if still owed).
    Done(FleetRecord),
    /// Another worker is running it and was alive this long ago: put it back until its lease
    /// would run out.
    Busy(Duration),
    /// No record (expired or forgotten): drop the message.
    Gone,
}

/// A task stopped when its handle goes: an attempt dropped half-way (its worker stopping) takes
/// its heartbeats with it, so its job is redelivered.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn retryable(error: &GeneratorError) -> bool {
    matches!(
        error,
        GeneratorError::Inference { .. }
            | GeneratorError::Remote { .. }
            | GeneratorError::NotReady
            | GeneratorError::ShuttingDown
            | GeneratorError::Overloaded { .. }
    )
}

impl Worker {
    pub fn new(
        fleet: Fleet,
        generator: Arc<dyn Generator>,
        images: Arc<dyn ImageStore>,
        config: WorkerConfig,
    ) -> Self {
        Worker {
            records: Records::new(fleet.jobs.clone()),
            fleet,
            generator,
            images,
            config,
        }
    }

    /// Waits for the engine, registers its model, then takes jobs until `shutdown` resolves
    /// (the job under way is finished first).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ClusterError> {
        let mut shutdown = std::pin::pin!(shutdown);
        while !self.generator.is_ready() {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let info = self.generator.model().ok_or_else(|| ClusterError::Server {
            server: "worker",
            message: format!(
                "the generator {} reports no model",
                self.generator.describe()
            ),
        })?;
        let model = info.variant.name;
        let (_stream, mut consumer) = self.fleet.model_queue(model).await?;
        register(&self.fleet.models, &info).await?;
        tracing::info!(worker = %self.config.name, model = %info.id, variant = model, "worker taking jobs");
        self.config.stats.set_taking_jobs(true);
        loop {
            let batch = tokio::select! {
                () = &mut shutdown => return Ok(()),
                batch = consumer.fetch().max_messages(1).expires(FETCH_WAIT).messages() => batch,
            };
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "cannot pull a job; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok((_, again)) = self.fleet.model_queue(model).await {
                        consumer = again;
                    }
                    continue;
                }
            };
            while let Some(message) = batch.next().await {
                match message {
                    Ok(message) => self.handle(message).await,
                    Err(error) => {
                        tracing::debug!(%error, "a pull ended");
                        break;
                    }
                }
            }
        }
    }

    async fn handle(&self, message: jetstream::Message) {
        let Some(id) = message.subject.rsplit('.').next().and_then(JobId::parse) else {
            tracing::warn!(subject = %message.subject, "a job message without a job id; dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        let claim = match self.claim(&id).await {
            Ok(claim) => claim,
            Err(error) => {
                tracing::warn!(%error, job = %id, "cannot claim a job; it comes back later");
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_AFTER))).await;
                return;
            }
        };
        match claim {
            Claim::Gone => {
                let _ = message.double_ack().await;
            }
            Claim::Busy(silent_for) => {
                let later = self.fleet.settings.lease().saturating_sub(silent_for)
                    + Duration::from_millis(100);
                let _ = message.ack_with(AckKind::Nak(Some(later))).await;
            }
            Claim::Done(record) => {
                self.queue_webhook(&record).await;
                let _ = message.double_ack().await;
            }
            Claim::Run(record, attempt, revision) => {
                self.run_attempt(message, record, attempt, revision).await
            }
        }
    }

    async fn claim(&self, id: &JobId) -> Result<Claim, ClusterError> {
        let lease = self.fleet.settings.lease();
        let max_deliver = self.fleet.settings.max_deliver;
        let now = SystemTime::now();
        let name = self.config.name.clone();
        let mut decision = None;
        let changed = self
            .records
            .update(id.as_str(), |record| {
                if record.job.state.is_terminal() {
                    decision = Some(false);
                    return false;
                }
                let running_elsewhere = matches!(record.job.state, JobState::Running(_))
                    && record.worker.as_deref() != Some(&name)
                    && record.silent_for(now) < lease;
                if running_elsewhere {
                    decision = None;
                    return false;
                }
                decision = Some(true);
                if record.attempt >= max_deliver {
                    record.give_up(max_deliver, now);
                    return true;
                }
                record.attempt += 1;
                record.worker = Some(name.clone());
                record.heartbeat = now;
                let total_steps = record.job.request.num_inference_steps();
                record.job.state = JobState::Running(QueueProgress {
                    step: 0,
                    total_steps,
                });
                record.job.logs.push(log_line(format!(
                    "started on {name} (attempt {} of {max_deliver})",
                    record.attempt
                )));
                true
            })
            .await?;
        Ok(match changed {
            Changed::Missing => Claim::Gone,
            Changed::Unchanged(record, _) if decision == Some(false) => Claim::Done(record),
            Changed::Unchanged(record, _) => Claim::Busy(record.silent_for(SystemTime::now())),
            Changed::Written(record, _) if record.job.state.is_terminal() => Claim::Done(record),
            Changed::Written(record, revision) => {
                let attempt = record.attempt;
                Claim::Run(record, attempt, revision)
            }
        })
    }

    async fn run_attempt(
        &self,
        message: jetstream::Message,
        record: FleetRecord,
        attempt: u32,
        revision: u64,
    ) {
        let id = record.job.id.clone();
        let message = Arc::new(message);
        let abort = Arc::new(Notify::new());
        let this = AttemptOf {
            records: self.records.clone(),
            worker: self.config.name.clone(),
            id: id.clone(),
            attempt,
        };
        let every = (self.fleet.settings.ack_wait / 4).max(Duration::from_millis(50));
        let guard = AbortOnDrop(tokio::spawn(this.clone().guard(
            Arc::clone(&message),
            every,
            Arc::clone(&abort),
        )));
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let progress: ProgressFn = Arc::new(move |progress| {
            let _ = progress_tx.send(progress);
        });
        let writer = tokio::spawn(this.write_progress(progress_rx, (record.clone(), revision)));
        self.at(Stage::Started, &record).await;
        let started = std::time::Instant::now();
        self.config.stats.started();
        let limit = record.time_limit.map_or(self.config.job_timeout, |limit| {
            limit.min(self.config.job_timeout)
        });
        let generation = tokio::select! {
            generated = tokio::time::timeout(
                limit,
                self.generator.generate(record.job.request.clone(), Some(progress)),
            ) => Some(generated),
            () = abort.notified() => None,
        };
        drop(guard);
        // The writer ends once the generation (holding the sender) is dropped; its last write is
        // where the end is written from.
        let left = writer.await.unwrap_or_default();
        let result = match generation {
            None => {
                tracing::info!(job = %id, attempt, "attempt stopped: the job was cancelled or went to another worker");
                if let Ok(Some((now, _))) = self.records.get(id.as_str()).await
                    && now.job.state.is_terminal()
                {
                    self.config.stats.ended(AttemptEnd::Cancelled);
                    let _ = message.double_ack().await;
                } else {
                    self.config.stats.ended(AttemptEnd::Lost);
                }
                return;
            }
            Some(Err(_elapsed)) => JobResult::Failed(JobFailure::TimedOut {
                limit_secs: limit.as_secs(),
            }),
            Some(Ok(Err(error)))
                if retryable(&error) && attempt < self.fleet.settings.max_deliver =>
            {
                tracing::warn!(%error, job = %id, attempt, "attempt failed; the job is tried again");
                self.release(&id, attempt, &error).await;
                self.config.stats.ended(AttemptEnd::Retried);
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_AFTER))).await;
                return;
            }
            Some(Ok(Err(error))) => {
                tracing::error!(%error, job = %id, attempt, "generation failed");
                JobResult::Failed(JobFailure::Generator(error))
            }
            Some(Ok(Ok(generation))) => {
                match crate::attempt_result::store_result(
                    self.images.as_ref(),
                    &record,
                    attempt,
                    generation,
                    started,
                )
                .await
                {
                    Ok(stored) => {
                        self.at(Stage::Uploaded, &record).await;
                        JobResult::Succeeded(stored)
                    }
                    Err(failure) => JobResult::Failed(failure),
                }
            }
        };
        self.finish(&message, &id, attempt, result, left).await;
    }

    /// Puts a failed attempt's job back in the queue state (its message is redelivered).
    async fn release(&self, id: &JobId, attempt: u32, error: &GeneratorError) {
        let name = self.config.name.clone();
        let line = log_line(format!("attempt {attempt} failed ({error}); tried again"));
        let _ = self
            .records
            .update(id.as_str(), |record| {
                if record.job.state.is_terminal() || !record.is_attempt(&name, attempt) {
                    return false;
                }
                record.job.state = JobState::Queued;
                record.worker = None;
                record.job.logs.push(line.clone());
                true
            })
            .await;
    }

    /// Writes the attempt's end if the attempt is still the record's, queues the webhook, and
    /// acks; a zombie (the attempt no longer the record's) writes and acks nothing.
    async fn finish(
        &self,
        message: &jetstream::Message,
        id: &JobId,
        attempt: u32,
        result: JobResult,
        left: ProgressLeft,
    ) {
        let name = self.config.name.clone();
        // A step the progress writer had not written yet goes in with the end.
        let pending_line = left.pending.as_ref().map(step_line);
        let line = log_line(match &result {
            JobResult::Succeeded(_) => "completed".to_owned(),
            JobResult::Failed(_) => "failed".to_owned(),
            JobResult::Cancelled => "cancelled".to_owned(),
        });
        let now = SystemTime::now();
        let changed = self
            .records
            .update_from(id.as_str(), left.last, |record| {
                if record.job.state.is_terminal() || !record.is_attempt(&name, attempt) {
                    return false;
                }
                record.job.state = JobState::Completed(result.clone());
                record.job.completed_at = Some(now);
                record.job.logs.extend(pending_line.clone());
                record.job.logs.push(line.clone());
                true
            })
            .await;
        match changed {
            Ok(Changed::Written(record, _)) => {
                tracing::info!(job = %id, attempt, worker = %name, "job completed");
                self.config.stats.ended(match &record.job.state {
                    JobState::Completed(JobResult::Succeeded(_)) => AttemptEnd::Succeeded,
                    _ => AttemptEnd::Failed,
                });
                self.queue_webhook(&record).await;
                self.at(Stage::Recorded, &record).await;
                let _ = message.double_ack().await;
            }
            Ok(Changed::Unchanged(record, _)) if record.job.state.is_terminal() => {
                self.config.stats.ended(AttemptEnd::Cancelled);
                self.queue_webhook(&record).await;
                // Cancelled while it ran: its images are left to the store's retention.
                let _ = message.double_ack().await;
            }
            Ok(_) => {
                self.config.stats.ended(AttemptEnd::Lost);
                tracing::warn!(job = %id, attempt, "this attempt is no longer the job's: its end is not written");
            }
            Err(error) => {
                self.config.stats.ended(AttemptEnd::Lost);
                // Not acked: the job is redelivered and the next attempt writes its end.
                tracing::error!(%error, job = %id, "cannot record a job's end");
            }
        }
    }

    async fn at(&self, stage: Stage, record: &FleetRecord) {
        if let Some(hook) = &self.config.stage_hook {
            hook(stage, record).await;
        }
    }

    async fn queue_webhook(&self, record: &FleetRecord) {
        crate::webhooks::queue_webhook(&self.fleet.js, &self.records, record).await;
    }
}
