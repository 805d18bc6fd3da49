//! The request body of `POST /api/v1/flux/dev` and its validated form.
//!
//! OWNER NOTE (skeleton): the type and function names below are the crate's public contract that
//! other crates code against; the bodies are being filled in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::RequestError;

/// Named output sizes (width × height).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageSizePreset {
    /// 1024×1024
    SquareHd,
    /// 512×512
    Square,
    /// 768×1024
    Portrait43,
    /// 576×1024
    Portrait169,
    /// 1024×768
    Landscape43,
    /// 1024×576
    Landscape169,
}

/// `image_size`: a preset name, or an explicit `{width, height}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ImageSize {
    Preset(ImageSizePreset),
    Custom { width: u32, height: u32 },
}

/// Encoded output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Jpeg,
    Png,
}

/// The JSON body of `POST /api/v1/flux/dev`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub prompt: String,
    pub num_images: u32,
    pub image_size: ImageSize,
    pub guidance_scale: f64,
    pub num_inference_steps: u32,
    pub seed: Option<u64>,
    pub output_format: OutputFormat,
    pub sync_mode: bool,
    pub enable_safety_checker: bool,
}

/// A request that passed every rule, with the size resolved to pixels. Only `validate` makes one,
/// so a backend holding a `ValidRequest` can trust its ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    request: GenerateRequest,
    width: u32,
    height: u32,
}

/// Parses and validates a raw JSON body: malformed JSON, wrong JSON types, unknown fields and rule
/// violations all come back as a `RequestError` listing every problem found.
pub fn parse_request(body: &[u8]) -> Result<ValidRequest, RequestError> {
    let _ = body;
    unimplemented!("skeleton")
}
