//! The 200 response body of `POST /api/v1/flux/dev`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One generated image, by reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageRef {
    /// Where to fetch the image: an `http(s)` URL, or a `data:` URI with `sync_mode`.
    pub url: String,
    pub width: u32,
    pub height: u32,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
}

/// Server-side timings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Timings {
    /// Seconds spent generating (text encoding, denoising, decoding), not queueing.
    pub inference: f64,
}

/// The body of a successful generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerateResponse {
    pub images: Vec<ImageRef>,
    pub seed: u64,
    pub has_nsfw_concepts: Vec<bool>,
    pub timings: Timings,
}
