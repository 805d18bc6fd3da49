//! What a refused request reports: each [`Violation`] (field, rule, message, offending value) and
//! the [`RequestError`] that carries them all.

use serde_json::Value;

use crate::error::{ApiError, ErrorCode};

/// Which rule a [`Violation`] broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// A required field is missing.
    Required,
    /// The JSON type is wrong (`"2"` or `2.5` for an integer, `null` for anything).
    Type,
    /// A number is outside its allowed range.
    Range,
    /// A string is too long.
    Length,
    /// The prompt is empty or only whitespace.
    NotBlank,
    /// An image side is not a multiple of 16.
    MultipleOf,
    /// A string is not one of the allowed names (preset, output format).
    OneOf,
    /// The field is not part of the API.
    UnknownField,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The JSON field at fault (`prompt`, `image_size.width`, ...); the API's `param`.
    pub field: String,
    /// The message the API returns for it; it names the field and the rule.
    pub message: String,
    /// The API error code: `invalid_parameter` or `unknown_field`.
    pub code: ErrorCode,
    /// The rule that was broken.
    pub rule: Rule,
    /// The offending JSON value; `None` when the field is missing.
    pub value: Option<Value>,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The body is not JSON, or not a JSON object. Holds the API message.
    #[error("{0}")]
    InvalidJson(String),
    /// The body is a JSON object that breaks one or more rules; all of them are listed: unknown
    /// top-level fields first, then the contract's fields in their documented order (problems
    /// inside `image_size`, unknown keys included, in `image_size`'s place).
    #[error("{}", joined_messages(.0))]
    Invalid(Vec<Violation>),
}

impl RequestError {
    /// Every violation found; empty for [`RequestError::InvalidJson`].
    pub fn violations(&self) -> &[Violation] {
        match self {
            RequestError::InvalidJson(_) => &[],
            RequestError::Invalid(violations) => violations,
        }
    }

    /// The API error for this refusal (always a 400 answer).
    ///
    /// `code` and `param` are the first violation's; `message` is every violation's message
    /// joined with `"; "` (the first [`MAX_MESSAGES_PER_ERROR`], then a count of the rest), so a
    /// caller sees all problems in one answer while clients that switch on `code`/`param` still
    /// get a single, well-defined value.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            RequestError::InvalidJson(message) => ApiError {
                code: ErrorCode::InvalidJson,
                message: message.clone(),
                param: None,
            },
            RequestError::Invalid(violations) => match violations.first() {
                Some(first) => ApiError {
                    code: first.code,
                    message: joined_messages(violations),
                    param: Some(first.field.clone()),
                },
                // Not built by this crate, but a hand-made empty list must still map to a 400.
                None => ApiError {
                    code: ErrorCode::InvalidParameter,
                    message: "invalid request".to_owned(),
                    param: None,
                },
            },
        }
    }
}

/// At most this many violation messages go into one API message: a 64 KiB body of unknown fields
/// must not turn into a megabyte of error text.
pub const MAX_MESSAGES_PER_ERROR: usize = 10;

fn joined_messages(violations: &[Violation]) -> String {
    if violations.is_empty() {
        return "invalid request".to_owned();
    }
    let mut message = violations
        .iter()
        .take(MAX_MESSAGES_PER_ERROR)
        .map(|v| v.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(more) = violations.len().checked_sub(MAX_MESSAGES_PER_ERROR)
        && more > 0
    {
        message.push_str(&format!("; and {more} more problems"));
    }
    message
}
