//! One loaded, checked ONNX graph: its session, the element types of its inputs, and `run`, the
//! one place (besides the device stepper's bound runs) where flux-rs calls ONNX Runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ort::session::builder::SessionBuilder;
use ort::session::{RunOptions, Session, SessionInputs, SessionOutputs};
use ort::value::{Outlet, ValueType};

use crate::config::{ExecutionProvider, SessionConfig};
use crate::error::{FluxError, Result};
use crate::runtime::SessionEnvironment;
use crate::tensors::{FloatType, IdType};
use crate::threads::{ComputePriority, PoolThreads};

/// One loaded, checked ONNX graph, with the element types of its inputs.
pub(crate) struct Graph {
    pub(crate) label: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) session: Session,
    float_inputs: HashMap<String, FloatType>,
    id_inputs: HashMap<String, IdType>,
    /// Run options asking ONNX Runtime to shrink the CPU arena after the run (CPU graphs).
    shrink_arena: Option<RunOptions>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("label", &self.label)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The label of the VAE decoder's graph.
pub(crate) const VAE_LABEL: &str = "VAE";

impl Graph {
    /// Opens a graph file as a session and records its inputs' element types.
    pub(super) fn open(
        environment: &SessionEnvironment,
        config: &SessionConfig,
        label: &'static str,
        path: &Path,
    ) -> Result<Self> {
        let session =
            build_session(environment, config, path).map_err(|source| FluxError::Ort {
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
        // Every CPU session allocates from the process's one arena (crate::cpu_arena, which
        // says why); these options give its free memory back at the end of a run, which the
        // pipeline asks for after a large request and when it has been idle
        // ([`Self::run_shrinking`]).
        let shrink_arena = if config.execution_provider == ExecutionProvider::Cpu {
            let mut options = RunOptions::new().map_err(|source| FluxError::Ort {
                stage: label,
                source,
            })?;
            options
                .set("memory.enable_memory_arena_shrinkage", "cpu:0")
                .map_err(|source| FluxError::Ort {
                    stage: label,
                    source,
                })?;
            Some(options)
        } else {
            None
        };
        Ok(Self {
            label,
            path: path.to_owned(),
            session,
            float_inputs,
            id_inputs,
            shrink_arena,
        })
    }

    /// Runs the graph, adding the time spent inside ONNX Runtime to `session_time`. A failure
    /// is an [`FluxError::Ort`] of this graph's stage.
    pub(crate) fn run<'s, 'i, 'v: 'i, const N: usize>(
        &'s mut self,
        inputs: impl Into<SessionInputs<'i, 'v, N>>,
        session_time: &mut Duration,
    ) -> Result<RunOutputs<'s>> {
        self.run_shrinking(inputs, session_time, false)
    }

    /// As [`Self::run`]; with `shrink`, then gives the CPU arena's free memory back to the system
    /// (a no-op for graphs on other execution providers).
    pub(crate) fn run_shrinking<'s, 'i, 'v: 'i, const N: usize>(
        &'s mut self,
        inputs: impl Into<SessionInputs<'i, 'v, N>>,
        session_time: &mut Duration,
        shrink: bool,
    ) -> Result<RunOutputs<'s>> {
        let stage = self.label;
        let started = Instant::now();
        let outputs = match self.shrink_arena.as_ref().filter(|_| shrink) {
            Some(options) => self.session.run_with_options(inputs, options),
            None => self.session.run(inputs),
        }
        .map_err(|source| FluxError::Ort { stage, source });
        *session_time += started.elapsed();
        Ok(RunOutputs {
            outputs: outputs?,
            stage,
        })
    }

    /// The declared element type of a float input (checked at load).
    /// Whether [`Self::run_shrinking`] gives memory back (CPU graphs).
    pub(crate) fn shrinks_arena(&self) -> bool {
        self.shrink_arena.is_some()
    }

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
    pub(super) fn fixed_dim(&self, name: &str, axis: usize) -> Option<i64> {
        let outlets = self.session.inputs().iter().chain(self.session.outputs());
        outlets
            .filter(|outlet| outlet.name() == name)
            .find_map(|outlet| tensor_dims(outlet)?.get(axis).copied())
            .filter(|&dim| dim > 0)
    }

    /// Refuses a request the graph's fixed axes of `input` cannot take: each of `axes` is
    /// (axis, the size this request needs, what that size is, the request parameter behind it).
    pub(super) fn check_serves(
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
            builder = builder
                .with_execution_providers([cpu.build().error_on_failure()])?
                // The process's one CPU arena (crate::cpu_arena), not one per session.
                .with_env_allocators()?;
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

/// The outputs of one [`Graph::run`], read by name.
pub(crate) struct RunOutputs<'s> {
    outputs: SessionOutputs<'s>,
    stage: &'static str,
}

impl RunOutputs<'_> {
    /// The named float output as f32, or an error naming the graph's stage.
    pub(crate) fn f32(&self, name: &str) -> Result<ndarray::ArrayD<f32>> {
        let value = self.outputs.get(name).ok_or_else(|| FluxError::Ort {
            stage: self.stage,
            source: ort::Error::new(format!("no `{name}` output")),
        })?;
        crate::tensors::output_f32(value, self.stage)
    }
}
