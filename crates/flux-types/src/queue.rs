//! Wire bodies of the queue API (`/api/v1/queue/flux/{model}`): the submit answer, the status
//! object (also each server-sent event of the status stream), the cancel answer, the webhook body.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorBody};
use crate::response::GenerateResponse;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QueueState {
    /// Accepted, waiting for the model.
    InQueue,
    /// Being generated.
    InProgress,
    /// Done; `outcome` says how.
    Completed,
}

/// How a completed job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its result is at `response_url`.
    Succeeded,
    /// Generation failed; `error` says why.
    Failed,
    /// Cancelled before it finished; nothing more was generated for it.
    Cancelled,
}

/// Denoising progress of a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QueueProgress {
    /// Denoising steps finished so far.
    pub step: u32,
    /// Denoising steps of this job.
    pub total_steps: u32,
}

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    pub message: String,
    /// When, as RFC 3339 UTC with milliseconds.
    pub timestamp: String,
}

/// `202` answer of a submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QueueSubmitted {
    /// The job's id (what the status, result and cancel URLs name).
    pub request_id: String,
    /// Always `IN_QUEUE`.
    pub status: QueueState,
    /// Jobs ahead of this one (0: next to run).
    pub queue_position: u32,
    pub status_url: String,
    pub response_url: String,
    pub cancel_url: String,
}

/// The status object: answer of the status route and each event of the status stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QueueStatus {
    pub request_id: String,
    pub status: QueueState,
    /// Jobs ahead of this one; only while `IN_QUEUE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// Only while `IN_PROGRESS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<QueueProgress>,
    /// The job's log, oldest first; only with `?logs=1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<LogLine>>,
    /// Why it failed; only when `COMPLETED` with outcome `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// Only when `COMPLETED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    pub response_url: String,
}

/// `202` answer of a cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelAccepted {
    /// Always `CANCELLATION_REQUESTED`.
    #[schemars(extend("enum" = ["CANCELLATION_REQUESTED"]))]
    pub status: String,
}

impl CancelAccepted {
    pub fn requested() -> Self {
        CancelAccepted {
            status: "CANCELLATION_REQUESTED".to_owned(),
        }
    }
}

/// Whether a webhook reports a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WebhookStatus {
    Ok,
    Error,
}

/// The body POSTed to `?fal_webhook=URL` when a job completes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookBody {
    pub request_id: String,
    /// `OK` when the job succeeded; `ERROR` when it failed or was cancelled.
    pub status: WebhookStatus,
    /// The result route's 200 body, when `OK`; else `null`.
    pub payload: Option<GenerateResponse>,
    /// The job's error body (code `cancelled` for a cancelled job), when `ERROR`; else `null`.
    pub error: Option<ErrorBody>,
}
