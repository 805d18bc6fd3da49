//! The request body of `POST /api/v1/flux/dev` and its validated form.
//!
//! `GenerateRequest` is the wire form: serializing it writes the contract's field names, and
//! deserializing it applies the defaults, refuses unknown fields, `null`s and wrong JSON types, but
//! not the range rules; `validate` (or `parse_request` on raw bytes) checks those and yields a
//! `ValidRequest`, the only form backends accept.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::validation::{self, Checks, RequestError, Violation};
use crate::variant::VariantSpec;

pub use crate::validation::{parse_request, parse_request_for};

/// Most characters (Unicode scalar values) a prompt may have.
pub const MAX_PROMPT_CHARS: usize = 1000;
/// Fewest images per request.
pub const MIN_NUM_IMAGES: u32 = 1;
/// Most images per request.
pub const MAX_NUM_IMAGES: u32 = 4;
/// Smallest `guidance_scale`.
pub const MIN_GUIDANCE_SCALE: f64 = 1.0;
/// Largest `guidance_scale`.
pub const MAX_GUIDANCE_SCALE: f64 = 20.0;
/// Fewest denoising steps.
pub const MIN_INFERENCE_STEPS: u32 = 1;
/// Most denoising steps.
pub const MAX_INFERENCE_STEPS: u32 = 50;
/// Smallest seed.
pub const MIN_SEED: u64 = 0;
/// Largest seed: seeds are 32-bit, as in the hosted API.
pub const MAX_SEED: u64 = 4_294_967_295;
/// Smallest side of a custom image size, in pixels.
pub const MIN_IMAGE_SIDE: u32 = 64;
/// Largest side of a custom image size, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 2048;
/// Custom sides must be multiples of this: the VAE downsamples by 8 and the transformer packs
/// 2×2 latent patches.
pub const IMAGE_SIDE_MULTIPLE: u32 = 16;

/// How an image side measures against the one image-side rule: a multiple of
/// [`IMAGE_SIDE_MULTIPLE`] from `min` to [`MAX_IMAGE_SIDE`]. The API's `min` is
/// [`MIN_IMAGE_SIDE`]; a library caller may go down to [`IMAGE_SIDE_MULTIPLE`]. Every side check
/// (request validation, flux-core's parameters and latent shapes) asks this function.
pub fn check_image_side(value: i128, min: u32) -> ImageSideCheck {
    ImageSideCheck {
        in_range: (i128::from(min)..=i128::from(MAX_IMAGE_SIDE)).contains(&value),
        aligned: value % i128::from(IMAGE_SIDE_MULTIPLE) == 0,
    }
}

/// The answer of [`check_image_side`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSideCheck {
    pub in_range: bool,
    pub aligned: bool,
}

impl ImageSideCheck {
    /// Whether the side is usable.
    pub fn ok(self) -> bool {
        self.in_range && self.aligned
    }
}

/// Default `num_images`.
pub const DEFAULT_NUM_IMAGES: u32 = 1;
/// Default `guidance_scale`.
pub const DEFAULT_GUIDANCE_SCALE: f64 = 3.5;
/// Default `num_inference_steps`.
pub const DEFAULT_INFERENCE_STEPS: u32 = 28;
/// Default `image_size`.
pub const DEFAULT_IMAGE_SIZE_PRESET: ImageSizePreset = ImageSizePreset::Landscape43;

/// Named output sizes (width × height).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ImageSizePreset {
    /// 1024×1024
    #[serde(rename = "square_hd")]
    SquareHd,
    /// 512×512
    #[serde(rename = "square")]
    Square,
    /// 768×1024
    #[serde(rename = "portrait_4_3")]
    Portrait43,
    /// 576×1024
    #[serde(rename = "portrait_16_9")]
    Portrait169,
    /// 1024×768
    #[serde(rename = "landscape_4_3")]
    Landscape43,
    /// 1024×576
    #[serde(rename = "landscape_16_9")]
    Landscape169,
}

impl ImageSizePreset {
    /// Every preset, in the contract's order.
    pub const ALL: [ImageSizePreset; 6] = [
        ImageSizePreset::SquareHd,
        ImageSizePreset::Square,
        ImageSizePreset::Portrait43,
        ImageSizePreset::Portrait169,
        ImageSizePreset::Landscape43,
        ImageSizePreset::Landscape169,
    ];

    /// The preset's pixel size as `(width, height)`.
    pub const fn dimensions(self) -> (u32, u32) {
        match self {
            ImageSizePreset::SquareHd => (1024, 1024),
            ImageSizePreset::Square => (512, 512),
            ImageSizePreset::Portrait43 => (768, 1024),
            ImageSizePreset::Portrait169 => (576, 1024),
            ImageSizePreset::Landscape43 => (1024, 768),
            ImageSizePreset::Landscape169 => (1024, 576),
        }
    }

    /// The wire name (`"landscape_4_3"`).
    pub const fn name(self) -> &'static str {
        match self {
            ImageSizePreset::SquareHd => "square_hd",
            ImageSizePreset::Square => "square",
            ImageSizePreset::Portrait43 => "portrait_4_3",
            ImageSizePreset::Portrait169 => "portrait_16_9",
            ImageSizePreset::Landscape43 => "landscape_4_3",
            ImageSizePreset::Landscape169 => "landscape_16_9",
        }
    }

    /// The preset with this wire name, if any (exact, case-sensitive).
    pub fn from_name(name: &str) -> Option<ImageSizePreset> {
        ImageSizePreset::ALL
            .into_iter()
            .find(|preset| preset.name() == name)
    }
}

impl std::fmt::Display for ImageSizePreset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `image_size`: a preset name, or an explicit `{"width": W, "height": H}` in pixels, each a
/// multiple of 16 between 64 and 2048.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum ImageSize {
    /// One of the named sizes.
    Preset(ImageSizePreset),
    /// An explicit size in pixels.
    Custom {
        /// Width in pixels: a multiple of 16 between 64 and 2048.
        #[schemars(range(min = 64, max = 2048), extend("multipleOf" = 16))]
        width: u32,
        /// Height in pixels: a multiple of 16 between 64 and 2048.
        #[schemars(range(min = 64, max = 2048), extend("multipleOf" = 16))]
        height: u32,
    },
}

impl ImageSize {
    /// The size in pixels as `(width, height)`.
    pub const fn dimensions(self) -> (u32, u32) {
        match self {
            ImageSize::Preset(preset) => preset.dimensions(),
            ImageSize::Custom { width, height } => (width, height),
        }
    }
}

impl Default for ImageSize {
    fn default() -> Self {
        ImageSize::Preset(DEFAULT_IMAGE_SIZE_PRESET)
    }
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        validation::decode_image_size(&value).map_err(violations_to_serde)
    }
}

/// Encoded output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// JPEG (`image/jpeg`, `.jpg`).
    #[default]
    Jpeg,
    /// PNG (`image/png`, `.png`).
    Png,
}

impl OutputFormat {
    /// The MIME type of files in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
        }
    }

    /// The file extension, without the dot.
    pub const fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
        }
    }

    /// The wire name (`"jpeg"`).
    pub const fn name(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
        }
    }

    /// The format with this wire name, if any (exact, case-sensitive).
    pub fn from_name(name: &str) -> Option<OutputFormat> {
        [OutputFormat::Jpeg, OutputFormat::Png]
            .into_iter()
            .find(|format| format.name() == name)
    }
}

/// The JSON body of `POST /api/v1/flux/dev`.
///
/// Unknown fields are refused, as is `null` for any field; integers must be JSON integer literals.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = example_request())]
pub struct GenerateRequest {
    /// What to draw: 1 to 1000 characters (Unicode scalar values), not only whitespace.
    #[schemars(length(min = 1, max = 1000), regex(pattern = validation::prompt_pattern()))]
    pub prompt: String,
    /// How many images to generate, 1 to 4. They share the seed's noise stream, as in diffusers.
    #[serde(default = "default_num_images")]
    #[schemars(range(min = 1, max = 4))]
    pub num_images: u32,
    /// Output size: a preset name, or `{"width": W, "height": H}`.
    #[serde(default)]
    pub image_size: ImageSize,
    /// Classifier-free guidance strength (FLUX.1-dev's distilled guidance), 1 to 20.
    #[serde(default = "default_guidance_scale")]
    #[schemars(range(min = 1.0, max = 20.0))]
    pub guidance_scale: f64,
    /// Number of denoising steps, 1 to 50.
    #[serde(default = "default_inference_steps")]
    #[schemars(range(min = 1, max = 50))]
    pub num_inference_steps: u32,
    /// Seed of the initial noise, 0 to 4294967295. Omitted: the server draws one and returns it.
    /// The same request with the same seed on the same model gives the same image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64", range(min = 0, max = 4_294_967_295_u64))]
    pub seed: Option<u64>,
    /// Encoding of the images.
    #[serde(default)]
    pub output_format: OutputFormat,
    /// `true`: each image `url` is a `data:` URI and nothing is stored on the server.
    #[serde(default)]
    pub sync_mode: bool,
    /// `false`: no safety check; `has_nsfw_concepts` is then all `false`.
    #[serde(default = "default_enable_safety_checker")]
    pub enable_safety_checker: bool,
}

fn default_num_images() -> u32 {
    DEFAULT_NUM_IMAGES
}

fn default_guidance_scale() -> f64 {
    DEFAULT_GUIDANCE_SCALE
}

fn default_inference_steps() -> u32 {
    DEFAULT_INFERENCE_STEPS
}

fn default_enable_safety_checker() -> bool {
    true
}

fn example_request() -> GenerateRequest {
    GenerateRequest {
        seed: Some(42),
        ..GenerateRequest::new("a red fox in the snow, golden hour, 35mm photo")
    }
}

impl GenerateRequest {
    /// A request for `prompt` with the contract's defaults for everything else (and no seed).
    pub fn new(prompt: impl Into<String>) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            num_images: DEFAULT_NUM_IMAGES,
            image_size: ImageSize::default(),
            guidance_scale: DEFAULT_GUIDANCE_SCALE,
            num_inference_steps: DEFAULT_INFERENCE_STEPS,
            seed: None,
            output_format: OutputFormat::default(),
            sync_mode: false,
            enable_safety_checker: true,
        }
    }

    /// Checks every rule of the contract (the dev route's), reporting all violations.
    pub fn validate(self) -> Result<ValidRequest, RequestError> {
        self.validate_for(VariantSpec::dev())
    }

    /// Checks every rule of `variant`'s route, reporting all violations. A variant without
    /// guidance ignores `guidance_scale`: the valid request carries the default instead.
    pub fn validate_for(self, variant: &VariantSpec) -> Result<ValidRequest, RequestError> {
        ValidRequest::from_checked(self, variant).map_err(RequestError::Invalid)
    }
}

impl<'de> Deserialize<'de> for GenerateRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        let Value::Object(object) = &value else {
            return Err(D::Error::custom("a flux request must be a JSON object"));
        };
        validation::decode_request(object, Checks::TypesOnly, VariantSpec::dev())
            .map_err(violations_to_serde)
    }
}

fn violations_to_serde<E: serde::de::Error>(violations: Vec<Violation>) -> E {
    E::custom(RequestError::Invalid(violations))
}

/// A request that passed every rule, with the size resolved to pixels. Only validation makes one,
/// so a backend holding a `ValidRequest` can trust its ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    request: GenerateRequest,
    width: u32,
    height: u32,
}

impl ValidRequest {
    /// Wraps a request after checking every rule of `variant`.
    pub(crate) fn from_checked(
        mut request: GenerateRequest,
        variant: &VariantSpec,
    ) -> Result<ValidRequest, Vec<Violation>> {
        if !variant.uses_guidance {
            request.guidance_scale = DEFAULT_GUIDANCE_SCALE;
        }
        let violations = validation::rule_violations(&request, variant);
        if !violations.is_empty() {
            return Err(violations);
        }
        let (width, height) = request.image_size.dimensions();
        Ok(ValidRequest {
            request,
            width,
            height,
        })
    }

    /// The request as sent (with defaults applied).
    pub fn request(&self) -> &GenerateRequest {
        &self.request
    }

    /// Gives back the request as sent.
    pub fn into_request(self) -> GenerateRequest {
        self.request
    }

    /// The prompt: 1–1000 characters, not only whitespace.
    pub fn prompt(&self) -> &str {
        &self.request.prompt
    }

    /// Images to generate: 1–4.
    pub fn num_images(&self) -> u32 {
        self.request.num_images
    }

    /// Image width in pixels: a multiple of 16 in 64–2048 (presets included).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Image height in pixels: a multiple of 16 in 64–2048 (presets included).
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The size as requested (preset or custom).
    pub fn image_size(&self) -> ImageSize {
        self.request.image_size
    }

    /// Guidance scale: finite, 1–20 (the default on a variant without guidance).
    pub fn guidance_scale(&self) -> f64 {
        self.request.guidance_scale
    }

    /// Denoising steps: 1–50 (at most the variant's limit, e.g. 12 for schnell).
    pub fn num_inference_steps(&self) -> u32 {
        self.request.num_inference_steps
    }

    /// The seed, 0–4294967295, when the caller gave one (or after [`ValidRequest::with_seed`]).
    pub fn seed(&self) -> Option<u64> {
        self.request.seed
    }

    /// Output encoding.
    pub fn output_format(&self) -> OutputFormat {
        self.request.output_format
    }

    /// Whether images come back as `data:` URIs, with nothing stored.
    pub fn sync_mode(&self) -> bool {
        self.request.sync_mode
    }

    /// Whether the safety checker runs.
    pub fn enable_safety_checker(&self) -> bool {
        self.request.enable_safety_checker
    }

    /// The same request with `seed` set, for a server that draws a random seed when none was
    /// given. The seed is taken modulo 2^32, the contract's seed range, so any random `u64` can
    /// be passed and the result is still a valid request.
    pub fn with_seed(mut self, seed: u64) -> ValidRequest {
        self.request.seed = Some(seed % (MAX_SEED + 1));
        self
    }

    /// The request with its seed resolved: its own, or one drawn uniformly from the contract's
    /// range. The one place seeds are drawn (the server and the local backend both call it), so
    /// every caller learns and reports the seed that was used.
    pub fn with_drawn_seed(self) -> ValidRequest {
        match self.seed() {
            Some(_) => self,
            None => self.with_seed(rand::random_range(0..=MAX_SEED)),
        }
    }
}

impl TryFrom<GenerateRequest> for ValidRequest {
    type Error = RequestError;

    fn try_from(request: GenerateRequest) -> Result<Self, Self::Error> {
        request.validate()
    }
}
