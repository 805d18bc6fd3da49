//! The live table: the jobs not yet completed, with their event channels, abort handles, queue
//! order and admission places.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use crate::job::{JobId, JobStatus};
use crate::queue_eta::Place;

/// Jobs not yet completed: their event channels, abort handles and queue order.
#[derive(Default)]
pub(super) struct Live {
    pub(super) jobs: HashMap<JobId, LiveJob>,
    /// Queued jobs by submit order.
    pub(super) queued: BTreeMap<u64, JobId>,
    pub(super) next_seq: u64,
}

pub(super) struct LiveJob {
    /// The variant it runs on: only jobs of the same model are ahead of it in the queue.
    pub(super) model: String,
    pub(super) events: broadcast::Sender<JobStatus>,
    pub(super) abort: Option<AbortHandle>,
    pub(super) seq: u64,
    pub(super) keep_record: bool,
    /// The job's admission place: freed when the job completes, cancelled ones at once. `None`
    /// only for a job queued again after a restart beyond the bound, until a place frees.
    pub(super) place: Option<Place>,
}

impl Live {
    /// Queued jobs of the same model ahead of it (each model has its own engine).
    pub(super) fn position(&self, id: &JobId) -> Option<u32> {
        let job = self.jobs.get(id)?;
        self.queued.get(&job.seq)?;
        let ahead = self
            .queued
            .range(..job.seq)
            .filter(|(_, other)| {
                self.jobs
                    .get(other)
                    .is_some_and(|other| other.model == job.model)
            })
            .count();
        Some(u32::try_from(ahead).unwrap_or(u32::MAX))
    }

    pub(super) fn leave_queue(&mut self, id: &JobId) -> bool {
        match self.jobs.get(id) {
            Some(job) => self.queued.remove(&job.seq).is_some(),
            None => false,
        }
    }
}
