//! The flux-rs HTTP API: an axum server that fronts any `flux_types::Generator`, and the reqwest
//! client that speaks the same contract.
