//! Idempotency records: per (caller, `Idempotency-Key`), the body digest and the final answer,
//! kept for the retention window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;

use crate::auth::Caller;

type RecordKey = (Caller, String);

#[derive(Debug)]
enum State {
    /// The first request is still being answered.
    Running,
    /// The stored 200 body.
    Done { body: Bytes, stored_at: Instant },
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
    /// The first request with this key is still running.
    Conflict,
    /// The key was used with a different body.
    Mismatch,
}

#[derive(Debug)]
pub(crate) struct IdempotencyStore {
    records: Mutex<HashMap<RecordKey, Record>>,
    retention: Duration,
}

impl IdempotencyStore {
    pub(crate) fn new(retention: Duration) -> Arc<Self> {
        Arc::new(IdempotencyStore {
            records: Mutex::new(HashMap::new()),
            retention,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RecordKey, Record>> {
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
        if let Some(record) = records.get(&record_key) {
            let expired = matches!(&record.state,
                State::Done { stored_at, .. } if stored_at.elapsed() >= self.retention);
            if !expired {
                if record.body_digest != body_digest {
                    return Begin::Mismatch;
                }
                return match &record.state {
                    State::Running => Begin::Conflict,
                    State::Done { body, .. } => Begin::Replay(body.clone()),
                };
            }
        }
        records.insert(
            record_key.clone(),
            Record {
                body_digest,
                state: State::Running,
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
        let before = records.len();
        records.retain(|_, record| match &record.state {
            State::Running => true,
            State::Done { stored_at, .. } => stored_at.elapsed() < self.retention,
        });
        before - records.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
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
    pub(crate) fn complete(mut self, body: Bytes) {
        if let Some(key) = self.key.take() {
            let mut records = self.store.lock();
            if let Some(record) = records.get_mut(&key) {
                record.state = State::Done {
                    body,
                    stored_at: Instant::now(),
                };
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut records = self.store.lock();
            if matches!(
                records.get(&key),
                Some(Record {
                    state: State::Running,
                    ..
                })
            ) {
                records.remove(&key);
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
            Begin::Conflict
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
        second.complete(Bytes::from_static(b"{}"));
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
    fn records_expire_after_retention() {
        let store = IdempotencyStore::new(Duration::from_millis(20));
        let Begin::Fresh(reservation) = store.begin(Caller::ANONYMOUS, "k".into(), [1; 32]) else {
            panic!("fresh");
        };
        reservation.complete(Bytes::from_static(b"{}"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(
            store.begin(Caller::ANONYMOUS, "k".into(), [9; 32]),
            Begin::Fresh(_)
        ));
        assert_eq!(store.sweep(), 0, "the fresh record is running, not swept");
    }
}
