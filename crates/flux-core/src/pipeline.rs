//! The FLUX.1 text-to-image pipeline on a loaded model folder, exactly as diffusers'
//! `FluxPipeline` runs it (see `shared/flux-pipeline.md`): tokenize, encode the prompt once,
//! draw the whole batch's noise as one tensor, pack, run the Euler loop on the transformer,
//! unpack, unscale, decode, convert to pixels, check safety, encode.
//!
//! [`FluxPipeline::generate`] is the product path; [`FluxPipeline::generate_raw`] and the stage
//! methods expose the intermediate tensors for parity tests and benchmarks.

use std::path::Path;
use std::time::{Duration, Instant};

use flux_types::{
    GeneratedImage, OutputFormat, ValidRequest,
    request::{MAX_IMAGE_SIDE, MAX_INFERENCE_STEPS, MAX_NUM_IMAGES},
};
use image::RgbImage;
use ndarray::{Array1, Array2, Array3, Array4, ArrayView3, ArrayView4, Ix2, Ix3, Ix4};
use ort::session::SessionInputValue;
use ort::value::DynValue;

use crate::bound_loop::{self, EulerGraph};
use crate::denoise::{self, StepControl, VelocityModel};
use crate::error::{FluxError, Result};
use crate::model::{ExecutionProvider, FluxModel, Graph, ModelDescription, SessionConfig, Variant};
use crate::sampling::{self, SchedulerConfig};
use crate::tensors::{self, NamedInput};
use crate::{pixels, rng, safety};

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

    fn validate(&self) -> Result<()> {
        if self.prompt.trim().is_empty() {
            return Err(FluxError::InvalidInput {
                param: "prompt",
                message: "must not be blank".to_owned(),
            });
        }
        // The upper bounds are the API's: a library caller is held to them too, because past
        // them the buffers of one request (noise, schedule, activations) can fail to allocate,
        // and an allocation failure aborts the process instead of returning an error.
        for (param, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 || value % 16 != 0 || value > MAX_IMAGE_SIDE {
                return Err(FluxError::InvalidInput {
                    param,
                    message: format!(
                        "must be a positive multiple of 16 up to {MAX_IMAGE_SIDE}, got {value}"
                    ),
                });
            }
        }
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

/// Where the time of one generation went (wall clock per stage).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    pub tokenize: Duration,
    pub clip: Duration,
    pub t5: Duration,
    pub denoise: Duration,
    pub vae: Duration,
    pub safety: Duration,
    pub encode: Duration,
    pub total: Duration,
    /// Time spent inside ONNX Runtime `run` calls, all graphs together.
    pub ort_session_total: Duration,
    /// Time the job waited in the engine's queue (not part of `total`).
    pub queued: Duration,
}

/// The result of [`FluxPipeline::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineOutput {
    /// One per requested image, in batch order.
    pub images: Vec<GeneratedImage>,
    /// One per image; all false when the safety checker did not run.
    pub nsfw: Vec<bool>,
    /// The checker's nsfw probability per image, when it ran.
    pub nsfw_probabilities: Option<Vec<f32>>,
    pub timings: StageTimings,
}

/// The prompt's encoder outputs, computed once per request (batch 1).
#[derive(Debug, Clone, PartialEq)]
pub struct TextEmbeddings {
    pub clip_ids: Vec<i64>,
    pub t5_ids: Vec<i64>,
    /// CLIP pooled embedding, [1, D].
    pub pooled: Array2<f32>,
    /// T5 hidden states, [1, L, D].
    pub text: Array3<f32>,
}

/// Everything [`FluxPipeline::generate_raw`] computed, before pixel conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct RawGeneration {
    pub text: TextEmbeddings,
    /// The initial noise, [B, 16, H/8, W/8].
    pub noise: Array4<f32>,
    /// The schedule, N + 1 values ending in 0.
    pub sigmas: Vec<f32>,
    /// Packed latents after the last step, [B, S, 64].
    pub final_latents: Array3<f32>,
    /// Decoded images, [B, 3, H, W], about [-1, 1].
    pub images: Array4<f32>,
    pub timings: StageTimings,
}

/// A loaded model ready to generate. Not `Sync`: one owner (the engine thread) drives it.
#[derive(Debug)]
pub struct FluxPipeline {
    model: FluxModel,
    /// Present when the denoise loop runs device-resident (IoBinding): always with CUDA.
    euler: Option<EulerGraph>,
}

impl FluxPipeline {
    /// Loads and checks a model folder (see [`FluxModel::load`]).
    pub fn load(model_dir: &Path, config: &SessionConfig) -> Result<Self> {
        let model = FluxModel::load(model_dir, config)?;
        let mut pipeline = Self { model, euler: None };
        if matches!(config.execution_provider, ExecutionProvider::Cuda { .. }) {
            pipeline.set_device_resident_loop(true)?;
        }
        Ok(pipeline)
    }

    /// Chooses the denoise loop: device-resident (IoBinding, the default with CUDA) or on host
    /// arrays (the default on the CPU, where both are equivalent and the host loop is simpler).
    pub fn set_device_resident_loop(&mut self, enabled: bool) -> Result<()> {
        self.euler = if enabled {
            let transformer = &self.model.transformer;
            Some(EulerGraph::build(
                &self.model.config,
                transformer.float_type("hidden_states"),
                transformer.output_float_type("latent"),
            )?)
        } else {
            None
        };
        Ok(())
    }

    /// Whether the denoise loop keeps its tensors in the execution provider's memory.
    pub fn device_resident_loop(&self) -> bool {
        self.euler.is_some()
    }

    /// What was resolved about the model at load time.
    pub fn description(&self) -> &ModelDescription {
        &self.model.description
    }

    /// Whether the folder has a safety checker.
    pub fn has_safety_checker(&self) -> bool {
        self.model.safety_checker.is_some()
    }

    /// Generates, encodes and checks the images of one request. `on_step(step, total)` is called
    /// after each denoising step (1-based) and may cancel the rest.
    pub fn generate(
        &mut self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<PipelineOutput> {
        let started = Instant::now();
        let raw = self.generate_raw(params, on_step)?;
        let mut timings = raw.timings;

        let encode_started = Instant::now();
        let rgb = pixels::to_rgb8(raw.images.view())?;
        timings.encode += encode_started.elapsed();

        let nsfw_probabilities = if params.run_safety_checker && self.model.safety_checker.is_some()
        {
            let safety_started = Instant::now();
            let probabilities = self.check_safety(&rgb, &mut timings)?;
            timings.safety = safety_started.elapsed();
            probabilities
        } else {
            None
        };
        let threshold = self.model.description.safety_threshold;
        let nsfw = match &nsfw_probabilities {
            Some(probabilities) => probabilities
                .iter()
                .map(|&probability| is_flagged(probability, threshold))
                .collect(),
            None => vec![false; rgb.len()],
        };

        let encode_started = Instant::now();
        let images = rgb
            .iter()
            .map(|image| {
                Ok(GeneratedImage {
                    bytes: pixels::encode(image, params.output_format)?,
                    width: image.width(),
                    height: image.height(),
                    content_type: params.output_format.content_type().to_owned(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        timings.encode += encode_started.elapsed();
        timings.total = started.elapsed();
        Ok(PipelineOutput {
            images,
            nsfw,
            nsfw_probabilities,
            timings,
        })
    }

    /// Runs the pipeline up to the decoded f32 images, keeping every intermediate.
    pub fn generate_raw(
        &mut self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<RawGeneration> {
        let started = Instant::now();
        params.validate()?;
        // An export fixed to other shapes would otherwise fail only after the denoise, in the VAE.
        let (latent_height, latent_width) = (
            params.height as usize / sampling::VAE_SCALE_FACTOR,
            params.width as usize / sampling::VAE_SCALE_FACTOR,
        );
        let batch = params.num_images as usize;
        self.model
            .check_transformer_serves(batch, latent_height, latent_width)?;
        self.model
            .check_vae_serves(batch, latent_height, latent_width)?;
        let mut timings = StageTimings::default();
        let text = self.encode_prompt_timed(&params.prompt, &mut timings)?;

        let shape = sampling::latent_shape(
            params.num_images as usize,
            params.height as usize,
            params.width as usize,
        )?;
        let noise = rng::randn(params.seed, &shape)?
            .into_dimensionality::<Ix4>()
            .map_err(|_| FluxError::Shape {
                op: "noise",
                expected: format!("{shape:?}"),
                got: Vec::new(),
            })?;
        let sigmas = self.sigmas(
            params.num_inference_steps as usize,
            params.height,
            params.width,
        )?;

        let denoise_started = Instant::now();
        let final_latents = self.denoise_timed(
            &text,
            noise.view(),
            &sigmas,
            params.guidance_scale,
            on_step,
            &mut timings,
        )?;
        timings.denoise = denoise_started.elapsed();

        let vae_started = Instant::now();
        let images = self.decode_timed(
            final_latents.view(),
            params.height,
            params.width,
            &mut timings,
        )?;
        timings.vae = vae_started.elapsed();
        timings.total = started.elapsed();
        Ok(RawGeneration {
            text,
            noise,
            sigmas,
            final_latents,
            images,
            timings,
        })
    }

    /// Tokenizes and encodes a prompt (CLIP pooled + T5 hidden states), batch 1.
    pub fn encode_prompt(&mut self, prompt: &str) -> Result<TextEmbeddings> {
        self.encode_prompt_timed(prompt, &mut StageTimings::default())
    }

    /// The schedule for `num_steps` at this image size: N + 1 sigmas ending in 0.
    pub fn sigmas(&self, num_steps: usize, height: u32, width: u32) -> Result<Vec<f32>> {
        let image_seq_len = sampling::image_seq_len(height as usize, width as usize);
        sampling::flux_sigmas(num_steps, image_seq_len, &self.model.scheduler)
    }

    /// Runs the Euler loop from `noise` ([B,16,H/8,W/8]) and returns the packed final latents.
    /// Each image depends only on its own slice of `noise`.
    pub fn denoise_from_noise(
        &mut self,
        text: &TextEmbeddings,
        noise: ArrayView4<'_, f32>,
        sigmas: &[f32],
        guidance_scale: f32,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<Array3<f32>> {
        self.denoise_timed(
            text,
            noise,
            sigmas,
            guidance_scale,
            on_step,
            &mut StageTimings::default(),
        )
    }

    /// Unpacks, unscales and decodes packed latents into images [B,3,H,W] (about [-1,1]).
    pub fn decode_latents(
        &mut self,
        packed: ArrayView3<'_, f32>,
        height: u32,
        width: u32,
    ) -> Result<Array4<f32>> {
        self.decode_timed(packed, height, width, &mut StageTimings::default())
    }

    /// The safety checker's nsfw probability per image; `None` when the folder has no checker.
    pub fn nsfw_probabilities(&mut self, images: &[RgbImage]) -> Result<Option<Vec<f32>>> {
        self.check_safety(images, &mut StageTimings::default())
    }

    fn encode_prompt_timed(
        &mut self,
        prompt: &str,
        timings: &mut StageTimings,
    ) -> Result<TextEmbeddings> {
        let tokenize_started = Instant::now();
        let clip_ids = self.model.clip_tokenizer.encode(prompt)?;
        let t5_ids = self.model.t5_tokenizer.encode(prompt)?;
        timings.tokenize = tokenize_started.elapsed();

        let clip_started = Instant::now();
        let pooled = run_encoder(
            &mut self.model.clip,
            &clip_ids,
            "pooled_embeddings",
            timings,
        )?
        .into_dimensionality::<Ix2>()
        .map_err(|_| shape_error("CLIP pooled_embeddings", "[1, D]"))?;
        timings.clip = clip_started.elapsed();

        let t5_started = Instant::now();
        let text = run_encoder(&mut self.model.t5, &t5_ids, "text_embeddings", timings)?
            .into_dimensionality::<Ix3>()
            .map_err(|_| shape_error("T5 text_embeddings", "[1, L, D]"))?;
        timings.t5 = t5_started.elapsed();
        Ok(TextEmbeddings {
            clip_ids,
            t5_ids,
            pooled,
            text,
        })
    }

    fn denoise_timed(
        &mut self,
        text: &TextEmbeddings,
        noise: ArrayView4<'_, f32>,
        sigmas: &[f32],
        guidance_scale: f32,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
        timings: &mut StageTimings,
    ) -> Result<Array3<f32>> {
        let batch = noise.shape()[0];
        let (latent_height, latent_width) = (noise.shape()[2], noise.shape()[3]);
        self.model
            .check_transformer_serves(batch, latent_height, latent_width)?;
        let packed = sampling::pack_latents(noise)?;
        let variant = self.model.description.variant;
        let mut velocity = TransformerVelocity::new(
            &mut self.model.transformer,
            text,
            batch,
            (
                latent_height * sampling::VAE_SCALE_FACTOR,
                latent_width * sampling::VAE_SCALE_FACTOR,
            ),
            (variant == Variant::Dev).then_some(guidance_scale),
            &self.model.scheduler,
        )?;
        if let Some(euler) = self.euler.as_mut() {
            let TransformerVelocity {
                graph, constants, ..
            } = velocity;
            let mut session_time = Duration::ZERO;
            let result = bound_loop::denoise_on_device(
                graph,
                euler,
                &constants,
                packed,
                sigmas,
                &self.model.scheduler,
                on_step,
                &mut session_time,
            );
            timings.ort_session_total += session_time;
            return result;
        }
        let result = denoise::denoise(&mut velocity, packed, sigmas, on_step);
        timings.ort_session_total += velocity.session_time;
        result
    }

    fn decode_timed(
        &mut self,
        packed: ArrayView3<'_, f32>,
        height: u32,
        width: u32,
        timings: &mut StageTimings,
    ) -> Result<Array4<f32>> {
        let mut latents = sampling::unpack_latents(packed, height as usize, width as usize)?;
        let shape = latents.shape();
        self.model.check_vae_serves(shape[0], shape[2], shape[3])?;
        let description = &self.model.description;
        sampling::unscale_latents(
            &mut latents.view_mut(),
            description.vae_scaling_factor,
            description.vae_shift_factor,
        );
        let graph = &mut self.model.vae;
        let element = graph.float_type("latent");
        let inputs: Vec<NamedInput<'_>> = vec![(
            "latent".into(),
            tensors::float_input(latents.view().into_dyn(), element, "VAE")?,
        )];
        let run_started = Instant::now();
        let outputs = graph.session.run(inputs).map_err(|source| FluxError::Ort {
            stage: "VAE",
            source,
        })?;
        timings.ort_session_total += run_started.elapsed();
        let images = outputs.get("images").ok_or_else(|| FluxError::Ort {
            stage: "VAE",
            source: ort::Error::new("no `images` output"),
        })?;
        let images = tensors::output_f32(images, "VAE")?
            .into_dimensionality::<Ix4>()
            .map_err(|_| shape_error("VAE images", "[B, 3, H, W]"))?;
        let expected = [packed.shape()[0], 3, height as usize, width as usize];
        if images.shape() != expected {
            return Err(FluxError::Shape {
                op: "VAE images",
                expected: format!("{expected:?}"),
                got: images.shape().to_vec(),
            });
        }
        Ok(images)
    }

    fn check_safety(
        &mut self,
        images: &[RgbImage],
        timings: &mut StageTimings,
    ) -> Result<Option<Vec<f32>>> {
        let Some(graph) = self.model.safety_checker.as_mut() else {
            return Ok(None);
        };
        let run_started = Instant::now();
        let probabilities = safety::nsfw_probabilities(graph, images)?;
        timings.ort_session_total += run_started.elapsed();
        Ok(Some(probabilities))
    }
}

fn shape_error(op: &'static str, expected: &str) -> FluxError {
    FluxError::Shape {
        op,
        expected: expected.to_owned(),
        got: Vec::new(),
    }
}

/// Runs a text encoder on one prompt's ids and returns the named output.
fn run_encoder(
    graph: &mut Graph,
    ids: &[i64],
    output: &str,
    timings: &mut StageTimings,
) -> Result<ndarray::ArrayD<f32>> {
    let stage = graph.label;
    let ids = tensors::id_value(&[1, ids.len()], ids, graph.id_type("input_ids"), stage)?;
    let inputs: Vec<NamedInput<'_>> = vec![("input_ids".into(), SessionInputValue::from(ids))];
    let run_started = Instant::now();
    let outputs = graph
        .session
        .run(inputs)
        .map_err(|source| FluxError::Ort { stage, source })?;
    timings.ort_session_total += run_started.elapsed();
    let value = outputs.get(output).ok_or_else(|| FluxError::Ort {
        stage,
        source: ort::Error::new(format!("no `{output}` output")),
    })?;
    tensors::output_f32(value, stage)
}

/// The transformer as the denoise loop's velocity model. Every input that does not change between
/// steps (text, pooled, ids, guidance) is converted once, when the request starts; a step only
/// wraps the current latents (no copy for f32 graphs) and the timestep.
struct TransformerVelocity<'a> {
    graph: &'a mut Graph,
    constants: Vec<(&'static str, DynValue)>,
    batch: usize,
    scheduler: SchedulerConfig,
    session_time: Duration,
}

impl<'a> TransformerVelocity<'a> {
    fn new(
        graph: &'a mut Graph,
        text: &TextEmbeddings,
        batch: usize,
        (height, width): (usize, usize),
        guidance_scale: Option<f32>,
        scheduler: &SchedulerConfig,
    ) -> Result<Self> {
        let stage = "transformer";
        let (_, text_length, text_width) = text.text.dim();
        let pooled_width = text.pooled.dim().1;
        // The prompt is encoded once; every image of the batch shares it.
        let encoder_hidden_states = text
            .text
            .broadcast((batch, text_length, text_width))
            .ok_or_else(|| FluxError::Shape {
                op: "repeat text",
                expected: "[1, L, D]".to_owned(),
                got: text.text.shape().to_vec(),
            })?;
        let pooled = text
            .pooled
            .broadcast((batch, pooled_width))
            .ok_or_else(|| FluxError::Shape {
                op: "repeat pooled",
                expected: "[1, D]".to_owned(),
                got: text.pooled.shape().to_vec(),
            })?;
        let image_ids = sampling::image_ids(height, width);
        let text_ids = sampling::text_ids(text_length);

        let mut constants = vec![
            (
                "encoder_hidden_states",
                tensors::float_value(
                    encoder_hidden_states.into_dyn(),
                    graph.float_type("encoder_hidden_states"),
                    stage,
                )?,
            ),
            (
                "pooled_projections",
                tensors::float_value(
                    pooled.into_dyn(),
                    graph.float_type("pooled_projections"),
                    stage,
                )?,
            ),
            (
                "img_ids",
                tensors::float_value(
                    image_ids.view().into_dyn(),
                    graph.float_type("img_ids"),
                    stage,
                )?,
            ),
            (
                "txt_ids",
                tensors::float_value(
                    text_ids.view().into_dyn(),
                    graph.float_type("txt_ids"),
                    stage,
                )?,
            ),
        ];
        if graph.has_input("guidance") {
            let guidance = Array1::from_elem(batch, guidance_scale.unwrap_or(1.0));
            constants.push((
                "guidance",
                tensors::float_value(
                    guidance.view().into_dyn(),
                    graph.float_type("guidance"),
                    stage,
                )?,
            ));
        }
        Ok(Self {
            graph,
            constants,
            batch,
            scheduler: scheduler.clone(),
            session_time: Duration::ZERO,
        })
    }
}

impl VelocityModel for TransformerVelocity<'_> {
    fn velocity(&mut self, latents: ArrayView3<'_, f32>, sigma: f32) -> Result<Array3<f32>> {
        let stage = "transformer";
        // diffusers passes timestep = sigma (round-tripped through its ×1000 storage); the
        // exported graph scales it by 1000 itself.
        let timestep = Array1::from_elem(
            self.batch,
            sampling::transformer_timestep(sigma, &self.scheduler),
        );
        let mut inputs: Vec<NamedInput<'_>> = Vec::with_capacity(self.constants.len() + 2);
        inputs.push((
            "hidden_states".into(),
            tensors::float_input(
                latents.into_dyn(),
                self.graph.float_type("hidden_states"),
                stage,
            )?,
        ));
        inputs.push((
            "timestep".into(),
            tensors::float_input(
                timestep.view().into_dyn(),
                self.graph.float_type("timestep"),
                stage,
            )?,
        ));
        for (name, value) in &self.constants {
            inputs.push(((*name).into(), SessionInputValue::from(value)));
        }
        let run_started = Instant::now();
        let outputs = self
            .graph
            .session
            .run(inputs)
            .map_err(|source| FluxError::Ort { stage, source })?;
        self.session_time += run_started.elapsed();
        let velocity = outputs.get("latent").ok_or_else(|| FluxError::Ort {
            stage,
            source: ort::Error::new("no `latent` output"),
        })?;
        let velocity = tensors::output_f32(velocity, stage)?;
        if velocity.shape() != latents.shape() {
            return Err(FluxError::Shape {
                op: "transformer latent",
                expected: format!("{:?}", latents.shape()),
                got: velocity.shape().to_vec(),
            });
        }
        velocity
            .into_dimensionality::<Ix3>()
            .map_err(|_| shape_error("transformer latent", "[B, S, 64]"))
    }
}

/// Whether the safety checker's nsfw probability flags an image. At the threshold itself the image
/// is flagged, as in the reference CLI (black-forest-labs/flux keeps an image only when the score
/// is below `NSFW_THRESHOLD`).
fn is_flagged(nsfw_probability: f32, threshold: f32) -> bool {
    nsfw_probability >= threshold
}

#[cfg(test)]
mod safety_flag_tests {
    use super::is_flagged;

    #[test]
    fn an_image_at_the_threshold_is_flagged_like_the_reference() {
        assert!(is_flagged(0.85, 0.85));
        assert!(is_flagged(0.9, 0.85));
        assert!(!is_flagged(0.849_999, 0.85));
        assert!(!is_flagged(0.0, 0.85));
        assert!(is_flagged(1.0, 1.0));
    }
}
