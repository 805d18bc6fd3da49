//! The per-field rules of validation and the messages they write.

use std::fmt;

use serde_json::Value;

use super::REQUEST_FIELDS;
use super::violation::{Rule, Violation};
use crate::error::ErrorCode;
use crate::request::{
    IMAGE_SIDE_MULTIPLE, ImageSizePreset, MAX_GUIDANCE_SCALE, MAX_IMAGE_SIDE, MAX_PROMPT_CHARS,
    MIN_GUIDANCE_SCALE, MIN_IMAGE_SIDE,
};

/// The value of a JSON integer literal; `None` for anything else, including `2.0` and `1e3`.
pub(super) fn json_integer(value: &Value) -> Option<i128> {
    match value {
        Value::Number(number) => number
            .as_i64()
            .map(i128::from)
            .or_else(|| number.as_u64().map(i128::from)),
        _ => None,
    }
}

pub(super) fn unknown_request_field(key: &str, value: &Value) -> Violation {
    let message = match key {
        "negative_prompt" => {
            "unknown field `negative_prompt`: negative_prompt is not supported by FLUX.1-dev"
                .to_owned()
        }
        _ => format!(
            "unknown field `{}`: accepted fields are {}",
            truncated(key),
            REQUEST_FIELDS.join(", ")
        ),
    };
    Violation {
        // `param` echoes the name too: cut like the message, so the answer stays small.
        field: truncated(key),
        message,
        code: ErrorCode::UnknownField,
        rule: Rule::UnknownField,
        value: Some(value.clone()),
    }
}

pub(super) fn type_violation(field: &str, expected: &str, value: &Value) -> Violation {
    Violation {
        field: field.to_owned(),
        message: format!("{field} must be {expected}, got {}", describe(value)),
        code: ErrorCode::InvalidParameter,
        rule: Rule::Type,
        value: Some(value.clone()),
    }
}

pub(super) fn prompt_violation(prompt: &str) -> Option<Violation> {
    let (rule, message) = if prompt.chars().all(char::is_whitespace) {
        (
            Rule::NotBlank,
            "prompt must not be empty or only whitespace".to_owned(),
        )
    } else {
        let chars = prompt.chars().count();
        if chars <= MAX_PROMPT_CHARS {
            return None;
        }
        (
            Rule::Length,
            format!(
                "prompt must be at most {MAX_PROMPT_CHARS} characters (Unicode scalar values), got {chars}"
            ),
        )
    };
    Some(Violation {
        field: "prompt".to_owned(),
        message,
        code: ErrorCode::InvalidParameter,
        rule,
        value: Some(Value::String(prompt.to_owned())),
    })
}

pub(super) fn range_violation(field: &str, value: i128, min: i128, max: i128) -> Option<Violation> {
    if (min..=max).contains(&value) {
        return None;
    }
    Some(Violation {
        field: field.to_owned(),
        message: format!("{field} must be between {min} and {max}, got {value}"),
        code: ErrorCode::InvalidParameter,
        rule: Rule::Range,
        value: Some(integer_json(value)),
    })
}

pub(super) fn side_violation(field: &str, value: i128) -> Option<Violation> {
    let check = crate::request::check_image_side(value, MIN_IMAGE_SIDE);
    if check.ok() {
        return None;
    }
    let in_range = check.in_range;
    Some(Violation {
        field: field.to_owned(),
        message: format!(
            "{field} must be a multiple of {IMAGE_SIDE_MULTIPLE} between {MIN_IMAGE_SIDE} and {MAX_IMAGE_SIDE}, got {value}"
        ),
        code: ErrorCode::InvalidParameter,
        rule: if in_range {
            Rule::MultipleOf
        } else {
            Rule::Range
        },
        value: Some(integer_json(value)),
    })
}

pub(super) fn guidance_violation(guidance: f64) -> Option<Violation> {
    if guidance.is_finite() && (MIN_GUIDANCE_SCALE..=MAX_GUIDANCE_SCALE).contains(&guidance) {
        return None;
    }
    Some(Violation {
        field: "guidance_scale".to_owned(),
        message: format!(
            "guidance_scale must be a finite number between {MIN_GUIDANCE_SCALE} and {MAX_GUIDANCE_SCALE}, got {guidance}"
        ),
        code: ErrorCode::InvalidParameter,
        rule: Rule::Range,
        // JSON has no NaN or infinity: those are only reachable from Rust, and show as null.
        value: Some(serde_json::Number::from_f64(guidance).map_or(Value::Null, Value::Number)),
    })
}

pub(super) fn integer_json(value: i128) -> Value {
    if let Ok(small) = i64::try_from(value) {
        Value::from(small)
    } else if let Ok(large) = u64::try_from(value) {
        Value::from(large)
    } else {
        Value::String(value.to_string())
    }
}

pub(super) fn preset_names() -> String {
    ImageSizePreset::ALL
        .iter()
        .map(|preset| preset.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A short description of a JSON value for messages: its type and, for scalars, the value.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => format!("boolean {flag}"),
        Value::Number(number) => format!("number {number}"),
        Value::String(text) => format!("string {}", Quoted(&truncated(text))),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// Echoed user text is cut so one message cannot grow with the body.
pub(super) fn truncated(text: &str) -> String {
    const MAX_ECHO_CHARS: usize = 64;
    if text.chars().count() <= MAX_ECHO_CHARS {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX_ECHO_CHARS).collect();
        cut.push('…');
        cut
    }
}

pub(super) struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // JSON string syntax keeps control characters and quotes in user text unambiguous.
        match serde_json::to_string(self.0) {
            Ok(quoted) => f.write_str(&quoted),
            Err(_) => write!(f, "{:?}", self.0),
        }
    }
}
