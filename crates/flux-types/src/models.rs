//! The wire body of `GET /api/v1/models`: every model a server serves, with its routes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::generator::ModelInfo;

/// `GET /api/v1/models`: one entry per served model, one model per variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelList {
    pub models: Vec<ServedModel>,
}

/// One served model. `text_length`, `precision`, `device` and `safety_checker` are `null` when
/// the backend cannot tell (a server fronting another server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServedModel {
    /// A short name: the model folder's name (e.g. `FLUX.1-schnell`), or the upstream server's
    /// URL for a remote backend.
    pub id: String,
    /// `dev` or `schnell`: the route it answers on.
    pub variant: String,
    /// T5 tokens per prompt (512 for FLUX.1-dev, 256 for schnell): longer prompts are cut.
    pub text_length: Option<u32>,
    /// How the transformer is stored: `fp32`, `fp16` or `bf16`, or `int8`/`int4` (its linear
    /// weights in 8 bits per output channel or 4-bit blocks, activations fp32 between them).
    pub precision: Option<String>,
    /// Where it runs: `cpu`, `cuda:N`.
    pub device: Option<String>,
    /// Whether a safety classifier is configured; without one `has_nsfw_concepts` is all false.
    pub safety_checker: Option<bool>,
    /// The sync route, e.g. `/api/v1/flux/schnell`.
    pub sync_path: String,
    /// The queue route, e.g. `/api/v1/queue/flux/schnell`.
    pub queue_path: String,
}

impl ServedModel {
    /// The entry of a model with known facts, on the given routes.
    pub fn new(info: &ModelInfo, sync_path: String, queue_path: String) -> ServedModel {
        ServedModel {
            id: info.id.clone(),
            variant: info.variant.name.to_owned(),
            text_length: info.text_length,
            precision: info.precision.clone(),
            device: info.device.clone(),
            safety_checker: info.safety_checker,
            sync_path,
            queue_path,
        }
    }
}
