//! Request validation: every violation, with field, rule and offending value.
//!
//! The body is decoded by hand from a `serde_json::Value` rather than through a derived
//! `Deserialize`, because serde stops at the first problem while the API reports all of them at
//! once, and because the contract refuses what serde would quietly coerce or accept (`null` for an
//! optional field, `1e3` for an integer).
//!
//! Integers are JSON integer literals only: `2.0`, `2.5` and `1e3` are refused for integer fields,
//! although JSON Schema's `"type": "integer"` accepts `2.0` and `1e3`. That is the one place where
//! the exported JSON Schema is more lenient than this validation.

use std::fmt;

use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorCode};
use crate::request::{
    GenerateRequest, IMAGE_SIDE_MULTIPLE, ImageSize, ImageSizePreset, MAX_GUIDANCE_SCALE,
    MAX_IMAGE_SIDE, MAX_INFERENCE_STEPS, MAX_NUM_IMAGES, MAX_PROMPT_CHARS, MAX_SEED,
    MIN_GUIDANCE_SCALE, MIN_IMAGE_SIDE, MIN_INFERENCE_STEPS, MIN_NUM_IMAGES, MIN_SEED,
    OutputFormat, ValidRequest,
};

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

/// The request's field names, in the contract's order.
pub const REQUEST_FIELDS: [&str; 9] = [
    "prompt",
    "num_images",
    "image_size",
    "guidance_scale",
    "num_inference_steps",
    "seed",
    "output_format",
    "sync_mode",
    "enable_safety_checker",
];

/// Whitespace as the prompt rule sees it: exactly `char::is_whitespace` (Unicode `White_Space`).
/// Spelled out so the JSON Schema pattern can say the same thing in any regex dialect.
const PROMPT_WHITESPACE_CLASS: &str =
    r"\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// The JSON Schema `pattern` of `prompt`: at least one character that is not whitespace.
pub fn prompt_pattern() -> String {
    format!("[^{PROMPT_WHITESPACE_CLASS}]")
}

/// Parses and validates a raw JSON body: malformed JSON, wrong JSON types, unknown fields and rule
/// violations all come back as a `RequestError` listing every problem found.
pub fn parse_request(body: &[u8]) -> Result<ValidRequest, RequestError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        RequestError::InvalidJson(format!("request body is not valid JSON: {err}"))
    })?;
    let Value::Object(object) = &value else {
        return Err(RequestError::InvalidJson(format!(
            "request body must be a JSON object, got {}",
            describe(&value)
        )));
    };
    let request = decode_request(object, Checks::TypesAndRules).map_err(RequestError::Invalid)?;
    ValidRequest::from_checked(request).map_err(RequestError::Invalid)
}

/// How much [`decode_request`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checks {
    /// JSON types, required and unknown fields, names of presets and formats: what it takes to
    /// build a `GenerateRequest` at all (serde `Deserialize`).
    TypesOnly,
    /// Also every rule of the contract (`parse_request`).
    TypesAndRules,
}

/// Decodes a request object, collecting every violation.
pub(crate) fn decode_request(
    object: &Map<String, Value>,
    checks: Checks,
) -> Result<GenerateRequest, Vec<Violation>> {
    let mut out = Collector {
        violations: Vec::new(),
        checks,
    };
    for (key, value) in object {
        if !REQUEST_FIELDS.contains(&key.as_str()) {
            out.violations.push(unknown_request_field(key, value));
        }
    }

    let prompt = match object.get("prompt") {
        None => {
            out.violations.push(Violation {
                field: "prompt".to_owned(),
                message: "prompt is required".to_owned(),
                code: ErrorCode::InvalidParameter,
                rule: Rule::Required,
                value: None,
            });
            None
        }
        Some(Value::String(prompt)) => {
            if checks == Checks::TypesAndRules {
                out.violations.extend(prompt_violation(prompt));
            }
            Some(prompt.clone())
        }
        Some(other) => {
            out.violations
                .push(type_violation("prompt", "a string", other));
            None
        }
    };
    let defaults = GenerateRequest::new(String::new());
    let num_images = out
        .integer(
            object,
            "num_images",
            MIN_NUM_IMAGES.into(),
            MAX_NUM_IMAGES.into(),
        )
        .unwrap_or(Some(defaults.num_images));
    let image_size = match object.get("image_size") {
        None => Some(defaults.image_size),
        Some(value) => out.image_size(value),
    };
    let guidance_scale = match object.get("guidance_scale") {
        None => Some(defaults.guidance_scale),
        Some(Value::Number(number)) => {
            // Without serde_json's arbitrary precision every JSON number has an f64 view.
            let guidance = number.as_f64().unwrap_or(f64::NAN);
            if checks == Checks::TypesAndRules {
                out.violations.extend(guidance_violation(guidance));
            }
            Some(guidance)
        }
        Some(other) => {
            out.violations
                .push(type_violation("guidance_scale", "a number", other));
            None
        }
    };
    let num_inference_steps = out
        .integer(
            object,
            "num_inference_steps",
            MIN_INFERENCE_STEPS.into(),
            MAX_INFERENCE_STEPS.into(),
        )
        .unwrap_or(Some(defaults.num_inference_steps));
    let seed = out
        .integer(object, "seed", MIN_SEED.into(), MAX_SEED.into())
        .map(|seed| seed.map(Some))
        .unwrap_or(Some(None));
    let output_format = match object.get("output_format") {
        None => Some(defaults.output_format),
        Some(Value::String(name)) => match OutputFormat::from_name(name) {
            Some(format) => Some(format),
            None => {
                out.violations.push(Violation {
                    field: "output_format".to_owned(),
                    message: format!(
                        "output_format must be one of jpeg, png; got {}",
                        describe(&Value::String(name.clone()))
                    ),
                    code: ErrorCode::InvalidParameter,
                    rule: Rule::OneOf,
                    value: Some(Value::String(name.clone())),
                });
                None
            }
        },
        Some(other) => {
            out.violations.push(type_violation(
                "output_format",
                "one of the strings \"jpeg\", \"png\"",
                other,
            ));
            None
        }
    };
    let sync_mode = out.boolean(object, "sync_mode", defaults.sync_mode);
    let enable_safety_checker = out.boolean(
        object,
        "enable_safety_checker",
        defaults.enable_safety_checker,
    );

    match (
        prompt,
        num_images,
        image_size,
        guidance_scale,
        num_inference_steps,
        seed,
        output_format,
        sync_mode,
        enable_safety_checker,
    ) {
        (
            Some(prompt),
            Some(num_images),
            Some(image_size),
            Some(guidance_scale),
            Some(num_inference_steps),
            Some(seed),
            Some(output_format),
            Some(sync_mode),
            Some(enable_safety_checker),
        ) if out.violations.is_empty() => Ok(GenerateRequest {
            prompt,
            num_images,
            image_size,
            guidance_scale,
            num_inference_steps,
            seed,
            output_format,
            sync_mode,
            enable_safety_checker,
        }),
        _ => Err(out.violations),
    }
}

/// Decodes an `image_size` value on its own (serde `Deserialize` of [`ImageSize`]).
pub(crate) fn decode_image_size(value: &Value) -> Result<ImageSize, Vec<Violation>> {
    let mut out = Collector {
        violations: Vec::new(),
        checks: Checks::TypesOnly,
    };
    match out.image_size(value) {
        Some(size) if out.violations.is_empty() => Ok(size),
        _ => Err(out.violations),
    }
}

/// Every rule a typed request breaks (JSON types are already right by construction).
pub(crate) fn rule_violations(request: &GenerateRequest) -> Vec<Violation> {
    let mut violations = Vec::new();
    violations.extend(prompt_violation(&request.prompt));
    violations.extend(range_violation(
        "num_images",
        request.num_images.into(),
        MIN_NUM_IMAGES.into(),
        MAX_NUM_IMAGES.into(),
    ));
    if let ImageSize::Custom { width, height } = request.image_size {
        violations.extend(side_violation("image_size.width", width.into()));
        violations.extend(side_violation("image_size.height", height.into()));
    }
    violations.extend(guidance_violation(request.guidance_scale));
    violations.extend(range_violation(
        "num_inference_steps",
        request.num_inference_steps.into(),
        MIN_INFERENCE_STEPS.into(),
        MAX_INFERENCE_STEPS.into(),
    ));
    if let Some(seed) = request.seed {
        violations.extend(range_violation(
            "seed",
            seed.into(),
            MIN_SEED.into(),
            MAX_SEED.into(),
        ));
    }
    violations
}

struct Collector {
    violations: Vec<Violation>,
    checks: Checks,
}

impl Collector {
    /// Reads an optional integer field. `None` when absent; `Some(None)` when present but broken
    /// (the violation is recorded).
    fn integer<T: TryFrom<i128>>(
        &mut self,
        object: &Map<String, Value>,
        field: &str,
        min: i128,
        max: i128,
    ) -> Option<Option<T>> {
        let value = object.get(field)?;
        Some(self.integer_value(field, value, min, max))
    }

    fn integer_value<T: TryFrom<i128>>(
        &mut self,
        field: &str,
        value: &Value,
        min: i128,
        max: i128,
    ) -> Option<T> {
        let Some(integer) = json_integer(value) else {
            self.violations
                .push(type_violation(field, "an integer", value));
            return None;
        };
        let typed = T::try_from(integer).ok();
        // A value the Rust type cannot hold is out of the contract's range too, so it is refused
        // even when only types are checked.
        if typed.is_none() || self.checks == Checks::TypesAndRules {
            let violation = if field.starts_with("image_size.") {
                side_violation(field, integer)
            } else {
                range_violation(field, integer, min, max)
            };
            if let Some(violation) = violation {
                self.violations.push(violation);
                return None;
            }
        }
        typed
    }

    fn boolean(&mut self, object: &Map<String, Value>, field: &str, default: bool) -> Option<bool> {
        match object.get(field) {
            None => Some(default),
            Some(Value::Bool(flag)) => Some(*flag),
            Some(other) => {
                self.violations
                    .push(type_violation(field, "a boolean", other));
                None
            }
        }
    }

    fn image_size(&mut self, value: &Value) -> Option<ImageSize> {
        match value {
            Value::String(name) => match ImageSizePreset::from_name(name) {
                Some(preset) => Some(ImageSize::Preset(preset)),
                None => {
                    self.violations.push(Violation {
                        field: "image_size".to_owned(),
                        message: format!(
                            "image_size must be one of {} or an object {{\"width\": W, \"height\": H}}; got {}",
                            preset_names(),
                            describe(value)
                        ),
                        code: ErrorCode::InvalidParameter,
                        rule: Rule::OneOf,
                        value: Some(value.clone()),
                    });
                    None
                }
            },
            Value::Object(size) => {
                for (key, extra) in size {
                    if key != "width" && key != "height" {
                        let key = truncated(key);
                        self.violations.push(Violation {
                            field: format!("image_size.{key}"),
                            message: format!(
                                "unknown field `image_size.{key}`: image_size takes only width and height"
                            ),
                            code: ErrorCode::UnknownField,
                            rule: Rule::UnknownField,
                            value: Some(extra.clone()),
                        });
                    }
                }
                let width = self.side(size, "width");
                let height = self.side(size, "height");
                Some(ImageSize::Custom {
                    width: width?,
                    height: height?,
                })
            }
            other => {
                self.violations.push(type_violation(
                    "image_size",
                    "a preset name or an object {\"width\": W, \"height\": H}",
                    other,
                ));
                None
            }
        }
    }

    fn side(&mut self, size: &Map<String, Value>, side: &str) -> Option<u32> {
        let field = format!("image_size.{side}");
        match size.get(side) {
            None => {
                self.violations.push(Violation {
                    message: format!("{field} is required when image_size is an object"),
                    field,
                    code: ErrorCode::InvalidParameter,
                    rule: Rule::Required,
                    value: None,
                });
                None
            }
            Some(value) => {
                self.integer_value(&field, value, MIN_IMAGE_SIDE.into(), MAX_IMAGE_SIDE.into())
            }
        }
    }
}

/// The value of a JSON integer literal; `None` for anything else, including `2.0` and `1e3`.
fn json_integer(value: &Value) -> Option<i128> {
    match value {
        Value::Number(number) => number
            .as_i64()
            .map(i128::from)
            .or_else(|| number.as_u64().map(i128::from)),
        _ => None,
    }
}

fn unknown_request_field(key: &str, value: &Value) -> Violation {
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

fn type_violation(field: &str, expected: &str, value: &Value) -> Violation {
    Violation {
        field: field.to_owned(),
        message: format!("{field} must be {expected}, got {}", describe(value)),
        code: ErrorCode::InvalidParameter,
        rule: Rule::Type,
        value: Some(value.clone()),
    }
}

fn prompt_violation(prompt: &str) -> Option<Violation> {
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

fn range_violation(field: &str, value: i128, min: i128, max: i128) -> Option<Violation> {
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

fn side_violation(field: &str, value: i128) -> Option<Violation> {
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

fn guidance_violation(guidance: f64) -> Option<Violation> {
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

fn integer_json(value: i128) -> Value {
    if let Ok(small) = i64::try_from(value) {
        Value::from(small)
    } else if let Ok(large) = u64::try_from(value) {
        Value::from(large)
    } else {
        Value::String(value.to_string())
    }
}

fn preset_names() -> String {
    ImageSizePreset::ALL
        .iter()
        .map(|preset| preset.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A short description of a JSON value for messages: its type and, for scalars, the value.
fn describe(value: &Value) -> String {
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
fn truncated(text: &str) -> String {
    const MAX_ECHO_CHARS: usize = 64;
    if text.chars().count() <= MAX_ECHO_CHARS {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX_ECHO_CHARS).collect();
        cut.push('…');
        cut
    }
}

struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // JSON string syntax keeps control characters and quotes in user text unambiguous.
        match serde_json::to_string(self.0) {
            Ok(quoted) => f.write_str(&quoted),
            Err(_) => write!(f, "{:?}", self.0),
        }
    }
}
