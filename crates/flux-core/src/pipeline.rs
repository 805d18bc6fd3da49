//! The FLUX.1 text-to-image pipeline on a loaded model folder, exactly as diffusers'
//! `FluxPipeline` runs it (see `shared/flux-pipeline.md`): tokenize, encode the prompt once,
//! draw the whole batch's noise as one tensor, pack, run the Euler loop on the transformer,
//! unpack, unscale, decode, convert to pixels, check safety, encode.
//!
//! [`FluxPipeline::generate`] is the product path; [`FluxPipeline::generate_raw`] and the stage
//! methods expose the intermediate tensors for parity tests and benchmarks.

use std::path::Path;
use std::time::{Duration, Instant};

use flux_types::GeneratedImage;
use image::RgbImage;
use ndarray::{Array2, Array3, Array4, ArrayView3, ArrayView4, Ix2, Ix3, Ix4};
use ort::session::SessionInputValue;

use crate::config::{ExecutionProvider, SessionConfig};
use crate::denoise::{self, HostStepper, StepControl};
use crate::device_stepper::{DeviceStepper, EulerGraph};
use crate::error::{FluxError, Result};
use crate::model::source::BuildOptions;
use crate::model::{FluxModel, Graph, ModelDescription};
use crate::tensors::{self, NamedInput};
use crate::transformer_velocity::TransformerVelocity;
use crate::{cpu_arena, pixels, rng, safety, sampling};

pub use crate::params::GenerationParams;

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
    /// CLIP pooled embedding, `[1, D]`.
    pub pooled: Array2<f32>,
    /// T5 hidden states, `[1, L, D]`.
    pub text: Array3<f32>,
}

/// Everything [`FluxPipeline::generate_raw`] computed, before pixel conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct RawGeneration {
    pub text: TextEmbeddings,
    /// The initial noise, `[B, 16, H/8, W/8]`.
    pub noise: Array4<f32>,
    /// The schedule, N + 1 values ending in 0.
    pub sigmas: Vec<f32>,
    /// Packed latents after the last step, `[B, S, 64]`.
    pub final_latents: Array3<f32>,
    /// Decoded images, `[B, 3, H, W]`, about `[-1, 1]`.
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
        Self::load_with(model_dir, config, &BuildOptions::default())
    }

    /// As [`Self::load`], with the model builder's options for a checkpoint folder.
    pub fn load_with(
        model_dir: &Path,
        config: &SessionConfig,
        build: &BuildOptions,
    ) -> Result<Self> {
        let model = FluxModel::load_with(model_dir, config, build)?;
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

    /// The VAE decoder's graph file (for the memory estimate).
    pub fn vae_path(&self) -> &Path {
        &self.model.vae.path
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

    /// Gives the free memory of the process's CPU arena back to the system (see
    /// [`crate::cpu_arena`]): what a long-lived caller does once it has been idle a while, as the
    /// engine does. Costs one CLIP run on the empty prompt (the cheapest run every model has);
    /// nothing on other execution providers.
    pub fn release_memory(&mut self) -> Result<()> {
        if !self.model.clip.shrinks_arena() {
            return Ok(());
        }
        let ids = self.model.clip_tokenizer.encode("")?;
        run_encoder(
            &mut self.model.clip,
            &ids,
            "pooled_embeddings",
            true,
            &mut StageTimings::default(),
        )?;
        Ok(())
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

    /// Runs the Euler loop from `noise` (`[B,16,H/8,W/8]`) and returns the packed final latents.
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

    /// Unpacks, unscales and decodes packed latents into images `[B,3,H,W]` (about `[-1,1]`).
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
            false,
            timings,
        )?
        .into_dimensionality::<Ix2>()
        .map_err(|_| shape_error("CLIP pooled_embeddings", "[1, D]"))?;
        timings.clip = clip_started.elapsed();

        let t5_started = Instant::now();
        let text = run_encoder(
            &mut self.model.t5,
            &t5_ids,
            "text_embeddings",
            false,
            timings,
        )?
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
        let takes_guidance = self.model.spec().takes_guidance;
        let mut velocity = TransformerVelocity::new(
            &mut self.model.transformer,
            text,
            batch,
            (
                latent_height * sampling::VAE_SCALE_FACTOR,
                latent_width * sampling::VAE_SCALE_FACTOR,
            ),
            takes_guidance.then_some(guidance_scale),
            &self.model.scheduler,
        )?;
        velocity.release_after_last_step = cpu_arena::releases_arena_after(
            latent_width * sampling::VAE_SCALE_FACTOR,
            latent_height * sampling::VAE_SCALE_FACTOR,
            batch,
        );
        if let Some(euler) = self.euler.as_mut() {
            let TransformerVelocity {
                graph, constants, ..
            } = velocity;
            let mut stepper =
                DeviceStepper::new(graph, euler, &constants, packed, &self.model.scheduler)?;
            let result = denoise::run_steps(&mut stepper, sigmas, on_step);
            timings.ort_session_total += stepper.session_time;
            result?;
            return stepper.finish();
        }
        let mut stepper = HostStepper::new(&mut velocity, packed);
        let result = denoise::run_steps(&mut stepper, sigmas, on_step);
        let latents = stepper.into_latents();
        timings.ort_session_total += velocity.session_time;
        result.map(|()| latents)
    }

    fn decode_timed(
        &mut self,
        packed: ArrayView3<'_, f32>,
        height: u32,
        width: u32,
        timings: &mut StageTimings,
    ) -> Result<Array4<f32>> {
        let mut latents = sampling::unpack_latents(packed, height as usize, width as usize)?;
        let shape = latents.shape().to_vec();
        self.model.check_vae_serves(shape[0], shape[2], shape[3])?;
        let description = &self.model.description;
        sampling::unscale_latents(
            &mut latents.view_mut(),
            description.vae_scaling_factor,
            description.vae_shift_factor,
        );
        // Image by image when the graph allows it: the VAE's activations (its up-blocks at
        // full resolution) scale with the batch, and decoding is independent per image, so
        // this is exact and cuts the peak by the batch size.
        let batch = shape[0];
        // Beyond the largest preset the memory goes back after each decode (and after the last
        // step, in the denoise); smaller requests leave it to the next one or to
        // [`Self::release_memory`].
        let release = cpu_arena::releases_arena_after(width as usize, height as usize, batch);
        let per_image = batch > 1 && self.model.check_vae_serves(1, shape[2], shape[3]).is_ok();
        if per_image {
            let mut images = Array4::<f32>::zeros((batch, 3, height as usize, width as usize));
            for index in 0..batch {
                let one = latents.slice(ndarray::s![index..index + 1, .., .., ..]);
                // Each image's decode, not only the last: one decode's blocks kept through the
                // next made the tiny model's 2048² × 4 peak at 2218 MiB instead of 1281.
                let decoded = self.run_vae(one, release, timings)?;
                check_decoded(&decoded, 1, height, width)?;
                images
                    .slice_mut(ndarray::s![index..index + 1, .., .., ..])
                    .assign(&decoded);
            }
            Ok(images)
        } else {
            let decoded = self.run_vae(latents.view(), release, timings)?;
            check_decoded(&decoded, batch, height, width)?;
            Ok(decoded)
        }
    }

    /// One run of the VAE decoder on (unscaled) latents `[B,16,h,w]`; with `release`, the CPU
    /// arena's free memory goes back to the system after it.
    fn run_vae(
        &mut self,
        latents: ArrayView4<'_, f32>,
        release: bool,
        timings: &mut StageTimings,
    ) -> Result<Array4<f32>> {
        let graph = &mut self.model.vae;
        let element = graph.float_type("latent");
        let inputs: Vec<NamedInput<'_>> = vec![(
            "latent".into(),
            tensors::float_input(latents.into_dyn(), element, "VAE")?,
        )];
        let outputs = graph.run_shrinking(inputs, &mut timings.ort_session_total, release)?;
        outputs
            .f32("images")?
            .into_dimensionality::<Ix4>()
            .map_err(|_| shape_error("VAE images", "[B, 3, H, W]"))
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

/// Runs a text encoder on one prompt's ids and returns the named output; with `shrink`, the CPU
/// arena's free memory goes back to the system after the run.
fn run_encoder(
    graph: &mut Graph,
    ids: &[i64],
    output: &str,
    shrink: bool,
    timings: &mut StageTimings,
) -> Result<ndarray::ArrayD<f32>> {
    let ids = tensors::id_value(
        &[1, ids.len()],
        ids,
        graph.id_type("input_ids"),
        graph.label,
    )?;
    let inputs: Vec<NamedInput<'_>> = vec![("input_ids".into(), SessionInputValue::from(ids))];
    let outputs = graph.run_shrinking(inputs, &mut timings.ort_session_total, shrink)?;
    outputs.f32(output)
}

/// Whether the safety checker's nsfw probability flags an image. At the threshold itself the image
/// is flagged, as in the reference CLI (black-forest-labs/flux keeps an image only when the score
/// is below `NSFW_THRESHOLD`).
fn is_flagged(nsfw_probability: f32, threshold: f32) -> bool {
    nsfw_probability >= threshold
}

/// The VAE's output must be `[batch, 3, height, width]`.
fn check_decoded(images: &Array4<f32>, batch: usize, height: u32, width: u32) -> Result<()> {
    let expected = [batch, 3, height as usize, width as usize];
    if images.shape() == expected {
        Ok(())
    } else {
        Err(FluxError::Shape {
            op: "VAE images",
            expected: format!("{expected:?}"),
            got: images.shape().to_vec(),
        })
    }
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
