//! One `Generator` trait, two backends: local (flux-core on its owner thread) and remote (the
//! flux-remote client), chosen from one backend string.

pub use flux_types::Generator;
