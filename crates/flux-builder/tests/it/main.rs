//! flux-builder's integration tests: one binary, one module per area.

mod bfl;
mod clip;
mod lora;
mod t5;
mod text_support;
