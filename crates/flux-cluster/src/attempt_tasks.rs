//! The two tasks that run beside an attempt's generation: the guard (progress acks so that the
//! message is not redelivered, heartbeats in the record, and a watch of the record that stops the
//! attempt once the job is no longer its own) and the progress writer (each step into the record).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, kv};
use flux_service::{JobId, JobState};
use flux_types::QueueProgress;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};

use crate::record::{FleetRecord, log_line};
use crate::records::{Changed, Records};

/// The log line a finished step leaves in the job's record.
pub(crate) fn step_line(step: &flux_types::Progress) -> flux_types::LogLine {
    log_line(format!("step {}/{}", step.step, step.total_steps))
}

/// Progress is written at most this often: a step reported sooner waits, and is replaced by any
/// later one meanwhile. A job's steps take longer than this on any real engine, so clients see
/// every step; a job done within it has its steps written with its end, one write instead of
/// several (each an fsync on a single-replica server).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// What the progress writer leaves for the end write.
#[derive(Debug, Default)]
pub(crate) struct ProgressLeft {
    /// The record as last written (the claim's, if no step was), at its revision.
    pub(crate) last: Option<(FleetRecord, u64)>,
    /// The last step reported, when the generation ended before it was written.
    pub(crate) pending: Option<flux_types::Progress>,
}

/// One attempt of a job, as its worker's tasks know it.
#[derive(Debug, Clone)]
pub(crate) struct AttemptOf {
    pub(crate) records: Records,
    /// The worker's name, as the record holds it while the attempt is the record's.
    pub(crate) worker: String,
    pub(crate) id: JobId,
    pub(crate) attempt: u32,
}

impl AttemptOf {
    /// Whether the job is still running as this attempt.
    fn owns(&self, record: &FleetRecord) -> bool {
        !record.job.state.is_terminal() && record.is_attempt(&self.worker, self.attempt)
    }

    /// Every `every`, a progress ack and a heartbeat; on every change of the record, a look at
    /// whose the job is. Notifies `abort` and ends when it is no longer this attempt's (the job
    /// was cancelled, or went elsewhere while this worker was stopped).
    pub(crate) async fn guard(
        self,
        message: Arc<jetstream::Message>,
        every: Duration,
        abort: Arc<Notify>,
    ) {
        let mut watch = self.records.kv.watch(self.id.as_str()).await.ok();
        // The claim has just written a heartbeat: the first is due one period later.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let change = match watch.as_mut() {
                Some(watching) => tokio::select! {
                    _ = tick.tick() => None,
                    entry = watching.next() => match entry {
                        Some(Ok(entry)) => Some(entry),
                        // The watch ended (NATS restarting): the ticks alone look from now on,
                        // so this loop never spins on a finished watch.
                        _ => {
                            watch = None;
                            None
                        }
                    },
                },
                None => {
                    tick.tick().await;
                    None
                }
            };
            let still_mine = match change {
                // Every change of the record comes through the watch, the attempt's own writes
                // among them: the entry itself says whose the job is now, with no read.
                Some(entry) => {
                    entry.operation == kv::Operation::Put
                        && FleetRecord::decode(&entry.value)
                            // Unreadable (a newer build's record?): the next tick reads it.
                            .map_or(true, |record| self.owns(&record))
                }
                None => self.beat(&message).await,
            };
            if !still_mine {
                abort.notify_one();
                return;
            }
        }
    }

    /// A progress ack and a heartbeat; whether the job is still this attempt's.
    async fn beat(&self, message: &jetstream::Message) -> bool {
        let _ = message.ack_with(AckKind::Progress).await;
        let now = SystemTime::now();
        let beat = self
            .records
            .update(self.id.as_str(), |record| {
                if !self.owns(record) {
                    return false;
                }
                record.heartbeat = now;
                true
            })
            .await;
        match &beat {
            Ok(Changed::Written(..)) => true,
            Ok(Changed::Unchanged(record, _)) => self.owns(record),
            Ok(Changed::Missing) => false,
            // NATS unreachable: keep going, the record decides at the end.
            Err(_) => true,
        }
    }

    /// Writes the steps into the record, at most one write per [`PROGRESS_EVERY`] (the latest
    /// step), until the generation drops its sender; what is left for the end write.
    pub(crate) async fn write_progress(
        self,
        mut progress: mpsc::UnboundedReceiver<flux_types::Progress>,
        claimed: (FleetRecord, u64),
    ) -> ProgressLeft {
        // The record as this writer last wrote it (the claim's to begin with): a write from it
        // needs no read first unless someone (a heartbeat, a cancel) wrote meanwhile.
        let mut known = Some(claimed);
        let mut last_write = tokio::time::Instant::now();
        while let Some(mut step) = progress.recv().await {
            let due = last_write + PROGRESS_EVERY;
            loop {
                match tokio::time::timeout_at(due, progress.recv()).await {
                    Ok(Some(later)) => step = later,
                    Ok(None) => {
                        return ProgressLeft {
                            last: known,
                            pending: Some(step),
                        };
                    }
                    Err(_due) => break,
                }
            }
            last_write = tokio::time::Instant::now();
            let now = SystemTime::now();
            let written = self
                .records
                .update_from(self.id.as_str(), known.take(), |record| {
                    if !self.owns(record) {
                        return false;
                    }
                    record.heartbeat = now;
                    record.job.state = JobState::Running(QueueProgress {
                        step: step.step,
                        total_steps: step.total_steps,
                    });
                    record.job.logs.push(step_line(&step));
                    true
                })
                .await;
            match written {
                Ok(Changed::Written(record, revision)) => known = Some((record, revision)),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, job = %self.id, "cannot record a job's progress");
                }
            }
        }
        ProgressLeft {
            last: known,
            pending: None,
        }
    }
}
