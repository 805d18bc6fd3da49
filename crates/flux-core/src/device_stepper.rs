//! The device stepper: denoising steps with every tensor left in the execution provider's memory
//! (IoBinding). The text, pooled and id inputs are copied to the device once per request, the
//! latents, velocity and transformer input live in preallocated device buffers, and the Euler
//! update runs on the device as a four-node graph. Per step only the timestep and `dt` (a few
//! bytes) cross to the device; the latents come back once, after the last step.
//!
//! This is the stepper used with the CUDA provider, driven by the one loop,
//! [`run_steps`](crate::denoise::run_steps). It runs unchanged on the CPU provider (device memory
//! is then host memory), which is how its parity with the host stepper is tested.

use std::time::{Duration, Instant};

use ndarray::{Array1, Array3, Ix3};
use ort::editor::{Graph as EditorGraph, Model, Node, ONNX_DOMAIN, Opset};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::operator::Attribute;
use ort::session::{IoBinding, Session};
use ort::value::{
    DynTensor, DynTensorValueType, Outlet, Shape, SymbolicDimensions, Tensor, TensorElementType,
    ValueType,
};

use crate::config::{ExecutionProvider, SessionConfig};
use crate::denoise::Stepper;
use crate::error::{FluxError, Result};
use crate::model::Graph;
use crate::sampling::{self, SchedulerConfig};
use crate::tensors::{self, FloatType};

const STAGE: &str = "device loop";

fn ort_error(source: ort::Error) -> FluxError {
    FluxError::Ort {
        stage: STAGE,
        source,
    }
}

fn element_type(float: FloatType) -> TensorElementType {
    match float {
        FloatType::F32 => TensorElementType::Float32,
        FloatType::F16 => TensorElementType::Float16,
        FloatType::Bf16 => TensorElementType::Bfloat16,
    }
}

/// ONNX `TensorProto.DataType` codes for `Cast`'s `to` attribute.
fn onnx_type_code(float: FloatType) -> i64 {
    match float {
        FloatType::F32 => 1,
        FloatType::F16 => 10,
        FloatType::Bf16 => 16,
    }
}

fn tensor_outlet(name: &str, float: FloatType, symbols: &[&str]) -> Outlet {
    Outlet::new(
        name,
        ValueType::Tensor {
            ty: element_type(float),
            shape: Shape::new(symbols.iter().map(|_| -1)),
            dimension_symbols: SymbolicDimensions::new(
                symbols.iter().map(|symbol| (*symbol).to_owned()),
            ),
        },
    )
}

/// The Euler update as a graph: `latents_next = latents + dt · velocity` in float32 (the product
/// rounded before the sum, as the host loop does), plus `hidden_next`, the transformer's next
/// input in its own element type.
#[derive(Debug)]
pub(crate) struct EulerGraph {
    session: Session,
    hidden: FloatType,
    velocity: FloatType,
    device: MemoryInfo<'static>,
    device_location: (AllocationDevice<'static>, i32),
}

impl EulerGraph {
    pub(crate) fn build(
        config: &SessionConfig,
        hidden: FloatType,
        velocity: FloatType,
    ) -> Result<Self> {
        let environment = crate::runtime::session_environment(config)?;
        let symbols = ["B", "S", "F"];
        let mut graph = EditorGraph::new().map_err(ort_error)?;
        graph
            .set_inputs([
                tensor_outlet("latents", FloatType::F32, &symbols),
                tensor_outlet("velocity", velocity, &symbols),
                tensor_outlet("dt", FloatType::F32, &["one"]),
            ])
            .map_err(ort_error)?;
        graph
            .set_outputs([
                tensor_outlet("latents_next", FloatType::F32, &symbols),
                tensor_outlet("hidden_next", hidden, &symbols),
            ])
            .map_err(ort_error)?;
        let velocity_f32 = if velocity == FloatType::F32 {
            "velocity"
        } else {
            graph
                .add_node(cast(
                    "cast_velocity",
                    "velocity",
                    "velocity_f32",
                    FloatType::F32,
                )?)
                .map_err(ort_error)?;
            "velocity_f32"
        };
        graph
            .add_node(
                Node::new(
                    "Mul",
                    ONNX_DOMAIN,
                    "scale",
                    [velocity_f32, "dt"],
                    ["step"],
                    [],
                )
                .map_err(ort_error)?,
            )
            .map_err(ort_error)?;
        graph
            .add_node(
                Node::new(
                    "Add",
                    ONNX_DOMAIN,
                    "update",
                    ["latents", "step"],
                    ["latents_next"],
                    [],
                )
                .map_err(ort_error)?,
            )
            .map_err(ort_error)?;
        if hidden == FloatType::F32 {
            graph
                .add_node(
                    Node::new(
                        "Identity",
                        ONNX_DOMAIN,
                        "hidden",
                        ["latents_next"],
                        ["hidden_next"],
                        [],
                    )
                    .map_err(ort_error)?,
                )
                .map_err(ort_error)?;
        } else {
            graph
                .add_node(cast("cast_hidden", "latents_next", "hidden_next", hidden)?)
                .map_err(ort_error)?;
        }
        let mut model =
            Model::new([Opset::new(ONNX_DOMAIN, 17).map_err(ort_error)?]).map_err(ort_error)?;
        model.set_graph(graph).map_err(ort_error)?;
        let builder = crate::model::session_builder(&environment, config).map_err(ort_error)?;
        let session = model.into_session(&builder).map_err(ort_error)?;

        let device_location = match config.execution_provider {
            ExecutionProvider::Cpu => (AllocationDevice::CPU, 0),
            ExecutionProvider::Cuda { device_id } => (AllocationDevice::CUDA, device_id),
        };
        let device = MemoryInfo::new(
            device_location.0.clone(),
            device_location.1,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(ort_error)?;
        Ok(Self {
            session,
            hidden,
            velocity,
            device,
            device_location,
        })
    }
}

fn cast(name: &str, input: &str, output: &str, to: FloatType) -> Result<Node> {
    let to = Attribute::new("to", onnx_type_code(to)).map_err(ort_error)?;
    Node::new("Cast", ONNX_DOMAIN, name, [input], [output], [to]).map_err(ort_error)
}

/// Denoising steps on the device; [`DeviceStepper::finish`] brings the latents back.
pub(crate) struct DeviceStepper<'a> {
    transformer: &'a mut Graph,
    euler: &'a mut EulerGraph,
    transformer_binding: IoBinding,
    /// One Euler binding per direction between the two latent buffers, used in turn.
    euler_bindings: Vec<IoBinding>,
    latents: [DynTensor; 2],
    /// Kept alive beside the bindings that write and read them.
    _hidden: DynTensor,
    _velocity: DynTensor,
    dims: [usize; 3],
    timestep_type: FloatType,
    scheduler: &'a SchedulerConfig,
    steps_done: usize,
    /// Time spent inside ONNX Runtime runs.
    pub(crate) session_time: Duration,
}

impl std::fmt::Debug for DeviceStepper<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStepper")
            .field("dims", &self.dims)
            .field("steps_done", &self.steps_done)
            .finish_non_exhaustive()
    }
}

impl<'a> DeviceStepper<'a> {
    /// Copies `packed` and the per-request transformer inputs in `constants` (host values) to
    /// the device once, and binds every buffer.
    pub(crate) fn new(
        transformer: &'a mut Graph,
        euler: &'a mut EulerGraph,
        constants: &[(&'static str, ort::value::DynValue)],
        packed: Array3<f32>,
        scheduler: &'a SchedulerConfig,
    ) -> Result<Self> {
        let shape = packed.dim();
        let dims = [shape.0, shape.1, shape.2];
        let (device, device_id) = euler.device_location.clone();
        let allocator =
            Allocator::new(&transformer.session, euler.device.clone()).map_err(ort_error)?;

        // Device state: two latent buffers used in turn, the transformer input and its velocity.
        let hidden_host = tensors::float_value(packed.view().into_dyn(), euler.hidden, STAGE)?
            .downcast::<DynTensorValueType>()
            .map_err(ort_error)?;
        let mut hidden = hidden_host
            .to(device.clone(), device_id)
            .map_err(ort_error)?;
        let first = Tensor::from_array(packed).map_err(ort_error)?;
        let mut latents = [
            first
                .to(device.clone(), device_id)
                .map_err(ort_error)?
                .upcast(),
            DynTensor::new(&allocator, TensorElementType::Float32, dims).map_err(ort_error)?,
        ];
        let mut velocity =
            DynTensor::new(&allocator, element_type(euler.velocity), dims).map_err(ort_error)?;

        let mut transformer_binding = transformer.session.create_binding().map_err(ort_error)?;
        for (name, value) in constants {
            transformer_binding
                .bind_input(*name, value)
                .map_err(ort_error)?;
        }
        transformer_binding
            .bind_input("hidden_states", &hidden)
            .map_err(ort_error)?;
        transformer_binding
            .bind_output("latent", &mut velocity)
            .map_err(ort_error)?;

        let mut euler_bindings = Vec::with_capacity(2);
        for current in 0..2 {
            let mut binding = euler.session.create_binding().map_err(ort_error)?;
            binding
                .bind_input("latents", &latents[current])
                .map_err(ort_error)?;
            binding
                .bind_input("velocity", &velocity)
                .map_err(ort_error)?;
            binding
                .bind_output("latents_next", &mut latents[1 - current])
                .map_err(ort_error)?;
            binding
                .bind_output("hidden_next", &mut hidden)
                .map_err(ort_error)?;
            euler_bindings.push(binding);
        }
        let timestep_type = transformer.float_type("timestep");
        Ok(Self {
            transformer,
            euler,
            transformer_binding,
            euler_bindings,
            latents,
            _hidden: hidden,
            _velocity: velocity,
            dims,
            timestep_type,
            scheduler,
            steps_done: 0,
            session_time: Duration::ZERO,
        })
    }

    /// The latents after the steps taken, copied back to the host.
    pub(crate) fn finish(self) -> Result<Array3<f32>> {
        let dims = self.dims;
        let last = &self.latents[self.steps_done % 2];
        let host = last.to(AllocationDevice::CPU, 0).map_err(ort_error)?;
        let values = host
            .try_extract_array::<f32>()
            .map_err(ort_error)?
            .to_owned();
        values
            .into_dimensionality::<Ix3>()
            .map_err(|_| FluxError::Shape {
                op: "device loop latents",
                expected: format!("{dims:?}"),
                got: host.shape().iter().map(|&dim| dim as usize).collect(),
            })
    }
}

impl Stepper for DeviceStepper<'_> {
    fn step(&mut self, sigma: f32, sigma_next: f32) -> Result<()> {
        let batch = self.dims[0];
        let timestep =
            Array1::from_elem(batch, sampling::transformer_timestep(sigma, self.scheduler));
        let timestep = tensors::float_value(timestep.view().into_dyn(), self.timestep_type, STAGE)?;
        self.transformer_binding
            .bind_input("timestep", &timestep)
            .map_err(ort_error)?;
        let started = Instant::now();
        drop(
            self.transformer
                .session
                .run_binding(&self.transformer_binding)
                .map_err(ort_error)?,
        );
        self.session_time += started.elapsed();

        let dt = Tensor::from_array(([1_usize], vec![sigma_next - sigma])).map_err(ort_error)?;
        let binding = &mut self.euler_bindings[self.steps_done % 2];
        binding.bind_input("dt", &dt).map_err(ort_error)?;
        let started = Instant::now();
        drop(self.euler.session.run_binding(binding).map_err(ort_error)?);
        self.session_time += started.elapsed();
        self.steps_done += 1;
        Ok(())
    }
}
