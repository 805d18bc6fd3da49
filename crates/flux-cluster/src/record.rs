//! A job's record in the fleet's key-value bucket: flux-service's job record (the same JSON the
//! one-machine store writes) with what a fleet adds: the attempt, the worker running it, its last
//! heartbeat, and the digest of the body of an idempotent submit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flux_service::{
    JobFailure, JobRecord, JobResult, JobState, decode_job_record, encode_job_record,
};
use flux_types::{GeneratorError, LogLine};
use serde::{Deserialize, Serialize};

use crate::error::ClusterError;

/// One job's record, as the bucket holds it.
#[derive(Debug, Clone)]
pub struct FleetRecord {
    pub job: JobRecord,
    /// Attempts started (0 while it waits for its first).
    pub attempt: u32,
    /// The worker running the current attempt.
    pub worker: Option<String>,
    /// When that worker last said it is alive (while running).
    pub heartbeat: SystemTime,
    /// SHA-256 of the request body when it was submitted with an `Idempotency-Key`.
    pub body_digest: Option<[u8; 32]>,
    /// How long an attempt may run, from its start: the submit's deadline (`flux serve
    /// --request-timeout` on the API node that took it), as on one machine. A worker's own
    /// `--job-timeout` bounds it too.
    pub time_limit: Option<Duration>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    job: serde_json::Value,
    attempt: u32,
    worker: Option<String>,
    heartbeat_ms: u64,
    body_digest: Option<[u8; 32]>,
    /// Absent in records written before it existed: no limit but the worker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_limit_ms: Option<u64>,
}

/// A duration in whole milliseconds, as the wire formats keep them (saturating).
pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or_default()
}

impl FleetRecord {
    /// A new job's record: nothing attempted yet.
    pub fn new(job: JobRecord, body_digest: Option<[u8; 32]>) -> Self {
        FleetRecord {
            heartbeat: job.submitted_at,
            job,
            attempt: 0,
            worker: None,
            body_digest,
            time_limit: None,
        }
    }

    pub fn encode(&self) -> Result<Bytes, ClusterError> {
        let job = encode_job_record(&self.job).map_err(|error| ClusterError::Decode {
            what: "a job record",
            message: error.to_string(),
        })?;
        let job: serde_json::Value =
            serde_json::from_slice(&job).map_err(|error| decode("a job record", error))?;
        let wire = Wire {
            job,
            attempt: self.attempt,
            worker: self.worker.clone(),
            heartbeat_ms: millis(self.heartbeat),
            body_digest: self.body_digest,
            time_limit_ms: self.time_limit.map(duration_ms),
        };
        serde_json::to_vec(&wire)
            .map(Bytes::from)
            .map_err(|error| decode("a fleet record", error))
    }

    pub fn decode(bytes: &[u8]) -> Result<FleetRecord, ClusterError> {
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|error| decode("a fleet record", error))?;
        let job = serde_json::to_vec(&wire.job).map_err(|error| decode("a job record", error))?;
        let job = decode_job_record(&job).map_err(|error| ClusterError::Decode {
            what: "a job record",
            message: error.to_string(),
        })?;
        Ok(FleetRecord {
            job,
            attempt: wire.attempt,
            worker: wire.worker,
            heartbeat: UNIX_EPOCH + Duration::from_millis(wire.heartbeat_ms),
            body_digest: wire.body_digest,
            time_limit: wire.time_limit_ms.map(Duration::from_millis),
        })
    }

    /// Whether the current attempt is `worker`'s `attempt`.
    pub fn is_attempt(&self, worker: &str, attempt: u32) -> bool {
        self.attempt == attempt && self.worker.as_deref() == Some(worker)
    }

    /// Ends the job failed because its attempts are spent. A worker's claim and the reaper both
    /// write it, so a job given up on reads the same whichever of them gave up.
    pub(crate) fn give_up(&mut self, max_deliver: u32, now: SystemTime) {
        self.job.state = JobState::Completed(JobResult::Failed(JobFailure::Generator(
            GeneratorError::Inference {
                detail: format!(
                    "gave up after {max_deliver} attempts (each worker stopped or failed)"
                ),
            },
        )));
        self.job.completed_at = Some(now);
        self.job.logs.push(log_line_at(
            format!("failed: gave up after {max_deliver} attempts"),
            now,
        ));
    }

    /// How long since the last sign of life of its attempt (or since its submit).
    pub fn silent_for(&self, now: SystemTime) -> Duration {
        now.duration_since(self.heartbeat).unwrap_or_default()
    }
}

/// A line of a job's log, written now.
pub(crate) fn log_line(message: impl Into<String>) -> LogLine {
    log_line_at(message, SystemTime::now())
}

/// A line of a job's log, written at `at`.
pub(crate) fn log_line_at(message: impl Into<String>, at: SystemTime) -> LogLine {
    LogLine {
        message: message.into(),
        timestamp: flux_service::rfc3339_millis(at),
    }
}

fn decode(what: &'static str, error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Decode {
        what,
        message: error.to_string(),
    }
}
