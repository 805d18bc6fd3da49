//! placeholder

/// Placeholder until written.
#[derive(Debug)]
pub struct Reaper;
