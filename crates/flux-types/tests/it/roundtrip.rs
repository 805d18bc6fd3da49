//! Property tests: every valid request survives JSON unchanged, and the typed and the raw
//! validation paths agree on every request, valid or not.

use flux_types::{
    GenerateRequest, ImageSize, ImageSizePreset, OutputFormat, RequestError, parse_request,
};
use proptest::prelude::*;

/// Prompts of any Unicode text, 1–1000 chars, not all whitespace.
fn valid_prompt() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 1..=1000)
            .prop_map(|chars| chars.into_iter().collect::<String>()),
        "[ \\t\\n]{0,5}[a-zA-Zé東🦊\"\\\\]{1,20}[ \\t\\n]{0,5}",
    ]
    .prop_filter("not only whitespace", |prompt: &String| {
        !prompt.chars().all(char::is_whitespace)
    })
}

fn valid_size() -> impl Strategy<Value = ImageSize> {
    prop_oneof![
        prop::sample::select(ImageSizePreset::ALL.to_vec()).prop_map(ImageSize::Preset),
        (4u32..=128, 4u32..=128).prop_map(|(w, h)| ImageSize::Custom {
            width: w * 16,
            height: h * 16
        }),
    ]
}

fn valid_guidance() -> impl Strategy<Value = f64> {
    prop_oneof![
        1.0f64..=20.0,
        Just(1.0),
        Just(20.0),
        // Every f64 bit pattern in range, not only "nice" decimals.
        (0x3FF0_0000_0000_0000u64..=0x4034_0000_0000_0000).prop_map(f64::from_bits),
    ]
}

fn valid_request() -> impl Strategy<Value = GenerateRequest> {
    (
        valid_prompt(),
        1u32..=4,
        valid_size(),
        valid_guidance(),
        1u32..=50,
        prop::option::of(prop_oneof![0u64..=4294967295, Just(0), Just(4294967295)]),
        prop::sample::select(vec![OutputFormat::Jpeg, OutputFormat::Png]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                prompt,
                num_images,
                image_size,
                guidance_scale,
                num_inference_steps,
                seed,
                output_format,
                sync_mode,
                enable_safety_checker,
            )| GenerateRequest {
                prompt,
                num_images,
                image_size,
                guidance_scale,
                num_inference_steps,
                seed,
                output_format,
                sync_mode,
                enable_safety_checker,
            },
        )
}

/// Requests of the right Rust types but any values, most of them breaking some rule.
fn any_request() -> impl Strategy<Value = GenerateRequest> {
    (
        prop_oneof![valid_prompt(), "[ \\t]{0,3}", "a{995,1005}"],
        0u32..=6,
        prop_oneof![
            valid_size(),
            (0u32..=2100, 0u32..=2100)
                .prop_map(|(width, height)| ImageSize::Custom { width, height }),
        ],
        prop_oneof![0.0f64..=21.0, Just(f64::NAN), Just(f64::INFINITY)],
        0u32..=52,
        prop::option::of(prop_oneof![0u64..=4294967295, 4294967296u64..=u64::MAX]),
    )
        .prop_map(
            |(prompt, num_images, image_size, guidance_scale, steps, seed)| GenerateRequest {
                num_images,
                image_size,
                guidance_scale,
                num_inference_steps: steps,
                seed,
                ..GenerateRequest::new(prompt)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_requests_round_trip_through_json(request in valid_request()) {
        let body = serde_json::to_vec(&request).expect("serialize");

        let parsed = parse_request(&body).expect("a valid request parses");
        prop_assert_eq!(parsed.request(), &request);
        let (width, height) = request.image_size.dimensions();
        prop_assert_eq!((parsed.width(), parsed.height()), (width, height));

        let deserialized: GenerateRequest = serde_json::from_slice(&body).expect("deserialize");
        prop_assert_eq!(&deserialized, &request);
        prop_assert_eq!(serde_json::to_vec(&deserialized).expect("serialize"), body);

        prop_assert_eq!(request.clone().validate().expect("valid"), parsed);
    }

    #[test]
    fn validate_and_parse_request_agree(request in any_request()) {
        let typed = request.clone().validate();
        if request.guidance_scale.is_finite() {
            let raw = parse_request(&serde_json::to_vec(&request).expect("serialize"));
            prop_assert_eq!(&typed, &raw);
        }
        if let Err(err) = &typed {
            prop_assert!(!err.violations().is_empty());
            let api = err.to_api_error();
            prop_assert_eq!(api.param.as_deref(), Some(err.violations()[0].field.as_str()));
            prop_assert_eq!(api.code, err.violations()[0].code);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_refusals_are_400_codes(body in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Err(err) = parse_request(&body) {
            let code = err.to_api_error().code;
            prop_assert!(matches!(
                code,
                flux_types::ErrorCode::InvalidJson
                    | flux_types::ErrorCode::InvalidParameter
                    | flux_types::ErrorCode::UnknownField
            ));
            prop_assert!(matches!(err, RequestError::InvalidJson(_)) || !err.violations().is_empty());
        }
    }
}
