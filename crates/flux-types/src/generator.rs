//! The `Generator` trait: the one seam between front ends (HTTP server, CLI, library users) and
//! backends (the local ONNX Runtime engine, a remote flux server, failover over several remotes).
//!
//! It lives in this light crate, with only `std` types, so that `flux-remote`'s server can serve any
//! generator while `flux-facade` uses `flux-remote`'s client, without a dependency cycle.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::request::ValidRequest;
use crate::variant::VariantSpec;

/// A boxed, sendable future: keeps the trait object-safe (`Arc<dyn Generator>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Progress of one generation: denoising step `step` of `total_steps` has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// 1-based index of the step that just finished.
    pub step: u32,
    /// Number of denoising steps in this generation.
    pub total_steps: u32,
}

/// Callback receiving progress events; called from the backend's own thread, so it must be cheap.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// One encoded image.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedImage {
    /// Encoded file bytes (JPEG or PNG).
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
}

impl std::fmt::Debug for GeneratedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedImage")
            .field("bytes", &format_args!("[{} bytes]", self.bytes.len()))
            .field("width", &self.width)
            .field("height", &self.height)
            .field("content_type", &self.content_type)
            .finish()
    }
}

/// Where the time of one generation went. `inference` is what the API reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationTimings {
    /// Text encoding + denoising + decoding (+ safety check and image encoding): no queueing.
    pub inference: Duration,
    /// Time spent waiting for the backend to pick the job up.
    pub queued: Duration,
}

/// The result of one generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// One per requested image, in order.
    pub images: Vec<GeneratedImage>,
    /// The seed actually used (the request's, or the random one drawn for it).
    pub seed: u64,
    /// One per image; all false when the safety checker was disabled or is not configured.
    pub has_nsfw_concepts: Vec<bool>,
    pub timings: GenerationTimings,
}

/// Why a generator could not produce a result. The HTTP layer maps these to status codes in one
/// place; `Inference` detail is logged, never sent to API callers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GeneratorError {
    /// The backend's queue is full; nothing was queued. Retry after the hint.
    #[error("the generation queue is full")]
    Overloaded { retry_after: Option<Duration> },
    /// A remote backend's rate limit for this caller's API key was reached; nothing was queued.
    /// Retry after the hint.
    #[error("the server's rate limit for this API key was reached")]
    RateLimited { retry_after: Option<Duration> },
    /// The backend is still loading its model.
    #[error("the model is still loading")]
    NotReady,
    /// The backend is draining for shutdown.
    #[error("the generator is shutting down")]
    ShuttingDown,
    /// The request is valid on the wire but this backend cannot serve it (e.g. a size its model
    /// does not support).
    #[error("{message}")]
    InvalidRequest {
        param: Option<String>,
        message: String,
    },
    /// The request's estimated peak memory is over the backend's memory limit: it can never run
    /// there, and nothing was queued.
    #[error("{message}")]
    ExceedsMemoryLimit { message: String },
    /// The generation was cancelled (the caller went away).
    #[error("the generation was cancelled")]
    Cancelled,
    /// Generation failed; `detail` is for logs.
    #[error("inference failed: {detail}")]
    Inference { detail: String },
    /// A remote backend could not be reached or answered unexpectedly.
    #[error("remote backend error: {detail}")]
    Remote { status: Option<u16>, detail: String },
}

/// The model a generator serves: what `GET /api/v1/models` lists, and how a server with several
/// generators routes `/api/v1/flux/{variant}` (to the one whose model is of that variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// A short name: a local model's folder name (e.g. `FLUX.1-schnell`, `tiny-flux-dev`), a
    /// remote backend's server URL.
    pub id: String,
    pub variant: &'static VariantSpec,
    /// T5 tokens per prompt; `None` when the backend cannot tell (a remote server).
    pub text_length: Option<u32>,
    /// How the transformer is stored (`fp32`, `fp16`, `bf16`, `int8`, `int4`); `None` when
    /// unknown.
    pub precision: Option<String>,
    /// Where it runs (`cpu`, `cuda:0`); `None` when unknown (a remote server).
    pub device: Option<String>,
    /// Whether a safety classifier is configured (without one, `has_nsfw_concepts` is all
    /// false); `None` when unknown (a remote server).
    pub safety_checker: Option<bool>,
}

/// Generates images. Implementations must be cheap to share (`Arc<dyn Generator>`), must never
/// block the calling async runtime, and must stop work for a request whose future is dropped (at
/// the latest between two denoising steps).
pub trait Generator: Send + Sync + 'static {
    /// Generates the images of one validated request. `progress`, when given, is called after each
    /// denoising step.
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>>;

    /// Whether the model is loaded and warm (what `GET /ready` reports).
    fn is_ready(&self) -> bool {
        true
    }

    /// A short human-readable description (backend kind and model), for logs.
    fn describe(&self) -> String;

    /// The model served, once known: `None` while it is still loading, or from a backend that
    /// cannot say (a server then serves it only where told to, e.g. on the dev route).
    fn model(&self) -> Option<ModelInfo> {
        None
    }
}

impl<G: Generator + ?Sized> Generator for Arc<G> {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        (**self).generate(request, progress)
    }
    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn model(&self) -> Option<ModelInfo> {
        (**self).model()
    }
}
