//! The graph of each FLUX component, written from its config and checkpoint.

pub mod config;
pub mod transformer;
pub mod vae;
