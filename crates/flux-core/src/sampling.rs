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
mod tests {
    use ndarray::Array;

    use super::*;

    #[test]
    fn latent_shape_is_a_sixteenth_of_the_image_per_packed_token() {
        assert_eq!(latent_shape(2, 1024, 768).expect("valid"), [2, 16, 128, 96]);
        assert_eq!(latent_shape(1, 16, 16).expect("valid"), [1, 16, 2, 2]);
        assert_eq!(image_seq_len(1024, 1024), 4096);
    }

    #[test]
    fn latent_shape_rejects_bad_sizes() {
        for (batch, height, width, param) in [
            (1, 0, 64, "height"),
            (1, 64, 0, "width"),
            (1, 72, 64, "height"),
            (1, 64, 8, "width"),
            (0, 64, 64, "batch"),
        ] {
            match latent_shape(batch, height, width) {
                Err(FluxError::InvalidInput { param: got, .. }) => assert_eq!(got, param),
                other => panic!("{batch}x{height}x{width}: {other:?}"),
            }
        }
    }

    #[test]
    fn pack_orders_features_channel_then_patch_row_then_patch_column() {
        // Value = 1000·c + 100·y + x identifies each latent cell.
        let latents =
            Array::from_shape_fn((1, 2, 4, 6), |(_, c, y, x)| (1000 * c + 100 * y + x) as f32);
        let packed = pack_latents(latents.view()).expect("even sides");
        assert_eq!(packed.shape(), &[1, 6, 8]);
        // Token 4 is patch row 1, patch column 1: latent rows 2-3, columns 2-3.
        let token: Vec<f32> = packed.slice(ndarray::s![0, 4, ..]).to_vec();
        assert_eq!(
            token,
            [202.0, 203.0, 302.0, 303.0, 1202.0, 1203.0, 1302.0, 1303.0]
        );
    }

    #[test]
    fn unpack_inverts_pack() {
        let latents = Array::from_shape_fn((2, 16, 6, 4), |(b, c, y, x)| {
            (b * 7 + c * 13 + y * 17 + x) as f32 * 0.5
        });
        let packed = pack_latents(latents.view()).expect("even sides");
        assert_eq!(packed.shape(), &[2, 6, 64]);
        let restored = unpack_latents(packed.view(), 48, 32).expect("consistent shape");
        assert_eq!(restored, latents);
    }

    #[test]
    fn pack_and_unpack_reject_inconsistent_shapes() {
        assert!(pack_latents(Array4::<f32>::zeros((1, 16, 3, 4)).view()).is_err());
        let packed = Array3::<f32>::zeros((1, 6, 64));
        assert!(unpack_latents(packed.view(), 48, 48).is_err());
        assert!(unpack_latents(packed.view(), 40, 32).is_err());
        assert!(unpack_latents(Array3::<f32>::zeros((1, 6, 62)).view(), 48, 32).is_err());
    }

    #[test]
    fn image_ids_enumerate_the_token_grid_row_major() {
        let ids = image_ids(32, 48);
        assert_eq!(ids.shape(), &[6, 3]);
        assert_eq!(ids.row(4).to_vec(), [0.0, 1.0, 1.0]);
        assert_eq!(ids.row(5).to_vec(), [0.0, 1.0, 2.0]);
        assert!(ids.column(0).iter().all(|&v| v == 0.0));
        let text = text_ids(5);
        assert_eq!(text.shape(), &[5, 3]);
        assert!(text.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn mu_interpolates_between_the_configured_points() {
        let cfg = SchedulerConfig::default();
        assert!((compute_mu(256, &cfg) - 0.5).abs() < 1e-12);
        assert!((compute_mu(4096, &cfg) - 1.15).abs() < 1e-12);
        assert!((compute_mu(2176, &cfg) - 0.825).abs() < 1e-12);
    }

    #[test]
    fn linspace_matches_numpy() {
        // numpy.linspace(1.0, 0.25, 4) == [1.0, 0.75, 0.5, 0.25]; with N = 3 the middle value is
        // 1 + 1·(-1/3) in double.
        assert_eq!(numpy_linspace(1.0, 0.25, 4), [1.0, 0.75, 0.5, 0.25]);
        assert_eq!(
            numpy_linspace(1.0, 1.0 / 3.0, 3),
            [1.0, 1.0 + (1.0 / 3.0 - 1.0) / 2.0, 1.0 / 3.0]
        );
        assert_eq!(numpy_linspace(1.0, 1.0, 1), [1.0]);
    }

    #[test]
    fn dev_sigmas_start_at_one_decrease_and_end_at_zero() {
        let sigmas = flux_sigmas(28, 4096, &SchedulerConfig::default()).expect("valid");
        assert_eq!(sigmas.len(), 29);
        assert_eq!(sigmas[0], 1.0);
        assert_eq!(sigmas[28], 0.0);
        assert!(sigmas.windows(2).all(|pair| pair[0] > pair[1]));
        // Shifting with mu = 1.15 pushes the schedule up: sigma' = e^mu / (e^mu + 1/s - 1).
        let last = 1.0f64 / 28.0;
        let expected = 1.15f64.exp() / (1.15f64.exp() + 1.0 / last - 1.0);
        assert!(
            (f64::from(sigmas[27]) - expected).abs() < 1e-6,
            "{} vs {expected}",
            sigmas[27]
        );
    }

    #[test]
    fn schnell_sigmas_are_the_plain_linspace() {
        let sigmas = flux_sigmas(4, 1024, &SchedulerConfig::flux_schnell()).expect("valid");
        assert_eq!(sigmas, [1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn static_shift_follows_the_formula() {
        let cfg = SchedulerConfig {
            shift: 3.0,
            use_dynamic_shifting: false,
            ..SchedulerConfig::default()
        };
        let sigmas = flux_sigmas(2, 1024, &cfg).expect("valid");
        // s = 0.5: 3·0.5 / (1 + 2·0.5) = 0.75.
        assert_eq!(sigmas, [1.0, 0.75, 0.0]);
    }

    #[test]
    fn zero_steps_and_unsupported_schedules_are_errors() {
        assert!(flux_sigmas(0, 1024, &SchedulerConfig::default()).is_err());
        let karras = SchedulerConfig {
            use_karras_sigmas: true,
            ..SchedulerConfig::default()
        };
        assert!(flux_sigmas(4, 1024, &karras).is_err());
    }

    #[test]
    fn config_reads_diffusers_json_and_ignores_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scheduler_config.json");
        std::fs::write(
            &path,
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
                "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
                "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
                "use_dynamic_shifting": true}"#,
        )
        .expect("write");
        assert_eq!(
            SchedulerConfig::from_file(&path).expect("parses"),
            SchedulerConfig::default()
        );

        std::fs::write(&path, r#"{"shift": 1.0}"#).expect("write");
        let sparse = SchedulerConfig::from_file(&path).expect("parses");
        assert!(
            !sparse.use_dynamic_shifting,
            "absent keys take diffusers' constructor defaults"
        );

        std::fs::write(&path, r#"{"use_beta_sigmas": true}"#).expect("write");
        assert!(matches!(
            SchedulerConfig::from_file(&path),
            Err(FluxError::Config { .. })
        ));
        std::fs::write(&path, r#"{"shift": "three"}"#).expect("write");
        assert!(matches!(
            SchedulerConfig::from_file(&path),
            Err(FluxError::Config { .. })
        ));
        assert!(matches!(
            SchedulerConfig::from_file(dir.path().join("missing.json")),
            Err(FluxError::Io { .. })
        ));
    }

    #[test]
    fn transformer_timestep_round_trips_through_the_thousandfold_scale() {
        let cfg = SchedulerConfig::default();
        assert_eq!(transformer_timestep(1.0, &cfg), 1.0);
        assert_eq!(transformer_timestep(0.5, &cfg), 0.5);
        let sigma = 0.123_456_79f32;
        assert_eq!(transformer_timestep(sigma, &cfg), (sigma * 1000.0) / 1000.0);
    }

    #[test]
    fn euler_step_adds_the_scaled_velocity() {
        let mut latents = Array3::from_elem((1, 2, 3), 1.0f32);
        let velocity = Array3::from_shape_fn((1, 2, 3), |(_, t, f)| (t * 3 + f) as f32);
        euler_step(&mut latents.view_mut(), velocity.view(), 1.0, 0.75).expect("same shape");
        let expected: Vec<f32> = (0..6).map(|i| 1.0 - 0.25 * i as f32).collect();
        assert_eq!(latents.iter().copied().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn euler_step_rounds_the_difference_before_multiplying() {
        // With a fused or reordered computation this would differ in the last bit.
        let (sigma, sigma_next) = (0.9f32, 0.3f32);
        let v = 1.1f32;
        let mut latents = Array3::from_elem((1, 1, 1), 0.7f32);
        euler_step(
            &mut latents.view_mut(),
            Array3::from_elem((1, 1, 1), v).view(),
            sigma,
            sigma_next,
        )
        .expect("same shape");
        let dt = sigma_next - sigma;
        assert_eq!(latents[[0, 0, 0]].to_bits(), (0.7f32 + dt * v).to_bits());
    }

    #[test]
    fn euler_step_rejects_a_velocity_of_another_shape() {
        let mut latents = Array3::<f32>::zeros((1, 4, 64));
        let velocity = Array3::<f32>::zeros((1, 4, 16));
        assert!(matches!(
            euler_step(&mut latents.view_mut(), velocity.view(), 1.0, 0.5),
            Err(FluxError::Shape {
                op: "euler_step",
                ..
            })
        ));
    }

    #[test]
    fn unscale_divides_then_shifts() {
        let mut latents = Array4::from_elem((1, 1, 1, 2), 0.3611f32);
        unscale_latents(&mut latents.view_mut(), 0.3611, 0.1159);
        assert!(latents.iter().all(|&v| v == 1.0f32 + 0.1159f32));
    }
}
