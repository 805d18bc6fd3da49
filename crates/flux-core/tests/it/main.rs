//! flux-core's integration tests, one module per subject, linked into one test binary (one link of
//! the crate, ONNX Runtime bindings included, instead of one per file).
//!
//! Tests share this process. The few that need a process of their own (the first ONNX Runtime
//! configuration, a process-wide tracing subscriber) run themselves again in a child process
//! through [`common::in_own_process`].

mod common;

mod engine;
mod fixtures_load;
mod mixed_precision;
mod model_folder;
mod parity;
mod pipeline_inputs;
mod rng_parity;
mod runtime;
mod sampling_parity;
mod scene_detector;
mod thread_pools;
mod tokenizer_edge_cases;
mod tokenizer_parity;
