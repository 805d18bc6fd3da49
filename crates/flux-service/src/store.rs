//! Job records behind a trait: a map in memory ([`MemoryJobStore`]), the durable one-machine
//! store (`redb_store`), or another deployment's (a NATS key-value bucket) behind the same calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use flux_types::{LogLine, ValidRequest};

use crate::error::ServiceError;
use crate::job::{JobId, JobState, Owner};

/// Everything known about one job.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: JobId,
    pub owner: Owner,
    /// Which model route it was submitted to (`dev`, `schnell`).
    pub model: String,
    /// The request with its seed drawn, so any re-run gives the same images.
    pub request: ValidRequest,
    pub state: JobState,
    pub logs: Vec<LogLine>,
    /// Where to POST the job's end (`?fal_webhook=`), when asked.
    pub webhook: Option<String>,
    /// Whether the job's webhook is still owed: set at submit when `webhook` is, cleared only
    /// once the completion listener has queued the delivery (see `GenerationService::recover`).
    pub webhook_owed: bool,
    pub submitted_at: SystemTime,
    pub completed_at: Option<SystemTime>,
    /// Whether the record outlives the job's end (queue jobs). A sync job's record is forgotten
    /// once its waiter has the result, and one found unfinished after a restart is dropped: its
    /// caller went away with the old process.
    pub keep_record: bool,
}

/// Where job records live. Calls are short and synchronous (a lock, a local write).
pub trait JobStore: Send + Sync + 'static {
    /// Inserts or replaces the record.
    fn put(&self, record: JobRecord) -> Result<(), ServiceError>;
    fn get(&self, id: &JobId) -> Result<Option<JobRecord>, ServiceError>;
    /// Changes the record in place; `None` when there is none.
    fn update(
        &self,
        id: &JobId,
        change: &mut dyn FnMut(&mut JobRecord),
    ) -> Result<Option<JobRecord>, ServiceError>;
    fn remove(&self, id: &JobId) -> Result<(), ServiceError>;
    /// Removes records completed more than `retention` ago; returns how many.
    fn expire(&self, retention: Duration, now: SystemTime) -> Result<usize, ServiceError>;
    /// Every record not yet completed (queued or running), for the restart of a durable store.
    fn unfinished(&self) -> Result<Vec<JobRecord>, ServiceError>;
    /// Every completed record whose webhook is still owed (`webhook_owed`), for the restart of
    /// a durable store.
    fn owing_webhooks(&self) -> Result<Vec<JobRecord>, ServiceError>;
}

/// Records in memory: lost with the process.
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    records: Mutex<HashMap<JobId, JobRecord>>,
}

impl MemoryJobStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, JobRecord>> {
        // Every change is a single insert or field write: a panic leaves the map consistent.
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl JobStore for MemoryJobStore {
    fn put(&self, record: JobRecord) -> Result<(), ServiceError> {
        self.lock().insert(record.id.clone(), record);
        Ok(())
    }

    fn get(&self, id: &JobId) -> Result<Option<JobRecord>, ServiceError> {
        Ok(self.lock().get(id).cloned())
    }

    fn update(
        &self,
        id: &JobId,
        change: &mut dyn FnMut(&mut JobRecord),
    ) -> Result<Option<JobRecord>, ServiceError> {
        let mut records = self.lock();
        Ok(records.get_mut(id).map(|record| {
            change(record);
            record.clone()
        }))
    }

    fn remove(&self, id: &JobId) -> Result<(), ServiceError> {
        self.lock().remove(id);
        Ok(())
    }

    fn expire(&self, retention: Duration, now: SystemTime) -> Result<usize, ServiceError> {
        let mut records = self.lock();
        let before = records.len();
        records.retain(|_, record| match record.completed_at {
            Some(at) => now.duration_since(at).unwrap_or_default() < retention,
            None => true,
        });
        Ok(before - records.len())
    }

    fn unfinished(&self) -> Result<Vec<JobRecord>, ServiceError> {
        Ok(self
            .lock()
            .values()
            .filter(|record| !record.state.is_terminal())
            .cloned()
            .collect())
    }

    fn owing_webhooks(&self) -> Result<Vec<JobRecord>, ServiceError> {
        Ok(self
            .lock()
            .values()
            .filter(|record| record.state.is_terminal() && record.webhook_owed)
            .cloned()
            .collect())
    }
}
