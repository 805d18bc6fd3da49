//! Request parsing and validation: every rule of the contract at both sides of each boundary.

use flux_types::{
    ErrorCode, GenerateRequest, ImageSize, ImageSizePreset, OutputFormat, RequestError, Rule,
    ValidRequest, Violation, parse_request,
};
use serde_json::{Value, json};

fn parse(body: &Value) -> Result<ValidRequest, RequestError> {
    parse_request(body.to_string().as_bytes())
}

fn accepted(body: Value) -> ValidRequest {
    match parse(&body) {
        Ok(valid) => valid,
        Err(err) => panic!("{body} was refused: {err}"),
    }
}

fn violations(body: Value) -> Vec<Violation> {
    match parse(&body) {
        Ok(valid) => panic!("{body} was accepted as {valid:?}"),
        Err(RequestError::Invalid(violations)) => violations,
        Err(other) => panic!("{body} was refused as a whole: {other}"),
    }
}

/// The one violation of `body`.
fn single_violation(body: Value) -> Violation {
    let mut all = violations(body.clone());
    assert_eq!(all.len(), 1, "{body}: {all:#?}");
    all.remove(0)
}

fn with_prompt(extra: Value) -> Value {
    let mut body = json!({"prompt": "a red fox"});
    if let (Value::Object(target), Value::Object(fields)) = (&mut body, extra) {
        target.extend(fields);
    }
    body
}

#[test]
fn minimal_body_gets_the_contract_defaults() {
    let valid = accepted(json!({"prompt": "a red fox"}));
    assert_eq!(valid.prompt(), "a red fox");
    assert_eq!(valid.num_images(), 1);
    assert_eq!(
        valid.request().image_size,
        ImageSize::Preset(ImageSizePreset::Landscape43)
    );
    assert_eq!((valid.width(), valid.height()), (1024, 768));
    assert_eq!(valid.guidance_scale(), 3.5);
    assert_eq!(valid.num_inference_steps(), 28);
    assert_eq!(valid.seed(), None);
    assert_eq!(valid.output_format(), OutputFormat::Jpeg);
    assert!(!valid.sync_mode());
    assert!(valid.enable_safety_checker());
    assert_eq!(valid.request(), &GenerateRequest::new("a red fox"));
}

#[test]
fn full_body_is_taken_as_given() {
    let valid = accepted(json!({
        "prompt": "a red fox in the snow",
        "num_images": 3,
        "image_size": {"width": 1280, "height": 720},
        "guidance_scale": 7.25,
        "num_inference_steps": 4,
        "seed": 123456789,
        "output_format": "png",
        "sync_mode": true,
        "enable_safety_checker": false
    }));
    assert_eq!(valid.num_images(), 3);
    assert_eq!((valid.width(), valid.height()), (1280, 720));
    assert_eq!(
        valid.image_size(),
        ImageSize::Custom {
            width: 1280,
            height: 720
        }
    );
    assert_eq!(valid.guidance_scale(), 7.25);
    assert_eq!(valid.num_inference_steps(), 4);
    assert_eq!(valid.seed(), Some(123456789));
    assert_eq!(valid.output_format(), OutputFormat::Png);
    assert!(valid.sync_mode());
    assert!(!valid.enable_safety_checker());
}

#[test]
fn contract_example_bodies_parse() {
    let response: flux_types::GenerateResponse = serde_json::from_value(json!({
        "images": [
            {"url": "http://host:port/api/v1/files/6f1c...e2.jpg", "width": 1024, "height": 768, "content_type": "image/jpeg"}
        ],
        "seed": 123456789,
        "has_nsfw_concepts": [false],
        "timings": {"inference": 1.2}
    }))
    .expect("the contract's 200 example");
    assert_eq!(response.images[0].width, 1024);
    assert_eq!(response.seed, 123456789);
    assert_eq!(response.timings.inference, 1.2);

    let error: flux_types::ErrorBody = serde_json::from_value(json!({
        "error": {"code": "invalid_parameter", "message": "num_images must be between 1 and 4, got 5", "param": "num_images"},
        "request_id": "..."
    }))
    .expect("the contract's error example");
    assert_eq!(error.error.code, ErrorCode::InvalidParameter);
    assert_eq!(error.error.param.as_deref(), Some("num_images"));

    // The contract's own example message is what the validation says for that body.
    let violation = single_violation(with_prompt(json!({"num_images": 5})));
    assert_eq!(violation.message, error.error.message);
    assert_eq!(violation.field, "num_images");
}

#[test]
fn prompt_length_counts_unicode_scalar_values_not_bytes() {
    for unit in ["a", "é", "東", "🦊"] {
        let at_limit = unit.repeat(1000);
        assert_eq!(
            accepted(json!({"prompt": at_limit}))
                .prompt()
                .chars()
                .count(),
            1000
        );
        let over = single_violation(json!({"prompt": unit.repeat(1001)}));
        assert_eq!(over.field, "prompt");
        assert_eq!(over.rule, Rule::Length);
        assert_eq!(over.code, ErrorCode::InvalidParameter);
        assert_eq!(
            over.message,
            "prompt must be at most 1000 characters (Unicode scalar values), got 1001"
        );
    }
    // "e" + combining acute accent is one glyph but two scalar values.
    assert_eq!(
        single_violation(json!({"prompt": "e\u{301}".repeat(501)})).rule,
        Rule::Length
    );
    accepted(json!({"prompt": "e\u{301}".repeat(500)}));
}

#[test]
fn prompt_must_exist_be_a_string_and_not_be_blank() {
    let missing = single_violation(json!({"num_images": 1}));
    assert_eq!(
        (missing.field.as_str(), missing.rule),
        ("prompt", Rule::Required)
    );
    assert_eq!(missing.message, "prompt is required");
    assert_eq!(missing.value, None);

    for blank in ["", " ", "\t\n\r ", "\u{3000}\u{a0}\u{2028}"] {
        let violation = single_violation(json!({"prompt": blank}));
        assert_eq!(violation.rule, Rule::NotBlank, "{blank:?}");
        assert_eq!(
            violation.message,
            "prompt must not be empty or only whitespace"
        );
    }
    accepted(json!({"prompt": " x "}));
    // A zero-width space is not whitespace in Unicode's sense, so it is a (strange) prompt.
    accepted(json!({"prompt": "\u{200b}"}));

    for wrong in [
        json!(null),
        json!(5),
        json!(["a"]),
        json!({"text": "a"}),
        json!(true),
    ] {
        let violation = single_violation(json!({"prompt": wrong}));
        assert_eq!(violation.rule, Rule::Type, "{wrong}");
        assert!(
            violation
                .message
                .starts_with("prompt must be a string, got ")
        );
    }
}

#[test]
fn num_images_boundaries() {
    for ok in [1, 2, 4] {
        assert_eq!(
            accepted(with_prompt(json!({"num_images": ok}))).num_images(),
            ok
        );
    }
    for (bad, message) in [
        (json!(0), "num_images must be between 1 and 4, got 0"),
        (json!(5), "num_images must be between 1 and 4, got 5"),
        (json!(-1), "num_images must be between 1 and 4, got -1"),
        (
            json!(18446744073709551615u64),
            "num_images must be between 1 and 4, got 18446744073709551615",
        ),
    ] {
        let violation = single_violation(with_prompt(json!({"num_images": bad})));
        assert_eq!(violation.rule, Rule::Range);
        assert_eq!(violation.message, message);
        assert_eq!(violation.value, Some(bad));
    }
}

#[test]
fn integers_must_be_json_integer_literals() {
    for field in ["num_images", "num_inference_steps", "seed"] {
        for (raw, shown) in [
            (r#""2""#, r#"string "2""#),
            ("2.5", "number 2.5"),
            ("2.0", "number 2.0"),
            ("1e0", "number 1.0"),
            ("null", "null"),
            ("true", "boolean true"),
            ("[2]", "an array"),
        ] {
            let body = format!(r#"{{"prompt": "x", "{field}": {raw}}}"#);
            let Err(RequestError::Invalid(found)) = parse_request(body.as_bytes()) else {
                panic!("{body} was not refused field by field");
            };
            assert_eq!(found.len(), 1, "{body}: {found:#?}");
            assert_eq!(found[0].field, field);
            assert_eq!(found[0].rule, Rule::Type, "{body}");
            assert_eq!(
                found[0].message,
                format!("{field} must be an integer, got {shown}")
            );
        }
    }
}

#[test]
fn guidance_scale_boundaries() {
    for ok in [json!(1.0), json!(1), json!(3.5), json!(20), json!(20.0)] {
        let body = with_prompt(json!({"guidance_scale": ok}));
        assert!(parse(&body).is_ok(), "{body}");
    }
    assert_eq!(
        accepted(with_prompt(json!({"guidance_scale": 1}))).guidance_scale(),
        1.0
    );
    for bad in [0.99, 20.01, 0.0, -3.5, 1e300] {
        let violation = single_violation(with_prompt(json!({"guidance_scale": bad})));
        assert_eq!(violation.rule, Rule::Range, "{bad}");
        assert_eq!(violation.field, "guidance_scale");
        assert!(
            violation
                .message
                .starts_with("guidance_scale must be a finite number between 1 and 20, got "),
            "{}",
            violation.message
        );
    }
    for wrong in [
        json!("3.5"),
        json!("NaN"),
        json!("Infinity"),
        json!(null),
        json!(false),
    ] {
        let violation = single_violation(with_prompt(json!({"guidance_scale": wrong})));
        assert_eq!(violation.rule, Rule::Type, "{wrong}");
        assert!(
            violation
                .message
                .starts_with("guidance_scale must be a number, got ")
        );
    }
    // JSON has no NaN or infinity literals, and numbers beyond f64 do not parse.
    for raw in ["NaN", "Infinity", "-Infinity", "1e400"] {
        let body = format!(r#"{{"prompt": "x", "guidance_scale": {raw}}}"#);
        assert!(matches!(
            parse_request(body.as_bytes()),
            Err(RequestError::InvalidJson(_))
        ));
    }
}

#[test]
fn guidance_scale_nan_and_infinity_are_refused_from_rust() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let request = GenerateRequest {
            guidance_scale: bad,
            ..GenerateRequest::new("x")
        };
        let Err(err) = request.validate() else {
            panic!("{bad} was accepted");
        };
        assert_eq!(err.violations().len(), 1);
        assert_eq!(err.violations()[0].field, "guidance_scale");
        assert_eq!(err.violations()[0].rule, Rule::Range);
    }
}

#[test]
fn num_inference_steps_boundaries() {
    for ok in [1, 28, 50] {
        assert_eq!(
            accepted(with_prompt(json!({"num_inference_steps": ok}))).num_inference_steps(),
            ok
        );
    }
    for bad in [0, 51, -5] {
        let violation = single_violation(with_prompt(json!({"num_inference_steps": bad})));
        assert_eq!(violation.rule, Rule::Range);
        assert_eq!(
            violation.message,
            format!("num_inference_steps must be between 1 and 50, got {bad}")
        );
    }
}

#[test]
fn seed_boundaries() {
    for ok in [0u64, 1, 4294967295] {
        assert_eq!(accepted(with_prompt(json!({"seed": ok}))).seed(), Some(ok));
    }
    for (bad, shown) in [
        (json!(-1), "-1"),
        (json!(4294967296u64), "4294967296"),
        (json!(i64::MIN), "-9223372036854775808"),
        (json!(u64::MAX), "18446744073709551615"),
    ] {
        let violation = single_violation(with_prompt(json!({"seed": bad})));
        assert_eq!(violation.rule, Rule::Range);
        assert_eq!(
            violation.message,
            format!("seed must be between 0 and 4294967295, got {shown}")
        );
    }
    // Integer literals beyond u64 are not integers to serde_json (no arbitrary precision).
    let huge = br#"{"prompt": "x", "seed": 100000000000000000000000}"#;
    let Err(RequestError::Invalid(found)) = parse_request(huge) else {
        panic!("a huge seed was not refused");
    };
    assert_eq!(
        (found[0].field.as_str(), found[0].rule),
        ("seed", Rule::Type)
    );
}

#[test]
fn every_preset_has_the_contract_size() {
    let expected = [
        ("square_hd", (1024, 1024)),
        ("square", (512, 512)),
        ("portrait_4_3", (768, 1024)),
        ("portrait_16_9", (576, 1024)),
        ("landscape_4_3", (1024, 768)),
        ("landscape_16_9", (1024, 576)),
    ];
    assert_eq!(ImageSizePreset::ALL.len(), expected.len());
    for (preset, (name, size)) in ImageSizePreset::ALL.into_iter().zip(expected) {
        assert_eq!(preset.name(), name);
        assert_eq!(preset.dimensions(), size);
        assert_eq!(ImageSizePreset::from_name(name), Some(preset));
        assert_eq!(
            serde_json::to_value(preset).expect("serialize"),
            json!(name)
        );
        let valid = accepted(with_prompt(json!({"image_size": name})));
        assert_eq!((valid.width(), valid.height()), size);
        assert_eq!(valid.image_size(), ImageSize::Preset(preset));
    }
}

#[test]
fn unknown_preset_names_the_valid_ones() {
    for bad in ["landscape_3_2", "Square_HD", "", "square "] {
        let violation = single_violation(with_prompt(json!({"image_size": bad})));
        assert_eq!(violation.field, "image_size");
        assert_eq!(violation.rule, Rule::OneOf);
        assert!(
            violation.message.starts_with(
                "image_size must be one of square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3, landscape_16_9 or an object"
            ),
            "{}",
            violation.message
        );
        assert!(violation.message.contains(&format!("{bad:?}")));
    }
    for wrong in [json!(null), json!(1024), json!([1024, 768]), json!(true)] {
        let violation = single_violation(with_prompt(json!({"image_size": wrong})));
        assert_eq!(
            (violation.field.as_str(), violation.rule),
            ("image_size", Rule::Type)
        );
    }
}

#[test]
fn custom_size_boundaries() {
    for (width, height) in [
        (64, 64),
        (2048, 2048),
        (64, 2048),
        (1280, 720),
        (1008, 16 * 100),
    ] {
        let valid = accepted(with_prompt(
            json!({"image_size": {"width": width, "height": height}}),
        ));
        assert_eq!((valid.width(), valid.height()), (width, height));
    }
    for (bad, rule) in [
        (48, Rule::Range),
        (0, Rule::Range),
        (-16, Rule::Range),
        (2064, Rule::Range),
        (4096, Rule::Range),
        (65, Rule::MultipleOf),
        (100, Rule::MultipleOf),
        (1000, Rule::MultipleOf),
        (2047, Rule::MultipleOf),
    ] {
        for side in ["width", "height"] {
            let mut size = json!({"width": 512, "height": 512});
            size[side] = json!(bad);
            let violation = single_violation(with_prompt(json!({"image_size": size})));
            assert_eq!(violation.field, format!("image_size.{side}"));
            assert_eq!(violation.rule, rule, "{side} = {bad}");
            assert_eq!(
                violation.message,
                format!(
                    "image_size.{side} must be a multiple of 16 between 64 and 2048, got {bad}"
                )
            );
        }
    }
}

#[test]
fn custom_size_needs_exactly_width_and_height_as_integers() {
    let missing = single_violation(with_prompt(json!({"image_size": {"width": 512}})));
    assert_eq!(
        (missing.field.as_str(), missing.rule),
        ("image_size.height", Rule::Required)
    );

    let extra = single_violation(with_prompt(
        json!({"image_size": {"width": 512, "height": 512, "depth": 3}}),
    ));
    assert_eq!(extra.field, "image_size.depth");
    assert_eq!(
        (extra.code, extra.rule),
        (ErrorCode::UnknownField, Rule::UnknownField)
    );

    for wrong in [json!("512"), json!(512.0), json!(null)] {
        let violation = single_violation(with_prompt(
            json!({"image_size": {"width": wrong, "height": 512}}),
        ));
        assert_eq!(
            (violation.field.as_str(), violation.rule),
            ("image_size.width", Rule::Type)
        );
    }
    let both = violations(with_prompt(json!({"image_size": {}})));
    assert_eq!(both.len(), 2);
}

#[test]
fn output_format_and_flags() {
    for (name, format, content_type, extension) in [
        ("jpeg", OutputFormat::Jpeg, "image/jpeg", "jpg"),
        ("png", OutputFormat::Png, "image/png", "png"),
    ] {
        let valid = accepted(with_prompt(json!({"output_format": name})));
        assert_eq!(valid.output_format(), format);
        assert_eq!(format.content_type(), content_type);
        assert_eq!(format.extension(), extension);
    }
    for bad in ["jpg", "JPEG", "webp"] {
        let violation = single_violation(with_prompt(json!({"output_format": bad})));
        assert_eq!(
            (violation.field.as_str(), violation.rule),
            ("output_format", Rule::OneOf)
        );
        assert_eq!(
            violation.message,
            format!("output_format must be one of jpeg, png; got string {bad:?}")
        );
    }
    for field in ["sync_mode", "enable_safety_checker"] {
        for wrong in [json!("true"), json!(1), json!(null)] {
            let violation = single_violation(with_prompt(json!({field: wrong})));
            assert_eq!(
                (violation.field.as_str(), violation.rule),
                (field, Rule::Type)
            );
            assert!(
                violation
                    .message
                    .starts_with(&format!("{field} must be a boolean, got "))
            );
        }
    }
}

#[test]
fn unknown_fields_are_refused_by_name() {
    let negative = single_violation(with_prompt(json!({"negative_prompt": "blurry"})));
    assert_eq!(negative.field, "negative_prompt");
    assert_eq!(negative.code, ErrorCode::UnknownField);
    assert_eq!(negative.rule, Rule::UnknownField);
    assert_eq!(negative.value, Some(json!("blurry")));
    assert_eq!(
        negative.message,
        "unknown field `negative_prompt`: negative_prompt is not supported by FLUX.1-dev"
    );

    let other = single_violation(with_prompt(json!({"Prompt": "x"})));
    assert_eq!(other.field, "Prompt");
    assert_eq!(
        other.message,
        "unknown field `Prompt`: accepted fields are prompt, num_images, image_size, guidance_scale, num_inference_steps, seed, output_format, sync_mode, enable_safety_checker"
    );
}

#[test]
fn body_must_be_a_json_object() {
    for (body, message) in [
        ("[]", "request body must be a JSON object, got an array"),
        (
            r#""a red fox""#,
            r#"request body must be a JSON object, got string "a red fox""#,
        ),
        ("null", "request body must be a JSON object, got null"),
        ("42", "request body must be a JSON object, got number 42"),
    ] {
        let err = parse_request(body.as_bytes()).expect_err(body);
        assert_eq!(err, RequestError::InvalidJson(message.to_owned()));
        let api = err.to_api_error();
        assert_eq!((api.code, api.param), (ErrorCode::InvalidJson, None));
        assert_eq!(api.message, message);
        assert!(err.violations().is_empty());
    }
}

#[test]
fn malformed_json_is_invalid_json() {
    for body in [
        &b""[..],
        b"{",
        br#"{"prompt": "x",}"#,
        br#"{'prompt': 'x'}"#,
        b"\xff\xfe",
        br#"{"prompt": "x"} trailing"#,
    ] {
        let err = parse_request(body).expect_err("malformed");
        let RequestError::InvalidJson(message) = &err else {
            panic!("{body:?} gave {err:?}");
        };
        assert!(
            message.starts_with("request body is not valid JSON: "),
            "{message}"
        );
        assert_eq!(err.to_api_error().code, ErrorCode::InvalidJson);
    }
}

#[test]
fn duplicate_keys_keep_the_last_value() {
    // serde_json's documented behaviour; recorded here so a change is noticed.
    let valid = parse_request(br#"{"prompt": "x", "num_images": 9, "num_images": 2}"#)
        .expect("last value wins");
    assert_eq!(valid.num_images(), 2);
}

#[test]
fn several_violations_are_reported_together() {
    let body = json!({
        "prompt": "   ",
        "num_images": 5,
        "image_size": {"width": 48, "height": 100},
        "guidance_scale": "high",
        "num_inference_steps": 0,
        "seed": -1,
        "output_format": "gif",
        "sync_mode": null,
        "negative_prompt": "blurry",
    });
    let found = violations(body.clone());
    let fields: Vec<&str> = found.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "negative_prompt",
            "prompt",
            "num_images",
            "image_size.width",
            "image_size.height",
            "guidance_scale",
            "num_inference_steps",
            "seed",
            "output_format",
            "sync_mode",
        ]
    );
    let err = parse(&body).expect_err("invalid");
    let api = err.to_api_error();
    assert_eq!(api.code, ErrorCode::UnknownField);
    assert_eq!(api.param.as_deref(), Some("negative_prompt"));
    let messages: Vec<&str> = found.iter().map(|v| v.message.as_str()).collect();
    assert_eq!(api.message, messages.join("; "));
    assert_eq!(err.to_string(), api.message);
}

#[test]
fn single_violation_maps_to_its_own_api_error() {
    let err = parse(&with_prompt(json!({"num_images": 5}))).expect_err("invalid");
    let api = err.to_api_error();
    assert_eq!(api.code, ErrorCode::InvalidParameter);
    assert_eq!(api.param.as_deref(), Some("num_images"));
    assert_eq!(api.message, "num_images must be between 1 and 4, got 5");
}

#[test]
fn echoed_strings_are_truncated_and_quoted() {
    let long = "x".repeat(5000);
    let violation = single_violation(with_prompt(json!({"image_size": long})));
    assert!(violation.message.len() < 300, "{}", violation.message.len());
    assert!(violation.message.ends_with("…\""));
    assert_eq!(
        violation.value,
        Some(json!(long)),
        "the value itself is kept whole"
    );

    let quoted = single_violation(with_prompt(json!({"output_format": "a\"b\n"})));
    assert!(
        quoted.message.ends_with(r#"got string "a\"b\n""#),
        "{}",
        quoted.message
    );
}

#[test]
fn validate_applies_the_same_rules_to_rust_built_requests() {
    let request = GenerateRequest {
        num_images: 0,
        image_size: ImageSize::Custom {
            width: 100,
            height: 4096,
        },
        num_inference_steps: 51,
        seed: Some(4294967296),
        ..GenerateRequest::new(" ")
    };
    let body = serde_json::to_value(&request).expect("serialize");
    let from_rust = request.validate().expect_err("invalid");
    let from_json = parse(&body).expect_err("invalid");
    assert_eq!(from_rust, from_json);
    assert_eq!(from_rust.violations().len(), 6);

    let valid = ValidRequest::try_from(GenerateRequest::new("ok")).expect("valid");
    assert_eq!(valid.prompt(), "ok");
}

#[test]
fn with_seed_sets_a_seed_within_the_contract_range() {
    let valid = accepted(json!({"prompt": "x"}));
    assert_eq!(valid.clone().with_seed(7).seed(), Some(7));
    assert_eq!(valid.clone().with_seed(4294967295).seed(), Some(4294967295));
    assert_eq!(valid.clone().with_seed(4294967296 + 5).seed(), Some(5));
    assert_eq!(valid.with_seed(u64::MAX).seed(), Some(4294967295));
    let seeded = accepted(json!({"prompt": "x", "seed": 1})).with_seed(2);
    assert_eq!(seeded.seed(), Some(2));
    assert_eq!(seeded.clone().into_request().validate(), Ok(seeded));
}

#[test]
fn deserializing_a_request_applies_defaults_and_refuses_what_parse_refuses_structurally() {
    let request: GenerateRequest =
        serde_json::from_str(r#"{"prompt": "x"}"#).expect("defaults apply");
    assert_eq!(request, GenerateRequest::new("x"));

    for bad in [
        r#"{"prompt": "x", "negative_prompt": "y"}"#,
        r#"{"prompt": "x", "seed": null}"#,
        r#"{"prompt": "x", "num_images": "2"}"#,
        r#"{"prompt": "x", "num_images": 2.0}"#,
        r#"{"prompt": "x", "image_size": "huge"}"#,
        r#"{"prompt": "x", "image_size": {"width": 512, "height": 512, "depth": 1}}"#,
        r#"{"prompt": "x", "seed": -1}"#,
        r#"{"num_images": 1}"#,
        r#"[]"#,
    ] {
        let err = serde_json::from_str::<GenerateRequest>(bad).expect_err(bad);
        assert!(!err.to_string().is_empty());
    }
    let unsupported =
        serde_json::from_str::<GenerateRequest>(r#"{"prompt": "x", "negative_prompt": "y"}"#)
            .expect_err("unknown field");
    assert!(
        unsupported
            .to_string()
            .contains("negative_prompt is not supported by FLUX.1-dev"),
        "{unsupported}"
    );

    // Range rules are `validate`'s job: the wire type can hold a request that breaks them.
    let out_of_range: GenerateRequest =
        serde_json::from_str(r#"{"prompt": " ", "num_images": 9}"#).expect("structurally fine");
    assert_eq!(
        out_of_range
            .clone()
            .validate()
            .expect_err("rules")
            .violations()
            .len(),
        2
    );
}

#[test]
fn image_size_deserializes_both_forms() {
    let preset: ImageSize = serde_json::from_str(r#""square""#).expect("preset");
    assert_eq!(preset, ImageSize::Preset(ImageSizePreset::Square));
    let custom: ImageSize =
        serde_json::from_str(r#"{"width": 640, "height": 480}"#).expect("custom");
    assert_eq!(custom.dimensions(), (640, 480));
    assert_eq!(
        serde_json::to_value(custom).expect("serialize"),
        json!({"width": 640, "height": 480})
    );
    assert!(serde_json::from_str::<ImageSize>(r#""huge""#).is_err());
    assert!(serde_json::from_str::<ImageSize>("null").is_err());
}

#[test]
fn serialization_writes_the_contract_field_names() {
    let request = GenerateRequest {
        seed: Some(3),
        ..GenerateRequest::new("x")
    };
    assert_eq!(
        serde_json::to_value(&request).expect("serialize"),
        json!({
            "prompt": "x",
            "num_images": 1,
            "image_size": "landscape_4_3",
            "guidance_scale": 3.5,
            "num_inference_steps": 28,
            "seed": 3,
            "output_format": "jpeg",
            "sync_mode": false,
            "enable_safety_checker": true
        })
    );
    let unseeded = serde_json::to_value(GenerateRequest::new("x")).expect("serialize");
    assert!(
        unseeded.get("seed").is_none(),
        "no seed is omitted, not null"
    );
}

#[test]
fn error_codes_serialize_to_their_wire_names() {
    for code in [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidParameter,
        ErrorCode::UnknownField,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::IdempotencyConflict,
        ErrorCode::IdempotencyMismatch,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::InferenceFailed,
        ErrorCode::NotReady,
        ErrorCode::ShuttingDown,
        ErrorCode::StorageUnavailable,
        ErrorCode::MalformedRequest,
    ] {
        assert_eq!(
            serde_json::to_value(code).expect("serialize"),
            json!(code.as_str())
        );
        assert_eq!(code.to_string(), code.as_str());
    }
}

#[test]
fn a_flood_of_unknown_fields_gives_a_bounded_message() {
    let mut body = json!({"prompt": "x"});
    for i in 0..3000 {
        body[format!("field_{i:04}")] = json!(i);
    }
    let err = parse(&body).expect_err("unknown fields");
    assert_eq!(
        err.violations().len(),
        3000,
        "every violation is still listed"
    );
    let api = err.to_api_error();
    assert!(api.message.len() < 2500, "{} bytes", api.message.len());
    assert!(
        api.message.ends_with("; and 2990 more problems"),
        "{}",
        api.message
    );
    assert_eq!(api.message.matches("unknown field `").count(), 10);
    assert_eq!(api.param.as_deref(), Some("field_0000"));
}

#[test]
fn documented_edge_cases_of_numbers_and_nesting() {
    // `-0` is read as the float -0.0, so it is not an integer literal (docs/api.md says so).
    let violation =
        parse_request(br#"{"prompt": "x", "seed": -0}"#).expect_err("-0 is not an integer");
    assert_eq!(violation.violations()[0].rule, Rule::Type);
    assert_eq!(
        violation.to_api_error().message,
        "seed must be an integer, got number -0.0"
    );
    // Any JSON number spelling is a number for guidance_scale.
    let valid =
        parse_request(br#"{"prompt": "x", "guidance_scale": 35e-1}"#).expect("35e-1 is 3.5");
    assert_eq!(valid.guidance_scale(), 3.5);
    // Beyond a double's range, and nested past serde_json's depth limit: not usable JSON.
    for body in [
        br#"{"prompt": "x", "guidance_scale": 1e400}"#.to_vec(),
        format!(
            r#"{{"prompt": "x", "pad": {}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        )
        .into_bytes(),
    ] {
        let error = parse_request(&body).expect_err("not usable JSON");
        assert!(
            matches!(&error, RequestError::InvalidJson(m) if m.starts_with("request body is not valid JSON: ")),
            "{error:?}"
        );
    }
}
