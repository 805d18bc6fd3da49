//! flux-builder's integration tests (one test binary): built graphs run on ONNX Runtime and are
//! compared with the committed tiny ONNX models, which hold the same weights.

mod common;
mod external_data;
mod transformer;
mod vae;
