//! flux-builder: FLUX.1 checkpoints (diffusers folders, BFL single files) to ONNX Runtime graphs in
//! the layout flux-core loads, written node by node in Rust (no Python, no torch).

pub mod bfl;
pub mod cache;
pub mod error;
pub mod graphs;
pub mod layout;
pub mod lora;
pub mod onnx;
pub mod options;
pub mod source;
pub mod weights;

pub use onnx::proto;

pub use cache::{build_cached, cache_key};
pub use error::{BuilderError, Result};
pub use layout::{BuildReport, build};
pub use options::{BuildOptions, Component, Device, LoraSpec, Precision};
pub use source::{SourceKind, detect};
pub use weights::{Checkpoint, DType, TensorInfo};
