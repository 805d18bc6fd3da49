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

use serde_json::{Map, Value};

mod rules;
mod violation;

use crate::error::ErrorCode;
use crate::request::{
    GenerateRequest, ImageSize, ImageSizePreset, MAX_IMAGE_SIDE, MAX_NUM_IMAGES, MAX_SEED,
    MIN_IMAGE_SIDE, MIN_INFERENCE_STEPS, MIN_NUM_IMAGES, MIN_SEED, OutputFormat, ValidRequest,
};
use crate::variant::VariantSpec;
use rules::*;
pub use violation::{MAX_MESSAGES_PER_ERROR, RequestError, Rule, Violation};

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

/// Parses and validates a raw JSON body for the dev route: malformed JSON, wrong JSON types,
/// unknown fields and rule violations all come back as a `RequestError` listing every problem
/// found.
pub fn parse_request(body: &[u8]) -> Result<ValidRequest, RequestError> {
    parse_request_for(body, VariantSpec::dev())
}

/// [`parse_request`] with the defaults and limits of `variant` (`num_inference_steps`,
/// `guidance_scale`), as its route `/api/v1/flux/{variant}` validates.
pub fn parse_request_for(body: &[u8], variant: &VariantSpec) -> Result<ValidRequest, RequestError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        RequestError::InvalidJson(format!("request body is not valid JSON: {err}"))
    })?;
    let Value::Object(object) = &value else {
        return Err(RequestError::InvalidJson(format!(
            "request body must be a JSON object, got {}",
            describe(&value)
        )));
    };
    let request =
        decode_request(object, Checks::TypesAndRules, variant).map_err(RequestError::Invalid)?;
    ValidRequest::from_checked(request, variant).map_err(RequestError::Invalid)
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

/// Decodes a request object with `variant`'s defaults, collecting every violation.
pub(crate) fn decode_request(
    object: &Map<String, Value>,
    checks: Checks,
    variant: &VariantSpec,
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
            // A variant without guidance ignores the value, so only its JSON type matters.
            if checks == Checks::TypesAndRules && variant.uses_guidance {
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
            variant.max_inference_steps.into(),
        )
        .unwrap_or(Some(variant.default_inference_steps));
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

/// Every rule of `variant` a typed request breaks (JSON types are already right by construction).
pub(crate) fn rule_violations(request: &GenerateRequest, variant: &VariantSpec) -> Vec<Violation> {
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
    if variant.uses_guidance {
        violations.extend(guidance_violation(request.guidance_scale));
    }
    violations.extend(range_violation(
        "num_inference_steps",
        request.num_inference_steps.into(),
        MIN_INFERENCE_STEPS.into(),
        variant.max_inference_steps.into(),
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
