//! The one error type of flux-builder.

use std::path::PathBuf;

/// Everything that can go wrong while reading a checkpoint or writing graphs. Each variant names the
/// file (and the tensor, where there is one) so that a user can tell which of their files is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuilderError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A safetensors file is malformed (truncated, a header that lies, overlapping data...).
    #[error("{}: invalid safetensors file: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },

    /// One tensor of a safetensors file is malformed or of a type the builder does not take.
    #[error("{}: tensor {tensor}: {message}", path.display())]
    BadTensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },

    /// A tensor the graph needs is not in the checkpoint.
    #[error("tensor {tensor} is missing from {files}")]
    MissingTensor { tensor: String, files: String },

    /// A tensor's shape contradicts the component's config.
    #[error("{}: tensor {tensor} has shape {got:?}, the config implies {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    /// A config file is missing a field, has a wrong value, or names an unknown architecture.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    /// A folder is none of the model formats the builder reads.
    #[error("{} is not a model folder the builder knows: {looked_for}", path.display())]
    UnknownSource { path: PathBuf, looked_for: String },

    /// A precision that cannot run on the chosen device, or is not known.
    #[error("precision {precision} cannot be used on {device}: {reason}")]
    Precision {
        precision: String,
        device: String,
        reason: String,
    },

    /// A LoRA file does not fit the model it is applied to.
    #[error("{}: LoRA tensor {tensor}: {message}", path.display())]
    Lora {
        path: PathBuf,
        tensor: String,
        message: String,
    },

    /// A graph that the builder is asked for is not implemented yet (never fake output).
    #[error("{what} is not yet built by flux-builder")]
    NotYetBuilt { what: String },

    /// A graph-construction invariant was broken (a bug in a graph module, reported, not panicked).
    #[error("graph {graph}: {message}")]
    Graph { graph: String, message: String },
}

/// flux-builder's result type.
pub type Result<T, E = BuilderError> = std::result::Result<T, E>;

impl BuilderError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
