//! The one error type of flux-core.

use std::path::PathBuf;

/// Everything that can go wrong in flux-core. Structured variants so callers (the engine, the
/// facade, the HTTP layer) can tell bad input from a broken model from a runtime failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FluxError {
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("ONNX Runtime is not available: {reason}. {hint}")]
    RuntimeUnavailable { reason: String, hint: String },

    /// An execution provider that was asked for cannot run here (never a silent CPU fallback).
    #[error("execution provider {provider} was requested but cannot be used: {reason}")]
    ExecutionProvider { provider: String, reason: String },

    /// The inference threads' scheduling priority cannot be set here.
    #[error("cannot set the compute priority: {reason}")]
    ThreadPriority { reason: String },

    /// A model folder is missing a file or a graph does not have the expected interface.
    #[error("invalid model at {}: {problems:?}", path.display())]
    InvalidModel {
        path: PathBuf,
        problems: Vec<String>,
    },

    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A configuration file (scheduler config, manifest) could not be parsed.
    #[error("cannot parse {}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    /// Tokenization failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// A request this model cannot serve (size not a multiple of 16, zero steps, ...).
    #[error("invalid input: {param}: {message}")]
    InvalidInput {
        param: &'static str,
        message: String,
    },

    /// A checkpoint could not be turned into ONNX graphs (the message names the file and the
    /// tensor at fault).
    #[error("cannot build the model: {0}")]
    Build(#[from] flux_builder::BuilderError),

    /// An array did not have the shape an operation needs.
    #[error("shape mismatch in {op}: expected {expected}, got {got:?}")]
    Shape {
        op: &'static str,
        expected: String,
        got: Vec<usize>,
    },

    /// ONNX Runtime failed while running a graph.
    #[error("ONNX Runtime error in {stage}: {source}")]
    Ort {
        stage: &'static str,
        #[source]
        source: ort::Error,
    },

    /// Encoding the output image failed.
    #[error("image encoding failed: {0}")]
    ImageEncode(String),

    /// The job was cancelled between two denoising steps.
    #[error("cancelled")]
    Cancelled,

    /// The engine's queue is at capacity: nothing was queued; retry later (HTTP 429).
    #[error("the generation queue is full ({capacity} waiting)")]
    QueueFull { capacity: usize },

    /// The job's estimated peak memory is over the memory limit: it can never run here, so
    /// nothing was queued (HTTP 422 `exceeds_memory_limit`).
    #[error(
        "this request needs about {needed_mib} MiB of memory (model, image size and number of \
         images), over the memory limit of {limit_mib} MiB; ask for a smaller image \
         or fewer images"
    )]
    ExceedsMemoryLimit { needed_mib: u64, limit_mib: u64 },

    /// The engine is shutting down or its thread is gone: nothing was queued (HTTP 503).
    #[error("the engine is shut down")]
    EngineClosed,

    /// The engine thread failed: it could not start, or a job panicked.
    #[error("engine failure: {0}")]
    Engine(String),
}

/// Result alias for flux-core.
pub type Result<T, E = FluxError> = std::result::Result<T, E>;
