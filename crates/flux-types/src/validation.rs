//! Request validation: every violation, with field, rule and offending value.

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The JSON field at fault (`prompt`, `image_size.width`, ...).
    pub field: String,
    /// The message the API returns for it.
    pub message: String,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{}", .0.first().map(|v| v.message.as_str()).unwrap_or("invalid request"))]
    Invalid(Vec<Violation>),
}
