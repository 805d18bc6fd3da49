//! What a model path may be: a diffusers FLUX folder or BFL single files, which flux-builder
//! turns into ONNX graphs once (kept in the flux-rs cache, published atomically), or a folder
//! already in the ONNX layout, loaded as it is.

use std::path::{Path, PathBuf};

pub use flux_builder::{BuildOptions, LoraSpec, Precision};
use flux_builder::{Device, SourceKind};

use crate::config::{ExecutionProvider, SessionConfig};
use crate::error::Result;

/// The ONNX folder to load for `path`, and the checkpoint it was built from (`None` when `path`
/// is an ONNX folder itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedModel {
    pub onnx_folder: PathBuf,
    pub built_from: Option<PathBuf>,
}

/// Resolves `path` to an ONNX folder: a checkpoint (diffusers or BFL) is built for the session's
/// device with `options` (or its cached build reused); an ONNX folder, or a folder that is
/// neither, is returned as it is, so that its load reports every problem with it.
pub fn prepare(
    path: &Path,
    config: &SessionConfig,
    options: &BuildOptions,
) -> Result<PreparedModel> {
    let as_is = || PreparedModel {
        onnx_folder: path.to_owned(),
        built_from: None,
    };
    match flux_builder::detect(path) {
        Ok(SourceKind::OnnxLayout) | Err(_) => Ok(as_is()),
        Ok(SourceKind::Diffusers | SourceKind::BflFiles { .. }) => {
            let mut options = options.clone();
            options.device = match config.execution_provider {
                ExecutionProvider::Cpu => Device::Cpu,
                ExecutionProvider::Cuda { .. } => Device::Cuda,
            };
            let cache = crate::runtime::cache_root()?;
            let onnx_folder = flux_builder::build_cached(path, &options, &cache)?;
            Ok(PreparedModel {
                onnx_folder,
                built_from: Some(path.to_owned()),
            })
        }
    }
}

/// The line a load failure of a folder that is not a checkpoint gains: what was looked for.
pub(super) fn what_was_looked_for(path: &Path) -> Option<String> {
    flux_builder::detect(path)
        .err()
        .map(|error| error.to_string())
}
