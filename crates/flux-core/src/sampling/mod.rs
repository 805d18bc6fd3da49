//! Flow-matching sampler math as small pure functions: latent shapes, 2×2 patch packing, position
//! ids, the shifted sigma schedule, the Euler step and the VAE latent unscaling.
//!
//! Every function reproduces diffusers' `FluxPipeline` with `FlowMatchEulerDiscreteScheduler` in
//! float32, including where it rounds to float32 and in which order it applies operations, so our
//! latents follow the reference's bit for bit wherever the model outputs do.

use std::path::Path;

use ndarray::{Array2, Array3, Array4, ArrayView3, ArrayView4, ArrayViewMut3, ArrayViewMut4, Zip};
use serde::Deserialize;

use flux_types::request::{IMAGE_SIDE_MULTIPLE, MAX_IMAGE_SIDE};

use crate::{FluxError, Result};

/// Channels of the FLUX.1 VAE latent.
pub const LATENT_CHANNELS: usize = 16;
/// Pixels per latent cell along each axis (the VAE downsamples by 8).
pub const VAE_SCALE_FACTOR: usize = 8;
/// Image sides must be multiples of this: the VAE's 8 times the 2×2 packing.
pub const SIDE_MULTIPLE: usize = VAE_SCALE_FACTOR * 2;
/// Side of one packed patch, in latent cells.
const PATCH: usize = 2;

/// Shape of the initial noise and latents, `[batch, 16, height / 8, width / 8]`, for an image of
/// `height × width` pixels. Errors on a zero batch or a side that is zero, not a multiple of 16,
/// or over the API's largest side.
pub fn latent_shape(batch: usize, height: usize, width: usize) -> Result<[usize; 4]> {
    if batch == 0 {
        return Err(FluxError::InvalidInput {
            param: "batch",
            message: "at least one image is needed".to_owned(),
        });
    }
    check_side("height", height)?;
    check_side("width", width)?;
    Ok([
        batch,
        LATENT_CHANNELS,
        height / VAE_SCALE_FACTOR,
        width / VAE_SCALE_FACTOR,
    ])
}

/// The image-side rule for library callers ([`flux_types::request::check_image_side`] with the
/// smallest side the pipeline can pack, one 16-pixel patch): zero, unaligned and oversized sides
/// are refused. Past the API's largest side the buffers of one request can fail to allocate, and
/// an allocation failure aborts the process instead of returning an error.
pub(crate) fn check_side(param: &'static str, pixels: usize) -> Result<()> {
    let value = i128::try_from(pixels).unwrap_or(i128::MAX);
    if !flux_types::request::check_image_side(value, IMAGE_SIDE_MULTIPLE).ok() {
        return Err(FluxError::InvalidInput {
            param,
            message: format!(
                "must be a positive multiple of {SIDE_MULTIPLE} up to {MAX_IMAGE_SIDE}, got {pixels}"
            ),
        });
    }
    Ok(())
}

/// Number of image tokens `S = (height / 16) · (width / 16)` for an image in pixels.
pub fn image_seq_len(height: usize, width: usize) -> usize {
    (height / SIDE_MULTIPLE) * (width / SIDE_MULTIPLE)
}

/// Packs latents `(B, C, h, w)` into tokens `(B, (h/2)(w/2), 4C)`: each token is a 2×2 patch,
/// tokens in row-major order, features ordered (channel, patch row, patch column) — diffusers'
/// `_pack_latents`. Errors when `h` or `w` is odd.
pub fn pack_latents(latents: ArrayView4<f32>) -> Result<Array3<f32>> {
    let (batch, channels, height, width) = latents.dim();
    if height % PATCH != 0 || width % PATCH != 0 {
        return Err(FluxError::Shape {
            op: "pack_latents",
            expected: "(batch, channels, even height, even width)".to_owned(),
            got: latents.shape().to_vec(),
        });
    }
    let (rows, cols) = (height / PATCH, width / PATCH);
    let mut packed = Array3::<f32>::zeros((batch, rows * cols, channels * PATCH * PATCH));
    for ((b, token, feature), value) in packed.indexed_iter_mut() {
        let (row, col) = (token / cols, token % cols);
        let (channel, within) = (feature / (PATCH * PATCH), feature % (PATCH * PATCH));
        let (patch_row, patch_col) = (within / PATCH, within % PATCH);
        *value = latents[[b, channel, row * PATCH + patch_row, col * PATCH + patch_col]];
    }
    Ok(packed)
}

/// Inverse of [`pack_latents`]: tokens `(B, S, 4C)` of an image of `height × width` pixels back
/// to latents `(B, C, height / 8, width / 8)` — diffusers' `_unpack_latents`.
pub fn unpack_latents(packed: ArrayView3<f32>, height: usize, width: usize) -> Result<Array4<f32>> {
    check_side("height", height)?;
    check_side("width", width)?;
    let (batch, tokens, features) = packed.dim();
    let (rows, cols) = (height / SIDE_MULTIPLE, width / SIDE_MULTIPLE);
    if tokens != rows * cols || features == 0 || features % (PATCH * PATCH) != 0 {
        return Err(FluxError::Shape {
            op: "unpack_latents",
            expected: format!(
                "(batch, {} tokens for {height}x{width} pixels, a positive multiple of 4 features)",
                rows * cols
            ),
            got: packed.shape().to_vec(),
        });
    }
    let channels = features / (PATCH * PATCH);
    let mut latents = Array4::<f32>::zeros((batch, channels, rows * PATCH, cols * PATCH));
    for ((b, channel, y, x), value) in latents.indexed_iter_mut() {
        let token = (y / PATCH) * cols + x / PATCH;
        let feature = channel * PATCH * PATCH + (y % PATCH) * PATCH + x % PATCH;
        *value = packed[[b, token, feature]];
    }
    Ok(latents)
}

/// Position ids of the image tokens of a `height × width`-pixel image: one row `[0, row, col]`
/// per token, row-major — diffusers' `_prepare_latent_image_ids`. Sides are in pixels (the token
/// grid is `height / 16 × width / 16`).
pub fn image_ids(height: usize, width: usize) -> Array2<f32> {
    let (rows, cols) = (height / SIDE_MULTIPLE, width / SIDE_MULTIPLE);
    let mut ids = Array2::<f32>::zeros((rows * cols, 3));
    for (token, mut id) in ids.outer_iter_mut().enumerate() {
        // Token grids are far below 2^24 per side, so the float values are exact.
        id[1] = (token / cols) as f32;
        id[2] = (token % cols) as f32;
    }
    ids
}

/// Position ids of `len` text tokens: all zeros, `[len, 3]`.
pub fn text_ids(len: usize) -> Array2<f32> {
    Array2::zeros((len, 3))
}

/// How the resolution-dependent shift bends the schedule (`time_shift_type` in diffusers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeShiftType {
    /// `e^mu / (e^mu + (1/sigma - 1))` — FLUX.1.
    #[default]
    Exponential,
    /// `mu / (mu + (1/sigma - 1))`.
    Linear,
}

/// The parts of diffusers' `scheduler/scheduler_config.json` (`FlowMatchEulerDiscreteScheduler`)
/// that decide the sigma schedule. Unknown keys are ignored; a key that is absent takes the
/// scheduler constructor's default, as diffusers does when it loads the same file.
/// [`SchedulerConfig::default`] is FLUX.1-dev's file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    /// Static shift, used only when `use_dynamic_shifting` is false.
    #[serde(default = "default_shift")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "default_base_shift")]
    pub base_shift: f64,
    #[serde(default = "default_max_shift")]
    pub max_shift: f64,
    #[serde(default = "default_base_image_seq_len")]
    pub base_image_seq_len: usize,
    #[serde(default = "default_max_image_seq_len")]
    pub max_image_seq_len: usize,
    #[serde(default)]
    pub time_shift_type: TimeShiftType,
    /// Schedule variants FLUX.1 does not use; [`SchedulerConfig::validate`] refuses them rather
    /// than silently computing a different schedule.
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default)]
    pub invert_sigmas: bool,
    #[serde(default)]
    pub stochastic_sampling: bool,
}

fn default_num_train_timesteps() -> usize {
    1000
}
fn default_shift() -> f64 {
    1.0
}
fn default_base_shift() -> f64 {
    0.5
}
fn default_max_shift() -> f64 {
    1.15
}
fn default_base_image_seq_len() -> usize {
    256
}
fn default_max_image_seq_len() -> usize {
    4096
}

impl Default for SchedulerConfig {
    /// FLUX.1-dev's scheduler: dynamic exponential shifting from 0.5 (256 tokens) to 1.15
    /// (4096 tokens).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 3.0,
            use_dynamic_shifting: true,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            time_shift_type: TimeShiftType::Exponential,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            invert_sigmas: false,
            stochastic_sampling: false,
        }
    }
}

impl SchedulerConfig {
    /// FLUX.1-schnell's scheduler: no shift at all.
    pub fn flux_schnell() -> Self {
        Self {
            shift: 1.0,
            use_dynamic_shifting: false,
            ..Self::default()
        }
    }

    /// Reads and validates a diffusers `scheduler_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| FluxError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|err| FluxError::Config {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        config.validate().map_err(|message| FluxError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Checks that the schedule is one we compute exactly as diffusers does; the message says
    /// what is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut problems = Vec::new();
        if self.num_train_timesteps == 0 {
            problems.push("num_train_timesteps must be positive".to_owned());
        }
        if self.use_dynamic_shifting && self.max_image_seq_len == self.base_image_seq_len {
            problems.push("max_image_seq_len must differ from base_image_seq_len".to_owned());
        }
        if !self.use_dynamic_shifting && (!self.shift.is_finite() || self.shift <= 0.0) {
            problems.push(format!(
                "shift must be a positive number, got {}",
                self.shift
            ));
        }
        let unsupported = [
            (
                "shift_terminal",
                self.shift_terminal.is_some_and(|v| v != 0.0),
            ),
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("invert_sigmas", self.invert_sigmas),
            ("stochastic_sampling", self.stochastic_sampling),
        ];
        for (key, set) in unsupported {
            if set {
                problems.push(format!("{key} is not supported by the FLUX.1 sampler"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The resolution-dependent shift `mu` for `image_seq_len` tokens: the line through
/// (`base_image_seq_len`, `base_shift`) and (`max_image_seq_len`, `max_shift`), evaluated in
/// double precision in the same order as diffusers' `calculate_shift`.
pub fn compute_mu(image_seq_len: usize, cfg: &SchedulerConfig) -> f64 {
    let slope = (cfg.max_shift - cfg.base_shift)
        / (cfg.max_image_seq_len as f64 - cfg.base_image_seq_len as f64);
    let intercept = cfg.base_shift - slope * cfg.base_image_seq_len as f64;
    image_seq_len as f64 * slope + intercept
}

/// The `num_steps + 1` sigmas of the schedule (the last one 0), exactly as diffusers'
/// `FluxPipeline` leaves them in `scheduler.sigmas`.
///
/// diffusers makes `linspace(1, 1/N, N)` in double, narrows it to float32, and from there works in
/// float32 (numpy promotes Python scalars to the array's float32): the dynamic shift
/// `f(e^mu) / (f(e^mu) + (1/s - 1))` or the static `shift·s / (1 + (shift - 1)·s)`, where `f`
/// rounds a double to float32.
pub fn flux_sigmas(
    num_steps: usize,
    image_seq_len: usize,
    cfg: &SchedulerConfig,
) -> Result<Vec<f32>> {
    if num_steps == 0 {
        return Err(FluxError::InvalidInput {
            param: "num_inference_steps",
            message: "at least one step is needed".to_owned(),
        });
    }
    cfg.validate().map_err(|message| FluxError::InvalidInput {
        param: "scheduler",
        message,
    })?;
    let mu = compute_mu(image_seq_len, cfg);
    let mut sigmas: Vec<f32> = numpy_linspace(1.0, 1.0 / num_steps as f64, num_steps)
        .into_iter()
        .map(|sigma| sigma as f32)
        .collect();
    for sigma in &mut sigmas {
        *sigma = if cfg.use_dynamic_shifting {
            // `(1/t - 1) ** 1.0` is exact, so the power is left out.
            let odds = 1.0f32 / *sigma - 1.0f32;
            let scale = match cfg.time_shift_type {
                TimeShiftType::Exponential => mu.exp() as f32,
                TimeShiftType::Linear => mu as f32,
            };
            scale / (scale + odds)
        } else {
            let shift = cfg.shift as f32;
            let shift_minus_one = (cfg.shift - 1.0) as f32;
            shift * *sigma / (1.0f32 + shift_minus_one * *sigma)
        };
    }
    sigmas.push(0.0);
    Ok(sigmas)
}

/// numpy's `linspace(start, stop, num)` with the endpoint: `i·step + start`, the last value
/// forced to `stop`.
fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

/// The `timestep` input the FLUX transformer receives for `sigma`: diffusers stores
/// `sigma · num_train_timesteps` and the pipeline divides it by 1000 again, both in float32, which
/// is not always exactly `sigma`.
pub fn transformer_timestep(sigma: f32, cfg: &SchedulerConfig) -> f32 {
    // num_train_timesteps is 1000 in every FLUX config, far below f32's exact-integer range.
    (sigma * cfg.num_train_timesteps as f32) / 1000.0f32
}

/// One Euler step of the flow ODE in place: `latents += (sigma_next - sigma) · velocity`, in
/// float32 with the difference rounded first and no fused multiply-add, as diffusers computes it.
pub fn euler_step(
    latents: &mut ArrayViewMut3<f32>,
    velocity: ArrayView3<f32>,
    sigma: f32,
    sigma_next: f32,
) -> Result<()> {
    if latents.shape() != velocity.shape() {
        return Err(FluxError::Shape {
            op: "euler_step",
            expected: format!("velocity of the latents' shape {:?}", latents.shape()),
            got: velocity.shape().to_vec(),
        });
    }
    let dt = sigma_next - sigma;
    Zip::from(latents)
        .and(&velocity)
        .for_each(|latent, &v| *latent += dt * v);
    Ok(())
}

/// Undoes the VAE's latent normalisation in place: `z / scaling_factor + shift_factor`
/// (a true division, as diffusers does, not a multiplication by the reciprocal).
pub fn unscale_latents(latents: &mut ArrayViewMut4<f32>, scaling_factor: f32, shift_factor: f32) {
    latents.mapv_inplace(|z| z / scaling_factor + shift_factor);
}

#[cfg(test)]
mod tests;
