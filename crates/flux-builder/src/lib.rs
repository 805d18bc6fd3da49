//! flux-builder: FLUX.1 checkpoints (diffusers folders, BFL single files) to ONNX Runtime graphs in
//! the layout flux-core loads, written node by node in Rust (no Python, no torch).

pub mod bfl;
pub mod error;
pub mod graphs;
pub mod lora;
pub mod onnx;
pub mod options;
pub mod weights;

pub use onnx::proto;

pub use error::{BuilderError, Result};
pub use options::{BuildOptions, Component, Device, LoraSpec, Precision};
pub use weights::{Checkpoint, DType, TensorInfo};
