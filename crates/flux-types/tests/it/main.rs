//! flux-types' integration tests, one module per subject, linked into one test binary (one link of
//! the crate and its dev-dependencies instead of one per file).

mod json_schema_parity;
mod openapi;
mod roundtrip;
mod validation;
mod variants;
