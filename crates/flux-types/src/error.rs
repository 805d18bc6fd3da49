//! The error body every non-2xx answer carries, and its machine-readable codes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Machine-readable error codes (the `error.code` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    InvalidJson,
    InvalidParameter,
    UnknownField,
    Unauthorized,
    NotFound,
    IdempotencyConflict,
    IdempotencyMismatch,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    Overloaded,
    InferenceFailed,
    NotReady,
    ShuttingDown,
}

/// The `error` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ApiError,
    pub request_id: String,
}
