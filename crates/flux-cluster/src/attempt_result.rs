//! A finished attempt's result: its images written under per-attempt names (never overwritten)
//! and the 200 body that names them by reference (`flux-image:<name>`), resolved by the API node
//! that answers.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flux_service::{JobFailure, StoredResult};
use flux_types::{GenerateResponse, Generation, ImageRef, Timings};

use crate::images::{IMAGE_REF_SCHEME, ImageStore, image_name};
use crate::record::FleetRecord;

/// Writes the attempt's images (names per attempt, never overwritten) and its result body,
/// whose image references the answering API node resolves.
pub(crate) async fn store_result(
    store: &dyn ImageStore,
    record: &FleetRecord,
    attempt: u32,
    generation: Generation,
    started: std::time::Instant,
) -> Result<StoredResult, JobFailure> {
    let expected = record.job.request.num_images() as usize;
    if generation.images.len() != expected || generation.has_nsfw_concepts.len() != expected {
        tracing::error!(job = %record.job.id, "the generator returned the wrong number of images");
        return Err(JobFailure::BadGeneration);
    }
    let written_from = std::time::Instant::now();
    let written_from_wall = SystemTime::now();
    let mut images = Vec::with_capacity(expected);
    for (index, image) in generation.images.into_iter().enumerate() {
        let extension = match image.content_type.as_str() {
            "image/jpeg" => "jpg",
            "image/png" => "png",
            other => {
                tracing::error!(
                    content_type = other,
                    "the generator returned an unknown image type"
                );
                return Err(JobFailure::BadGeneration);
            }
        };
        let name = image_name(record.job.id.as_str(), attempt, index, extension);
        store
            .put_new(&name, Bytes::from(image.bytes))
            .await
            .map_err(|error| {
                tracing::error!(%error, job = %record.job.id, "cannot store an image");
                JobFailure::Storage
            })?;
        images.push(ImageRef {
            url: format!("{IMAGE_REF_SCHEME}{name}"),
            width: image.width,
            height: image.height,
            content_type: image.content_type,
        });
    }
    let inference = match generation.timings.inference {
        Duration::ZERO => started.elapsed(),
        inference => inference,
    };
    let body = GenerateResponse {
        images,
        seed: generation.seed,
        has_nsfw_concepts: generation.has_nsfw_concepts,
        timings: Timings {
            inference: inference.as_secs_f64(),
        },
    };
    let body = serde_json::to_vec(&body).map_err(|error| {
        tracing::error!(%error, "cannot serialise a result");
        JobFailure::BadGeneration
    })?;
    Ok(StoredResult {
        body: Bytes::from(body),
        written_from,
        written_from_wall,
    })
}
