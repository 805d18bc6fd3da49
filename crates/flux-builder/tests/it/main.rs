//! flux-builder's integration tests (one test binary, one module per area): built graphs run on
//! ONNX Runtime and are compared with the committed tiny ONNX models, which hold the same weights,
//! and with the diffusers references.

mod bf16;
mod bfl;
mod cache;
mod clip;
mod common;
mod external_data;
mod layout;
mod lora;
mod precision;
mod quantized;
mod replay;
mod t5;
mod text_support;
mod transformer;
mod vae;
