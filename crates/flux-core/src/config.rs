//! How sessions are created: the execution provider, threads, optimisation level and priority.
//! Shared by the runtime (which sizes the process-wide pool from it) and the model loader, so
//! neither imports the other for it.

use ort::session::builder::GraphOptimizationLevel;

use crate::error::{FluxError, Result};
use crate::threads::{ComputePriority, ThreadPool};

/// Which build of ONNX Runtime a process needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RuntimeKind {
    /// The `onnxruntime` wheel: CPU execution provider only.
    #[default]
    Cpu,
    /// The `onnxruntime-gpu` wheel: CUDA (and CPU) execution providers.
    Cuda,
}

impl RuntimeKind {
    /// The PyPI distribution that carries this build.
    pub fn pypi_package(self) -> &'static str {
        match self {
            Self::Cpu => "onnxruntime",
            Self::Cuda => "onnxruntime-gpu",
        }
    }

    pub(crate) fn cache_subdir(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "CPU",
            Self::Cuda => "CUDA",
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
    pub(crate) fn to_ort(self) -> GraphOptimizationLevel {
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

/// Refuses CUDA in a build without the `cuda` feature, before anything is loaded.
pub(crate) fn check_execution_provider(config: &SessionConfig) -> Result<()> {
    match config.execution_provider {
        ExecutionProvider::Cpu => Ok(()),
        ExecutionProvider::Cuda { .. } if cfg!(feature = "cuda") => Ok(()),
        ExecutionProvider::Cuda { .. } => Err(FluxError::ExecutionProvider {
            provider: "CUDA".to_owned(),
            reason: "flux-core was built without the `cuda` feature".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
