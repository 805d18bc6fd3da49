//! Results as clients see them: a worker stores each image's reference (`flux-image:<name>`) in
//! the result body, and the API node that answers turns it into a URL of its image store (or a
//! `data:` URI for `sync_mode`), so URLs are made where they are served (presigned ones fresh).

use base64::Engine as _;
use bytes::Bytes;
use flux_service::{JobFailure, JobRecord, JobResult, JobState};
use flux_types::GenerateResponse;

use crate::api::Inner;
use crate::images::IMAGE_REF_SCHEME;

/// Resolves the image references of a succeeded job's body in place; a body that cannot be
/// resolved (an image gone from the store) makes the job's result a storage failure.
pub(crate) async fn resolve_record(inner: &Inner, job: &mut JobRecord) {
    let JobState::Completed(JobResult::Succeeded(stored)) = &mut job.state else {
        return;
    };
    match resolve_body(inner, &stored.body, job.request.sync_mode()).await {
        Ok(body) => stored.body = body,
        Err(message) => {
            tracing::error!(job = %job.id, %message, "cannot resolve a job's images");
            job.state = JobState::Completed(JobResult::Failed(JobFailure::Storage));
        }
    }
}

async fn resolve_body(inner: &Inner, body: &Bytes, sync_mode: bool) -> Result<Bytes, String> {
    let mut response: GenerateResponse =
        serde_json::from_slice(body).map_err(|error| format!("a stored result body: {error}"))?;
    for image in &mut response.images {
        let Some(name) = image.url.strip_prefix(IMAGE_REF_SCHEME) else {
            continue;
        };
        image.url = if sync_mode {
            let bytes = inner
                .images
                .get(name)
                .await
                .map_err(|error| error.to_string())?
                .ok_or_else(|| format!("image {name} is not in the store"))?;
            let payload = base64::engine::general_purpose::STANDARD.encode(&bytes);
            format!("data:{};base64,{payload}", image.content_type)
        } else {
            let base = inner
                .public_base_url
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            inner
                .images
                .url(name, &base)
                .await
                .map_err(|error| error.to_string())?
        };
    }
    serde_json::to_vec(&response)
        .map(Bytes::from)
        .map_err(|error| error.to_string())
}
