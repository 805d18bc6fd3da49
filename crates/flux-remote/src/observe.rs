//! The middleware around every route: the request id (kept when well-formed, else made), the
//! request's tracing span, `X-Request-Id` on every answer, per-route metrics, and one log line per
//! request: `answered`, or `client went away before its answer` when its future was dropped.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::api_error::REQUEST_ID;
use crate::app_state::AppState;
use crate::files::random_hex;

const REQUEST_ID_HEADER: &str = "x-request-id";

/// Request id, tracing span, `X-Request-Id` on every answer, per-route metrics.
pub(crate) async fn observe(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_well_formed_request_id(id))
        .map(str::to_owned)
        .unwrap_or_else(|| random_hex(16));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        route = %route,
    );
    let started = Instant::now();
    let gone = ClientGone::watch(&state, &route, &span);
    let mut response = REQUEST_ID
        .scope(request_id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    gone.answered();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status().as_u16();
    state.inner.metrics.record_request(&route, status);
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "answered"
        );
    });
    response
}

/// Logs and counts a request dropped before its answer was ready: its client went away (the
/// connection closed, and with it the request's future).
struct ClientGone<'a> {
    state: &'a AppState,
    route: &'a str,
    span: &'a tracing::Span,
    started: Instant,
    answered: bool,
}

impl<'a> ClientGone<'a> {
    fn watch(state: &'a AppState, route: &'a str, span: &'a tracing::Span) -> Self {
        ClientGone {
            state,
            route,
            span,
            started: Instant::now(),
            answered: false,
        }
    }

    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for ClientGone<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.state.inner.metrics.record_client_gone(self.route);
        self.span.in_scope(|| {
            tracing::info!(
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "client went away before its answer"
            );
        });
    }
}

/// An incoming id is kept when it is 1–128 characters of `[A-Za-z0-9._:-]`.
fn is_well_formed_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}
