//! How the durable store writes its values: job records, webhook deliveries and idempotency
//! records as JSON, the request as the API's body (seed drawn) checked again on the way back, by
//! the rules of its model's variant.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use flux_types::{GeneratorError, LogLine, QueueProgress, VariantSpec, parse_request_for};
use serde::{Deserialize, Serialize};

use super::store_error;
use crate::error::ServiceError;
use crate::job::{JobFailure, JobId, JobResult, JobState, Owner, StoredResult};
use crate::outbox::WebhookDelivery;
use crate::store::JobRecord;

/// Answers are JSON, so text.
pub(super) fn body_text(body: &Bytes) -> Result<String, ServiceError> {
    String::from_utf8(body.to_vec()).map_err(|error| store_error("a stored body", error))
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredJob {
    id: String,
    owner: [u8; 32],
    model: String,
    /// The API body, seed included.
    request: serde_json::Value,
    state: StoredState,
    logs: Vec<LogLine>,
    webhook: Option<String>,
    /// Absent in records written before the mark existed: nothing owed.
    #[serde(default)]
    webhook_owed: bool,
    submitted_at: SystemTime,
    completed_at: Option<SystemTime>,
    keep_record: bool,
}

#[derive(Serialize, Deserialize)]
enum StoredState {
    Queued,
    Running(QueueProgress),
    Succeeded {
        body: String,
        written_from_wall: SystemTime,
    },
    Failed(StoredFailure),
    Cancelled,
}

/// [`JobFailure`] (and the [`GeneratorError`] inside it) as stored.
#[derive(Serialize, Deserialize)]
enum StoredFailure {
    Overloaded {
        retry_after: Option<Duration>,
    },
    RateLimited {
        retry_after: Option<Duration>,
    },
    NotReady,
    ShuttingDown,
    InvalidRequest {
        param: Option<String>,
        message: String,
    },
    ExceedsMemoryLimit {
        message: String,
    },
    Cancelled,
    Inference {
        detail: String,
    },
    Remote {
        status: Option<u16>,
        detail: String,
    },
    TimedOut {
        limit_secs: u64,
    },
    Storage,
    BadGeneration,
}

impl From<&JobFailure> for StoredFailure {
    fn from(failure: &JobFailure) -> Self {
        match failure {
            JobFailure::Generator(error) => match error {
                GeneratorError::Overloaded { retry_after } => StoredFailure::Overloaded {
                    retry_after: *retry_after,
                },
                GeneratorError::RateLimited { retry_after } => StoredFailure::RateLimited {
                    retry_after: *retry_after,
                },
                GeneratorError::NotReady => StoredFailure::NotReady,
                GeneratorError::ShuttingDown => StoredFailure::ShuttingDown,
                GeneratorError::InvalidRequest { param, message } => {
                    StoredFailure::InvalidRequest {
                        param: param.clone(),
                        message: message.clone(),
                    }
                }
                GeneratorError::ExceedsMemoryLimit { message } => {
                    StoredFailure::ExceedsMemoryLimit {
                        message: message.clone(),
                    }
                }
                GeneratorError::Cancelled => StoredFailure::Cancelled,
                GeneratorError::Inference { detail } => StoredFailure::Inference {
                    detail: detail.clone(),
                },
                GeneratorError::Remote { status, detail } => StoredFailure::Remote {
                    status: *status,
                    detail: detail.clone(),
                },
                // A variant added later: kept as an inference failure with its text.
                other => StoredFailure::Inference {
                    detail: other.to_string(),
                },
            },
            JobFailure::TimedOut { limit_secs } => StoredFailure::TimedOut {
                limit_secs: *limit_secs,
            },
            JobFailure::Storage => StoredFailure::Storage,
            JobFailure::BadGeneration => StoredFailure::BadGeneration,
        }
    }
}

impl From<StoredFailure> for JobFailure {
    fn from(stored: StoredFailure) -> Self {
        let generator = JobFailure::Generator;
        match stored {
            StoredFailure::Overloaded { retry_after } => {
                generator(GeneratorError::Overloaded { retry_after })
            }
            StoredFailure::RateLimited { retry_after } => {
                generator(GeneratorError::RateLimited { retry_after })
            }
            StoredFailure::NotReady => generator(GeneratorError::NotReady),
            StoredFailure::ShuttingDown => generator(GeneratorError::ShuttingDown),
            StoredFailure::InvalidRequest { param, message } => {
                generator(GeneratorError::InvalidRequest { param, message })
            }
            StoredFailure::ExceedsMemoryLimit { message } => {
                generator(GeneratorError::ExceedsMemoryLimit { message })
            }
            StoredFailure::Cancelled => generator(GeneratorError::Cancelled),
            StoredFailure::Inference { detail } => generator(GeneratorError::Inference { detail }),
            StoredFailure::Remote { status, detail } => {
                generator(GeneratorError::Remote { status, detail })
            }
            StoredFailure::TimedOut { limit_secs } => JobFailure::TimedOut { limit_secs },
            StoredFailure::Storage => JobFailure::Storage,
            StoredFailure::BadGeneration => JobFailure::BadGeneration,
        }
    }
}

pub(super) fn encode_job(record: &JobRecord) -> Result<Vec<u8>, ServiceError> {
    let state = match &record.state {
        JobState::Queued => StoredState::Queued,
        JobState::Running(progress) => StoredState::Running(*progress),
        JobState::Completed(JobResult::Succeeded(stored)) => StoredState::Succeeded {
            body: body_text(&stored.body)?,
            written_from_wall: stored.written_from_wall,
        },
        JobState::Completed(JobResult::Failed(failure)) => StoredState::Failed(failure.into()),
        JobState::Completed(JobResult::Cancelled) => StoredState::Cancelled,
    };
    let request = serde_json::to_value(record.request.request())
        .map_err(|error| store_error("encode request", error))?;
    serde_json::to_vec(&StoredJob {
        id: record.id.to_string(),
        owner: record.owner.0,
        model: record.model.clone(),
        request,
        state,
        logs: record.logs.clone(),
        webhook: record.webhook.clone(),
        webhook_owed: record.webhook_owed,
        submitted_at: record.submitted_at,
        completed_at: record.completed_at,
        keep_record: record.keep_record,
    })
    .map_err(|error| store_error("encode job", error))
}

/// The monotonic instant `wall` was, as near as this process can tell (a moment before the
/// process started comes out as the earliest instant it can represent, or now).
pub(super) fn instant_of(wall: SystemTime) -> Instant {
    let now = Instant::now();
    let age = SystemTime::now().duration_since(wall).unwrap_or_default();
    now.checked_sub(age).unwrap_or(now)
}

pub(super) fn decode_job(bytes: &[u8]) -> Result<JobRecord, ServiceError> {
    let stored: StoredJob =
        serde_json::from_slice(bytes).map_err(|error| store_error("decode job", error))?;
    let id = JobId::parse(&stored.id)
        .ok_or_else(|| ServiceError::Store(format!("a stored job id {:?}", stored.id)))?;
    let body = serde_json::to_vec(&stored.request)
        .map_err(|error| store_error("re-encode request", error))?;
    // Checked by the rules of the route it was accepted on (a schnell job's steps and guidance).
    let variant = VariantSpec::named(&stored.model).unwrap_or(VariantSpec::dev());
    let request = parse_request_for(&body, variant)
        .map_err(|error| store_error(&format!("the stored request of job {id}"), error))?;
    let state = match stored.state {
        StoredState::Queued => JobState::Queued,
        StoredState::Running(progress) => JobState::Running(progress),
        StoredState::Succeeded {
            body,
            written_from_wall,
        } => JobState::Completed(JobResult::Succeeded(StoredResult {
            body: Bytes::from(body),
            written_from: instant_of(written_from_wall),
            written_from_wall,
        })),
        StoredState::Failed(failure) => JobState::Completed(JobResult::Failed(failure.into())),
        StoredState::Cancelled => JobState::Completed(JobResult::Cancelled),
    };
    Ok(JobRecord {
        id,
        owner: Owner(stored.owner),
        model: stored.model,
        request,
        state,
        logs: stored.logs,
        webhook: stored.webhook,
        webhook_owed: stored.webhook_owed,
        submitted_at: stored.submitted_at,
        completed_at: stored.completed_at,
        keep_record: stored.keep_record,
    })
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredDelivery {
    id: String,
    job: String,
    url: String,
    body: String,
    attempts: u32,
    created_at: SystemTime,
    next_attempt_at: SystemTime,
}

impl From<&WebhookDelivery> for StoredDelivery {
    fn from(delivery: &WebhookDelivery) -> Self {
        StoredDelivery {
            id: delivery.id.clone(),
            job: delivery.job.clone(),
            url: delivery.url.clone(),
            // Webhook bodies are built as JSON text; a lossy copy is never needed in practice.
            body: String::from_utf8_lossy(&delivery.body).into_owned(),
            attempts: delivery.attempts,
            created_at: delivery.created_at,
            next_attempt_at: delivery.next_attempt_at,
        }
    }
}

impl From<StoredDelivery> for WebhookDelivery {
    fn from(stored: StoredDelivery) -> Self {
        WebhookDelivery {
            id: stored.id,
            job: stored.job,
            url: stored.url,
            body: Bytes::from(stored.body),
            attempts: stored.attempts,
            created_at: stored.created_at,
            next_attempt_at: stored.next_attempt_at,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredIdempotency {
    pub(super) caller: [u8; 32],
    pub(super) key: String,
    pub(super) body_digest: [u8; 32],
    pub(super) body: String,
    pub(super) files_written_at: SystemTime,
}
