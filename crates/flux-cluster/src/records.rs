//! The job records bucket: reads, creates, and compare-and-set changes (every change is
//! conditional on the revision it was computed from, so two writers never both win).

use async_nats::jetstream::kv;

use crate::error::ClusterError;
use crate::record::FleetRecord;

/// How often a change is computed again after losing a race before it gives up.
const MAX_RACES: usize = 64;

/// What a change did.
#[derive(Debug)]
pub enum Changed {
    /// Written at this revision.
    Written(FleetRecord, u64),
    /// The change declined (the closure returned false): the record as it is.
    Unchanged(FleetRecord, u64),
    /// There is no such record.
    Missing,
}

/// The job records of a fleet.
#[derive(Debug, Clone)]
pub struct Records {
    pub(crate) kv: kv::Store,
}

impl Records {
    pub fn new(kv: kv::Store) -> Self {
        Records { kv }
    }

    /// The record and its revision.
    pub async fn get(&self, id: &str) -> Result<Option<(FleetRecord, u64)>, ClusterError> {
        let entry = self
            .kv
            .entry(id)
            .await
            .map_err(|error| ClusterError::nats("read a job record", error))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                Ok(Some((FleetRecord::decode(&entry.value)?, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Creates the record; `Ok(None)` when one with its id exists already.
    pub async fn create(&self, record: &FleetRecord) -> Result<Option<u64>, ClusterError> {
        match self
            .kv
            .create(record.job.id.as_str(), record.encode()?)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(error) => Err(ClusterError::nats("create a job record", error)),
        }
    }

    /// Applies `change` to the current record and writes it if the record did not change
    /// meanwhile; otherwise reads it again and retries. `change` returns whether it changed
    /// anything (nothing is written when not).
    pub async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut FleetRecord) -> bool,
    ) -> Result<Changed, ClusterError> {
        for _ in 0..MAX_RACES {
            let Some((mut record, revision)) = self.get(id).await? else {
                return Ok(Changed::Missing);
            };
            if !change(&mut record) {
                return Ok(Changed::Unchanged(record, revision));
            }
            match self.kv.update(id, record.encode()?, revision).await {
                Ok(revision) => return Ok(Changed::Written(record, revision)),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(ClusterError::nats("update a job record", error)),
            }
        }
        Err(ClusterError::Nats {
            operation: "update a job record",
            message: format!("lost {MAX_RACES} races in a row"),
        })
    }

    /// Like [`Records::update`], but first from `known`, the record at a revision this writer
    /// saw (its own last write): one round trip instead of two when nobody wrote since, and the
    /// usual read-and-retry when somebody did.
    pub async fn update_from(
        &self,
        id: &str,
        known: Option<(FleetRecord, u64)>,
        mut change: impl FnMut(&mut FleetRecord) -> bool,
    ) -> Result<Changed, ClusterError> {
        if let Some((mut record, revision)) = known {
            if !change(&mut record) {
                // Declined on what may be an old copy: decide on the current one.
                return self.update(id, change).await;
            }
            match self.kv.update(id, record.encode()?, revision).await {
                Ok(revision) => return Ok(Changed::Written(record, revision)),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(error) => return Err(ClusterError::nats("update a job record", error)),
            }
        }
        self.update(id, change).await
    }

    /// Forgets the record (a submit refused after its record was written).
    pub async fn purge(&self, id: &str) -> Result<(), ClusterError> {
        self.kv
            .purge(id)
            .await
            .map_err(|error| ClusterError::nats("purge a job record", error))
    }
}
