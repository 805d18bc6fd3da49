//! The 200 response body of `POST /api/v1/flux/dev`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One generated image, by reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageRef {
    /// Where to fetch the image: an `http(s)` URL under `/api/v1/files/`, or a `data:` URI with
    /// `sync_mode`.
    pub url: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// MIME type of the image: `image/jpeg` or `image/png`.
    #[schemars(extend("enum" = ["image/jpeg", "image/png"]))]
    pub content_type: String,
}

/// Server-side timings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Timings {
    /// Seconds spent generating (text encoding, denoising, decoding), not queueing.
    #[schemars(range(min = 0.0))]
    pub inference: f64,
}

/// The body of a successful generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerateResponse {
    /// One entry per requested image, in order.
    #[schemars(length(min = 1, max = 4))]
    pub images: Vec<ImageRef>,
    /// The seed used: the request's, or the random one drawn for it.
    #[schemars(range(min = 0, max = 4_294_967_295_u64))]
    pub seed: u64,
    /// Whether each image, in order, was flagged by the safety checker; all `false` when the
    /// checker is disabled.
    #[schemars(length(min = 1, max = 4))]
    pub has_nsfw_concepts: Vec<bool>,
    /// Where the time went.
    pub timings: Timings,
}
