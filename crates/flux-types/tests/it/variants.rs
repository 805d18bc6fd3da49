//! Validation per variant: schnell's `num_inference_steps` default (4) and range (1–12), its
//! `guidance_scale` accepted and ignored; dev's rules as before.

use flux_types::variant::{DEV, SCHNELL};
use flux_types::{
    ErrorCode, GenerateRequest, RequestError, VariantSpec, parse_request, parse_request_for,
};

fn refusal(body: &str, variant: &VariantSpec) -> flux_types::ApiError {
    match parse_request_for(body.as_bytes(), variant) {
        Ok(valid) => panic!("{body} accepted on {variant}: {valid:?}"),
        Err(error) => error.to_api_error(),
    }
}

#[test]
fn schnell_defaults_to_four_steps_and_allows_at_most_twelve() -> Result<(), RequestError> {
    let valid = parse_request_for(br#"{"prompt": "a red fox"}"#, &SCHNELL)?;
    assert_eq!(valid.num_inference_steps(), 4);
    let valid = parse_request_for(
        br#"{"prompt": "a red fox", "num_inference_steps": 12}"#,
        &SCHNELL,
    )?;
    assert_eq!(valid.num_inference_steps(), 12);
    for steps in [0, 13, 28, 50] {
        let error = refusal(
            &format!(r#"{{"prompt": "a red fox", "num_inference_steps": {steps}}}"#),
            &SCHNELL,
        );
        assert_eq!(error.code, ErrorCode::InvalidParameter);
        assert_eq!(error.param.as_deref(), Some("num_inference_steps"));
        assert_eq!(
            error.message,
            format!("num_inference_steps must be between 1 and 12, got {steps}")
        );
    }
    // The library's typed path holds the same rules.
    let mut request = GenerateRequest::new("a red fox");
    request.num_inference_steps = 13;
    assert!(request.clone().validate_for(&SCHNELL).is_err());
    assert_eq!(request.validate()?.num_inference_steps(), 13);
    Ok(())
}

#[test]
fn schnell_accepts_any_guidance_number_and_passes_on_the_default() -> Result<(), RequestError> {
    for guidance in ["0", "-5", "3.5", "50", "1e300"] {
        let body = format!(r#"{{"prompt": "a red fox", "guidance_scale": {guidance}}}"#);
        let valid = parse_request_for(body.as_bytes(), &SCHNELL)?;
        assert_eq!(valid.guidance_scale(), 3.5, "{body}");
    }
    // Accepted is not "anything": it is still a number.
    let error = refusal(
        r#"{"prompt": "a red fox", "guidance_scale": "high"}"#,
        &SCHNELL,
    );
    assert_eq!(error.param.as_deref(), Some("guidance_scale"));
    assert_eq!(
        error.message,
        "guidance_scale must be a number, got string \"high\""
    );
    let mut request = GenerateRequest::new("a red fox");
    request.num_inference_steps = 4;
    request.guidance_scale = 99.0;
    assert_eq!(request.validate_for(&SCHNELL)?.guidance_scale(), 3.5);
    Ok(())
}

#[test]
fn dev_keeps_the_contracts_rules_on_both_entry_points() -> Result<(), RequestError> {
    for body in [
        r#"{"prompt": "a red fox"}"#,
        r#"{"prompt": "a red fox", "num_inference_steps": 13, "guidance_scale": 7}"#,
        r#"{"prompt": "a red fox", "num_inference_steps": 51}"#,
        r#"{"prompt": "a red fox", "guidance_scale": 50}"#,
    ] {
        let plain = parse_request(body.as_bytes()).map_err(|e| e.to_api_error());
        let dev = parse_request_for(body.as_bytes(), &DEV).map_err(|e| e.to_api_error());
        assert_eq!(plain, dev, "{body}");
    }
    let valid = parse_request(br#"{"prompt": "a red fox", "guidance_scale": 7}"#)?;
    assert_eq!(
        (valid.num_inference_steps(), valid.guidance_scale()),
        (28, 7.0)
    );
    let error = refusal(r#"{"prompt": "a red fox", "guidance_scale": 50}"#, &DEV);
    assert_eq!(
        error.message,
        "guidance_scale must be a finite number between 1 and 20, got 50"
    );
    Ok(())
}
