//! The FLUX.1 text-to-image pipeline on ONNX Runtime: tokenizers, text encoders, flow-matching
//! sampler, VAE decode and image encoding, owned by one engine thread. Synchronous.

pub mod config;
pub mod cpu_arena;
pub mod denoise;
mod device_stepper;
pub mod engine;
pub mod error;
pub mod memory;
pub mod model;
mod params;
pub mod pipeline;
pub mod pixels;
pub mod rng;
pub mod runtime;
pub mod safety;
pub mod sampling;
pub mod tensors;
pub mod threads;
pub mod tokenizer;
mod transformer_velocity;

pub use config::{ExecutionProvider, OptimizationLevel, SessionConfig};
pub use error::{FluxError, Result};
pub use runtime::{ONNXRUNTIME_VERSION, RuntimeKind, ensure_runtime, init_runtime};
