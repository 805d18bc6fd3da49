//! flux-builder's integration tests: one binary, one module per area.

mod clip;
mod t5;
mod text_support;
