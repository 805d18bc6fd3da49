//! [`GenerationParams`]: what one generation needs, from an API request or a library caller, and
//! the bounds a library caller is held to (the API's).

use flux_types::{
    OutputFormat, ValidRequest,
    request::{MAX_INFERENCE_STEPS, MAX_NUM_IMAGES},
};

use crate::error::{FluxError, Result};
use crate::sampling;

/// What one generation needs; the seed is already resolved (a random one drawn by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub prompt: String,
    pub width: u32,
    pub height: u32,
    pub num_images: u32,
    pub num_inference_steps: u32,
    /// The distilled guidance input of FLUX.1-dev (ignored by schnell, which has none).
    pub guidance_scale: f32,
    pub seed: u64,
    pub output_format: OutputFormat,
    pub run_safety_checker: bool,
}

/// For requests whose seed is already set (e.g. by `ValidRequest::with_seed`); a request without
/// one is refused, because the caller must draw and report the seed.
impl TryFrom<&ValidRequest> for GenerationParams {
    type Error = FluxError;

    fn try_from(request: &ValidRequest) -> Result<Self> {
        let seed = request.seed().ok_or_else(|| FluxError::InvalidInput {
            param: "seed",
            message: "resolve the seed (draw a random one) before generating".to_owned(),
        })?;
        Ok(Self::from_request(request, seed))
    }
}

impl GenerationParams {
    /// The parameters of a validated API request, with the seed the caller resolved (the
    /// request's own, or a random one it drew and will report).
    pub fn from_request(request: &ValidRequest, seed: u64) -> Self {
        Self {
            prompt: request.prompt().to_owned(),
            width: request.width(),
            height: request.height(),
            num_images: request.num_images(),
            num_inference_steps: request.num_inference_steps(),
            guidance_scale: request.guidance_scale() as f32,
            seed,
            output_format: request.output_format(),
            run_safety_checker: request.enable_safety_checker(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.prompt.trim().is_empty() {
            return Err(FluxError::InvalidInput {
                param: "prompt",
                message: "must not be blank".to_owned(),
            });
        }
        // The upper bounds are the API's: a library caller is held to them too, because past
        // them the buffers of one request (noise, schedule, activations) can fail to allocate,
        // and an allocation failure aborts the process instead of returning an error.
        sampling::check_side("width", self.width as usize)?;
        sampling::check_side("height", self.height as usize)?;
        if !(1..=MAX_NUM_IMAGES).contains(&self.num_images) {
            return Err(FluxError::InvalidInput {
                param: "num_images",
                message: format!(
                    "must be between 1 and {MAX_NUM_IMAGES}, got {}",
                    self.num_images
                ),
            });
        }
        if !(1..=MAX_INFERENCE_STEPS).contains(&self.num_inference_steps) {
            return Err(FluxError::InvalidInput {
                param: "num_inference_steps",
                message: format!(
                    "must be between 1 and {MAX_INFERENCE_STEPS}, got {}",
                    self.num_inference_steps
                ),
            });
        }
        if !self.guidance_scale.is_finite() {
            return Err(FluxError::InvalidInput {
                param: "guidance_scale",
                message: "must be finite".to_owned(),
            });
        }
        Ok(())
    }
}
