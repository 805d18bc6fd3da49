//! The model folder: the official FLUX.1 ONNX export layout (`clip.opt/`, `t5.opt/`,
//! `transformer.opt/<precision>/`, `vae.opt/`, plus `tokenizer/`, `tokenizer_2/` and
//! `scheduler/`), an optional `flux-rs.json` manifest of ours, and the checked ONNX sessions.
//!
//! Loading checks every graph's interface (names, ranks, element types, the fixed sizes flux-rs
//! relies on) and every file, and reports all problems in one [`FluxError::InvalidModel`].
//! Sessions are created from file paths, so external-data weights are memory-mapped or read by
//! ONNX Runtime once, never held twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{Outlet, ValueType};
use serde::Deserialize;

use crate::error::{FluxError, Result};
use crate::runtime::{self, RuntimeKind, SessionEnvironment};
use crate::sampling::SchedulerConfig;
use crate::tensors::{FloatType, IdType};
use crate::threads::{ComputePriority, PoolThreads, ThreadPool};
use crate::tokenizer::{self, CLIP_LENGTH, PromptTokenizer};

/// The manifest file name flux-rs looks for in a model folder.
pub const MANIFEST_FILE: &str = "flux-rs.json";
/// FLUX.1's VAE latent scaling factor (diffusers `vae.config.scaling_factor`).
pub const DEFAULT_VAE_SCALING_FACTOR: f32 = 0.3611;
/// FLUX.1's VAE latent shift factor (diffusers `vae.config.shift_factor`).
pub const DEFAULT_VAE_SHIFT_FACTOR: f32 = 0.1159;
/// Default threshold on the safety checker's nsfw probability.
pub const DEFAULT_SAFETY_THRESHOLD: f32 = 0.85;
/// Channels of the FLUX.1 latent.
pub const LATENT_CHANNELS: i64 = 16;
/// Features of one packed latent token (16 channels × 2 × 2).
pub const PACKED_FEATURES: i64 = 64;

/// Transformer precision folders tried in order when the manifest names none. fp8/fp4 exports
/// use TensorRT-only operators and cannot run on the CPU or CUDA providers.
const RUNNABLE_PRECISIONS: [&str; 3] = ["fp32", "bf16", "fp16"];
const TENSORRT_ONLY_PRECISIONS: [&str; 2] = ["fp8", "fp4"];

/// FLUX.1 variant: dev takes a guidance input; schnell does not (and uses an unshifted schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Dev,
    Schnell,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Dev => "dev",
            Self::Schnell => "schnell",
        })
    }
}

/// Where the sessions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    /// The CUDA execution provider (needs the crate's `cuda` feature and the onnxruntime-gpu
    /// runtime); registration failure is an error, never a silent CPU fallback.
    Cuda { device_id: i32 },
}

impl std::str::FromStr for ExecutionProvider {
    type Err = FluxError;

    /// `cpu`, `cuda` (device 0) or `cuda:N`, case-insensitive.
    fn from_str(text: &str) -> Result<Self> {
        let lowered = text.trim().to_ascii_lowercase();
        let invalid = || FluxError::InvalidInput {
            param: "device",
            message: format!("{text:?} is not a device; expected `cpu`, `cuda` or `cuda:N`"),
        };
        match lowered.split_once(':') {
            None if lowered == "cpu" => Ok(Self::Cpu),
            None if lowered == "cuda" => Ok(Self::Cuda { device_id: 0 }),
            Some(("cuda", id)) => id
                .parse::<i32>()
                .ok()
                .filter(|id| *id >= 0)
                .map(|device_id| Self::Cuda { device_id })
                .ok_or_else(invalid),
            _ => Err(invalid()),
        }
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda { device_id } => write!(f, "cuda:{device_id}"),
        }
    }
}

/// ONNX Runtime graph optimisation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptimizationLevel {
    Disabled,
    Basic,
    Extended,
    #[default]
    All,
}

impl OptimizationLevel {
    fn to_ort(self) -> GraphOptimizationLevel {
        match self {
            Self::Disabled => GraphOptimizationLevel::Disable,
            Self::Basic => GraphOptimizationLevel::Level1,
            Self::Extended => GraphOptimizationLevel::Level2,
            Self::All => GraphOptimizationLevel::All,
        }
    }
}

/// How sessions are created. The default (CPU, all optimisations, ONNX Runtime's own thread
/// count) suits a dedicated machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionConfig {
    /// Threads inside one operator; `None` lets ONNX Runtime use one per physical core.
    pub intra_op_threads: Option<usize>,
    /// One process-wide pool for all sessions (default) or one per session.
    pub thread_pool: ThreadPool,
    /// Scheduling priority of the inference threads.
    pub compute_priority: ComputePriority,
    pub optimization_level: OptimizationLevel,
    pub execution_provider: ExecutionProvider,
}

impl SessionConfig {
    /// The ONNX Runtime build this configuration needs.
    pub fn runtime_kind(&self) -> RuntimeKind {
        match self.execution_provider {
            ExecutionProvider::Cpu => RuntimeKind::Cpu,
            ExecutionProvider::Cuda { .. } => RuntimeKind::Cuda,
        }
    }
}

/// `flux-rs.json`: what a model folder's layout does not say, or overrides of what it says.
/// Paths are relative to the model folder. Every field is optional; unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Must agree with the transformer graph (dev has a `guidance` input).
    pub variant: Option<Variant>,
    pub clip: Option<PathBuf>,
    pub t5: Option<PathBuf>,
    /// e.g. `transformer.opt/bf16/model.onnx`; default: the first of fp32, bf16, fp16 present.
    pub transformer: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    /// T5 text length; must agree with every graph axis that fixes it (T5 input and output, the
    /// transformer's `encoder_hidden_states` and `txt_ids`).
    pub text_length: Option<usize>,
    pub vae_scaling_factor: Option<f32>,
    pub vae_shift_factor: Option<f32>,
    pub safety_checker: Option<SafetyCheckerManifest>,
}

/// The safety checker entry of [`Manifest`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyCheckerManifest {
    /// Default `safety_checker/model.onnx`.
    pub path: Option<PathBuf>,
    /// Threshold on the nsfw probability; default 0.85.
    pub threshold: Option<f32>,
    /// `false` ignores a safety checker present in the folder.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for SafetyCheckerManifest {
    fn default() -> Self {
        Self {
            path: None,
            threshold: None,
            enabled: true,
        }
    }
}

impl Manifest {
    /// Reads and parses a manifest file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| FluxError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|error| FluxError::Config {
            path: path.to_owned(),
            message: error.to_string(),
        })
    }
}

/// What was resolved about a model folder at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDescription {
    pub root: PathBuf,
    pub variant: Variant,
    /// T5 tokens per prompt (512 for FLUX.1-dev exports, 256 for schnell).
    pub text_length: usize,
    pub vae_scaling_factor: f32,
    pub vae_shift_factor: f32,
    pub transformer_path: PathBuf,
    /// Element type of the transformer's `hidden_states` input.
    pub transformer_precision: FloatType,
    pub safety_checker_path: Option<PathBuf>,
    pub safety_threshold: f32,
    pub scheduler_config_path: PathBuf,
    pub execution_provider: ExecutionProvider,
}

/// Shape class of a port: float (f32/f16/bf16) or token ids (int32/int64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Float,
    Id,
}

/// The expected interface of one graph input or output.
#[derive(Debug, Clone, Copy)]
struct Port {
    name: &'static str,
    class: Class,
    /// Human shape, for messages.
    shape: &'static str,
    rank: usize,
    /// Axes that, when the graph fixes them, must have these sizes.
    fixed: &'static [(usize, i64)],
    required: bool,
}

const fn port(name: &'static str, class: Class, shape: &'static str, rank: usize) -> Port {
    Port {
        name,
        class,
        shape,
        rank,
        fixed: &[],
        required: true,
    }
}

const CLIP_INPUTS: &[Port] = &[Port {
    fixed: &[(1, CLIP_LENGTH as i64)],
    ..port("input_ids", Class::Id, "[B,77]", 2)
}];
const CLIP_OUTPUTS: &[Port] = &[
    port("pooled_embeddings", Class::Float, "[B,D]", 2),
    Port {
        required: false,
        ..port("text_embeddings", Class::Float, "[B,77,D]", 3)
    },
];
const T5_INPUTS: &[Port] = &[port("input_ids", Class::Id, "[B,L]", 2)];
const T5_OUTPUTS: &[Port] = &[port("text_embeddings", Class::Float, "[B,L,D]", 3)];
const TRANSFORMER_INPUTS: &[Port] = &[
    Port {
        fixed: &[(2, PACKED_FEATURES)],
        ..port("hidden_states", Class::Float, "[B,S,64]", 3)
    },
    port("encoder_hidden_states", Class::Float, "[B,L,D]", 3),
    port("pooled_projections", Class::Float, "[B,D]", 2),
    port("timestep", Class::Float, "[B]", 1),
    Port {
        fixed: &[(1, 3)],
        ..port("img_ids", Class::Float, "[S,3]", 2)
    },
    Port {
        fixed: &[(1, 3)],
        ..port("txt_ids", Class::Float, "[L,3]", 2)
    },
    Port {
        required: false,
        ..port("guidance", Class::Float, "[B]", 1)
    },
];
const TRANSFORMER_OUTPUTS: &[Port] = &[Port {
    fixed: &[(2, PACKED_FEATURES)],
    ..port("latent", Class::Float, "[B,S,64]", 3)
}];
const VAE_INPUTS: &[Port] = &[Port {
    fixed: &[(1, LATENT_CHANNELS)],
    ..port("latent", Class::Float, "[B,16,H/8,W/8]", 4)
}];
const VAE_OUTPUTS: &[Port] = &[Port {
    fixed: &[(1, 3)],
    ..port("images", Class::Float, "[B,3,H,W]", 4)
}];
const SAFETY_INPUTS: &[Port] = &[Port {
    fixed: &[(1, 3), (2, 224), (3, 224)],
    ..port("pixel_values", Class::Float, "[B,3,224,224]", 4)
}];
const SAFETY_OUTPUTS: &[Port] = &[Port {
    fixed: &[(1, 2)],
    ..port("logits", Class::Float, "[B,2]", 2)
}];

/// One loaded, checked ONNX graph, with the element types of its inputs.
pub(crate) struct Graph {
    pub(crate) label: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) session: Session,
    float_inputs: HashMap<String, FloatType>,
    id_inputs: HashMap<String, IdType>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("label", &self.label)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// The declared element type of a float input (checked at load).
    pub(crate) fn float_type(&self, input: &str) -> FloatType {
        self.float_inputs
            .get(input)
            .copied()
            .unwrap_or(FloatType::F32)
    }

    /// The declared element type of an id input (checked at load).
    pub(crate) fn id_type(&self, input: &str) -> IdType {
        self.id_inputs.get(input).copied().unwrap_or(IdType::I64)
    }

    /// The element type of a float output (checked at load).
    pub(crate) fn output_float_type(&self, output: &str) -> FloatType {
        self.session
            .outputs()
            .iter()
            .find(|outlet| outlet.name() == output)
            .and_then(|outlet| outlet.dtype().tensor_type())
            .and_then(FloatType::from_element)
            .unwrap_or(FloatType::F32)
    }

    pub(crate) fn has_input(&self, input: &str) -> bool {
        self.session
            .inputs()
            .iter()
            .any(|outlet| outlet.name() == input)
    }

    /// Size of `axis` of an input or output when the graph fixes it.
    fn fixed_dim(&self, name: &str, axis: usize) -> Option<i64> {
        let outlets = self.session.inputs().iter().chain(self.session.outputs());
        outlets
            .filter(|outlet| outlet.name() == name)
            .find_map(|outlet| tensor_dims(outlet)?.get(axis).copied())
            .filter(|&dim| dim > 0)
    }

    /// Refuses a request the graph's fixed axes of `input` cannot take: each of `axes` is
    /// (axis, the size this request needs, what that size is, the request parameter behind it).
    fn check_serves(
        &self,
        label: &str,
        input: &str,
        axes: &[(usize, usize, &str, &'static str)],
    ) -> Result<()> {
        for &(axis, needed, what, param) in axes {
            if let Some(fixed) = self.fixed_dim(input, axis)
                && usize::try_from(fixed).ok() != Some(needed)
            {
                return Err(FluxError::InvalidInput {
                    param,
                    message: format!(
                        "this {label} export is fixed to {fixed} {what}, this request needs {needed}"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A loaded model folder: the five (or four) checked sessions, tokenizers, and what was resolved.
#[derive(Debug)]
pub struct FluxModel {
    pub(crate) description: ModelDescription,
    pub(crate) clip: Graph,
    pub(crate) t5: Graph,
    pub(crate) transformer: Graph,
    pub(crate) vae: Graph,
    pub(crate) safety_checker: Option<Graph>,
    pub(crate) clip_tokenizer: PromptTokenizer,
    pub(crate) t5_tokenizer: PromptTokenizer,
    /// `scheduler/scheduler_config.json`, parsed and validated at load.
    pub(crate) scheduler: SchedulerConfig,
    pub(crate) config: SessionConfig,
}

impl FluxModel {
    /// Refuses, before any work, a request the transformer export cannot take because it is
    /// fixed to another batch or image size (latent rows and columns, in latent pixels).
    pub(crate) fn check_transformer_serves(
        &self,
        batch: usize,
        latent_height: usize,
        latent_width: usize,
    ) -> Result<()> {
        let image_tokens = (latent_height / 2) * (latent_width / 2);
        self.transformer.check_serves(
            "transformer",
            "hidden_states",
            &[
                (0, batch, "images per call", "num_images"),
                (1, image_tokens, "image tokens", "image_size"),
            ],
        )
    }

    /// As [`Self::check_transformer_serves`], for the VAE decoder's fixed axes.
    pub(crate) fn check_vae_serves(
        &self,
        batch: usize,
        latent_height: usize,
        latent_width: usize,
    ) -> Result<()> {
        self.vae.check_serves(
            "VAE",
            "latent",
            &[
                (0, batch, "images per call", "num_images"),
                (2, latent_height, "latent rows", "image_size"),
                (3, latent_width, "latent columns", "image_size"),
            ],
        )
    }

    /// Loads and checks a model folder (see the module docs). Every problem found is reported at
    /// once as [`FluxError::InvalidModel`]; a runtime or execution-provider failure is reported
    /// as itself.
    pub fn load(root: &Path, config: &SessionConfig) -> Result<Self> {
        let mut problems = Vec::new();
        if !root.is_dir() {
            return Err(FluxError::InvalidModel {
                path: root.to_owned(),
                problems: vec!["not a directory".to_owned()],
            });
        }
        check_execution_provider(config)?;

        let manifest_path = root.join(MANIFEST_FILE);
        let manifest = if manifest_path.is_file() {
            Manifest::from_file(&manifest_path).unwrap_or_else(|error| {
                problems.push(format!("{MANIFEST_FILE}: {error}"));
                Manifest::default()
            })
        } else {
            Manifest::default()
        };

        let clip_path = graph_file(
            root,
            manifest.clip.as_deref(),
            "clip.opt/model.onnx",
            &mut problems,
        );
        let t5_path = graph_file(
            root,
            manifest.t5.as_deref(),
            "t5.opt/model.onnx",
            &mut problems,
        );
        let transformer_path =
            transformer_file(root, manifest.transformer.as_deref(), &mut problems);
        let vae_path = graph_file(
            root,
            manifest.vae.as_deref(),
            "vae.opt/model.onnx",
            &mut problems,
        );
        let safety_manifest = manifest.safety_checker.clone().unwrap_or_default();
        let safety_path = if safety_manifest.enabled {
            match &safety_manifest.path {
                Some(relative) => graph_file(root, Some(relative), "", &mut problems),
                None => Some(root.join("safety_checker/model.onnx")).filter(|path| path.is_file()),
            }
        } else {
            None
        };
        let safety_threshold = safety_manifest
            .threshold
            .unwrap_or(DEFAULT_SAFETY_THRESHOLD);
        if !(0.0..=1.0).contains(&safety_threshold) {
            problems.push(format!(
                "{MANIFEST_FILE}: safety_checker.threshold {safety_threshold} is not in [0, 1]"
            ));
        }

        let clip_tokenizer_dir = root.join("tokenizer");
        for missing in tokenizer::missing_clip_files(&clip_tokenizer_dir) {
            problems.push(format!("missing file {}", relative(root, &missing)));
        }
        let t5_tokenizer_dir = root.join("tokenizer_2");
        if !t5_tokenizer_dir.join("tokenizer.json").is_file() {
            problems.push("missing file tokenizer_2/tokenizer.json".to_owned());
        }
        let scheduler_config_path = root.join("scheduler/scheduler_config.json");
        let (scheduler, dynamic_shifting) =
            check_scheduler_config(root, &scheduler_config_path, &mut problems);

        let environment = runtime::session_environment(config)?;
        // Registering the execution provider once up front makes a provider that cannot run here
        // an ExecutionProvider error, not one "invalid graph" problem per file.
        session_builder(&environment, config).map_err(|source| FluxError::ExecutionProvider {
            provider: match config.execution_provider {
                ExecutionProvider::Cpu => "CPU".to_owned(),
                ExecutionProvider::Cuda { device_id } => format!("CUDA (device {device_id})"),
            },
            reason: source.to_string(),
        })?;
        let mut open =
            |label: &'static str, path: Option<PathBuf>, inputs: &[Port], outputs: &[Port]| {
                let path = path?;
                match open_graph(&environment, config, label, &path) {
                    Ok(graph) => {
                        check_interface(root, &graph, inputs, outputs, &mut problems);
                        Some(graph)
                    }
                    Err(FluxError::Ort { source, .. }) => {
                        problems.push(format!(
                            "{}: ONNX Runtime cannot load it: {source}",
                            relative(root, &path)
                        ));
                        None
                    }
                    Err(other) => {
                        problems.push(format!("{}: {other}", relative(root, &path)));
                        None
                    }
                }
            };
        let clip = open("CLIP", clip_path, CLIP_INPUTS, CLIP_OUTPUTS);
        let t5 = open("T5", t5_path, T5_INPUTS, T5_OUTPUTS);
        let transformer = open(
            "transformer",
            transformer_path,
            TRANSFORMER_INPUTS,
            TRANSFORMER_OUTPUTS,
        );
        let vae = open("VAE", vae_path, VAE_INPUTS, VAE_OUTPUTS);
        let safety_checker = open("safety checker", safety_path, SAFETY_INPUTS, SAFETY_OUTPUTS);

        // Cross-graph agreement the pipeline relies on.
        if let (Some(t5), Some(transformer)) = (&t5, &transformer) {
            agree(
                (t5, "text_embeddings", 2),
                (transformer, "encoder_hidden_states", 2),
                "T5 width",
                root,
                &mut problems,
            );
        }
        if let (Some(clip), Some(transformer)) = (&clip, &transformer) {
            agree(
                (clip, "pooled_embeddings", 1),
                (transformer, "pooled_projections", 1),
                "pooled width",
                root,
                &mut problems,
            );
        }

        let graph_variant = transformer.as_ref().map(|graph| {
            if graph.has_input("guidance") {
                Variant::Dev
            } else {
                Variant::Schnell
            }
        });
        if let (Some(graph_variant), Some(declared)) = (graph_variant, manifest.variant)
            && graph_variant != declared
        {
            problems.push(format!(
                "{MANIFEST_FILE}: variant is {declared} but the transformer graph is {graph_variant} \
                 (a `guidance` input means dev)"
            ));
        }
        let variant = graph_variant.or(manifest.variant).unwrap_or(Variant::Dev);
        if let Some(dynamic_shifting) = dynamic_shifting
            && dynamic_shifting != (variant == Variant::Dev)
        {
            tracing::warn!(
                %variant, dynamic_shifting,
                "scheduler_config.json's use_dynamic_shifting is unusual for this variant; following the scheduler config"
            );
        }

        // Every axis that fixes the text length, in both graphs: a T5 export with a dynamic length
        // beside a transformer fixed to one would load and then fail every request.
        let fixed_text_lengths: Vec<(String, i64)> = [
            (t5.as_ref(), "input_ids", 1),
            (t5.as_ref(), "text_embeddings", 1),
            (transformer.as_ref(), "encoder_hidden_states", 1),
            (transformer.as_ref(), "txt_ids", 0),
        ]
        .into_iter()
        .filter_map(|(graph, name, axis)| {
            let graph = graph?;
            let length = graph.fixed_dim(name, axis)?;
            Some((format!("{} `{name}`", relative(root, &graph.path)), length))
        })
        .collect();
        let text_length = match (manifest.text_length, fixed_text_lengths.first()) {
            (Some(declared), _) => declared,
            (None, Some((_, length))) => usize::try_from(*length).unwrap_or(0),
            (None, None) => match variant {
                Variant::Dev => 512,
                Variant::Schnell => 256,
            },
        };
        let source = if manifest.text_length.is_some() {
            format!("{MANIFEST_FILE}'s text_length")
        } else {
            match fixed_text_lengths.first() {
                Some((first, _)) => first.clone(),
                None => "the default".to_owned(),
            }
        };
        for (place, length) in &fixed_text_lengths {
            if usize::try_from(*length).ok() != Some(text_length) {
                problems.push(format!(
                    "text length disagrees: {place} takes {length} tokens, but {source} is {text_length}"
                ));
            }
        }
        if text_length == 0 {
            problems.push("text length is 0".to_owned());
        }

        let clip_tokenizer = PromptTokenizer::clip(&clip_tokenizer_dir)
            .map_err(|error| problems.push(format!("CLIP tokenizer: {error}")))
            .ok();
        let t5_tokenizer = PromptTokenizer::t5(&t5_tokenizer_dir, text_length.max(1))
            .map_err(|error| problems.push(format!("T5 tokenizer: {error}")))
            .ok();

        let vae_scaling_factor = manifest
            .vae_scaling_factor
            .unwrap_or(DEFAULT_VAE_SCALING_FACTOR);
        let vae_shift_factor = manifest
            .vae_shift_factor
            .unwrap_or(DEFAULT_VAE_SHIFT_FACTOR);
        let factors_usable = vae_scaling_factor.is_finite()
            && vae_scaling_factor != 0.0
            && vae_shift_factor.is_finite();
        if !factors_usable {
            problems.push(format!(
                "{MANIFEST_FILE}: VAE factors must be finite and the scaling factor non-zero \
                 (got {vae_scaling_factor}, {vae_shift_factor})"
            ));
        }

        match (
            clip,
            t5,
            transformer,
            vae,
            clip_tokenizer,
            t5_tokenizer,
            scheduler,
        ) {
            (
                Some(clip),
                Some(t5),
                Some(transformer),
                Some(vae),
                Some(clip_tokenizer),
                Some(t5_tokenizer),
                Some(scheduler),
            ) if problems.is_empty() => {
                let description = ModelDescription {
                    root: root.to_owned(),
                    variant,
                    text_length,
                    vae_scaling_factor,
                    vae_shift_factor,
                    transformer_path: transformer.path.clone(),
                    transformer_precision: transformer.float_type("hidden_states"),
                    safety_checker_path: safety_checker.as_ref().map(|graph| graph.path.clone()),
                    safety_threshold,
                    scheduler_config_path,
                    execution_provider: config.execution_provider,
                };
                tracing::info!(?description, "model loaded");
                Ok(Self {
                    config: *config,
                    description,
                    clip,
                    t5,
                    transformer,
                    vae,
                    safety_checker,
                    clip_tokenizer,
                    t5_tokenizer,
                    scheduler,
                })
            }
            _ => Err(FluxError::InvalidModel {
                path: root.to_owned(),
                problems,
            }),
        }
    }

    /// What was resolved at load time.
    pub fn description(&self) -> &ModelDescription {
        &self.description
    }
}

/// Refuses CUDA in a build without the `cuda` feature, before anything is loaded.
fn check_execution_provider(config: &SessionConfig) -> Result<()> {
    match config.execution_provider {
        ExecutionProvider::Cpu => Ok(()),
        ExecutionProvider::Cuda { .. } if cfg!(feature = "cuda") => Ok(()),
        ExecutionProvider::Cuda { .. } => Err(FluxError::ExecutionProvider {
            provider: "CUDA".to_owned(),
            reason: "flux-core was built without the `cuda` feature".to_owned(),
        }),
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A graph file: the manifest's path or the layout's default; a missing one becomes a problem.
fn graph_file(
    root: &Path,
    manifest_path: Option<&Path>,
    default: &str,
    problems: &mut Vec<String>,
) -> Option<PathBuf> {
    let path = root.join(manifest_path.unwrap_or(Path::new(default)));
    if path.is_file() {
        Some(path)
    } else {
        let origin = if manifest_path.is_some() {
            format!(" (named in {MANIFEST_FILE})")
        } else {
            String::new()
        };
        problems.push(format!("missing file {}{origin}", relative(root, &path)));
        None
    }
}

fn transformer_file(
    root: &Path,
    manifest_path: Option<&Path>,
    problems: &mut Vec<String>,
) -> Option<PathBuf> {
    if let Some(path) = manifest_path {
        let named = root.join(path);
        if let Some(precision) = TENSORRT_ONLY_PRECISIONS.iter().find(|precision| {
            named
                .components()
                .any(|part| part.as_os_str() == **precision)
        }) {
            problems.push(format!(
                "{}: the {precision} transformer needs TensorRT operators; use an fp32, bf16 or fp16 export",
                relative(root, &named)
            ));
            return None;
        }
        return graph_file(root, Some(path), "", problems);
    }
    let base = root.join("transformer.opt");
    if let Some(found) = RUNNABLE_PRECISIONS
        .iter()
        .map(|precision| base.join(precision).join("model.onnx"))
        .chain(std::iter::once(base.join("model.onnx")))
        .find(|path| path.is_file())
    {
        return Some(found);
    }
    let tensorrt_only: Vec<&str> = TENSORRT_ONLY_PRECISIONS
        .iter()
        .copied()
        .filter(|precision| base.join(precision).join("model.onnx").is_file())
        .collect();
    if tensorrt_only.is_empty() {
        problems.push("missing file transformer.opt/{fp32,bf16,fp16}/model.onnx".to_owned());
    } else {
        problems.push(format!(
            "transformer.opt holds only {} exports, which need TensorRT operators; add an fp32, bf16 or fp16 export",
            tensorrt_only.join(" and ")
        ));
    }
    None
}

/// Reads and checks the scheduler config the pipeline will use (a schedule variant flux-rs does
/// not compute is a load problem like any other); returns it, when usable, and its explicit
/// `use_dynamic_shifting`.
fn check_scheduler_config(
    root: &Path,
    path: &Path,
    problems: &mut Vec<String>,
) -> (Option<SchedulerConfig>, Option<bool>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(_) => {
            problems.push(format!("missing file {}", relative(root, path)));
            return (None, None);
        }
    };
    let config = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(config) => config,
        Err(error) => {
            problems.push(format!("{}: {error}", relative(root, path)));
            return (None, None);
        }
    };
    let scheduler = match SchedulerConfig::deserialize(&config) {
        Ok(scheduler) => match scheduler.validate() {
            Ok(()) => Some(scheduler),
            Err(message) => {
                problems.push(format!("{}: {message}", relative(root, path)));
                None
            }
        },
        Err(error) => {
            problems.push(format!("{}: {error}", relative(root, path)));
            None
        }
    };
    let dynamic_shifting = config
        .get("use_dynamic_shifting")
        .and_then(serde_json::Value::as_bool);
    (scheduler, dynamic_shifting)
}

fn open_graph(
    environment: &SessionEnvironment,
    config: &SessionConfig,
    label: &'static str,
    path: &Path,
) -> Result<Graph> {
    let session = build_session(environment, config, path).map_err(|source| FluxError::Ort {
        stage: label,
        source,
    })?;
    let mut float_inputs = HashMap::new();
    let mut id_inputs = HashMap::new();
    for input in session.inputs() {
        if let Some(element) = input.dtype().tensor_type() {
            if let Some(float) = FloatType::from_element(element) {
                float_inputs.insert(input.name().to_owned(), float);
            } else if let Some(id) = IdType::from_element(element) {
                id_inputs.insert(input.name().to_owned(), id);
            }
        }
    }
    Ok(Graph {
        label,
        path: path.to_owned(),
        session,
        float_inputs,
        id_inputs,
    })
}

/// A session builder with `config`'s threads, optimisation level and execution provider
/// (registered with `error_on_failure`: never a silent fallback).
pub(crate) fn session_builder(
    environment: &SessionEnvironment,
    config: &SessionConfig,
) -> ort::Result<SessionBuilder> {
    let mut builder = Session::builder(&environment.environment)?
        .with_optimization_level(config.optimization_level.to_ort())?;
    if !environment.shared_pool {
        builder = builder.with_independent_thread_pool()?;
        if let Some(threads) = config.intra_op_threads {
            builder = builder.with_intra_threads(threads)?;
        }
        if config.compute_priority != ComputePriority::Normal {
            builder = builder.with_thread_manager(PoolThreads {
                priority: config.compute_priority,
            })?;
        }
    }
    match config.execution_provider {
        ExecutionProvider::Cpu => {
            // `ort`'s CPU provider defaults to *disabling* ONNX Runtime's memory arena, unlike
            // ONNX Runtime itself (and its Python package): without it every run re-allocates
            // the large VAE and attention activations, which measured about 2x slower on the VAE.
            let cpu = ort::ep::CPU::default().with_arena_allocator(true);
            builder = builder.with_execution_providers([cpu.build().error_on_failure()])?;
        }
        #[cfg(feature = "cuda")]
        ExecutionProvider::Cuda { device_id } => {
            builder = builder.with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(device_id)
                .build()
                .error_on_failure()])?;
        }
        #[cfg(not(feature = "cuda"))]
        ExecutionProvider::Cuda { .. } => {
            return Err(ort::Error::new(
                "flux-core was built without the `cuda` feature",
            ));
        }
    }
    Ok(builder)
}

fn build_session(
    environment: &SessionEnvironment,
    config: &SessionConfig,
    path: &Path,
) -> ort::Result<Session> {
    session_builder(environment, config)?.commit_from_file(path)
}

fn tensor_dims(outlet: &Outlet) -> Option<Vec<i64>> {
    match outlet.dtype() {
        ValueType::Tensor { shape, .. } => Some(shape.iter().copied().collect()),
        _ => None,
    }
}

fn check_interface(
    root: &Path,
    graph: &Graph,
    inputs: &[Port],
    outputs: &[Port],
    problems: &mut Vec<String>,
) {
    let file = relative(root, &graph.path);
    check_ports(&file, "input", graph.session.inputs(), inputs, problems);
    check_ports(&file, "output", graph.session.outputs(), outputs, problems);
    for input in graph.session.inputs() {
        if !inputs.iter().any(|port| port.name == input.name()) {
            problems.push(format!(
                "{file}: unexpected input `{}` (flux-rs cannot feed it)",
                input.name()
            ));
        }
    }
}

fn check_ports(
    file: &str,
    direction: &str,
    outlets: &[Outlet],
    ports: &[Port],
    problems: &mut Vec<String>,
) {
    for port in ports {
        let expected_type = match port.class {
            Class::Float => "float32, float16 or bfloat16",
            Class::Id => "int32 or int64",
        };
        let Some(outlet) = outlets.iter().find(|outlet| outlet.name() == port.name) else {
            if port.required {
                let names: Vec<&str> = outlets.iter().map(Outlet::name).collect();
                problems.push(format!(
                    "{file}: missing {direction} `{}` ({expected_type} {}); the graph has {names:?}",
                    port.name, port.shape
                ));
            }
            continue;
        };
        let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
            problems.push(format!(
                "{file}: {direction} `{}` is not a tensor",
                port.name
            ));
            continue;
        };
        let class_ok = match port.class {
            Class::Float => FloatType::from_element(*ty).is_some(),
            Class::Id => IdType::from_element(*ty).is_some(),
        };
        if !class_ok {
            problems.push(format!(
                "{file}: {direction} `{}` has element type {ty}, expected {expected_type}",
                port.name
            ));
        }
        if shape.len() != port.rank {
            problems.push(format!(
                "{file}: {direction} `{}` has rank {} ({}), expected rank {} {}",
                port.name,
                shape.len(),
                outlet.dtype(),
                port.rank,
                port.shape
            ));
            continue;
        }
        for &(axis, size) in port.fixed {
            let dim = shape[axis];
            if dim > 0 && dim != size {
                problems.push(format!(
                    "{file}: {direction} `{}` has size {dim} on axis {axis}, expected {size} {}",
                    port.name, port.shape
                ));
            }
        }
    }
}

fn agree(
    (left, left_name, left_axis): (&Graph, &str, usize),
    (right, right_name, right_axis): (&Graph, &str, usize),
    what: &str,
    root: &Path,
    problems: &mut Vec<String>,
) {
    if let (Some(a), Some(b)) = (
        left.fixed_dim(left_name, left_axis),
        right.fixed_dim(right_name, right_axis),
    ) && a != b
    {
        problems.push(format!(
            "{what} disagrees: {} `{left_name}` has {a}, {} `{right_name}` has {b}",
            relative(root, &left.path),
            relative(root, &right.path)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_refuses_unknown_fields_and_parses_known_ones() -> anyhow::Result<()> {
        let manifest: Manifest = serde_json::from_str(
            r#"{"variant": "schnell", "transformer": "transformer.opt/bf16/model.onnx",
                "vae_scaling_factor": 0.5, "safety_checker": {"threshold": 0.5}}"#,
        )?;
        assert_eq!(manifest.variant, Some(Variant::Schnell));
        assert_eq!(
            manifest.safety_checker.as_ref().and_then(|s| s.threshold),
            Some(0.5)
        );
        assert!(manifest.safety_checker.as_ref().is_some_and(|s| s.enabled));
        let unknown = serde_json::from_str::<Manifest>(r#"{"varient": "dev"}"#);
        assert!(unknown.is_err_and(|e| e.to_string().contains("unknown field")));
        Ok(())
    }

    #[test]
    fn tensorrt_only_transformers_are_refused_with_a_reason() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("transformer.opt/fp8"))?;
        std::fs::write(dir.path().join("transformer.opt/fp8/model.onnx"), b"")?;
        let mut problems = Vec::new();
        assert_eq!(transformer_file(dir.path(), None, &mut problems), None);
        assert!(problems[0].contains("TensorRT"), "{problems:?}");

        std::fs::create_dir_all(dir.path().join("transformer.opt/bf16"))?;
        std::fs::write(dir.path().join("transformer.opt/bf16/model.onnx"), b"")?;
        let mut problems = Vec::new();
        assert_eq!(
            transformer_file(dir.path(), None, &mut problems),
            Some(dir.path().join("transformer.opt/bf16/model.onnx"))
        );
        assert!(problems.is_empty());
        Ok(())
    }

    #[test]
    fn devices_parse_and_print() -> anyhow::Result<()> {
        assert_eq!("cpu".parse::<ExecutionProvider>()?, ExecutionProvider::Cpu);
        assert_eq!(
            " CUDA ".parse::<ExecutionProvider>()?,
            ExecutionProvider::Cuda { device_id: 0 }
        );
        assert_eq!(
            "cuda:3".parse::<ExecutionProvider>()?,
            ExecutionProvider::Cuda { device_id: 3 }
        );
        assert_eq!(
            ExecutionProvider::Cuda { device_id: 3 }.to_string(),
            "cuda:3"
        );
        for bad in ["", "gpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0"] {
            assert!(
                matches!(
                    bad.parse::<ExecutionProvider>(),
                    Err(FluxError::InvalidInput {
                        param: "device",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn cuda_without_the_feature_is_an_error() {
        let config = SessionConfig {
            execution_provider: ExecutionProvider::Cuda { device_id: 0 },
            ..Default::default()
        };
        let result = check_execution_provider(&config);
        if cfg!(feature = "cuda") {
            assert!(result.is_ok());
        } else {
            assert!(matches!(result, Err(FluxError::ExecutionProvider { .. })));
        }
    }
}
