//! [`Reaper`]: finishes what JetStream alone cannot, job records left non-terminal whose message
//! is gone, so that no worker would ever see them again.
//!
//! A job's record is the source of truth and its message only what brings it to a worker. The
//! two part when an API node dies between writing a record and publishing its message (a submit
//! writes the record first), when a stalled worker (a zombie) acks a message after its job went to
//! another worker and that one dies too, or when nats-server loses a message. A pass reads every
//! record once; for one not terminal, it looks up the job's message (a direct get of the last
//! message on the job's subject):
//!
//! - no message, the record older than the grace (the submit's window between its two writes),
//!   and queued, or running with no heartbeat for longer than the lease: puts it back to queued
//!   with no worker and publishes its message again, or ends it failed when its attempts are
//!   spent;
//! - a message, but running, silent past the lease and its attempts spent: ends it failed and
//!   deletes the message, so it ends even when no live worker of its model is left to claim it
//!   (otherwise JetStream delivers the message again and a worker decides).
//!
//! A terminal record whose webhook is still owed a grace after its end (its worker died between
//! the end and the webhook) has its delivery queued and the mark cleared.
//!
//! A submit refused after its record was written whose purge then failed looks the same as a
//! lost message, so that job is run.
//!
//! Every API node runs one, so two may pass at once: each change is a compare-and-set on the
//! revision the pass read, a message published again carries a `Nats-Msg-Id` derived from that
//! revision (`<job>.r<revision>`; never the bare job id, which the duplicate window of the first
//! publish would swallow), and a record put back has its heartbeat set to the requeue, so another
//! reaper leaves it alone for a grace. A duplicate message that still slips through (clocks of two
//! nodes apart by more than the grace) is harmless: the record decides what a worker does with it.
//!
//! Cost: one key listing and one read of every record per pass, plus a direct get of the message
//! of each non-terminal one; that is O(records) per pass per API node, fine to a few hundred
//! thousand records (the bucket's `max_age` bounds them).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use flux_service::{JobState, WebhookDelivery};
use futures::StreamExt;

use crate::error::ClusterError;
use crate::fleet::{Fleet, FleetSettings, job_subject, webhook_subject};
use crate::record::{FleetRecord, log_line_at};
use crate::records::{Changed, Records};

/// The log line of a record the reaper queued again.
const REQUEUED: &str = "queued again by the reaper (its message was lost)";
/// The shortest pause between passes, so a zero `every` cannot spin.
const MIN_EVERY: Duration = Duration::from_millis(10);

/// How often a reaper passes and how long it leaves young records alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaperConfig {
    /// The pause between two passes (a tenth more at most, drawn per pass, so the reapers of
    /// several API nodes do not stay in step).
    pub every: Duration,
    /// A record younger than this (since its submit, or since a reaper queued it again) is never
    /// treated as lost: it covers a submit's window between writing the record and publishing its
    /// message, and a reaper's between its requeue and its publish.
    pub grace: Duration,
}

impl ReaperConfig {
    /// The grace unless told otherwise: far longer than a submit's two writes take.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

    /// A pass every half lease of `settings`, with the default grace.
    pub fn for_settings(settings: &FleetSettings) -> Self {
        ReaperConfig {
            every: settings.lease() / 2,
            grace: Self::DEFAULT_GRACE,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Records read.
    pub examined: usize,
    /// Lost jobs queued again with a new message.
    pub republished: usize,
    /// Lost or abandoned jobs ended failed (their attempts spent).
    pub failed: usize,
    /// Owed webhook deliveries queued.
    pub webhooks: usize,
    /// Jobs still waiting written again so that the bucket's max_age does not expire them.
    pub refreshed: usize,
    /// Records the pass could not look at (logged; the next pass looks again).
    pub errors: usize,
}

impl ReapReport {
    fn acted(&self) -> bool {
        self.republished + self.failed + self.webhooks + self.errors > 0
    }
}

/// The reaper of a fleet's job records; one per API node.
#[derive(Debug, Clone)]
pub struct Reaper {
    fleet: Fleet,
    records: Records,
    config: ReaperConfig,
}

impl Reaper {
    /// The reaper of `fleet`'s records (it opens or creates each model's job stream as it meets
    /// the model's records).
    pub fn new(fleet: Fleet, config: ReaperConfig) -> Self {
        Reaper {
            records: Records::new(fleet.jobs.clone()),
            fleet,
            config,
        }
    }

    /// Passes at once, then every `config.every`, until `shutdown` resolves. A pass that fails
    /// is logged and the next one tries again; one cut short by the shutdown is safe to drop
    /// (a record left queued without its message is the next reaper's, a grace later).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                passed = self.pass() => match passed {
                    Ok(report) if report.acted() => tracing::info!(?report, "reaper pass"),
                    Ok(report) => tracing::debug!(?report, "reaper pass"),
                    Err(error) => tracing::warn!(%error, "a reaper pass failed; the next one tries again"),
                },
            }
            let every = self.config.every.max(MIN_EVERY);
            let pause = every + every.mul_f64(rand::random::<f64>() / 10.0);
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One scan of every record. Fails only when the records cannot be listed or NATS goes away
    /// half-way; a record that cannot be handled is logged, counted and left to the next pass.
    pub async fn pass(&self) -> Result<ReapReport, ClusterError> {
        let keys = self.keys().await?;
        let mut report = ReapReport::default();
        let mut streams = HashMap::new();
        for key in keys {
            if let Err(error) = self.reap(&key, &mut streams, &mut report).await {
                report.errors += 1;
                tracing::warn!(%error, job = %key, "the reaper cannot look at a job; the next pass looks again");
                if self.fleet.client().connection_state()
                    != async_nats::connection::State::Connected
                {
                    // Every other record would fail the same, each after a timeout.
                    return Err(error);
                }
            }
        }
        Ok(report)
    }

    /// The job ids in the bucket, read in full first so the listing is not held open for the
    /// length of the pass.
    async fn keys(&self) -> Result<Vec<String>, ClusterError> {
        let mut listing = match self.records.kv.keys().await {
            Ok(listing) => listing,
            Err(error) => return Err(ClusterError::nats("list the job records", error)),
        };
        let mut keys = Vec::new();
        while let Some(key) = listing.next().await {
            keys.push(key.map_err(|error| ClusterError::nats("list the job records", error))?);
        }
        Ok(keys)
    }

    /// The job stream of `model`, opened (or created) once per pass.
    async fn stream(
        &self,
        model: &str,
        streams: &mut HashMap<String, stream::Stream>,
    ) -> Result<stream::Stream, ClusterError> {
        if let Some(stream) = streams.get(model) {
            return Ok(stream.clone());
        }
        let (stream, _) = self.fleet.model_queue(model).await?;
        streams.insert(model.to_owned(), stream.clone());
        Ok(stream)
    }

    async fn reap(
        &self,
        id: &str,
        streams: &mut HashMap<String, stream::Stream>,
        report: &mut ReapReport,
    ) -> Result<(), ClusterError> {
        // Gone since the listing (expired, or a refused submit's record purged).
        let Some((record, revision)) = self.records.get(id).await? else {
            return Ok(());
        };
        report.examined += 1;
        let now = SystemTime::now();
        let grace = self.config.grace;
        if record.job.state.is_terminal() {
            let ended_at = record.job.completed_at.unwrap_or(record.job.submitted_at);
            // The grace leaves the webhook to the worker that ended the job, which queues it
            // right after its end.
            if owes_webhook(&record)
                && since(ended_at, now) > grace
                && self.queue_webhook(&record).await?
            {
                report.webhooks += 1;
            }
            return Ok(());
        }
        let settings = self.fleet.settings;
        let lease = settings.lease();
        let model = record.job.model.clone();
        let stream = self.stream(&model, streams).await?;
        let message = match stream
            .direct_get_last_for_subject(job_subject(&model, id))
            .await
        {
            Ok(message) => Some(message.sequence),
            Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => None,
            Err(error) => return Err(ClusterError::nats("look for a job's message", error)),
        };
        let running = matches!(record.job.state, JobState::Running(_));
        let silent = record.silent_for(now);
        let spent = record.attempt >= settings.max_deliver;
        match message {
            // JetStream delivers it again; only a job no worker will claim any more (its attempts
            // spent, its last worker gone, perhaps every worker of its model) is ended here.
            Some(_) if !running && silent > settings.retention / 2 => {
                // A job queued for half the retention: written again (the same record, a new
                // heartbeat), so the bucket's max_age, which counts from the last write, never
                // expires a job that is still waiting for a worker.
                let mut refreshed = record;
                refreshed.heartbeat = now;
                if self.replace(id, &refreshed, revision).await? {
                    report.refreshed += 1;
                }
            }
            Some(sequence) => {
                if running
                    && silent > lease
                    && spent
                    && self.fail(id, record, revision, now, report).await?
                {
                    // Only once this reaper ended it: a lost race may have been a heartbeat of
                    // the job's live worker, whose message this is.
                    if let Err(error) = stream.delete_message(sequence).await {
                        // A worker that takes it later finds the job ended and acks it.
                        tracing::debug!(%error, job = %id, "cannot delete an ended job's message");
                    }
                }
            }
            None => {
                let abandoned = if running {
                    silent > lease.max(grace)
                } else {
                    // Queued: its heartbeat is its submit, its last requeue by a reaper, or the
                    // last of the attempt a worker released (whose message it nak'd, not acked).
                    silent > grace
                };
                if since(record.job.submitted_at, now) <= grace || !abandoned {
                    return Ok(());
                }
                if spent {
                    self.fail(id, record, revision, now, report).await?;
                } else if self.requeue(id, record, revision, now).await?
                    && self.publish(&model, id, revision).await?
                {
                    report.republished += 1;
                }
            }
        }
        Ok(())
    }

    /// Writes `record` over `revision` only; `false` when it changed since (another reaper or a
    /// worker acted on it, and the next pass judges it afresh).
    async fn replace(
        &self,
        id: &str,
        record: &FleetRecord,
        revision: u64,
    ) -> Result<bool, ClusterError> {
        match self.records.kv.update(id, record.encode()?, revision).await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(error) => Err(ClusterError::nats("update a job record", error)),
        }
    }

    /// Ends the job failed as a worker's claim would, then queues its webhook if owed; `false`
    /// when the record changed since it was read (nothing written).
    async fn fail(
        &self,
        id: &str,
        mut record: FleetRecord,
        revision: u64,
        now: SystemTime,
        report: &mut ReapReport,
    ) -> Result<bool, ClusterError> {
        record.give_up(self.fleet.settings.max_deliver, now);
        if !self.replace(id, &record, revision).await? {
            return Ok(false);
        }
        tracing::warn!(job = %id, attempts = record.attempt, "the reaper ended an abandoned job failed");
        report.failed += 1;
        if owes_webhook(&record) && self.queue_webhook(&record).await? {
            report.webhooks += 1;
        }
        Ok(true)
    }

    /// Puts the job back to queued with no worker (a zombie of its last attempt then finds the
    /// attempt no longer its own) and its heartbeat at now, which starts another grace.
    async fn requeue(
        &self,
        id: &str,
        mut record: FleetRecord,
        revision: u64,
        now: SystemTime,
    ) -> Result<bool, ClusterError> {
        record.job.state = JobState::Queued;
        record.worker = None;
        record.heartbeat = now;
        record.job.logs.push(log_line_at(REQUEUED, now));
        self.replace(id, &record, revision).await
    }

    /// Publishes the job's message again, as a submit does but deduplicated per revision the
    /// reaper acted on; `false` when refused (the model's queue full, or NATS) or deduplicated.
    /// A refused one is logged and left: the record is queued with no message, so a pass after
    /// the grace tries again.
    async fn publish(&self, model: &str, id: &str, revision: u64) -> Result<bool, ClusterError> {
        let message = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(id.to_owned()))
            .message_id(format!("{id}.r{revision}"));
        let acked = match self
            .fleet
            .js
            .send_publish(job_subject(model, id), message)
            .await
        {
            Ok(ack) => ack.await,
            Err(error) => Err(error),
        };
        match acked {
            Ok(ack) => {
                tracing::warn!(job = %id, duplicate = ack.duplicate, "the reaper queued again a job whose message was lost");
                Ok(!ack.duplicate)
            }
            Err(error) => {
                tracing::warn!(%error, job = %id, "the reaper cannot publish a lost job again; a later pass tries again");
                Ok(false)
            }
        }
    }

    /// Queues the job's webhook delivery as a worker does (deduplicated by its delivery id, so
    /// two reapers at once queue one) and clears the owed mark; `true` when this call cleared it.
    async fn queue_webhook(&self, record: &FleetRecord) -> Result<bool, ClusterError> {
        let id = record.job.id.as_str();
        let message = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(id.to_owned()))
            .message_id(WebhookDelivery::id_for(id));
        let published = match self
            .fleet
            .js
            .send_publish(webhook_subject(id), message)
            .await
        {
            Ok(ack) => ack.await.map(|_| ()),
            Err(error) => Err(error),
        };
        published.map_err(|error| ClusterError::nats("queue a webhook", error))?;
        let cleared = self
            .records
            .update(id, |record| {
                if !record.job.webhook_owed {
                    return false;
                }
                record.job.webhook_owed = false;
                true
            })
            .await?;
        let cleared = matches!(cleared, Changed::Written(..));
        if cleared {
            tracing::info!(job = %id, "the reaper queued a job's owed webhook");
        }
        Ok(cleared)
    }
}

fn owes_webhook(record: &FleetRecord) -> bool {
    record.job.webhook_owed && record.job.webhook.is_some()
}

/// How long ago `at` was (zero when it is ahead of this node's clock).
fn since(at: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(at).unwrap_or_default()
}
