//! What a job is: its id, its owner, its state, and how it ended.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use flux_types::{GeneratorError, LogLine, Outcome, QueueProgress};

/// A job's id: 128 random bits as 32 hex digits (unguessable; the owner check comes on top).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    pub(crate) fn random() -> JobId {
        let bits: u128 = rand::random();
        JobId(format!("{bits:032x}"))
    }

    /// An id as a caller wrote it; `None` when it cannot be one of ours.
    pub fn parse(text: &str) -> Option<JobId> {
        (text.len() == 32
            && text
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| JobId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who submitted a job (the digest of an API key, or the anonymous caller): only the same owner
/// sees it. `Debug` shows no key material.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(pub [u8; 32]);

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owner(..)")
    }
}

/// A finished job's result as the result store kept it: the serialized 200 body, and when its
/// files began to be written (records must not outlive the files).
#[derive(Debug, Clone)]
pub struct StoredResult {
    pub body: Bytes,
    pub written_from: Instant,
    pub written_from_wall: SystemTime,
}

/// Why a job failed, for the transport to map to its answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum JobFailure {
    /// The generator refused or failed.
    Generator(GeneratorError),
    /// The job did not finish within its deadline, in whole seconds.
    TimedOut { limit_secs: u64 },
    /// The result could not be stored (the store logged why).
    Storage,
    /// The generator answered something unusable (the store logged why).
    BadGeneration,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub enum JobResult {
    Succeeded(StoredResult),
    Failed(JobFailure),
    Cancelled,
}

impl JobResult {
    pub fn outcome(&self) -> Outcome {
        match self {
            JobResult::Succeeded(_) => Outcome::Succeeded,
            JobResult::Failed(_) => Outcome::Failed,
            JobResult::Cancelled => Outcome::Cancelled,
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone)]
pub enum JobState {
    Queued,
    Running(QueueProgress),
    Completed(JobResult),
}

impl JobState {
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobState::Completed(_))
    }
}

/// A job's status at one moment: what the status route answers and each event carries.
#[derive(Debug, Clone)]
pub struct JobStatus {
    pub id: JobId,
    pub state: JobState,
    /// Jobs ahead of it, while queued.
    pub queue_position: Option<u32>,
    pub logs: Vec<LogLine>,
}
