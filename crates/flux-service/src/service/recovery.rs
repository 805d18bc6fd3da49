//! Restart recovery: the queue jobs a durable store holds unfinished are queued again, and each
//! waits for the generator to be ready and for a place before it runs.

use std::sync::Arc;
use std::time::Duration;

use super::{GenerationService, log_line};
use crate::error::ServiceError;
use crate::job::{JobId, JobState};
use crate::models::ModelLookup;

/// How often a job queued again after a restart looks whether the generator is ready.
const READY_POLL: Duration = Duration::from_millis(20);

impl GenerationService {
    /// After a restart on a durable store: every queue job the store holds unfinished (queued, or
    /// running when the process died) is queued again, in submit order, with its stored request
    /// (seed included, so it gives the same images). Sync jobs found unfinished are dropped (their
    /// callers went away with the old process). The jobs start once the generator is ready; those
    /// beyond the admission bound wait for a place. Returns how many were queued again.
    pub fn recover(&self, deadline: Option<Duration>) -> Result<usize, ServiceError> {
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
