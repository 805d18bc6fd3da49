//! Requests reach the pipeline from the API's validated form, and parameters the model cannot
//! serve are refused with an error naming the parameter.

mod common;

use flux_core::FluxError;
use flux_core::denoise::StepControl;
use flux_core::pipeline::{FluxPipeline, GenerationParams};
use flux_types::{GenerateRequest, ImageSize, OutputFormat};

#[test]
fn a_validated_request_runs_with_the_seed_the_caller_resolved() -> anyhow::Result<()> {
    let request = GenerateRequest {
        image_size: ImageSize::Custom {
            width: 80,
            height: 64,
        },
        num_images: 2,
        num_inference_steps: 2,
        guidance_scale: 4.0,
        output_format: OutputFormat::Png,
        enable_safety_checker: false,
        ..GenerateRequest::new("a red fox in the snow")
    }
    .validate()?;
    assert!(matches!(
        GenerationParams::try_from(&request),
        Err(FluxError::InvalidInput { param: "seed", .. })
    ));
    let seeded = GenerationParams::try_from(&request.clone().with_seed(1234))?;
    let params = GenerationParams::from_request(&request, 1234);
    assert_eq!(seeded, params);
    assert_eq!(params.seed, 1234);
    assert_eq!(
        (params.width, params.height, params.num_images),
        (80, 64, 2)
    );
    assert_eq!(params.num_inference_steps, 2);
    assert!(!params.run_safety_checker);

    let mut pipeline = FluxPipeline::load(&common::dev_model(), &common::test_config())?;
    let output = pipeline.generate(&params, &mut |_, _| StepControl::Continue)?;
    assert_eq!(output.images.len(), 2);
    for image in &output.images {
        assert_eq!(
            (image.width, image.height, image.content_type.as_str()),
            (80, 64, "image/png")
        );
        let decoded = image::load_from_memory(&image.bytes)?;
        assert_eq!((decoded.width(), decoded.height()), (80, 64));
    }
    assert_eq!(output.nsfw, vec![false, false]);
    assert!(output.timings.total >= output.timings.denoise);
    assert!(output.timings.ort_session_total > std::time::Duration::ZERO);
    Ok(())
}

#[test]
fn parameters_the_model_cannot_serve_are_refused_by_name() -> anyhow::Result<()> {
    let mut pipeline = FluxPipeline::load(&common::dev_model(), &common::test_config())?;
    let valid = GenerationParams {
        prompt: "a cat".to_owned(),
        width: 64,
        height: 64,
        num_images: 1,
        num_inference_steps: 2,
        guidance_scale: 3.5,
        seed: 1,
        output_format: OutputFormat::Jpeg,
        run_safety_checker: true,
    };
    let cases = [
        (
            "width",
            GenerationParams {
                width: 72,
                ..valid.clone()
            },
        ),
        (
            "height",
            GenerationParams {
                height: 0,
                ..valid.clone()
            },
        ),
        (
            "num_images",
            GenerationParams {
                num_images: 0,
                ..valid.clone()
            },
        ),
        (
            "num_inference_steps",
            GenerationParams {
                num_inference_steps: 0,
                ..valid.clone()
            },
        ),
        (
            "guidance_scale",
            GenerationParams {
                guidance_scale: f32::NAN,
                ..valid.clone()
            },
        ),
        (
            "prompt",
            GenerationParams {
                prompt: "  ".to_owned(),
                ..valid.clone()
            },
        ),
    ];
    for (expected, params) in cases {
        match pipeline.generate(&params, &mut |_, _| StepControl::Continue) {
            Err(FluxError::InvalidInput { param, .. }) => assert_eq!(param, expected),
            other => anyhow::bail!("{expected}: expected InvalidInput, got {other:?}"),
        }
    }
    // The pipeline is still usable afterwards.
    assert_eq!(
        pipeline
            .generate(&valid, &mut |_, _| StepControl::Continue)?
            .images
            .len(),
        1
    );
    Ok(())
}
