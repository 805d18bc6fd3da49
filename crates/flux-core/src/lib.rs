//! The FLUX.1 text-to-image pipeline on ONNX Runtime: tokenizers, text encoders, flow-matching
//! sampler, VAE decode and image encoding, owned by one engine thread. Synchronous.

// Module ownership while the crate is being built in parallel:
//   numerics (pure, no ORT): rng, sampling, denoise, pixels
//   runtime and models: error, runtime, model, tensors, tokenizer, pipeline, bound_loop, safety,
//   engine
mod bound_loop;
pub mod denoise;
pub mod engine;
pub mod error;
pub mod model;
pub mod pipeline;
pub mod pixels;
pub mod rng;
pub mod runtime;
pub mod safety;
pub mod sampling;
pub mod tensors;
pub mod tokenizer;

pub use error::{FluxError, Result};
pub use runtime::{ONNXRUNTIME_VERSION, RuntimeKind, ensure_runtime, init_runtime};
