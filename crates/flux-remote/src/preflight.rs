//! The checks of a generation request that need only its headers: failed-authentication
//! throttle, authentication, rate limit, content type, `Idempotency-Key` syntax. A refusal here
//! comes before the body is read; the body is then drained (when small and quick to arrive), so
//! the connection stays usable for the client's next request, or the answer says
//! `Connection: close`.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use flux_types::ErrorCode;

use crate::api_error::ApiErrorResponse;
use crate::app_state::AppState;
use crate::auth::Caller;
use crate::client_addr::client_key;
use crate::rate_limit::{Limited, RateLimitState};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How long a refused request's body may take to arrive before the connection is closed instead.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// A request whose headers passed.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub caller: Caller,
    pub rate_state: Option<RateLimitState>,
    pub idempotency_key: Option<String>,
}

/// A request refused on its headers.
#[derive(Debug)]
pub(crate) struct Refused {
    response: ApiErrorResponse,
    rate_state: Option<RateLimitState>,
}

impl Refused {
    /// The answer of a request without a body: nothing to drain.
    pub(crate) fn into_response_now(self) -> Response {
        let mut response = self.response.into_response();
        if let Some(rate_state) = self.rate_state {
            rate_state.write_headers(response.headers_mut());
        }
        response
    }

    /// The answer, after draining the request's body.
    pub(crate) async fn answer(self, state: &AppState, request: Request) -> Response {
        let mut response = self.response.into_response();
        if let Some(rate_state) = self.rate_state {
            rate_state.write_headers(response.headers_mut());
        }
        let limit = state.inner.max_body_bytes;
        let wait = DRAIN_WAIT.min(state.inner.read_timeout);
        if !drain_body(request, limit, wait).await {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Reads and drops the body when it is at most `limit` bytes and arrives within `wait`. A client
/// that asked `Expect: 100-continue` has not sent it and will not: nothing to drain.
async fn drain_body(request: Request, limit: usize, wait: Duration) -> bool {
    let headers = request.headers();
    if headers.contains_key(header::EXPECT) {
        return false;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return false;
    }
    let body = axum::body::to_bytes(request.into_body(), limit);
    matches!(tokio::time::timeout(wait, body).await, Ok(Ok(_)))
}

/// Runs the header checks in the contract's order.
/// A refusal is boxed: it is the rare path, and the answer it carries is large.
pub(crate) fn preflight(state: &AppState, request: &Request) -> Result<Admitted, Box<Refused>> {
    let (caller, rate_state) = authenticate(state, request)?;
    let with_rate = |response| {
        Box::new(Refused {
            response,
            rate_state,
        })
    };
    check_json_content_type(request.headers()).map_err(with_rate)?;
    let idempotency_key = idempotency_key(request.headers()).map_err(with_rate)?;
    Ok(Admitted {
        caller,
        rate_state,
        idempotency_key,
    })
}

/// The checks of a request without a body (status, result, cancel): throttle, authentication,
/// rate limit.
pub(crate) fn authenticate(
    state: &AppState,
    request: &Request,
) -> Result<(Caller, Option<RateLimitState>), Box<Refused>> {
    let shared = &state.inner;
    let client = client_key(request, shared.trust_forwarded_for);
    let refused = |response| {
        Box::new(Refused {
            response,
            rate_state: None,
        })
    };
    shared.auth_throttle.check(client).map_err(refused)?;
    let caller = shared
        .keys
        .authenticate(request.headers())
        .inspect_err(|_| shared.auth_throttle.record_failure(client))
        .map_err(refused)?;
    let rate_state = match &shared.rate_limiter {
        None => None,
        Some(limiter) => {
            // Without authentication, callers are told apart by their address.
            let bucket = if caller == Caller::ANONYMOUS {
                Caller::for_address(client)
            } else {
                caller
            };
            match limiter.check(&bucket) {
                Ok(rate_state) => Some(rate_state),
                Err(Limited { response, state }) => {
                    return Err(Box::new(Refused {
                        response,
                        rate_state: Some(state),
                    }));
                }
            }
        }
    };
    Ok((caller, rate_state))
}

/// `application/json`, parameters (`; charset=utf-8`) allowed, case-insensitive.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiErrorResponse> {
    let content_type = headers.get(header::CONTENT_TYPE);
    let readable = content_type.and_then(|value| value.to_str().ok());
    let is_json = readable.is_some_and(|value| {
        value
            .split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
    });
    if is_json {
        return Ok(());
    }
    let message = match (content_type, readable) {
        (None, _) => "missing Content-Type: send 'Content-Type: application/json'".to_owned(),
        (Some(_), None) => {
            "unsupported Content-Type (not visible ASCII): send 'Content-Type: application/json'"
                .to_owned()
        }
        (Some(_), Some(other)) => {
            let shown: String = other.chars().take(100).collect();
            format!("unsupported Content-Type {shown:?}: send 'Content-Type: application/json'")
        }
    };
    Err(ApiErrorResponse::new(
        ErrorCode::UnsupportedMediaType,
        message,
        None,
    ))
}

/// The `Idempotency-Key` header: absent, or 1–255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiErrorResponse> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |why: &str| {
        ApiErrorResponse::with_param(
            ErrorCode::InvalidParameter,
            "Idempotency-Key",
            format!("Idempotency-Key {why}; it must be 1 to 255 visible ASCII characters"),
        )
    };
    if values.next().is_some() {
        return Err(invalid("is given more than once"));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(invalid("is empty"));
    }
    if bytes.len() > 255 {
        return Err(invalid(&format!("is {} characters long", bytes.len())));
    }
    if !bytes.iter().all(u8::is_ascii_graphic) {
        return Err(invalid("has a character that is not visible ASCII"));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}
