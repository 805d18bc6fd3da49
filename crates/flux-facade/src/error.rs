//! The one error type of flux-facade: building a backend (bad spec, missing model, unreachable
//! runtime). Errors of a running generation are `flux_types::GeneratorError`.

use std::path::PathBuf;

/// Why a backend could not be selected or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FacadeError {
    /// The backend string does not name a backend this build understands.
    #[error("invalid backend {spec:?}: {reason}")]
    InvalidBackend { spec: String, reason: String },

    /// The backend needs a cargo feature this build was compiled without.
    #[error("backend {backend:?} needs flux-facade's `{feature}` feature, which this build lacks")]
    FeatureDisabled {
        backend: String,
        feature: &'static str,
    },

    /// This build carries no bundled model (built without the fixture folder).
    #[error(
        "this build has no bundled model (fixtures/tiny-flux-dev-diffusers was missing at build time); \
         pass a model folder (--model DIR or local:/path/to/model)"
    )]
    NoBundledModel,

    /// A file or folder could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The local pipeline could not start (ONNX Runtime missing, invalid model folder, ...).
    #[cfg(feature = "local")]
    #[error(transparent)]
    Core(#[from] flux_core::FluxError),

    /// The remote client could not be built (boxed: the client's error is large).
    #[cfg(feature = "remote")]
    #[error(transparent)]
    Client(Box<flux_remote::ClientError>),
}

impl FacadeError {
    /// Whether the caller's input is at fault (a malformed backend spec, a folder that is not a
    /// FLUX model) rather than the machine or a server: a command line exits 2 for these.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::InvalidBackend { .. } => true,
            #[cfg(feature = "local")]
            Self::Core(flux_core::FluxError::InvalidModel { .. }) => true,
            _ => false,
        }
    }

    #[cfg(feature = "local")]
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

#[cfg(feature = "remote")]
impl From<flux_remote::ClientError> for FacadeError {
    fn from(error: flux_remote::ClientError) -> Self {
        Self::Client(Box::new(error))
    }
}
