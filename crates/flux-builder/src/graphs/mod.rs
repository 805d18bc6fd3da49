//! The graph of each FLUX component, written from its config and checkpoint.

pub mod clip;
pub mod config;
pub mod t5;
pub mod text;
pub mod transformer;
pub mod vae;
