//! The durable one-machine store of `flux serve --data-dir DIR`: job records, the webhook outbox
//! and finished idempotency records in one redb file, `DIR/flux-rs.redb`.
//!
//! Why redb: pure Rust (no C toolchain, unlike a bundled SQLite), ACID transactions whose commits
//! are fsync'd before they return, crash-safe by design (a `kill -9` or power cut leaves the last
//! committed state), one file, a file lock against a second server on the same folder, and a
//! stable, maintained file format. The store needs no queries beyond get/put by key and a scan,
//! which is what a key-value B-tree gives without SQL.
//!
//! Every state change that matters after a crash (accepted, completed, expired, a webhook queued
//! or rescheduled) is a durable commit. A step's progress is not: it is committed without fsync
//! (the next durable commit carries it), since a restart queues a running job again anyway. Sync
//! jobs (`keep_record: false`) are never worth an fsync either: a restart drops them, so the sync
//! route pays no fsync for its record.
//!
//! A webhook is never lost between a job's end and its delivery being queued, though the two are
//! separate commits (the job store and the outbox are separate traits, so that a deployment can
//! keep them apart, a NATS bucket and a stream, with no transaction across them): the record
//! carries a `webhook_owed` mark from its submit, cleared by a durable commit only after the
//! delivery is in the outbox; a restart re-creates the delivery of every completed job still
//! owing one (`GenerationService::recover`). Its id is derived from the job's, and the outbox's
//! `put_new` leaves a pending one alone, so a crash between the two never makes a second delivery
//! with another `webhook-id`.
//!
//! Values are JSON; the request is kept as the API's JSON body (with its seed drawn) and checked
//! again by `parse_request` when read back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Deserialize;

use crate::error::ServiceError;
use crate::idempotency::{IdempotencyLog, IdempotencyRecord};
use crate::job::{JobId, JobState};
use crate::outbox::{Outbox, WebhookDelivery};
use crate::store::{JobRecord, JobStore};

mod records;

use records::{StoredDelivery, StoredIdempotency, body_text, decode_job, encode_job};

/// The database file inside the data folder.
pub const DATABASE_FILE: &str = "flux-rs.redb";

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("webhook_outbox");
const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");

fn store_error(what: &str, error: impl std::fmt::Display) -> ServiceError {
    ServiceError::Store(format!("{what}: {error}"))
}

/// Job records, webhook outbox and idempotency records in one redb database.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) `dir/flux-rs.redb`, creating `dir` as needed. A folder another server
    /// holds open is refused.
    pub fn open(dir: &Path) -> Result<Arc<RedbStore>, ServiceError> {
        std::fs::create_dir_all(dir)
            .map_err(|error| store_error(&format!("cannot create {}", dir.display()), error))?;
        let path = dir.join(DATABASE_FILE);
        let db = Database::create(&path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => ServiceError::Store(format!(
                "{} is in use by another process (another flux serve on the same --data-dir?)",
                path.display()
            )),
            other => store_error(&format!("cannot open {}", path.display()), other),
        })?;
        let store = RedbStore { db, path };
        store.write(true, |txn| {
            txn.open_table(JOBS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(IDEMPOTENCY)?;
            Ok(())
        })?;
        Ok(Arc::new(store))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One write transaction, committed with an fsync when `durable`.
    fn write<T>(
        &self,
        durable: bool,
        work: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, ServiceError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|error| store_error("begin write", error))?;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|error| store_error("set durability", error))?;
        }
        let value = work(&txn).map_err(|error| store_error("write", error))?;
        txn.commit().map_err(|error| store_error("commit", error))?;
        Ok(value)
    }

    fn read<T>(
        &self,
        work: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, ServiceError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|error| store_error("begin read", error))?;
        work(&txn).map_err(|error| store_error("read", error))
    }
}

/// Whether a record's new state is worth an fsync.
fn needs_fsync(record: &JobRecord) -> bool {
    record.keep_record && !matches!(record.state, JobState::Running(_))
}

impl JobStore for RedbStore {
    fn put(&self, record: JobRecord) -> Result<(), ServiceError> {
        let value = encode_job(&record)?;
        self.write(needs_fsync(&record), |txn| {
            txn.open_table(JOBS)?
                .insert(record.id.as_str(), value.as_slice())?;
            Ok(())
        })
    }

    fn get(&self, id: &JobId) -> Result<Option<JobRecord>, ServiceError> {
        let value = self.read(|txn| {
            let table = txn.open_table(JOBS)?;
            Ok(table.get(id.as_str())?.map(|guard| guard.value().to_vec()))
        })?;
        value.map(|value| decode_job(&value)).transpose()
    }

    fn update(
        &self,
        id: &JobId,
        change: &mut dyn FnMut(&mut JobRecord),
    ) -> Result<Option<JobRecord>, ServiceError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|error| store_error("begin write", error))?;
        let updated = {
            let mut table = txn
                .open_table(JOBS)
                .map_err(|error| store_error("open jobs", error))?;
            let current = table
                .get(id.as_str())
                .map_err(|error| store_error("read job", error))?
                .map(|guard| guard.value().to_vec());
            match current {
                None => None,
                Some(bytes) => {
                    let mut record = decode_job(&bytes)?;
                    change(&mut record);
                    let value = encode_job(&record)?;
                    table
                        .insert(id.as_str(), value.as_slice())
                        .map_err(|error| store_error("write job", error))?;
                    Some(record)
                }
            }
        };
        if let Some(record) = &updated
            && !needs_fsync(record)
        {
            txn.set_durability(Durability::None)
                .map_err(|error| store_error("set durability", error))?;
        }
        txn.commit().map_err(|error| store_error("commit", error))?;
        Ok(updated)
    }

    fn remove(&self, id: &JobId) -> Result<(), ServiceError> {
        // Only sync jobs' records are removed this way (queue jobs' expire): one brought back by
        // a crash is dropped by `recover`, or swept once completed, so no fsync is owed.
        self.write(false, |txn| {
            txn.open_table(JOBS)?.remove(id.as_str())?;
            Ok(())
        })
    }

    fn expire(&self, retention: Duration, now: SystemTime) -> Result<usize, ServiceError> {
        /// Only the field the sweep needs (serde skips the rest).
        #[derive(Deserialize)]
        struct Completion {
            completed_at: Option<SystemTime>,
        }
        let mut removed = 0;
        self.write(true, |txn| {
            txn.open_table(JOBS)?.retain(|_id, value| {
                let expired = match serde_json::from_slice::<Completion>(value) {
                    Ok(Completion {
                        completed_at: Some(at),
                    }) => now.duration_since(at).unwrap_or_default() >= retention,
                    Ok(_) => false,
                    // An unreadable record is kept for a person to look at, not swept silently.
                    Err(_) => false,
                };
                removed += usize::from(expired);
                !expired
            })?;
            Ok(())
        })?;
        Ok(removed)
    }

    fn unfinished(&self) -> Result<Vec<JobRecord>, ServiceError> {
        self.jobs_where(|record| !record.state.is_terminal())
    }

    fn owing_webhooks(&self) -> Result<Vec<JobRecord>, ServiceError> {
        self.jobs_where(|record| record.state.is_terminal() && record.webhook_owed)
    }
}

impl Outbox for RedbStore {
    fn put(&self, delivery: WebhookDelivery) -> Result<(), ServiceError> {
        let value = serde_json::to_vec(&StoredDelivery::from(&delivery))
            .map_err(|error| store_error("encode delivery", error))?;
        self.write(true, |txn| {
            txn.open_table(OUTBOX)?
                .insert(delivery.id.as_str(), value.as_slice())?;
            Ok(())
        })
    }

    fn put_new(&self, delivery: WebhookDelivery) -> Result<bool, ServiceError> {
        let value = serde_json::to_vec(&StoredDelivery::from(&delivery))
            .map_err(|error| store_error("encode delivery", error))?;
        // The look and the insert in one write transaction: nothing comes between them.
        self.write(true, |txn| {
            let mut table = txn.open_table(OUTBOX)?;
            if table.get(delivery.id.as_str())?.is_some() {
                return Ok(false);
            }
            table.insert(delivery.id.as_str(), value.as_slice())?;
            Ok(true)
        })
    }

    fn due(&self, now: SystemTime) -> Result<Vec<WebhookDelivery>, ServiceError> {
        Ok(self
            .deliveries()?
            .into_iter()
            .filter(|delivery| delivery.next_attempt_at <= now)
            .collect())
    }

    fn next_due(&self) -> Result<Option<SystemTime>, ServiceError> {
        Ok(self
            .deliveries()?
            .into_iter()
            .map(|delivery| delivery.next_attempt_at)
            .min())
    }

    fn remove(&self, id: &str) -> Result<(), ServiceError> {
        self.write(true, |txn| {
            txn.open_table(OUTBOX)?.remove(id)?;
            Ok(())
        })
    }
}

impl RedbStore {
    /// Every readable job record that `keep` accepts (an unreadable one is logged and left).
    fn jobs_where(
        &self,
        keep: impl Fn(&JobRecord) -> bool,
    ) -> Result<Vec<JobRecord>, ServiceError> {
        let values = self.read(|txn| {
            let table = txn.open_table(JOBS)?;
            let mut values = Vec::new();
            for entry in table.iter()? {
                let (_id, value) = entry?;
                values.push(value.value().to_vec());
            }
            Ok(values)
        })?;
        let mut kept = Vec::new();
        for value in values {
            match decode_job(&value) {
                Ok(record) if keep(&record) => kept.push(record),
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "unreadable job record left in place"),
            }
        }
        Ok(kept)
    }

    fn deliveries(&self) -> Result<Vec<WebhookDelivery>, ServiceError> {
        let values = self.read(|txn| {
            let table = txn.open_table(OUTBOX)?;
            let mut values = Vec::new();
            for entry in table.iter()? {
                values.push(entry?.1.value().to_vec());
            }
            Ok(values)
        })?;
        let mut deliveries = Vec::with_capacity(values.len());
        for value in values {
            match serde_json::from_slice::<StoredDelivery>(&value) {
                Ok(stored) => deliveries.push(stored.into()),
                Err(error) => tracing::error!(%error, "unreadable webhook delivery left in place"),
            }
        }
        Ok(deliveries)
    }
}

fn idempotency_key(caller: &[u8; 32], key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(32 + key.len());
    bytes.extend_from_slice(caller);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

impl IdempotencyLog for RedbStore {
    fn put(&self, record: &IdempotencyRecord) -> Result<(), ServiceError> {
        let stored = StoredIdempotency {
            caller: record.caller,
            key: record.key.clone(),
            body_digest: record.body_digest,
            body: body_text(&record.body)?,
            files_written_at: record.files_written_at,
        };
        let value = serde_json::to_vec(&stored)
            .map_err(|error| store_error("encode idempotency record", error))?;
        let key = idempotency_key(&record.caller, &record.key);
        self.write(true, |txn| {
            txn.open_table(IDEMPOTENCY)?
                .insert(key.as_slice(), value.as_slice())?;
            Ok(())
        })
    }

    fn remove(&self, caller: &[u8; 32], key: &str) -> Result<(), ServiceError> {
        let key = idempotency_key(caller, key);
        self.write(true, |txn| {
            txn.open_table(IDEMPOTENCY)?.remove(key.as_slice())?;
            Ok(())
        })
    }

    fn all(&self) -> Result<Vec<IdempotencyRecord>, ServiceError> {
        let values = self.read(|txn| {
            let table = txn.open_table(IDEMPOTENCY)?;
            let mut values = Vec::new();
            for entry in table.iter()? {
                values.push(entry?.1.value().to_vec());
            }
            Ok(values)
        })?;
        let mut records = Vec::with_capacity(values.len());
        for value in values {
            match serde_json::from_slice::<StoredIdempotency>(&value) {
                Ok(stored) => records.push(IdempotencyRecord {
                    caller: stored.caller,
                    key: stored.key,
                    body_digest: stored.body_digest,
                    body: Bytes::from(stored.body),
                    files_written_at: stored.files_written_at,
                }),
                Err(error) => tracing::error!(%error, "unreadable idempotency record skipped"),
            }
        }
        Ok(records)
    }
}

/// A job record as JSON (the request as the API's body, seed drawn), for another store that
/// keeps records as bytes (a fleet's key-value bucket).
pub fn encode_job_record(record: &JobRecord) -> Result<Vec<u8>, ServiceError> {
    encode_job(record)
}

/// A job record from [`encode_job_record`]'s JSON, its request checked again by its variant's
/// rules.
pub fn decode_job_record(bytes: &[u8]) -> Result<JobRecord, ServiceError> {
    decode_job(bytes)
}
