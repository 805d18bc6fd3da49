//! Restart recovery: the queue jobs a durable store holds unfinished are queued again, and each
//! waits for the generator to be ready and for a place before it runs; the completed jobs whose
//! webhook is still owed have it queued.
//!
//! Why an owed mark rather than one transaction for a job's end and its delivery: the job store
//! and the outbox are separate traits, so that a deployment can keep them in separate systems (a
//! NATS key-value bucket and a stream) with no transaction across them. The mark lives in the
//! job record, written with it at submit, and is cleared by a job-store write only after the
//! completion listener said the delivery is in the outbox. A crash anywhere between leaves the
//! mark set, and `recover` tells the listener again; the delivery's id comes from the job's and
//! the outbox's `put_new` leaves a pending one alone, so a crash after the put but before the
//! clear never makes a second delivery with another `webhook-id`. Delivery stays at least once:
//! one delivered in that window is made again, with the same `webhook-id`.

use std::sync::Arc;
use std::time::Duration;

use super::{GenerationService, log_line};
use crate::error::ServiceError;
use crate::job::{JobId, JobState};
use crate::models::ModelLookup;
use crate::store::JobRecord;

/// How often a job queued again after a restart looks whether the generator is ready.
const READY_POLL: Duration = Duration::from_millis(20);

impl GenerationService {
    /// After a restart on a durable store: every queue job the store holds unfinished (queued, or
    /// running when the process died) is queued again, in submit order, with its stored request
    /// (seed included, so it gives the same images). Sync jobs found unfinished are dropped (their
    /// callers went away with the old process). The jobs start once the generator is ready; those
    /// beyond the admission bound wait for a place. Returns how many were queued again.
    ///
    /// Then every completed job whose webhook is still owed (the process died between the job's
    /// end and its delivery being queued) is handed to the completion listener again, so set that
    /// first.
    pub fn recover(&self, deadline: Option<Duration>) -> Result<usize, ServiceError> {
        for record in self.inner.jobs.owing_webhooks()? {
            tracing::info!(job = %record.id, "webhook of a job completed before a restart queued");
            self.tell_listener(&record);
        }
        let mut unfinished = self.inner.jobs.unfinished()?;
        unfinished.sort_by_key(|record| record.submitted_at);
        let mut recovered = 0;
        for mut record in unfinished {
            if !record.keep_record {
                self.inner.jobs.remove(&record.id)?;
                continue;
            }
            let id = record.id.clone();
            let was = match record.state {
                JobState::Running(_) => "running",
                _ => "queued",
            };
            let line = log_line(format!("queued again after a restart (it was {was})"));
            let updated = self.inner.jobs.update(&id, &mut |stored| {
                stored.state = JobState::Queued;
                stored.logs.push(line.clone());
            })?;
            let Some(updated) = updated else { continue };
            record = updated;
            let place = Arc::clone(&self.inner.admission)
                .try_acquire_owned()
                .ok()
                .map(|permit| self.inner.clock.admit(permit));
            self.enqueue(record, place, false)?;
            self.spawn_run(&id, deadline, None, true);
            tracing::info!(job = %id, was, "job queued again after a restart");
            recovered += 1;
        }
        Ok(recovered)
    }

    /// Tells the completion listener of a completed job, and clears the job's owed-webhook mark
    /// once the listener has queued the delivery.
    pub(super) fn tell_listener(&self, record: &JobRecord) {
        let listener = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(listener) = listener else { return };
        if let Err(error) = listener(record) {
            tracing::error!(%error, job = %record.id, "the completion listener failed; retried at the next restart");
            return;
        }
        if record.webhook_owed
            && let Err(error) = self
                .inner
                .jobs
                .update(&record.id, &mut |stored| stored.webhook_owed = false)
        {
            tracing::error!(%error, job = %record.id, "cannot record a queued webhook");
        }
    }

    /// A recovered job waits for its model's generator to be ready and, if it came beyond the
    /// admission bound, for a place. `false` when it ended meanwhile (cancelled); a job of a
    /// model the server does not serve starts at once (and fails saying so).
    pub(super) async fn wait_to_start(&self, id: &JobId) -> bool {
        let model = match self.inner.jobs.get(id) {
            Ok(Some(record)) => record.model,
            _ => return false,
        };
        loop {
            match self.inner.models.lookup(&model) {
                ModelLookup::Served(generator) if generator.is_ready() => break,
                ModelLookup::NotServed => break,
                _ => tokio::time::sleep(READY_POLL).await,
            }
        }
        let has_place = match self.live().jobs.get(id) {
            Some(job) => job.place.is_some(),
            None => return false,
        };
        if !has_place {
            let Ok(permit) = Arc::clone(&self.inner.admission).acquire_owned().await else {
                return false;
            };
            let place = self.inner.clock.admit(permit);
            match self.live().jobs.get_mut(id) {
                Some(job) => job.place = Some(place),
                None => return false,
            }
        }
        true
    }
}
