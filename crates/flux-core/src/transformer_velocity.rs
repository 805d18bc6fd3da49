//! The transformer as the denoise loop's [`VelocityModel`]: the per-request inputs converted
//! once, one ONNX Runtime run per step.

use std::time::Duration;

use ndarray::{Array1, Array3, ArrayView3, Ix3};
use ort::session::SessionInputValue;
use ort::value::DynValue;

use crate::denoise::VelocityModel;
use crate::error::{FluxError, Result};
use crate::model::Graph;
use crate::pipeline::TextEmbeddings;
use crate::sampling::{self, SchedulerConfig};
use crate::tensors::{self, NamedInput};

/// The transformer as the denoise loop's velocity model. Every input that does not change between
/// steps (text, pooled, ids, guidance) is converted once, when the request starts; a step only
/// wraps the current latents (no copy for f32 graphs) and the timestep.
pub(crate) struct TransformerVelocity<'a> {
    pub(crate) graph: &'a mut Graph,
    pub(crate) constants: Vec<(&'static str, DynValue)>,
    batch: usize,
    scheduler: SchedulerConfig,
    pub(crate) session_time: Duration,
    /// Whether the last step gives the CPU arena's free memory back after its run (a request
    /// beyond [`crate::cpu_arena::KEEP_ARENA_MAX_PIXELS`]).
    pub(crate) release_after_last_step: bool,
}

impl<'a> TransformerVelocity<'a> {
    pub(crate) fn new(
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
            release_after_last_step: false,
        })
    }
}

impl VelocityModel for TransformerVelocity<'_> {
    fn velocity(&mut self, latents: ArrayView3<'_, f32>, sigma: f32) -> Result<Array3<f32>> {
        self.run(latents, sigma, false)
    }

    /// After a large request's last step its activations are given back before the decode
    /// (crate::cpu_arena says why); smaller requests keep them for the decode to reuse.
    fn last_velocity(&mut self, latents: ArrayView3<'_, f32>, sigma: f32) -> Result<Array3<f32>> {
        let release = self.release_after_last_step;
        self.run(latents, sigma, release)
    }
}

impl TransformerVelocity<'_> {
    fn run(
        &mut self,
        latents: ArrayView3<'_, f32>,
        sigma: f32,
        shrink: bool,
    ) -> Result<Array3<f32>> {
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
        let outputs = self
            .graph
            .run_shrinking(inputs, &mut self.session_time, shrink)?;
        let velocity = outputs.f32("latent")?;
        if velocity.shape() != latents.shape() {
            return Err(FluxError::Shape {
                op: "transformer latent",
                expected: format!("{:?}", latents.shape()),
                got: velocity.shape().to_vec(),
            });
        }
        velocity
            .into_dimensionality::<Ix3>()
            .map_err(|_| FluxError::Shape {
                op: "transformer latent",
                expected: "[B, S, 64]".to_owned(),
                got: Vec::new(),
            })
    }
}
