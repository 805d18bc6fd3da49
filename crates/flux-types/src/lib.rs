//! Wire schema of the flux-rs HTTP API (v1): request, response and error types, their validation,
//! and the `Generator` trait every backend implements. No I/O, no HTTP, no ONNX.
//!
//! The contract these types implement is described in `docs/api.md`; the exported JSON Schema and
//! OpenAPI documents under `docs/` are generated from them (`cargo xtask schema`).
//!
//! ```
//! use flux_types::{ErrorCode, parse_request};
//!
//! let valid = parse_request(br#"{"prompt": "a red fox", "image_size": "square"}"#)?;
//! assert_eq!((valid.width(), valid.height(), valid.num_inference_steps()), (512, 512, 28));
//!
//! let refused = parse_request(br#"{"prompt": "a red fox", "num_images": 5}"#).unwrap_err();
//! let api_error = refused.to_api_error();
//! assert_eq!(api_error.code, ErrorCode::InvalidParameter);
//! assert_eq!(api_error.param.as_deref(), Some("num_images"));
//! assert_eq!(api_error.message, "num_images must be between 1 and 4, got 5");
//! # Ok::<(), flux_types::RequestError>(())
//! ```

pub mod error;
pub mod generator;
pub mod models;
pub mod openapi;
mod openapi_queue;
pub mod queue;
pub mod request;
pub mod response;
pub mod schema;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod validation;
pub mod variant;

pub use error::{ApiError, ErrorBody, ErrorCode};
pub use generator::{
    BoxFuture, GeneratedImage, Generation, GenerationTimings, Generator, GeneratorError, ModelInfo,
    Progress, ProgressFn,
};
pub use models::{ModelList, ServedModel};
pub use queue::{
    CancelAccepted, LogLine, Outcome, QueueProgress, QueueState, QueueStatus, QueueSubmitted,
    WebhookBody, WebhookStatus,
};
pub use request::{
    GenerateRequest, ImageSize, ImageSizePreset, OutputFormat, ValidRequest, parse_request,
    parse_request_for,
};
pub use response::{GenerateResponse, ImageRef, Timings};
pub use validation::{RequestError, Rule, Violation};
pub use variant::VariantSpec;
