//! Which model answers a route: `/api/v1/flux/{variant}` and its queue twins go to the served
//! model of that variant (404 for one not served, 503 while it loads), and `GET /api/v1/models`
//! lists them.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flux_service::ModelLookup;
use flux_types::{ErrorCode, ModelList, ServedModel, VariantSpec};

use crate::api_error::ApiErrorResponse;
use crate::app_state::AppState;
use crate::preflight::authenticate;
use crate::routes::{QUEUE_PATH, SYNC_PREFIX};
use crate::server::json_response;

/// The variant a route names, when this server serves it (or may, once its models have loaded);
/// otherwise 404 `not_found`.
pub(crate) fn route_variant(
    state: &AppState,
    model: &str,
) -> Result<&'static VariantSpec, ApiErrorResponse> {
    match (
        VariantSpec::named(model),
        state.inner.service.models().lookup(model),
    ) {
        (Some(variant), ModelLookup::Served(_) | ModelLookup::Loading) => Ok(variant),
        _ => Err(ApiErrorResponse::new(
            ErrorCode::NotFound,
            format!("this server does not serve the model {model:?}"),
            None,
        )),
    }
}

/// Whether the model of `variant` is loaded and ready to take work.
pub(crate) fn model_ready(state: &AppState, variant: &VariantSpec) -> bool {
    matches!(
        state.inner.service.models().lookup(variant.name),
        ModelLookup::Served(generator) if generator.is_ready()
    )
}

/// The sync route of a variant, e.g. `/api/v1/flux/schnell`.
pub(crate) fn sync_path(variant: &VariantSpec) -> String {
    format!("{SYNC_PREFIX}/{}", variant.name)
}

/// `GET /api/v1/models`: every served model (one per variant) with its routes. A generator that
/// reports no model (a test fake) is listed by its description.
pub(crate) async fn list_models(State(state): State<AppState>, request: Request) -> Response {
    let (_caller, rate_state) = match authenticate(&state, &request) {
        Ok(found) => found,
        Err(refused) => return refused.into_response_now(),
    };
    let models = state
        .inner
        .service
        .models()
        .listing()
        .into_iter()
        .map(|listed| {
            let sync = sync_path(listed.variant);
            let queue = format!("{QUEUE_PATH}/{}", listed.variant.name);
            match &listed.model {
                Some(model) => ServedModel::new(model, sync, queue),
                None => ServedModel {
                    id: listed.description,
                    variant: listed.variant.name.to_owned(),
                    text_length: None,
                    precision: None,
                    device: None,
                    safety_checker: None,
                    sync_path: sync,
                    queue_path: queue,
                },
            }
        })
        .collect();
    let mut response = match serde_json::to_vec(&ModelList { models }) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(error) => {
            tracing::error!(%error, "cannot serialise the model list");
            ApiErrorResponse::inference_failed().into_response()
        }
    };
    if let Some(rate_state) = rate_state {
        rate_state.write_headers(response.headers_mut());
    }
    response
}
