//! A job's status changes as a stream, from a watch of its record (the current value first, then
//! each change); a broken watch is opened again, and a queued job's position is looked at every
//! second (a position changes without its record changing).

use std::time::Duration;

use async_nats::jetstream::kv;
use flux_service::{JobId, JobState, JobStatus, StatusStream};
use futures::StreamExt;

use crate::api::FleetJobs;
use crate::record::FleetRecord;

/// How often a queued job's position is looked at again.
const POSITION_EVERY: Duration = Duration::from_secs(1);
/// How long to wait before watching again after the watch broke (NATS restarting).
const REWATCH_AFTER: Duration = Duration::from_millis(250);

struct Follow {
    service: FleetJobs,
    id: JobId,
    watch: Option<kv::Watch>,
    last_revision: u64,
    last: Option<JobStatus>,
    done: bool,
}

/// The statuses of job `id`: the current one first, ending after the terminal one (or when the
/// record is gone: expired or purged).
pub(crate) fn follow_job(service: FleetJobs, id: JobId) -> StatusStream {
    let state = Follow {
        service,
        id,
        watch: None,
        last_revision: 0,
        last: None,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        let status = state.next().await?;
        Some((status, state))
    }))
}

impl Follow {
    async fn next(&mut self) -> Option<JobStatus> {
        if self.done {
            return None;
        }
        loop {
            if self.watch.is_none() {
                match self
                    .service
                    .inner
                    .records
                    .kv
                    .watch_with_history(self.id.as_str())
                    .await
                {
                    Ok(watch) => self.watch = Some(watch),
                    Err(error) => {
                        tracing::debug!(%error, job = %self.id, "cannot watch a job; trying again");
                        tokio::time::sleep(REWATCH_AFTER).await;
                        continue;
                    }
                }
            }
            let queued = matches!(
                self.last.as_ref().map(|status| &status.state),
                Some(JobState::Queued)
            );
            let Some(watch) = self.watch.as_mut() else {
                continue;
            };
            let entry = if queued {
                match tokio::time::timeout(POSITION_EVERY, watch.next()).await {
                    Ok(entry) => entry,
                    Err(_elapsed) => {
                        if let Some(status) = self.position_changed().await {
                            return Some(status);
                        }
                        continue;
                    }
                }
            } else {
                watch.next().await
            };
            match entry {
                Some(Ok(entry)) => {
                    if entry.revision <= self.last_revision {
                        // Seen before the watch was opened again.
                        continue;
                    }
                    self.last_revision = entry.revision;
                    if entry.operation != kv::Operation::Put {
                        self.done = true;
                        return None;
                    }
                    let record = match FleetRecord::decode(&entry.value) {
                        Ok(record) => record,
                        Err(error) => {
                            tracing::error!(%error, job = %self.id, "an unreadable job record");
                            continue;
                        }
                    };
                    let record = self.service.resolved(record).await;
                    let status = self.service.status_of(&record).await;
                    self.done = status.state.is_terminal();
                    self.last = Some(status.clone());
                    return Some(status);
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, job = %self.id, "a job's watch broke; watching again");
                    self.watch = None;
                    tokio::time::sleep(REWATCH_AFTER).await;
                }
                None => {
                    self.watch = None;
                    tokio::time::sleep(REWATCH_AFTER).await;
                }
            }
        }
    }

    async fn position_changed(&mut self) -> Option<JobStatus> {
        let last = self.last.as_mut()?;
        let (record, _) = self
            .service
            .inner
            .records
            .get(self.id.as_str())
            .await
            .ok()??;
        let position = self.service.position(&record.job).await;
        if position == last.queue_position || !matches!(record.job.state, JobState::Queued) {
            return None;
        }
        last.queue_position = position;
        Some(last.clone())
    }
}
