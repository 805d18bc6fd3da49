//! The error body every non-2xx answer carries, and its machine-readable codes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Machine-readable error codes (the `error.code` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the body is not JSON, or not a JSON object.
    InvalidJson,
    /// 400: a field breaks a rule (missing, wrong JSON type, out of range, unknown name), or the
    /// `Idempotency-Key` header is malformed.
    InvalidParameter,
    /// 400: the body has a field the API does not know.
    UnknownField,
    /// 401: missing or unknown API key.
    Unauthorized,
    /// 404: unknown route, or a file that does not exist (any more). Also the code of a 405
    /// answer (a known path with a method it does not serve).
    NotFound,
    /// 409: a request with the same `Idempotency-Key` is still running.
    IdempotencyConflict,
    /// 422: the `Idempotency-Key` was used before with a different body.
    IdempotencyMismatch,
    /// 413: the body is over 64 KiB.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 429: this API key is over its request rate; see `Retry-After`.
    RateLimited,
    /// 429: the generation queue is full and nothing was queued; see `Retry-After`.
    Overloaded,
    /// 500: generation failed, or did not finish within the server's request timeout.
    InferenceFailed,
    /// 503: the model is still loading.
    NotReady,
    /// 503: the server is draining for shutdown.
    ShuttingDown,
    /// 503: the server cannot store images (its files folder is full, read-only or unusable);
    /// nothing about the request is at fault, and a `sync_mode` request still works.
    StorageUnavailable,
    /// 400, 414 or 431: the HTTP request itself could not be parsed (a malformed request line or
    /// header, a URI or headers too long), or it has two `Authorization` headers.
    MalformedRequest,
    /// 400: the queued job's result was asked for before the job completed.
    NotCompleted,
    /// 400: a cancel of a job that has already completed.
    AlreadyCompleted,
    /// 410: the queued job's result was asked for, but the job was cancelled.
    Cancelled,
    /// 422: the request's estimated peak memory (model, image size, number of images) is over
    /// the server's memory limit, so it can never run there; nothing was queued. Ask for a
    /// smaller image or fewer images (retrying the same request cannot succeed).
    ExceedsMemoryLimit,
}

impl ErrorCode {
    /// The wire name (`"invalid_parameter"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::IdempotencyMismatch => "idempotency_mismatch",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::InferenceFailed => "inference_failed",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::NotCompleted => "not_completed",
            ErrorCode::AlreadyCompleted => "already_completed",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::ExceedsMemoryLimit => "exceeds_memory_limit",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation; for a bad body it names the field and the rule.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ApiError,
    /// The request's id, also sent as the `X-Request-Id` header.
    pub request_id: String,
}
