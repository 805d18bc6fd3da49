//! The model folder: the official FLUX.1 ONNX export layout (`clip.opt/`, `t5.opt/`,
//! `transformer.opt/<precision>/`, `vae.opt/`, plus `tokenizer/`, `tokenizer_2/` and
//! `scheduler/`), an optional `flux-rs.json` manifest of ours, and the checked ONNX sessions.
//!
//! Loading checks every graph's interface (names, ranks, element types, the fixed sizes flux-rs
//! relies on) and every file, and reports all problems in one [`FluxError::InvalidModel`].
//! Sessions are created from file paths, so external-data weights are memory-mapped or read by
//! ONNX Runtime once, never held twice.
//!
//! - [`spec`]: what differs between variants, as data;
//! - `layout`: which file holds which graph; [`manifest`]: `flux-rs.json`;
//! - `interface`: the ports each graph must have and their checks;
//! - `graph`: one checked session that runs and times itself.

mod graph;
mod interface;
mod layout;
pub mod manifest;
pub mod source;
pub mod spec;

use std::path::{Path, PathBuf};

pub(crate) use graph::{Graph, session_builder};
pub use manifest::{MANIFEST_FILE, Manifest, SafetyCheckerManifest};
pub use spec::{ModelSpec, Variant};

use crate::config::{ExecutionProvider, SessionConfig, check_execution_provider};
use crate::error::{FluxError, Result};
use crate::runtime;
use crate::sampling::SchedulerConfig;
use crate::tensors::FloatType;
use crate::tokenizer::PromptTokenizer;
use interface::Port;
use layout::{ModelFiles, relative};

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

/// What was resolved about a model folder at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDescription {
    /// The ONNX folder the sessions were loaded from.
    pub root: PathBuf,
    /// The checkpoint (diffusers folder or BFL files) `root` was built from, when it was.
    pub built_from: Option<PathBuf>,
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

/// The graphs of a folder, each present when it opened (a failure is a problem).
struct OpenedGraphs {
    clip: Option<Graph>,
    t5: Option<Graph>,
    transformer: Option<Graph>,
    vae: Option<Graph>,
    safety_checker: Option<Graph>,
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

    /// The facts of this model's variant.
    pub(crate) fn spec(&self) -> &'static ModelSpec {
        self.description.variant.spec()
    }

    /// Loads a model: an ONNX folder as it is, a diffusers folder or BFL files through the
    /// builder with default options (see [`source`] and [`Self::load_with`]).
    pub fn load(path: &Path, config: &SessionConfig) -> Result<Self> {
        Self::load_with(path, config, &source::BuildOptions::default())
    }

    /// As [`Self::load`], with the builder's options (precision, LoRAs, text length) for a
    /// checkpoint. A folder that is neither a checkpoint nor an ONNX folder fails with every
    /// problem of an ONNX folder plus what was looked for.
    pub fn load_with(
        path: &Path,
        config: &SessionConfig,
        build: &source::BuildOptions,
    ) -> Result<Self> {
        let prepared = source::prepare(path, config, build)?;
        // A checkpoint folder may carry an ONNX safety checker (`safety_checker/model.onnx`,
        // e.g. the bundled model's); the builder does not copy it, so it is used from there.
        let extra_safety = prepared
            .built_from
            .as_ref()
            .map(|source| source.join("safety_checker/model.onnx"))
            .filter(|path| path.is_file());
        let mut model = Self::load_onnx(&prepared.onnx_folder, config, extra_safety.as_deref())
            .map_err(|error| match error {
                FluxError::InvalidModel { path, mut problems } => {
                    problems.extend(source::what_was_looked_for(&path));
                    FluxError::InvalidModel { path, problems }
                }
                other => other,
            })?;
        model.description.built_from = prepared.built_from;
        tracing::info!(description = ?model.description, "model loaded");
        Ok(model)
    }

    /// Loads and checks an ONNX folder (see the module docs). Every problem found is reported at
    /// once as [`FluxError::InvalidModel`]; a runtime or execution-provider failure is reported
    /// as itself.
    fn load_onnx(root: &Path, config: &SessionConfig, extra_safety: Option<&Path>) -> Result<Self> {
        if !root.is_dir() {
            return Err(FluxError::InvalidModel {
                path: root.to_owned(),
                problems: vec!["not a directory".to_owned()],
            });
        }
        check_execution_provider(config)?;
        let mut problems = Vec::new();

        let manifest = read_manifest(root, &mut problems);
        let mut files = ModelFiles::resolve(root, &manifest, &mut problems);
        let safety_enabled = manifest.safety_checker.as_ref().is_none_or(|s| s.enabled);
        if files.safety_checker.is_none() && safety_enabled {
            files.safety_checker = extra_safety.map(Path::to_owned);
        }
        let (scheduler, dynamic_shifting) =
            layout::check_scheduler_config(root, &files.scheduler_config, &mut problems);
        let graphs = open_graphs(root, config, &files, &mut problems)?;
        interface::check_cross_graph(
            root,
            graphs.clip.as_ref(),
            graphs.t5.as_ref(),
            graphs.transformer.as_ref(),
            &mut problems,
        );

        let variant = resolve_variant(graphs.transformer.as_ref(), &manifest, &mut problems);
        if let Some(dynamic_shifting) = dynamic_shifting
            && dynamic_shifting != variant.spec().usual_dynamic_shifting
        {
            tracing::warn!(
                %variant, dynamic_shifting,
                "scheduler_config.json's use_dynamic_shifting is unusual for this variant; following the scheduler config"
            );
        }
        let text_length = interface::resolve_text_length(
            root,
            &manifest,
            variant,
            graphs.t5.as_ref(),
            graphs.transformer.as_ref(),
            &mut problems,
        );

        let clip_tokenizer = PromptTokenizer::clip(&files.clip_tokenizer)
            .map_err(|error| problems.push(format!("CLIP tokenizer: {error}")))
            .ok();
        let t5_tokenizer = PromptTokenizer::t5(&files.t5_tokenizer, text_length.max(1))
            .map_err(|error| problems.push(format!("T5 tokenizer: {error}")))
            .ok();
        let (vae_scaling_factor, vae_shift_factor) = vae_factors(&manifest, &mut problems);

        let OpenedGraphs {
            clip: Some(clip),
            t5: Some(t5),
            transformer: Some(transformer),
            vae: Some(vae),
            safety_checker,
        } = graphs
        else {
            return Err(invalid(root, problems));
        };
        let (Some(clip_tokenizer), Some(t5_tokenizer), Some(scheduler)) =
            (clip_tokenizer, t5_tokenizer, scheduler)
        else {
            return Err(invalid(root, problems));
        };
        if !problems.is_empty() {
            return Err(invalid(root, problems));
        }
        let description = ModelDescription {
            root: root.to_owned(),
            built_from: None,
            variant,
            text_length,
            vae_scaling_factor,
            vae_shift_factor,
            transformer_path: transformer.path.clone(),
            transformer_precision: transformer.float_type("hidden_states"),
            safety_checker_path: safety_checker.as_ref().map(|graph| graph.path.clone()),
            safety_threshold: files.safety_threshold,
            scheduler_config_path: files.scheduler_config,
            execution_provider: config.execution_provider,
        };
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

    /// What was resolved at load time.
    pub fn description(&self) -> &ModelDescription {
        &self.description
    }
}

fn invalid(root: &Path, problems: Vec<String>) -> FluxError {
    FluxError::InvalidModel {
        path: root.to_owned(),
        problems,
    }
}

/// The folder's manifest, or the empty one when there is none; a broken one is a problem.
fn read_manifest(root: &Path, problems: &mut Vec<String>) -> Manifest {
    let path = root.join(MANIFEST_FILE);
    if !path.is_file() {
        return Manifest::default();
    }
    Manifest::from_file(&path).unwrap_or_else(|error| {
        problems.push(format!("{MANIFEST_FILE}: {error}"));
        Manifest::default()
    })
}

/// Opens every graph file found, each checked against its interface. A graph ONNX Runtime
/// refuses is a problem; an execution provider that cannot run here is an error of its own.
fn open_graphs(
    root: &Path,
    config: &SessionConfig,
    files: &ModelFiles,
    problems: &mut Vec<String>,
) -> Result<OpenedGraphs> {
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
    let mut open = |label: &'static str, path: &Option<PathBuf>, ports: (&[Port], &[Port])| {
        let path = path.as_ref()?;
        match Graph::open(&environment, config, label, path) {
            Ok(graph) => {
                interface::check_interface(root, &graph, ports.0, ports.1, problems);
                Some(graph)
            }
            Err(FluxError::Ort { source, .. }) => {
                let text = source.to_string();
                // ORT's CPU provider has no bf16 kernels: the official bf16 export is refused
                // here, while the same model's diffusers folder builds into fp32 graphs.
                let hint = if config.execution_provider == ExecutionProvider::Cpu
                    && text.to_ascii_lowercase().contains("bfloat16")
                {
                    "; this is a bfloat16 export, which ONNX Runtime's CPU provider cannot run: \
                     point --model at the diffusers folder of the same model instead (flux-rs \
                     builds it into float32 graphs; see docs/real-model.md)"
                } else {
                    ""
                };
                problems.push(format!(
                    "{}: ONNX Runtime cannot load it: {text}{hint}",
                    relative(root, path)
                ));
                None
            }
            Err(other) => {
                problems.push(format!("{}: {other}", relative(root, path)));
                None
            }
        }
    };
    Ok(OpenedGraphs {
        clip: open("CLIP", &files.clip, interface::CLIP),
        t5: open("T5", &files.t5, interface::T5),
        transformer: open("transformer", &files.transformer, interface::TRANSFORMER),
        vae: open(graph::VAE_LABEL, &files.vae, interface::VAE),
        safety_checker: open("safety checker", &files.safety_checker, interface::SAFETY),
    })
}

/// The variant the transformer graph is (its `guidance` input), checked against the manifest's.
fn resolve_variant(
    transformer: Option<&Graph>,
    manifest: &Manifest,
    problems: &mut Vec<String>,
) -> Variant {
    let graph_variant =
        transformer.map(|graph| Variant::from_guidance_input(graph.has_input("guidance")));
    if let (Some(graph_variant), Some(declared)) = (graph_variant, manifest.variant)
        && graph_variant != declared
    {
        problems.push(format!(
            "{MANIFEST_FILE}: variant is {declared} but the transformer graph is {graph_variant} \
             (a `guidance` input means dev)"
        ));
    }
    graph_variant.or(manifest.variant).unwrap_or(Variant::Dev)
}

/// The VAE's latent factors: the manifest's, else FLUX.1's.
fn vae_factors(manifest: &Manifest, problems: &mut Vec<String>) -> (f32, f32) {
    let scaling = manifest
        .vae_scaling_factor
        .unwrap_or(DEFAULT_VAE_SCALING_FACTOR);
    let shift = manifest
        .vae_shift_factor
        .unwrap_or(DEFAULT_VAE_SHIFT_FACTOR);
    if !(scaling.is_finite() && scaling != 0.0 && shift.is_finite()) {
        problems.push(format!(
            "{MANIFEST_FILE}: VAE factors must be finite and the scaling factor non-zero \
             (got {scaling}, {shift})"
        ));
    }
    (scaling, shift)
}
