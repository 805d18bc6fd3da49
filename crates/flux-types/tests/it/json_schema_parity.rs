//! The exported request schema (`docs/schema/GenerateRequest.json`) accepts and refuses exactly
//! what `parse_request` does, checked with an independent JSON Schema validator, so that clients
//! in other languages can validate with the same rules.
//!
//! Known difference, excluded from the comparisons and pinned by its own test below: JSON Schema's
//! `"type": "integer"` accepts `2.0` and `1e3`; `parse_request` takes integer literals only.
//! Malformed JSON, duplicate keys and NaN/infinite floats are not JSON values a schema sees.

use std::path::PathBuf;

use flux_types::{GenerateRequest, parse_request};
use proptest::prelude::*;
use serde_json::{Value, json};

fn exported_request_schema() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema/GenerateRequest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "reading {}: {err} (run `cargo xtask schema`)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("the exported schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&exported_request_schema()).expect("the exported schema compiles")
}

fn rust_accepts(body: &Value) -> bool {
    parse_request(body.to_string().as_bytes()).is_ok()
}

fn assert_agree(validator: &jsonschema::Validator, body: &Value) {
    let schema_says = validator.is_valid(body);
    let rust_says = rust_accepts(body);
    assert_eq!(
        schema_says,
        rust_says,
        "schema {} but parse_request {} {body}",
        verdict(schema_says),
        verdict(rust_says)
    );
}

fn verdict(accepts: bool) -> &'static str {
    if accepts { "accepts" } else { "refuses" }
}

fn with_field(field: &str, value: Value) -> Value {
    let mut body = json!({"prompt": "a red fox"});
    body[field] = value;
    body
}

/// The boundary cases of the validation tests, as JSON bodies.
fn boundary_cases() -> Vec<Value> {
    let mut cases = vec![
        json!({"prompt": "a red fox"}),
        json!({}),
        json!({"num_images": 1}),
        json!([]),
        json!("a red fox"),
        json!(null),
        json!(42),
        json!({"prompt": "x", "negative_prompt": "blurry"}),
        json!({"prompt": "x", "Prompt": "x"}),
        json!({
            "prompt": "a red fox in the snow",
            "num_images": 4,
            "image_size": {"width": 1280, "height": 720},
            "guidance_scale": 7.25,
            "num_inference_steps": 50,
            "seed": 4294967295u64,
            "output_format": "png",
            "sync_mode": true,
            "enable_safety_checker": false
        }),
    ];
    for unit in ["a", "é", "東", "🦊", "e\u{301}"] {
        let chars_per_unit = unit.chars().count();
        cases.push(json!({"prompt": unit.repeat(1000 / chars_per_unit)}));
        cases.push(json!({"prompt": unit.repeat(1000 / chars_per_unit + 1)}));
    }
    for prompt in [
        "",
        " ",
        "\t\n\r ",
        "\u{3000}\u{a0}\u{2028}\u{85}",
        " x ",
        "\u{200b}",
        "\u{feff}",
    ] {
        cases.push(json!({"prompt": prompt}));
    }
    for prompt in [json!(null), json!(5), json!(["a"]), json!(true)] {
        cases.push(json!({"prompt": prompt}));
    }
    let integer_wrong_types = [json!("2"), json!(2.5), json!(null), json!(true), json!([2])];
    for value in [0, 1, 2, 4, 5, -1]
        .map(|n| json!(n))
        .into_iter()
        .chain(integer_wrong_types.clone())
    {
        cases.push(with_field("num_images", value));
    }
    for value in [0, 1, 28, 50, 51]
        .map(|n| json!(n))
        .into_iter()
        .chain(integer_wrong_types.clone())
    {
        cases.push(with_field("num_inference_steps", value));
    }
    for value in [
        json!(-1),
        json!(0),
        json!(4294967295u64),
        json!(4294967296u64),
        json!(u64::MAX),
    ]
    .into_iter()
    .chain(integer_wrong_types)
    {
        cases.push(with_field("seed", value));
    }
    for value in [
        json!(0.99),
        json!(1),
        json!(1.0),
        json!(3.5),
        json!(20),
        json!(20.0),
        json!(20.01),
        json!(-1e300),
        json!("3.5"),
        json!("NaN"),
        json!(null),
    ] {
        cases.push(with_field("guidance_scale", value));
    }
    for name in [
        "square_hd",
        "square",
        "portrait_4_3",
        "portrait_16_9",
        "landscape_4_3",
        "landscape_16_9",
        "landscape_3_2",
        "Square_HD",
        "",
    ] {
        cases.push(with_field("image_size", json!(name)));
    }
    for side in [
        0, 16, 48, 64, 65, 100, 1000, 1008, 2047, 2048, 2064, 4096, -16,
    ] {
        cases.push(with_field(
            "image_size",
            json!({"width": side, "height": 512}),
        ));
        cases.push(with_field(
            "image_size",
            json!({"width": 512, "height": side}),
        ));
    }
    for size in [
        json!({"width": 512}),
        json!({}),
        json!({"width": 512, "height": 512, "depth": 3}),
        json!({"width": "512", "height": 512}),
        json!(null),
        json!(1024),
        json!([1024, 768]),
    ] {
        cases.push(with_field("image_size", size));
    }
    for format in [
        json!("jpeg"),
        json!("png"),
        json!("jpg"),
        json!("JPEG"),
        json!(null),
    ] {
        cases.push(with_field("output_format", format));
    }
    for field in ["sync_mode", "enable_safety_checker"] {
        for flag in [
            json!(true),
            json!(false),
            json!("true"),
            json!(1),
            json!(null),
        ] {
            cases.push(with_field(field, flag));
        }
    }
    cases
}

#[test]
fn schema_and_parse_request_agree_on_every_boundary_case() {
    let validator = validator();
    let cases = boundary_cases();
    assert!(cases.len() > 120, "{} cases", cases.len());
    let accepted = cases.iter().filter(|body| rust_accepts(body)).count();
    assert!(
        accepted > 40 && accepted < cases.len() - 60,
        "a mix of valid and invalid: {accepted}"
    );
    for body in &cases {
        assert_agree(&validator, body);
    }
}

#[test]
fn schema_whitespace_is_exactly_rusts_char_is_whitespace() {
    let validator = validator();
    // Every Unicode White_Space character is in the Basic Multilingual Plane; check all of it
    // (surrogates are not chars), then a few astral characters.
    let astral = ['\u{10000}', '\u{1F98A}', '\u{E0020}', '\u{10FFFF}'];
    let chars = (0..=0xFFFFu32).filter_map(char::from_u32).chain(astral);
    let mut whitespace = 0;
    for c in chars {
        let body = json!({"prompt": format!("{c}{c}")});
        whitespace += usize::from(c.is_whitespace());
        assert_eq!(
            validator.is_valid(&body),
            !c.is_whitespace(),
            "U+{:04X}",
            u32::from(c)
        );
        assert_eq!(
            rust_accepts(&body),
            !c.is_whitespace(),
            "U+{:04X}",
            u32::from(c)
        );
    }
    assert_eq!(
        whitespace, 25,
        "Unicode's White_Space property has 25 characters"
    );
}

#[test]
fn the_one_documented_difference_integral_floats() {
    // Pinned so that the exclusion stays true: if either side changes, revisit the docs.
    let validator = validator();
    for field in ["num_images", "num_inference_steps", "seed"] {
        for raw in ["2.0", "1e0"] {
            let body: Value =
                serde_json::from_str(&format!(r#"{{"prompt": "x", "{field}": {raw}}}"#))
                    .expect("JSON");
            assert!(
                validator.is_valid(&body),
                "schema takes {raw} as an integer"
            );
            assert!(
                !rust_accepts(&body),
                "parse_request refuses {raw} for {field}"
            );
        }
    }
    let body = json!({"prompt": "x", "image_size": {"width": 512.0, "height": 512}});
    assert!(validator.is_valid(&body));
    assert!(!rust_accepts(&body));
}

/// A value for `field`: near its boundaries, valid or not, or of a wrong type.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let wrong_type = prop_oneof![
        Just(json!(null)),
        Just(json!("2")),
        Just(json!(2.5)),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
    ];
    let near = match field {
        "prompt" => prop_oneof![
            "[a-z ]{0,12}".prop_map(Value::from),
            (995usize..=1005, prop::char::any()).prop_map(|(n, c)| json!(c.to_string().repeat(n))),
            prop::collection::vec(
                prop::sample::select(vec![' ', '\t', '\u{3000}', '\u{a0}', 'é']),
                0..6
            )
            .prop_map(|chars| json!(chars.into_iter().collect::<String>())),
        ]
        .boxed(),
        "num_images" => (-1i64..6).prop_map(Value::from).boxed(),
        "num_inference_steps" => (-1i64..53).prop_map(Value::from).boxed(),
        "seed" => prop_oneof![
            (-3i64..3).prop_map(Value::from),
            (4294967290u64..4294967300).prop_map(Value::from),
        ]
        .boxed(),
        "guidance_scale" => prop_oneof![
            (0.8f64..20.5).prop_map(Value::from),
            (0i64..22).prop_map(Value::from)
        ]
        .boxed(),
        "image_size" => prop_oneof![
            prop::sample::select(vec![
                "square_hd",
                "square",
                "portrait_4_3",
                "portrait_16_9",
                "landscape_4_3",
                "landscape_16_9",
                "huge"
            ])
            .prop_map(Value::from),
            (40i64..2100, 40i64..2100).prop_map(|(w, h)| json!({"width": w, "height": h})),
            (3i64..130, 3i64..130).prop_map(|(w, h)| json!({"width": w * 16, "height": h * 16})),
        ]
        .boxed(),
        "output_format" => prop::sample::select(vec!["jpeg", "png", "gif"])
            .prop_map(Value::from)
            .boxed(),
        _ => any::<bool>().prop_map(Value::from).boxed(),
    };
    prop_oneof![19 => near, 1 => wrong_type].boxed()
}

fn arbitrary_body() -> impl Strategy<Value = Value> {
    // Unknown fields are rare, so that most bodies are judged on their known fields.
    let fields = flux_types::validation::REQUEST_FIELDS
        .into_iter()
        .map(|field| (field, if field == "prompt" { 0.95 } else { 0.5 }))
        .chain([("negative_prompt", 0.03), ("extra", 0.03)]);
    let parts: Vec<_> = fields
        .map(|(field, presence)| {
            prop::option::weighted(presence, field_value(field)).prop_map(move |v| (field, v))
        })
        .collect();
    parts.prop_map(|entries| {
        Value::Object(
            entries
                .into_iter()
                .filter_map(|(field, value)| value.map(|v| (field.to_owned(), v)))
                .collect(),
        )
    })
}

#[test]
fn schema_and_parse_request_agree_on_random_bodies() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    // A fixed seed: the same bodies on every run, so a failure reproduces.
    let mut runner = TestRunner::deterministic();
    let strategy = arbitrary_body();
    let validator = validator_cached();
    let total = 3000;
    let mut accepted = 0;
    for _ in 0..total {
        let body = strategy.new_tree(&mut runner).expect("a body").current();
        assert_agree(validator, &body);
        accepted += usize::from(rust_accepts(&body));
    }
    // Both outcomes must be well represented for the agreement to mean anything.
    assert!(
        accepted * 10 > total && accepted * 10 < total * 9,
        "{accepted} of {total} accepted"
    );
}

proptest! {
    #[test]
    fn schema_accepts_every_request_rust_accepts(request in valid_request()) {
        let body = serde_json::to_value(&request).expect("serialize");
        prop_assert!(validator_cached().is_valid(&body), "{body}");
    }
}

fn validator_cached() -> &'static jsonschema::Validator {
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    VALIDATOR.get_or_init(validator)
}

fn valid_request() -> impl Strategy<Value = GenerateRequest> {
    (
        "[a-zA-Z0-9 ,.!é東🦊]{0,40}[a-z]",
        1u32..=4,
        (4u32..=128, 4u32..=128),
        1.0f64..=20.0,
        1u32..=50,
        prop::option::of(0u64..=4294967295),
    )
        .prop_map(
            |(prompt, num_images, (w, h), guidance_scale, steps, seed)| GenerateRequest {
                num_images,
                image_size: flux_types::ImageSize::Custom {
                    width: w * 16,
                    height: h * 16,
                },
                guidance_scale,
                num_inference_steps: steps,
                seed,
                ..GenerateRequest::new(prompt)
            },
        )
}
