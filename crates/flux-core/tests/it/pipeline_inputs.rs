//! Requests reach the pipeline from the API's validated form, and parameters the model cannot
//! serve are refused with an error naming the parameter.

use crate::common;

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

/// A small valid request: one 64×64 image in two steps.
fn cat_64x64() -> GenerationParams {
    GenerationParams {
        prompt: "a cat".to_owned(),
        width: 64,
        height: 64,
        num_images: 1,
        num_inference_steps: 2,
        guidance_scale: 3.5,
        seed: 1,
        output_format: OutputFormat::Jpeg,
        run_safety_checker: true,
    }
}

#[test]
fn parameters_the_model_cannot_serve_are_refused_by_name() -> anyhow::Result<()> {
    let mut pipeline = FluxPipeline::load(&common::dev_model(), &common::test_config())?;
    let valid = cat_64x64();
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
        // Past the API's bounds a request could abort the process on allocation (about 2^60
        // noise values, a 16 GB schedule) instead of failing.
        (
            "width",
            GenerationParams {
                width: 2_147_483_632,
                height: 2_147_483_632,
                ..valid.clone()
            },
        ),
        (
            "height",
            GenerationParams {
                height: 2064,
                ..valid.clone()
            },
        ),
        (
            "num_images",
            GenerationParams {
                num_images: 5,
                ..valid.clone()
            },
        ),
        (
            "num_inference_steps",
            GenerationParams {
                num_inference_steps: u32::MAX,
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

#[test]
fn an_export_fixed_to_one_shape_refuses_other_shapes_before_any_step() -> anyhow::Result<()> {
    // The dev fixture with a VAE fixed to one 64×64 image (tests/data/make_test_graphs.py): the
    // transformer would take anything, so without a check up front the request would run its
    // whole denoise and fail only in the VAE.
    let copy = common::copy_of(&common::dev_model())?;
    std::fs::copy(
        common::test_data("vae_fixed_64x64.onnx"),
        copy.path.join("vae.opt/model.onnx"),
    )?;
    let mut pipeline = FluxPipeline::load(&copy.path, &common::test_config())?;
    let fits = cat_64x64();
    let cases = [
        (
            "image_size",
            GenerationParams {
                width: 128,
                ..fits.clone()
            },
        ),
        (
            "num_images",
            GenerationParams {
                num_images: 2,
                ..fits.clone()
            },
        ),
    ];
    for (expected, params) in cases {
        let mut steps_run = 0;
        let result = pipeline.generate(&params, &mut |_, _| {
            steps_run += 1;
            StepControl::Continue
        });
        match result {
            Err(FluxError::InvalidInput { param, message }) => {
                assert_eq!(param, expected, "{message}");
                assert!(message.contains("VAE export is fixed to"), "{message}");
            }
            other => anyhow::bail!("{expected}: expected InvalidInput, got {other:?}"),
        }
        assert_eq!(steps_run, 0, "{expected}: refused only after denoising");
    }
    let output = pipeline.generate(&fits, &mut |_, _| StepControl::Continue)?;
    assert_eq!((output.images[0].width, output.images[0].height), (64, 64));
    Ok(())
}
