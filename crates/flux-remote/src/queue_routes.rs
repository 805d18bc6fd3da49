//! The queue API (`/api/v1/queue/flux/{model}`): submit, status, status stream (SSE), result and
//! cancel, each a thin layer over the generation service. A job belongs to the API key that
//! submitted it: any other key gets 404 for it.

use std::convert::Infallible;

use axum::extract::{Path, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use flux_service::{
    IdempotencyScope, JobId, JobResult, JobState, JobStatus, Owner, ServiceError, Submission,
};
use flux_types::{CancelAccepted, ErrorCode, QueueState, QueueStatus, QueueSubmitted};

use crate::api_error::ApiErrorResponse;
use crate::app_state::AppState;
use crate::auth::sha256;
use crate::idempotency::{Begin, FilesWrittenFrom};
use crate::preflight::{authenticate, preflight};
use crate::rate_limit::RateLimitState;
use crate::routes::QUEUE_PATH;
use crate::served_models::{model_ready, route_variant};
use crate::server::{IDEMPOTENT_REPLAYED, json_response, read_valid_body, submit};

/// Queue submits keep their idempotency records apart from the sync route's (a NUL never
/// appears in a header's key).
const QUEUE_KEY_PREFIX: &str = "queue\0";

fn with_rate(mut response: Response, rate_state: Option<RateLimitState>) -> Response {
    if let Some(rate_state) = rate_state {
        rate_state.write_headers(response.headers_mut());
    }
    response
}

fn job_url(state: &AppState, model: &str, id: &JobId) -> String {
    format!(
        "{}{QUEUE_PATH}/{model}/requests/{id}",
        state.inner.public_base_url
    )
}

/// `POST /api/v1/queue/flux/{model}`.
pub(crate) async fn submit_job(
    state: axum::extract::State<AppState>,
    Path(model): Path<String>,
    request: Request,
) -> Response {
    let state = state.0;
    let admitted = match preflight(&state, &request) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.answer(&state, request).await,
    };
    let rate_state = admitted.rate_state;
    let response = match submit_authorized(
        &state,
        &model,
        admitted.caller,
        admitted.idempotency_key,
        request,
    )
    .await
    {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    };
    with_rate(response, rate_state)
}

async fn submit_authorized(
    state: &AppState,
    model: &str,
    caller: crate::auth::Caller,
    idempotency_key: Option<String>,
    request: Request,
) -> Result<Response, ApiErrorResponse> {
    let webhook_url = crate::webhooks::webhook_param(request.uri().query());
    let variant = route_variant(state, model)?;
    let (body, valid) = read_valid_body(state, request, variant).await?;
    let idempotency = idempotency_key.as_ref().map(|key| IdempotencyScope {
        key: format!("{QUEUE_KEY_PREFIX}{key}"),
        body_digest: sha256(&body),
    });
    let webhook = match &webhook_url {
        Some(url) => Some(
            crate::webhooks::check_target(url, &state.inner.webhooks.config)
                .await?
                .to_string(),
        ),
        None => None,
    };
    let reservation = match idempotency_key {
        None => None,
        Some(key) => match state.inner.idempotency.begin(
            caller,
            format!("{QUEUE_KEY_PREFIX}{key}"),
            sha256(&body),
        ) {
            Begin::Fresh(reservation) => Some(reservation),
            Begin::Replay(stored) => {
                let mut response = json_response(StatusCode::ACCEPTED, stored);
                response
                    .headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                return Ok(response);
            }
            Begin::Conflict { .. } => {
                return Err(ApiErrorResponse::with_param(
                    ErrorCode::IdempotencyConflict,
                    "Idempotency-Key",
                    "a submit with this Idempotency-Key is still being accepted",
                ));
            }
            Begin::Mismatch => {
                return Err(ApiErrorResponse::with_param(
                    ErrorCode::IdempotencyMismatch,
                    "Idempotency-Key",
                    "this Idempotency-Key was already used with a different request body",
                ));
            }
        },
    };
    if state.is_draining() {
        let mut response = ApiErrorResponse::shutting_down().into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    }
    if !model_ready(state, variant) {
        return Err(ApiErrorResponse::not_ready());
    }
    if !valid.sync_mode() && !state.inner.files.is_healthy().await {
        return Err(ApiErrorResponse::storage_unavailable());
    }
    let submitted = submit(
        state,
        Submission {
            request: valid,
            owner: caller.owner(),
            model: variant.name.to_owned(),
            // A queued job may wait and run as long as a sync request may.
            deadline: Some(state.inner.request_timeout),
            on_finish: None,
            keep_record: true,
            webhook,
            idempotency,
        },
    )
    .await?;
    let url = job_url(state, model, &submitted.id);
    let answer = QueueSubmitted {
        request_id: submitted.id.to_string(),
        status: QueueState::InQueue,
        queue_position: submitted.queue_position,
        status_url: format!("{url}/status"),
        response_url: url.clone(),
        cancel_url: format!("{url}/cancel"),
    };
    let body = serde_json::to_vec(&answer).map_err(|error| {
        tracing::error!(%error, "cannot serialise a submit answer");
        ApiErrorResponse::inference_failed()
    })?;
    let body = axum::body::Bytes::from(body);
    if submitted.replayed {
        // Another API node of the fleet accepted this key first: the same job.
        let mut response = json_response(StatusCode::ACCEPTED, body);
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        return Ok(response);
    }
    if let Some(reservation) = reservation {
        reservation.complete(
            body.clone(),
            FilesWrittenFrom::at(std::time::Instant::now(), std::time::SystemTime::now()),
        );
    }
    tracing::info!(job = %submitted.id, queue_position = submitted.queue_position, "job accepted");
    Ok(json_response(StatusCode::ACCEPTED, body))
}

/// Authentication, the model, and the id, for the routes that name a job. The error is the
/// answer, returned at once.
#[allow(clippy::result_large_err)]
fn job_route_checks(
    state: &AppState,
    request: &Request,
    model: &str,
    id: &str,
) -> Result<(Owner, JobId, Option<RateLimitState>), Response> {
    let (caller, rate_state) =
        authenticate(state, request).map_err(|refused| refused.into_response_now())?;
    let refuse = |error: ApiErrorResponse| with_rate(error.into_response(), rate_state);
    route_variant(state, model).map_err(refuse)?;
    let id = JobId::parse(id).ok_or_else(|| refuse(ApiErrorResponse::not_found()))?;
    Ok((caller.owner(), id, rate_state))
}

/// [`job_route_checks`], then the job itself: it must be the caller's and of this model.
async fn job_route(
    state: &AppState,
    checked: Result<(Owner, JobId, Option<RateLimitState>), Response>,
    model: &str,
) -> Result<(Owner, JobId, Option<RateLimitState>), Response> {
    let (owner, id, rate_state) = checked?;
    let refuse = |error: ApiErrorResponse| with_rate(error.into_response(), rate_state);
    match state.inner.service.record(&id, owner).await {
        Ok(record) if record.model == model => Ok((owner, id, rate_state)),
        Err(ServiceError::Unavailable(message)) => {
            tracing::warn!(%message, "the job store is unavailable");
            Err(refuse(ApiErrorResponse::job_store_unavailable()))
        }
        _ => Err(refuse(ApiErrorResponse::not_found())),
    }
}

fn wants_logs(request: &Request) -> bool {
    request.uri().query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| matches!(pair, "logs=1" | "logs=true"))
    })
}

/// The wire status object of `status`.
fn wire_status(state: &AppState, model: &str, status: JobStatus, logs: bool) -> QueueStatus {
    let (state_name, progress, error, outcome) = match &status.state {
        JobState::Queued => (QueueState::InQueue, None, None, None),
        JobState::Running(progress) => (QueueState::InProgress, Some(*progress), None, None),
        JobState::Completed(result) => {
            let error = match result {
                JobResult::Failed(failure) => Some(
                    ApiErrorResponse::from_job_failure_quiet(failure, state.overload_hint())
                        .error()
                        .clone(),
                ),
                _ => None,
            };
            (QueueState::Completed, None, error, Some(result.outcome()))
        }
    };
    QueueStatus {
        request_id: status.id.to_string(),
        status: state_name,
        queue_position: status.queue_position,
        progress,
        logs: logs.then_some(status.logs),
        error,
        outcome,
        response_url: job_url(state, model, &status.id),
    }
}

fn service_error(error: ServiceError) -> ApiErrorResponse {
    match error {
        ServiceError::NotFound => ApiErrorResponse::not_found(),
        ServiceError::AlreadyCompleted => ApiErrorResponse::new(
            ErrorCode::AlreadyCompleted,
            "the job has already completed; there is nothing to cancel",
            None,
        ),
        ServiceError::Unavailable(message) => {
            tracing::warn!(%message, "the job store is unavailable");
            ApiErrorResponse::job_store_unavailable()
        }
        other => {
            tracing::error!(error = %other, "job service failed");
            ApiErrorResponse::inference_failed()
        }
    }
}

fn json_of<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(status, body),
        Err(error) => {
            tracing::error!(%error, "cannot serialise an answer");
            ApiErrorResponse::inference_failed().into_response()
        }
    }
}

/// `GET .../requests/{id}/status` (`?logs=1` adds the log).
pub(crate) async fn job_status(
    state: axum::extract::State<AppState>,
    Path((model, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let state = state.0;
    let (owner, id, rate_state) = match job_route(
        &state,
        job_route_checks(&state, &request, &model, &id),
        &model,
    )
    .await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let response = match state.inner.service.status(&id, owner).await {
        Ok(status) => json_of(
            StatusCode::OK,
            &wire_status(&state, &model, status, wants_logs(&request)),
        ),
        Err(error) => service_error(error).into_response(),
    };
    with_rate(response, rate_state)
}

/// `GET .../requests/{id}/status/stream`: the current status, then every change, as server-sent
/// events; the stream ends after the terminal one.
pub(crate) async fn job_status_stream(
    state: axum::extract::State<AppState>,
    Path((model, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let state = state.0;
    let (owner, id, rate_state) = match job_route(
        &state,
        job_route_checks(&state, &request, &model, &id),
        &model,
    )
    .await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let events = match state.inner.service.events(&id, owner).await {
        Ok(events) => events,
        Err(error) => return with_rate(service_error(error).into_response(), rate_state),
    };
    let logs = wants_logs(&request);
    let stream = futures::stream::unfold(
        (events, state, model),
        move |(mut events, state, model)| async move {
            let status = events.next().await?;
            let wire = wire_status(&state, &model, status, logs);
            let event = Event::default()
                .json_data(&wire)
                .unwrap_or_else(|_| Event::default().comment("unserialisable status"));
            Some((Ok::<_, Infallible>(event), (events, state, model)))
        },
    );
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_rate(response, rate_state)
}

/// `GET .../requests/{id}`: the sync route's 200 body once completed.
pub(crate) async fn job_result(
    state: axum::extract::State<AppState>,
    Path((model, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let state = state.0;
    let (owner, id, rate_state) = match job_route(
        &state,
        job_route_checks(&state, &request, &model, &id),
        &model,
    )
    .await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let response = match state.inner.service.record(&id, owner).await {
        Err(error) => service_error(error).into_response(),
        Ok(record) => match record.state {
            JobState::Completed(JobResult::Succeeded(stored)) => {
                json_response(StatusCode::OK, stored.body)
            }
            JobState::Completed(JobResult::Failed(failure)) => {
                ApiErrorResponse::from_job_failure_quiet(&failure, state.overload_hint())
                    .into_response()
            }
            JobState::Completed(JobResult::Cancelled) => ApiErrorResponse::new(
                ErrorCode::Cancelled,
                "the job was cancelled; it has no result",
                None,
            )
            .into_response(),
            JobState::Queued | JobState::Running(_) => {
                let status = if matches!(record.state, JobState::Queued) {
                    "IN_QUEUE"
                } else {
                    "IN_PROGRESS"
                };
                ApiErrorResponse::new(
                    ErrorCode::NotCompleted,
                    format!("the job is {status}; its result is not ready yet"),
                    None,
                )
                .into_response()
            }
        },
    };
    with_rate(response, rate_state)
}

/// `PUT .../requests/{id}/cancel`.
pub(crate) async fn cancel_job(
    state: axum::extract::State<AppState>,
    Path((model, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let state = state.0;
    let (owner, id, rate_state) = match job_route(
        &state,
        job_route_checks(&state, &request, &model, &id),
        &model,
    )
    .await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let response = match state.inner.service.cancel(&id, owner).await {
        Ok(_) => {
            tracing::info!(job = %id, "job cancelled");
            json_of(StatusCode::ACCEPTED, &CancelAccepted::requested())
        }
        Err(error) => service_error(error).into_response(),
    };
    with_rate(response, rate_state)
}
