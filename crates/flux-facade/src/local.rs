//! The local backend: flux-core's engine (one owner thread holding the ONNX Runtime sessions)
//! bridged to async callers.
//!
//! `generate` submits the job at once, without waiting: a full engine queue is `Overloaded`
//! immediately and nothing is buffered. The reply comes back through a oneshot channel; dropping
//! the returned future cancels the job (it stops at the next denoising step). The progress
//! callback runs on the engine thread between two steps: whatever it does delays the next step,
//! so it should only hand the event on (a channel send, an atomic store).

use std::path::{Path, PathBuf};

use flux_core::FluxError;
use flux_core::config::SessionConfig;
use flux_core::engine::{Engine, Job, JobHandle, ProgressCallback};
use flux_core::model::source::BuildOptions;
use flux_core::pipeline::{GenerationParams, PipelineOutput};
use flux_core::tensors::FloatType;
use flux_types::{
    BoxFuture, Generation, GenerationTimings, Generator, GeneratorError, ModelInfo, Progress,
    ProgressFn, ValidRequest, VariantSpec,
};
use tokio::sync::oneshot;

use crate::error::FacadeError;

/// How the local engine runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalOptions {
    /// Jobs waiting for the engine thread, beyond the one it runs; one more is `Overloaded`.
    /// Default 16 (the HTTP server's default queue depth).
    pub queue_capacity: usize,
    /// ONNX Runtime session settings (threads, optimisation level, execution provider).
    pub session: SessionConfig,
    /// How a checkpoint folder (diffusers or BFL files) is built into graphs: precision, LoRAs.
    pub build: BuildOptions,
    /// The memory jobs are admitted under, in bytes: a job whose estimated peak is over it is
    /// refused at once (`ExceedsMemoryLimit`). `None`: the cgroup's limit, else the machine's.
    pub memory_limit: Option<u64>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 16,
            session: SessionConfig::default(),
            build: BuildOptions::default(),
            memory_limit: None,
        }
    }
}

/// FLUX on this machine, through flux-core's engine.
#[derive(Debug)]
pub struct LocalGenerator {
    engine: Engine,
    model_dir: PathBuf,
    /// The loaded model's facts (its id: the folder's name).
    model: Option<ModelInfo>,
}

impl LocalGenerator {
    /// Provisions ONNX Runtime if needed, loads the model in `model_dir` on a new engine thread,
    /// and returns once it is ready. Blocking: seconds for a real model.
    pub fn start(model_dir: &Path, options: &LocalOptions) -> Result<Self, FacadeError> {
        let mut engine = Engine::start_model(
            model_dir.to_path_buf(),
            options.session,
            options.build.clone(),
            options.queue_capacity,
        )?;
        if let Some(limit) = options.memory_limit {
            engine.set_memory_limit(limit);
        }
        let model = model_info(model_dir, &engine);
        Ok(Self {
            engine,
            model_dir: model_dir.to_path_buf(),
            model,
        })
    }

    /// Names the model `id` in listings instead of its folder's name.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        if let Some(model) = &mut self.model {
            model.id = id.into();
        }
        self
    }

    /// The bundled tiny model (extracted to the cache on first use) with default options.
    pub fn bundled() -> Result<Self, FacadeError> {
        Ok(Self::start(
            &crate::bundled::bundled_model_dir()?,
            &LocalOptions::default(),
        )?
        .with_id(crate::bundled::BUNDLED_MODEL_ID))
    }

    /// Jobs waiting in the engine's queue now.
    pub fn queued_jobs(&self) -> usize {
        self.engine.queued_jobs()
    }

    fn submit(&self, request: ValidRequest, progress: Option<ProgressFn>) -> Submitted {
        // The seed is resolved here, not in the pipeline, so the caller learns the one used.
        let request = request.with_drawn_seed();
        let seed = request.seed().unwrap_or_default();
        let (sender, receiver) = oneshot::channel();
        let reply = Box::new(move |result: flux_core::Result<PipelineOutput>| {
            // The receiver is gone when the caller dropped the future: nobody to tell.
            let _ = sender.send(result);
        });
        let job = Job {
            params: GenerationParams::from_request(&request, seed),
            on_progress: progress.map(|progress| {
                Box::new(move |step: usize, total_steps: usize| {
                    progress(Progress {
                        step: u32::try_from(step).unwrap_or(u32::MAX),
                        total_steps: u32::try_from(total_steps).unwrap_or(u32::MAX),
                    })
                }) as ProgressCallback
            }),
        };
        let handle = self.engine.try_submit(job, reply).map_err(map_core_error)?;
        Ok((
            PendingJob {
                handle: Some(handle),
                seed,
            },
            receiver,
        ))
    }
}

/// A submitted job and the channel its answer comes through, or why it was refused.
type Submitted = Result<
    (
        PendingJob,
        oneshot::Receiver<flux_core::Result<PipelineOutput>>,
    ),
    GeneratorError,
>;

/// A submitted job; cancels it when dropped before the answer came.
struct PendingJob {
    handle: Option<JobHandle>,
    seed: u64,
}

impl PendingJob {
    /// The answer came: nothing to cancel any more.
    fn finished(mut self) -> u64 {
        self.handle = None;
        self.seed
    }
}

impl Drop for LocalGenerator {
    /// On an async runtime's thread the engine is not waited for (that could take a denoising
    /// step, seconds on a CPU, with the worker blocked): it finishes its queued jobs and ends on
    /// its own. Elsewhere the engine's own drop waits for it, so a program that drops its
    /// generator before exiting lets the last jobs finish.
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.engine.shutdown_detached();
        }
    }
}

impl Drop for PendingJob {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.cancel();
        }
    }
}

impl Generator for LocalGenerator {
    /// Submits at once (a full queue is `Overloaded` before anything is awaited); the future
    /// waits for the answer and cancels the job if dropped first.
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        let submitted = self.submit(request, progress);
        Box::pin(async move {
            let (pending, receiver) = submitted?;
            let answer = receiver.await;
            let seed = pending.finished();
            let output = answer
                .map_err(|_| GeneratorError::Inference {
                    detail: "the engine thread stopped before answering".to_owned(),
                })?
                .map_err(map_core_error)?;
            Ok(into_generation(output, seed))
        })
    }

    /// `start` returns only once the model is loaded, so a `LocalGenerator` is always ready.
    fn is_ready(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("local flux-core engine, model {}", self.model_dir.display())
    }

    fn model(&self) -> Option<ModelInfo> {
        self.model.clone()
    }
}

/// The facts of the model `engine` loaded from `model_dir`. Its id is the folder's name as the
/// user gave it (`/models/FLUX.1-schnell` is `FLUX.1-schnell`, even when the graphs were built
/// into the cache), or `flux-<variant>` for a path without one.
fn model_info(model_dir: &Path, engine: &Engine) -> Option<ModelInfo> {
    let description = engine.description()?;
    let variant = VariantSpec::named(description.variant.spec().name)?;
    let id = model_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("flux-{}", variant.name));
    // A quantized build computes in fp32; its folder (flux-builder's `transformer.opt/int4/`)
    // says how the weights are stored.
    let quantized = description
        .transformer_path
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .filter(|name| matches!(*name, "int8" | "int4"));
    let precision = quantized.unwrap_or(match description.transformer_precision {
        FloatType::F32 => "fp32",
        FloatType::F16 => "fp16",
        FloatType::Bf16 => "bf16",
    });
    Some(ModelInfo {
        id,
        variant,
        text_length: u32::try_from(description.text_length).ok(),
        precision: Some(precision.to_owned()),
        device: Some(description.execution_provider.to_string()),
        safety_checker: Some(description.safety_checker_path.is_some()),
    })
}

fn into_generation(output: PipelineOutput, seed: u64) -> Generation {
    let timings = GenerationTimings {
        inference: output.timings.total,
        queued: output.timings.queued,
    };
    Generation {
        images: output.images,
        seed,
        has_nsfw_concepts: output.nsfw,
        timings,
    }
}

/// Bad input stays bad input; a cancellation stays a cancellation; a full or closed engine queue is
/// `Overloaded` / `ShuttingDown`; everything else is a failed generation whose detail goes to the
/// log.
fn map_core_error(error: FluxError) -> GeneratorError {
    match error {
        FluxError::InvalidInput { param, message } => GeneratorError::InvalidRequest {
            param: Some(param.to_owned()),
            message,
        },
        FluxError::Cancelled => GeneratorError::Cancelled,
        FluxError::QueueFull { .. } => GeneratorError::Overloaded { retry_after: None },
        error @ FluxError::ExceedsMemoryLimit { .. } => GeneratorError::ExceedsMemoryLimit {
            message: error.to_string(),
        },
        FluxError::EngineClosed => GeneratorError::ShuttingDown,
        other => GeneratorError::Inference {
            detail: other.to_string(),
        },
    }
}
