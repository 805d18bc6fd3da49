//! The one place where failures become HTTP answers: status, headers and the error body.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flux_service::JobFailure;
use flux_types::{ApiError, ErrorBody, ErrorCode, GeneratorError};

tokio::task_local! {
    /// The id of the request being answered; set by the request-id middleware around every
    /// handler so that any error body can carry it.
    pub(crate) static REQUEST_ID: String;
}

/// The request id of the current request, or `"unknown"` outside the middleware.
pub(crate) fn current_request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A non-2xx answer: renders `{"error": {...}, "request_id": "..."}` with the status of its code,
/// plus `Retry-After` (429/503 hints) and `WWW-Authenticate: Bearer` (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiErrorResponse {
    status: StatusCode,
    error: ApiError,
    retry_after_secs: Option<u64>,
    allow: Option<String>,
}

/// The status every error code is answered with (the contract's error table).
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson
        | ErrorCode::InvalidParameter
        | ErrorCode::UnknownField
        | ErrorCode::MalformedRequest
        | ErrorCode::NotCompleted
        | ErrorCode::AlreadyCompleted => StatusCode::BAD_REQUEST,
        ErrorCode::Cancelled => StatusCode::GONE,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::IdempotencyConflict => StatusCode::CONFLICT,
        ErrorCode::IdempotencyMismatch | ErrorCode::ExceedsMemoryLimit => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::RateLimited | ErrorCode::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::NotReady | ErrorCode::ShuttingDown | ErrorCode::StorageUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::InferenceFailed => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whole seconds, rounded up, never 0: what `Retry-After` carries.
pub fn whole_seconds_up(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl ApiErrorResponse {
    pub fn new(code: ErrorCode, message: impl Into<String>, param: Option<String>) -> Self {
        ApiErrorResponse {
            status: status_for(code),
            error: ApiError {
                code,
                message: message.into(),
                param,
            },
            retry_after_secs: None,
            allow: None,
        }
    }

    pub fn with_param(
        code: ErrorCode,
        param: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(code, message, Some(param.into()))
    }

    /// Adds `Retry-After`, in whole seconds rounded up.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after_secs = Some(whole_seconds_up(wait));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn error(&self) -> &ApiError {
        &self.error
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such resource", None)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message, None)
    }

    /// A method the route does not serve. The contract has no code of its own for it; it is
    /// answered 405 with `Allow`, and `not_found` as the code (no resource for that method).
    pub fn method_not_allowed(method: &str, path: &str, allow: Option<String>) -> Self {
        let mut response = Self::new(
            ErrorCode::NotFound,
            format!("{path} does not serve {method}"),
            None,
        );
        response.status = StatusCode::METHOD_NOT_ALLOWED;
        response.allow = allow;
        response
    }

    pub fn inference_failed() -> Self {
        Self::new(
            ErrorCode::InferenceFailed,
            "image generation failed; the server log has the detail under this request id",
            None,
        )
    }

    /// Maps a backend failure. Details of internal failures are logged here, with the request id,
    /// and never sent.
    pub fn from_generator_error(error: &GeneratorError, overload_hint: Duration) -> Self {
        Self::generator_answer(error, overload_hint, true)
    }

    /// The answer for a generator error; `log` says whether an inference failure's detail goes to
    /// the log now (once per failure: a job's status read again and again does not repeat it).
    fn generator_answer(error: &GeneratorError, overload_hint: Duration, log: bool) -> Self {
        match error {
            GeneratorError::Overloaded { retry_after } => Self::new(
                ErrorCode::Overloaded,
                "the generation queue is full; nothing was queued, retry later",
                None,
            )
            .retry_after(retry_after.unwrap_or(overload_hint)),
            // The upstream's limit is on this server's key, not on the caller's: to the caller
            // it is capacity that is not there for now.
            GeneratorError::RateLimited { retry_after } => Self::new(
                ErrorCode::Overloaded,
                "the upstream generator's rate limit was reached; nothing was queued, retry later",
                None,
            )
            .retry_after(retry_after.unwrap_or(overload_hint)),
            GeneratorError::NotReady => Self::not_ready(),
            GeneratorError::ShuttingDown => Self::shutting_down(),
            GeneratorError::InvalidRequest { param, message } => {
                Self::new(ErrorCode::InvalidParameter, message.clone(), param.clone())
            }
            GeneratorError::ExceedsMemoryLimit { message } => {
                Self::new(ErrorCode::ExceedsMemoryLimit, message.clone(), None)
            }
            GeneratorError::Remote {
                status: Some(429), ..
            } => Self::new(
                ErrorCode::Overloaded,
                "the upstream generator is busy; nothing was queued, retry later",
                None,
            )
            .retry_after(overload_hint),
            GeneratorError::Remote {
                status: Some(503), ..
            } => Self::not_ready(),
            other => {
                if log {
                    tracing::error!(error = %other, "generation failed");
                }
                Self::inference_failed()
            }
        }
    }

    /// The answer for a job that failed.
    pub fn from_job_failure(failure: &JobFailure, overload_hint: Duration) -> Self {
        Self::job_failure_answer(failure, overload_hint, true)
    }

    /// As [`Self::from_job_failure`], without logging the failure again (status reads, webhooks).
    pub(crate) fn from_job_failure_quiet(failure: &JobFailure, overload_hint: Duration) -> Self {
        Self::job_failure_answer(failure, overload_hint, false)
    }

    fn job_failure_answer(failure: &JobFailure, overload_hint: Duration, log: bool) -> Self {
        match failure {
            JobFailure::Generator(error) => Self::generator_answer(error, overload_hint, log),
            JobFailure::TimedOut { limit_secs } => Self::new(
                ErrorCode::InferenceFailed,
                format!(
                    "the generation did not finish within the server's request timeout of \
                     {limit_secs} s"
                ),
                None,
            ),
            JobFailure::Storage => Self::storage_unavailable(),
            _ => Self::inference_failed(),
        }
    }

    pub fn not_ready() -> Self {
        Self::new(
            ErrorCode::NotReady,
            "the model is still loading; retry shortly",
            None,
        )
        .retry_after(Duration::from_secs(5))
    }

    /// The job store cannot be reached (a fleet's NATS server is down or restarting): nothing was
    /// done; retry shortly.
    pub fn job_store_unavailable() -> Self {
        Self::new(
            ErrorCode::NotReady,
            "the job queue cannot be reached right now; retry shortly (a submit retried with the \
             same Idempotency-Key never makes a second job)",
            None,
        )
        .retry_after(Duration::from_secs(1))
    }

    /// The files folder cannot take the images (full, read-only, unusable): a server fault that no
    /// generation is blamed for.
    pub fn storage_unavailable() -> Self {
        Self::new(
            ErrorCode::StorageUnavailable,
            "the server cannot store images right now (its storage is full or unusable); \
             retry later, or send sync_mode: true to get the images inline",
            None,
        )
    }

    pub fn shutting_down() -> Self {
        Self::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down and accepts no new generations",
            None,
        )
    }

    /// The body this answer carries, with `request_id`.
    pub fn body(&self, request_id: String) -> ErrorBody {
        ErrorBody {
            error: self.error.clone(),
            request_id,
        }
    }
}

impl IntoResponse for ApiErrorResponse {
    fn into_response(self) -> Response {
        let body = self.body(current_request_id());
        let json = match serde_json::to_vec(&body) {
            Ok(json) => json,
            // Serialising plain strings cannot fail; keep a valid body anyway.
            Err(_) => br#"{"error":{"code":"inference_failed","message":"internal error"},"request_id":"unknown"}"#.to_vec(),
        };
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.error.code == ErrorCode::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            headers.insert(header::ALLOW, allow);
        }
        response
    }
}
