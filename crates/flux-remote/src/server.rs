//! The axum router and its handlers: `POST /api/v1/flux/{variant}`, the file route and the
//! operations endpoints, in front of any `Generator`, or one per variant (the process around it
//! is in `serving`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use flux_service::{
    FinishHook, IdempotencyScope, JobId, JobResult, JobService, Owner, ServiceError, Submission,
};
use flux_types::variant::VARIANTS;
use flux_types::{ErrorCode, ValidRequest, VariantSpec, parse_request_for};

use crate::api_error::ApiErrorResponse;
use crate::app_state::AppState;
use crate::auth::{Caller, sha256};
use crate::idempotency::{Begin, FilesWrittenFrom};
use crate::observe::observe;
use crate::ops;
use crate::preflight::preflight;
use crate::queue_routes;
use crate::routes::{FILES_PATH, QUEUE_PATH, SYNC_PREFIX};
use crate::served_models::{self, model_ready, route_variant};

pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The API's routes on `state`, with request ids, logging and metrics. Use with
/// `tower::ServiceExt::oneshot` in tests, or serve it with [`Server`](crate::Server).
pub fn router(state: AppState) -> Router {
    // One route per variant (not `{model}`), so that metrics and logs name the variant's path.
    let mut sync_routes = Router::new();
    for variant in VARIANTS {
        sync_routes = sync_routes.route(
            &served_models::sync_path(variant),
            post(move |state: State<AppState>, request: Request| generate(state, variant, request)),
        );
    }
    sync_routes
        .route("/api/v1/models", get(served_models::list_models))
        .route(
            &format!("{QUEUE_PATH}/{{model}}"),
            post(queue_routes::submit_job),
        )
        .route(
            &format!("{QUEUE_PATH}/{{model}}/requests/{{id}}"),
            get(queue_routes::job_result),
        )
        .route(
            &format!("{QUEUE_PATH}/{{model}}/requests/{{id}}/status"),
            get(queue_routes::job_status),
        )
        .route(
            &format!("{QUEUE_PATH}/{{model}}/requests/{{id}}/status/stream"),
            get(queue_routes::job_status_stream),
        )
        .route(
            &format!("{QUEUE_PATH}/{{model}}/requests/{{id}}/cancel"),
            put(queue_routes::cancel_job),
        )
        .route(&format!("{FILES_PATH}/{{file}}"), get(ops::serve_file))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .merge(crate::playground::routes(state.inner.playground))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.inner.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn not_found() -> ApiErrorResponse {
    ApiErrorResponse::new(ErrorCode::NotFound, "no such route", None)
}

async fn method_not_allowed(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> ApiErrorResponse {
    let path = uri.path();
    let sync_model = path
        .strip_prefix(SYNC_PREFIX)
        .and_then(|rest| rest.strip_prefix('/'));
    let allow = if let Some(model) = sync_model {
        // The route of a variant this server does not serve is no route at all.
        if let Err(not_served) = route_variant(&state, model) {
            return not_served;
        }
        Some("POST")
    } else if let Some(rest) = path.strip_prefix(QUEUE_PATH) {
        let segments = rest.split('/').count();
        if rest.ends_with("/cancel") {
            Some("PUT")
        } else if segments == 2 {
            Some("POST")
        } else {
            Some("GET, HEAD")
        }
    } else if path.starts_with(FILES_PATH)
        || ["/health", "/ready", "/metrics", "/openapi.json"].contains(&path)
        || (state.inner.playground && crate::playground::serves(path))
    {
        Some("GET, HEAD")
    } else {
        None
    };
    ApiErrorResponse::method_not_allowed(method.as_str(), path, allow.map(str::to_owned))
}

pub(crate) fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `POST /api/v1/flux/{variant}`: the header checks (authentication, rate limit, ...), then the
/// request itself; the rate-limit state is reported on whatever the answer is.
async fn generate(
    State(state): State<AppState>,
    variant: &'static VariantSpec,
    request: Request,
) -> Response {
    let admitted = match preflight(&state, &request) {
        Ok(admitted) => admitted,
        Err(refused) => return (*refused).answer(&state, request).await,
    };
    let mut response = match generate_authorized(
        &state,
        variant.name,
        admitted.caller,
        admitted.idempotency_key,
        request,
    )
    .await
    {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    };
    if let Some(rate_state) = admitted.rate_state {
        rate_state.write_headers(response.headers_mut());
    }
    response
}

/// Reads the body within the read timeout and validates it as a generation request for
/// `variant`'s route.
pub(crate) async fn read_valid_body(
    state: &AppState,
    request: Request,
    variant: &VariantSpec,
) -> Result<(Bytes, ValidRequest), ApiErrorResponse> {
    let read_timeout = state.inner.read_timeout;
    let body = tokio::time::timeout(read_timeout, Bytes::from_request(request, &()))
        .await
        .map_err(|_elapsed| {
            ApiErrorResponse::new(
                ErrorCode::InvalidJson,
                format!(
                    "the request body was not received within {} s",
                    read_timeout.as_secs_f64()
                ),
                None,
            )
        })?
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                payload_too_large(state.inner.max_body_bytes)
            } else {
                ApiErrorResponse::new(
                    ErrorCode::InvalidJson,
                    "the request body could not be read",
                    None,
                )
            }
        })?;
    let valid = parse_request_for(&body, variant).map_err(|refusal| {
        let error = refusal.to_api_error();
        ApiErrorResponse::new(error.code, error.message, error.param)
    })?;
    Ok((body, valid))
}

async fn generate_authorized(
    state: &AppState,
    model: &str,
    caller: Caller,
    idempotency_key: Option<String>,
    request: Request,
) -> Result<Response, ApiErrorResponse> {
    let variant = route_variant(state, model)?;
    let (body, valid) = read_valid_body(state, request, variant).await?;
    let idempotency = idempotency_key.as_ref().map(|key| IdempotencyScope {
        key: key.clone(),
        body_digest: sha256(&body),
    });
    let reservation = match idempotency_key {
        None => None,
        Some(key) => match state.inner.idempotency.begin(caller, key, sha256(&body)) {
            Begin::Fresh(reservation) => Some(reservation),
            Begin::Replay(stored) => {
                let mut response = json_response(StatusCode::OK, stored);
                response
                    .headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                return Ok(response);
            }
            Begin::Conflict { running_for } => {
                // When the running one should be done: a mean generation after it began.
                let wait = state
                    .overload_hint()
                    .saturating_sub(running_for)
                    .max(Duration::from_secs(1));
                return Err(ApiErrorResponse::with_param(
                    ErrorCode::IdempotencyConflict,
                    "Idempotency-Key",
                    "a request with this Idempotency-Key is still running; retry when it has \
                     finished to get its answer",
                )
                .retry_after(wait));
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
        // The client should take its next request elsewhere: do not keep this connection.
        let mut response = ApiErrorResponse::shutting_down().into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    }
    if !model_ready(state, variant) {
        return Err(ApiErrorResponse::not_ready());
    }
    // No generation for images that could not be stored.
    if !valid.sync_mode() && !state.inner.files.is_healthy().await {
        return Err(ApiErrorResponse::storage_unavailable());
    }
    let owner = caller.owner();
    // A request with an Idempotency-Key runs to the end even if its client goes away or the
    // request times out, so that the client's retry gets the stored answer; without one, the
    // work is cancelled with the request.
    let on_finish = reservation.map(|reservation| {
        Box::new(move |result: &JobResult| {
            if let JobResult::Succeeded(stored) = result {
                reservation.complete(
                    stored.body.clone(),
                    FilesWrittenFrom::at(stored.written_from, stored.written_from_wall),
                );
            }
        }) as FinishHook
    });
    let outlives_client = on_finish.is_some();
    let submitted = submit(
        state,
        Submission {
            request: valid,
            owner,
            model: variant.name.to_owned(),
            deadline: None,
            on_finish,
            keep_record: false,
            webhook: None,
            idempotency,
        },
    )
    .await?;
    let _cancel = (!outlives_client).then(|| CancelOnDrop {
        service: Arc::clone(&state.inner.service),
        id: submitted.id.clone(),
        owner,
    });
    match tokio::time::timeout(state.inner.request_timeout, submitted.events.wait()).await {
        Ok(Ok(JobResult::Succeeded(stored))) => Ok(json_response(StatusCode::OK, stored.body)),
        Ok(Ok(JobResult::Failed(failure))) => Err(ApiErrorResponse::from_job_failure_quiet(
            &failure,
            state.overload_hint(),
        )),
        Ok(Ok(JobResult::Cancelled) | Err(_)) => {
            tracing::error!("a sync job ended without its result");
            Err(ApiErrorResponse::inference_failed())
        }
        Err(_elapsed) => {
            tracing::warn!(
                timeout_s = state.inner.request_timeout.as_secs_f64(),
                outlives_client,
                "generation did not finish within the request timeout"
            );
            Err(ApiErrorResponse::new(
                ErrorCode::InferenceFailed,
                format!(
                    "the generation did not finish within the server's request timeout of {} s",
                    state.inner.request_timeout.as_secs()
                ),
                None,
            ))
        }
    }
}

/// Admits a job, or answers 429 `overloaded` with when the queue frees its next place.
pub(crate) async fn submit(
    state: &AppState,
    submission: Submission,
) -> Result<flux_service::Submitted, ApiErrorResponse> {
    state
        .inner
        .service
        .submit(submission)
        .await
        .map_err(|error| match error {
            ServiceError::Overloaded => ApiErrorResponse::new(
                ErrorCode::Overloaded,
                "the generation queue is full; nothing was queued, retry later",
                None,
            )
            .retry_after(state.next_place_hint()),
            ServiceError::IdempotencyMismatch => ApiErrorResponse::with_param(
                ErrorCode::IdempotencyMismatch,
                "Idempotency-Key",
                "this Idempotency-Key was already used with a different request body",
            ),
            ServiceError::Unavailable(message) => {
                tracing::warn!(%message, "the job store is unavailable; nothing was queued");
                ApiErrorResponse::job_store_unavailable()
            }
            other => {
                tracing::error!(error = %other, "cannot submit a job");
                ApiErrorResponse::inference_failed()
            }
        })
}

/// Cancels a sync job whose client went away (its handler was dropped) or timed out.
struct CancelOnDrop {
    service: Arc<dyn JobService>,
    id: JobId,
    owner: Owner,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let service = Arc::clone(&self.service);
        let id = self.id.clone();
        let owner = self.owner;
        // Already completed is the usual case: nothing to do then. A fleet's cancel is a round
        // trip to NATS, so it runs after the handler is gone.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = service.cancel(&id, owner).await;
            });
        }
    }
}

fn payload_too_large(limit: usize) -> ApiErrorResponse {
    ApiErrorResponse::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than {limit} bytes"),
        None,
    )
}
