//! flux-builder: FLUX.1 checkpoints (diffusers folders, BFL single files) to ONNX Runtime graphs in
//! the layout flux-core loads, written node by node in Rust (no Python, no torch).
//!
//! - [`detect`] tells what a folder is ([`SourceKind`]): a diffusers `FluxPipeline` folder
//!   (`model_index.json`), BFL files (`flux1-dev.safetensors` or `flux1-schnell.safetensors` with
//!   `ae.safetensors`, plus `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/` and
//!   `scheduler/` from the diffusers repository beside them; `transformer/config.json` and
//!   `vae/config.json` are used when present), or already the ONNX layout.
//! - [`build`] writes `clip.opt/`, `t5.opt/`, `transformer.opt/<fp32|fp16>/`, `vae.opt/`, the
//!   copied tokenizers and scheduler config and `flux-rs.json` into a new folder, atomically.
//! - [`build_cached`] returns the folder to load: the source itself for the ONNX layout, else a
//!   cache entry keyed by [`cache_key`], built once and published atomically.
//!
//! A folder may carry `flux-rs-model.json` with its own defaults ([`source_defaults`]: the T5
//! text length it was trained with).
//!
//! Weights whose dtype is the graph's point into the checkpoint (hard-linked into the graph
//! folder: ONNX Runtime 1.31 refuses absolute, `..` and symlinked external-data locations);
//! others are converted once, tensor by tensor, into `model.onnx.data`.

pub mod bfl;
pub mod cache;
pub mod error;
pub mod graphs;
pub mod layout;
pub mod lora;
pub mod onnx;
pub mod options;
pub mod source;
pub mod source_defaults;
pub mod weights;

pub use onnx::proto;

pub use cache::{build_cached, cache_key};
pub use error::{BuilderError, Result};
pub use layout::{BuildReport, build};
pub use options::{BuildOptions, Component, Device, LoraSpec, Precision};
pub use source::{SourceKind, detect};
pub use weights::{Checkpoint, DType, TensorInfo};
