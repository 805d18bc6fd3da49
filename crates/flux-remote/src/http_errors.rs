//! The answers to requests the HTTP layer refuses before the router sees them (a malformed
//! request line or header: 400; a URI too long: 414; headers too large: 431), in the contract's
//! form: the error body, `X-Request-Id`, one log line and a count in the metrics.

use flux_types::{ApiError, ErrorBody, ErrorCode};

use crate::app_state::AppState;
use crate::files::random_hex;

/// The metrics' route label of requests that never reached a route.
pub(crate) const UNPARSED_ROUTE: &str = "unparsed";

/// The full HTTP/1.1 answer (head and body) for hyper's parse-error `status`.
pub(crate) fn parse_error_answer(state: &AppState, status: u16) -> Vec<u8> {
    let (reason, message) = match status {
        414 => (
            "URI Too Long",
            "the request URI is too long for this server",
        ),
        431 => (
            "Request Header Fields Too Large",
            "the request headers are too large (too many, or too long) for this server",
        ),
        _ => (
            "Bad Request",
            "the HTTP request could not be parsed (request line or headers)",
        ),
    };
    let request_id = random_hex(16);
    let body = ErrorBody {
        error: ApiError {
            code: ErrorCode::MalformedRequest,
            message: message.to_owned(),
            param: None,
        },
        request_id: request_id.clone(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    state.record_unparsed(status);
    tracing::info!(request_id = %request_id, route = UNPARSED_ROUTE, status, "answered");
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {request_id}\r\nconnection: close\r\n\r\n",
        json.len()
    )
    .into_bytes();
    answer.extend_from_slice(&json);
    answer
}
