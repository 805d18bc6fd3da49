//! Idempotency records: per (caller, `Idempotency-Key`), the body digest and the final answer,
//! kept for the retention window. With a durable store (`--data-dir`) each finished answer is
//! written through to its [`IdempotencyLog`] and read back at start, so a retry after a restart
//! still gets the original answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use flux_service::{IdempotencyLog, IdempotencyRecord};

use crate::auth::Caller;

type RecordKey = (Caller, String);

/// Memory the stored answers may take together. `sync_mode` answers carry their images inline
/// (megabytes each), so without a cap a day of retention could hold gigabytes; past it the oldest
/// answers are forgotten first (a retry of a forgotten one generates again).
pub(crate) const MAX_STORED_BYTES: usize = 256 * 1024 * 1024;
/// What a record costs besides its body (key, digest, map entry), for the accounting.
const RECORD_OVERHEAD_BYTES: usize = 128;

fn record_cost(key: &RecordKey, body: &Bytes) -> usize {
    RECORD_OVERHEAD_BYTES + key.1.len() + body.len()
}

/// A moment taken just before an answer's image files were written, on both clocks. The file
/// store ages files by their modification time against the wall clock (that survives restarts),
/// while this process measures time on the monotonic clock; a record that expires by whichever
/// clock runs out first never outlives the files, even when the wall clock is stepped forward.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FilesWrittenFrom {
    monotonic: Instant,
    wall: SystemTime,
}

impl FilesWrittenFrom {
    /// The moment taken by whoever wrote the files.
    pub(crate) fn at(monotonic: Instant, wall: SystemTime) -> Self {
        FilesWrittenFrom { monotonic, wall }
    }

    #[cfg(test)]
    pub(crate) fn now() -> Self {
        FilesWrittenFrom {
            monotonic: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// Whether `retention` has passed since this moment on either clock. A wall clock stepped
    /// back (the moment is "in the future") leaves the files in place, so only the monotonic
    /// clock counts then.
    fn is_older_than(&self, retention: Duration, now: Instant, now_wall: SystemTime) -> bool {
        let monotonic_age = now.saturating_duration_since(self.monotonic);
        let wall_age = now_wall.duration_since(self.wall).unwrap_or(Duration::ZERO);
        monotonic_age >= retention || wall_age >= retention
    }
}

#[derive(Debug)]
enum State {
    /// The first request is still being answered; it began at `since`.
    Running { since: Instant },
    /// The stored 200 body.
    Done {
        body: Bytes,
        stored_at: FilesWrittenFrom,
    },
}

impl State {
    fn is_expired(&self, retention: Duration) -> bool {
        match self {
            State::Done { stored_at, .. } => {
                stored_at.is_older_than(retention, Instant::now(), SystemTime::now())
            }
            State::Running { .. } => false,
        }
    }
}

#[derive(Debug)]
struct Record {
    body_digest: [u8; 32],
    state: State,
}

/// What to do with a request that carries an `Idempotency-Key`.
#[derive(Debug)]
pub(crate) enum Begin {
    /// First use (or the earlier attempt produced nothing): generate, then `complete`.
    Fresh(Reservation),
    /// Answer with this stored 200 body.
    Replay(Bytes),
    /// The first request with this key is still running, for this long so far.
    Conflict { running_for: Duration },
    /// The key was used with a different body.
    Mismatch,
}

pub(crate) struct IdempotencyStore {
    records: Mutex<Records>,
    retention: Duration,
    max_stored_bytes: usize,
}

impl std::fmt::Debug for IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyStore")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Records {
    by_key: HashMap<RecordKey, Record>,
    /// Sum of `record_cost` over the finished records.
    stored_bytes: usize,
    /// Where finished records survive a restart, when the server has a data folder.
    log: Option<Arc<dyn IdempotencyLog>>,
}

impl Records {
    fn remove(&mut self, key: &RecordKey) {
        if let Some(Record {
            state: State::Done { body, .. },
            ..
        }) = self.by_key.remove(key)
        {
            self.stored_bytes = self.stored_bytes.saturating_sub(record_cost(key, &body));
            if let Some(log) = &self.log
                && let Err(error) = log.remove(&key.0.0, &key.1)
            {
                tracing::error!(%error, "cannot forget a stored idempotency record");
            }
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let oldest = self
            .by_key
            .iter()
            .filter_map(|(key, record)| match &record.state {
                State::Done { stored_at, .. } => Some((stored_at.monotonic, key.clone())),
                State::Running { .. } => None,
            })
            .min_by_key(|(stored_at, _)| *stored_at);
        match oldest {
            Some((_, key)) => {
                self.remove(&key);
                true
            }
            None => false,
        }
    }
}

impl IdempotencyStore {
    pub(crate) fn new(retention: Duration) -> Arc<Self> {
        Self::with_capacity(retention, MAX_STORED_BYTES)
    }

    pub(crate) fn with_capacity(retention: Duration, max_stored_bytes: usize) -> Arc<Self> {
        Arc::new(IdempotencyStore {
            records: Mutex::new(Records::default()),
            retention,
            max_stored_bytes,
        })
    }

    /// A store whose finished records are kept in `log`: those it holds are read back now
    /// (expired ones are forgotten).
    pub(crate) fn durable(retention: Duration, log: Arc<dyn IdempotencyLog>) -> Arc<Self> {
        let store = Self::new(retention);
        let stored = match log.all() {
            Ok(stored) => stored,
            Err(error) => {
                tracing::error!(%error, "cannot read the stored idempotency records");
                Vec::new()
            }
        };
        {
            let mut records = store.lock();
            records.log = Some(Arc::clone(&log));
            let now = Instant::now();
            for record in stored {
                let age = SystemTime::now()
                    .duration_since(record.files_written_at)
                    .unwrap_or_default();
                let key = (Caller(record.caller), record.key);
                let cost = record_cost(&key, &record.body);
                records.by_key.insert(
                    key.clone(),
                    Record {
                        body_digest: record.body_digest,
                        state: State::Done {
                            body: record.body,
                            stored_at: FilesWrittenFrom {
                                monotonic: now.checked_sub(age).unwrap_or(now),
                                wall: record.files_written_at,
                            },
                        },
                    },
                );
                records.stored_bytes += cost;
                if records.by_key[&key].state.is_expired(retention) {
                    records.remove(&key);
                }
            }
            while records.stored_bytes > store.max_stored_bytes && records.evict_oldest() {}
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        // A panic while holding this lock leaves the map consistent (single inserts/removes).
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn begin(
        self: &Arc<Self>,
        caller: Caller,
        key: String,
        body_digest: [u8; 32],
    ) -> Begin {
        let mut records = self.lock();
        let record_key = (caller, key);
        if let Some(record) = records.by_key.get(&record_key)
            && !record.state.is_expired(self.retention)
        {
            if record.body_digest != body_digest {
                return Begin::Mismatch;
            }
            return match &record.state {
                State::Running { since } => Begin::Conflict {
                    running_for: since.elapsed(),
                },
                State::Done { body, .. } => Begin::Replay(body.clone()),
            };
        }
        records.remove(&record_key);
        records.by_key.insert(
            record_key.clone(),
            Record {
                body_digest,
                state: State::Running {
                    since: Instant::now(),
                },
            },
        );
        Begin::Fresh(Reservation {
            store: Arc::clone(self),
            key: Some(record_key),
        })
    }

    /// Drops records older than the retention window.
    pub(crate) fn sweep(&self) -> usize {
        let mut records = self.lock();
        let expired: Vec<RecordKey> = records
            .by_key
            .iter()
            .filter(|(_, record)| record.state.is_expired(self.retention))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            records.remove(key);
        }
        expired.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_key.len()
    }
}

/// The right to answer a key first. `complete` stores the answer; dropping it without completing
/// (the generation failed, was refused or cancelled) forgets the key, so a retry generates anew.
#[derive(Debug)]
pub(crate) struct Reservation {
    store: Arc<IdempotencyStore>,
    key: Option<RecordKey>,
}

impl Reservation {
    /// Stores the answer. `files_written_from` was taken before the answer's image files were
    /// written: the record expires `retention` after it, so it never outlives those files and a
    /// replay never hands out URLs that already answer 404.
    pub(crate) fn complete(mut self, body: Bytes, files_written_from: FilesWrittenFrom) {
        if let Some(key) = self.key.take() {
            let cost = record_cost(&key, &body);
            let mut records = self.store.lock();
            let Some(body_digest) = records.by_key.get(&key).map(|record| record.body_digest)
            else {
                return;
            };
            if let Some(log) = &records.log {
                let stored = IdempotencyRecord {
                    caller: key.0.0,
                    key: key.1.clone(),
                    body_digest,
                    body: body.clone(),
                    files_written_at: files_written_from.wall,
                };
                if let Err(error) = log.put(&stored) {
                    // Still answered from memory until a restart.
                    tracing::error!(%error, "cannot store an idempotency record durably");
                }
            }
            let Some(record) = records.by_key.get_mut(&key) else {
                return;
            };
            record.state = State::Done {
                body,
                stored_at: files_written_from,
            };
            records.stored_bytes += cost;
            while records.stored_bytes > self.store.max_stored_bytes && records.evict_oldest() {}
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut records = self.store.lock();
            if matches!(
                records.by_key.get(&key),
                Some(Record {
                    state: State::Running { .. },
                    ..
                })
            ) {
                records.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replay_conflict_mismatch_and_release() {
        let store = IdempotencyStore::new(Duration::from_secs(60));
        let caller = Caller::ANONYMOUS;
        let Begin::Fresh(first) = store.begin(caller, "k".into(), [1; 32]) else {
            panic!("first use must be fresh");
        };
        assert!(matches!(
            store.begin(caller, "k".into(), [1; 32]),
            Begin::Conflict { .. }
        ));
        assert!(matches!(
            store.begin(caller, "k".into(), [2; 32]),
            Begin::Mismatch
        ));
        drop(first);
        assert_eq!(store.len(), 0, "a dropped reservation forgets the key");
        let Begin::Fresh(second) = store.begin(caller, "k".into(), [1; 32]) else {
            panic!("after a failure the key is fresh again");
        };
        second.complete(Bytes::from_static(b"{}"), FilesWrittenFrom::now());
        match store.begin(caller, "k".into(), [1; 32]) {
            Begin::Replay(body) => assert_eq!(&body[..], b"{}"),
            other => panic!("expected a replay, got {other:?}"),
        }
        assert!(matches!(
            store.begin(caller, "k".into(), [3; 32]),
            Begin::Mismatch
        ));
    }

    #[test]
    fn finished_records_survive_a_reopen_of_their_durable_log() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Duration::from_secs(60);
        {
            let log = flux_service::RedbStore::open(dir.path()).unwrap();
            let store = IdempotencyStore::durable(retention, log);
            let Begin::Fresh(kept) = store.begin(Caller::ANONYMOUS, "k".into(), [1; 32]) else {
                panic!("fresh");
            };
            kept.complete(Bytes::from_static(b"{\"a\":1}"), FilesWrittenFrom::now());
            let Begin::Fresh(old) = store.begin(Caller::ANONYMOUS, "old".into(), [2; 32]) else {
                panic!("fresh");
            };
            // Its files are older than the retention by the wall clock: gone after the reopen.
            old.complete(
                Bytes::from_static(b"{}"),
                FilesWrittenFrom {
                    monotonic: Instant::now(),
                    wall: SystemTime::now() - 2 * retention,
                },
            );
            let Begin::Fresh(_running) = store.begin(Caller::ANONYMOUS, "run".into(), [3; 32])
            else {
                panic!("fresh");
            };
        }
        let log = flux_service::RedbStore::open(dir.path()).unwrap();
        let store = IdempotencyStore::durable(retention, log.clone());
        match store.begin(Caller::ANONYMOUS, "k".into(), [1; 32]) {
            Begin::Replay(body) => assert_eq!(&body[..], b"{\"a\":1}"),
            other => panic!("expected a replay, got {other:?}"),
        }
        assert!(matches!(
            store.begin(Caller::ANONYMOUS, "k".into(), [9; 32]),
            Begin::Mismatch
        ));
        assert!(matches!(
            store.begin(Caller::ANONYMOUS, "old".into(), [2; 32]),
            Begin::Fresh(_)
        ));
        assert_eq!(flux_service::IdempotencyLog::all(&*log).unwrap().len(), 1);
    }

    #[test]
    fn stored_answers_are_capped_oldest_first() {
        let body = Bytes::from(vec![b'x'; 1000]);
        let cost = record_cost(&(Caller::ANONYMOUS, "k0".to_owned()), &body);
        let store = IdempotencyStore::with_capacity(Duration::from_secs(60), 2 * cost);
        for n in 0..3 {
            let Begin::Fresh(reservation) =
                store.begin(Caller::ANONYMOUS, format!("k{n}"), [n; 32])
            else {
                panic!("fresh");
            };
            reservation.complete(body.clone(), FilesWrittenFrom::now());
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(store.len(), 2);
        assert!(matches!(
            store.begin(Caller::ANONYMOUS, "k0".into(), [0; 32]),
            Begin::Fresh(_)
        ));
        assert!(matches!(
            store.begin(Caller::ANONYMOUS, "k2".into(), [2; 32]),
            Begin::Replay(_)
        ));
        assert!(store.lock().stored_bytes <= 2 * cost);
    }

    #[test]
    fn records_expire_after_retention() {
        let store = IdempotencyStore::new(Duration::from_millis(20));
        let Begin::Fresh(reservation) = store.begin(Caller::ANONYMOUS, "k".into(), [1; 32]) else {
            panic!("fresh");
        };
        reservation.complete(Bytes::from_static(b"{}"), FilesWrittenFrom::now());
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(
            store.begin(Caller::ANONYMOUS, "k".into(), [9; 32]),
            Begin::Fresh(_)
        ));
        assert_eq!(store.sweep(), 0, "the fresh record is running, not swept");
    }

    /// Stores an answer whose files were written from `files_written_from`, waits `wait`, and
    /// says whether the same request would then generate again (the record has expired).
    fn generates_again(
        retention: Duration,
        files_written_from: FilesWrittenFrom,
        wait: Duration,
    ) -> bool {
        let store = IdempotencyStore::new(retention);
        let Begin::Fresh(reservation) = store.begin(Caller::ANONYMOUS, "k".into(), [1; 32]) else {
            panic!("fresh");
        };
        reservation.complete(Bytes::from_static(b"{}"), files_written_from);
        std::thread::sleep(wait);
        matches!(
            store.begin(Caller::ANONYMOUS, "k".into(), [1; 32]),
            Begin::Fresh(_)
        )
    }

    #[test]
    fn a_record_expires_with_the_files_written_before_it_was_stored() {
        // The files were written 250 ms before the answer was stored (a slow disk, say).
        let files_written_from = FilesWrittenFrom {
            monotonic: Instant::now() - Duration::from_millis(250),
            wall: SystemTime::now() - Duration::from_millis(250),
        };
        assert!(
            generates_again(
                Duration::from_millis(300),
                files_written_from,
                Duration::from_millis(100)
            ),
            "300 ms after the files were written the record must be gone with them"
        );
    }

    #[test]
    fn a_record_expires_when_the_wall_clock_says_its_files_have() {
        // The file store would already delete these files: by the wall clock they are two
        // retentions old, as after the clock was stepped forward. The monotonic clock says they
        // are new.
        let retention = Duration::from_secs(3600);
        let files_written_from = FilesWrittenFrom {
            monotonic: Instant::now(),
            wall: SystemTime::now() - 2 * retention,
        };
        assert!(
            generates_again(retention, files_written_from, Duration::ZERO),
            "a replay would hand out URLs of deleted files"
        );
    }

    #[test]
    fn a_wall_clock_stepped_back_leaves_the_monotonic_clock_in_charge() {
        let retention = Duration::from_secs(60);
        let now = Instant::now();
        let now_wall = SystemTime::now();
        let written_in_the_wall_clocks_future = FilesWrittenFrom {
            monotonic: now - Duration::from_secs(10),
            wall: now_wall + Duration::from_secs(3600),
        };
        assert!(!written_in_the_wall_clocks_future.is_older_than(retention, now, now_wall));
        assert!(written_in_the_wall_clocks_future.is_older_than(
            retention,
            now + retention,
            now_wall
        ));
        let fresh = FilesWrittenFrom {
            monotonic: now,
            wall: now_wall,
        };
        assert!(!fresh.is_older_than(retention, now + Duration::from_secs(59), now_wall));
        assert!(fresh.is_older_than(retention, now, now_wall + Duration::from_secs(60)));
    }
}
