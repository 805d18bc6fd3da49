//! Wire schema of the flux-rs HTTP API (v1): request, response and error types, their validation,
//! and the `Generator` trait every backend implements. No I/O, no HTTP, no ONNX.
//!
//! The contract these types implement is `shared/api-spec.md`; the exported JSON Schema and
//! OpenAPI documents under `docs/` are generated from them (`cargo xtask schema`).

pub mod error;
pub mod generator;
pub mod openapi;
pub mod request;
pub mod response;
pub mod schema;
pub mod validation;

pub use error::{ApiError, ErrorBody, ErrorCode};
pub use generator::{
    BoxFuture, GeneratedImage, Generation, GenerationTimings, Generator, GeneratorError, Progress,
    ProgressFn,
};
pub use request::{
    GenerateRequest, ImageSize, ImageSizePreset, OutputFormat, ValidRequest, parse_request,
};
pub use response::{GenerateResponse, ImageRef, Timings};
pub use validation::{RequestError, Rule, Violation};
