//! The server's [`ResultStore`]: a finished generation's images become files (or `data:` URIs
//! with `sync_mode`) and its 200 body is serialized once, for the sync answer, the queue result
//! route and idempotent replays alike.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use base64::Engine as _;
use flux_service::{JobFailure, ResultStore, StoredResult};
use flux_types::{BoxFuture, GenerateResponse, Generation, ImageRef, Timings, ValidRequest};

use crate::files::{FileKind, FileStore};
use crate::metrics::Metrics;
use crate::routes::FILES_PATH;

/// Images into the file store, URLs under the public base URL.
#[derive(Debug)]
pub(crate) struct FileResults {
    pub(crate) files: Arc<FileStore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) public_base_url: String,
}

impl ResultStore for FileResults {
    fn store<'a>(
        &'a self,
        request: &'a ValidRequest,
        generation: Generation,
        started: Instant,
    ) -> BoxFuture<'a, Result<StoredResult, JobFailure>> {
        Box::pin(async move {
            // The backend's own measure excludes time spent waiting in its queue, so the
            // histogram and the `Retry-After` hints built on it reflect one generation; a backend
            // that reports nothing is timed from here.
            let generation_time = match generation.timings.inference {
                Duration::ZERO => started.elapsed(),
                inference => inference,
            };
            self.metrics
                .record_generation(generation_time, generation.images.len());
            // Before the first image file is written: an idempotency record must not outlive it.
            let written_from = Instant::now();
            let written_from_wall = SystemTime::now();
            let sync_mode = request.sync_mode();
            let expected_images = request.num_images() as usize;
            let body = self
                .build_response(generation, expected_images, sync_mode)
                .await?;
            let body = if sync_mode {
                // Images inline make a body of up to tens of megabytes: too much CPU for an
                // async worker.
                off_the_runtime(move || serialize_response(&body)).await?
            } else {
                serialize_response(&body)?
            };
            Ok(StoredResult {
                body,
                written_from,
                written_from_wall,
            })
        })
    }
}

impl FileResults {
    async fn build_response(
        &self,
        generation: Generation,
        expected_images: usize,
        sync_mode: bool,
    ) -> Result<GenerateResponse, JobFailure> {
        if generation.images.len() != expected_images
            || generation.has_nsfw_concepts.len() != expected_images
        {
            tracing::error!(
                expected_images,
                images = generation.images.len(),
                nsfw_flags = generation.has_nsfw_concepts.len(),
                "the generator returned the wrong number of images"
            );
            return Err(JobFailure::BadGeneration);
        }
        let mut images = Vec::with_capacity(expected_images);
        for image in generation.images {
            let Some(kind) = FileKind::from_content_type(&image.content_type) else {
                tracing::error!(content_type = %image.content_type, "the generator returned an unknown image type");
                return Err(JobFailure::BadGeneration);
            };
            let url = if sync_mode {
                let bytes = image.bytes;
                off_the_runtime(move || {
                    let payload = base64::engine::general_purpose::STANDARD.encode(&bytes);
                    Ok(format!("data:{};base64,{payload}", kind.content_type()))
                })
                .await?
            } else {
                let name = self.files.store(image.bytes, kind).await.map_err(|error| {
                    tracing::error!(%error, "cannot store a generated image");
                    JobFailure::Storage
                })?;
                format!("{}{FILES_PATH}/{name}", self.public_base_url)
            };
            images.push(ImageRef {
                url,
                width: image.width,
                height: image.height,
                content_type: kind.content_type().to_owned(),
            });
        }
        Ok(GenerateResponse {
            images,
            seed: generation.seed,
            has_nsfw_concepts: generation.has_nsfw_concepts,
            timings: Timings {
                inference: generation.timings.inference.as_secs_f64(),
            },
        })
    }
}

fn serialize_response(body: &GenerateResponse) -> Result<Bytes, JobFailure> {
    serde_json::to_vec(body).map(Bytes::from).map_err(|error| {
        tracing::error!(%error, "cannot serialise the response");
        JobFailure::BadGeneration
    })
}

/// Runs CPU-heavy work (encoding megabytes) on the blocking pool, keeping the tracing span.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, JobFailure> + Send + 'static,
) -> Result<T, JobFailure> {
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(work)).await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(%error, "encoding task failed");
            Err(JobFailure::BadGeneration)
        }
    }
}
