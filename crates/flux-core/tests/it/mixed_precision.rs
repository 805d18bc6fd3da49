//! Graphs whose ports are float16 or bfloat16: the pipeline converts at the boundary, in both
//! directions, and the result stays close to the float32 pipeline's.
//!
//! `tests/data/transformer_mixed_precision.onnx` (written by `make_mixed_precision_transformer.py`
//! beside it) is the tiny dev transformer behind mixed float16/bfloat16 inputs and a bfloat16
//! output; the rest of the folder is the float32 dev fixture. Rounding the inputs to 16 bits moves
//! the final latents by a few hundredths at most (`LATENT_TOLERANCE`); a conversion that
//! misread the bits (f16 as bf16, bytes as floats) would move them by more than the gap between
//! two seeds, which is checked to be far larger.

use crate::common;

use flux_core::denoise::StepControl;
use flux_core::model::MANIFEST_FILE;
use flux_core::pipeline::{FluxPipeline, GenerationParams, RawGeneration};
use flux_core::tensors::FloatType;
use flux_types::OutputFormat;

/// Largest final-latent difference allowed between the mixed-precision and the float32 pipeline.
const LATENT_TOLERANCE: f32 = 0.05;

fn params(seed: u64) -> GenerationParams {
    GenerationParams {
        prompt: "a lighthouse on a cliff at dusk".to_owned(),
        width: 64,
        height: 48,
        num_images: 2,
        num_inference_steps: 4,
        guidance_scale: 3.5,
        seed,
        output_format: OutputFormat::Png,
        run_safety_checker: false,
    }
}

fn run(pipeline: &mut FluxPipeline, seed: u64) -> anyhow::Result<RawGeneration> {
    Ok(pipeline.generate_raw(&params(seed), &mut |_, _| StepControl::Continue)?)
}

#[test]
fn float16_and_bfloat16_ports_are_converted_at_the_boundary() -> anyhow::Result<()> {
    let folder = tempfile::tempdir()?;
    common::copy_tree(&common::dev_model(), folder.path())?;
    let mixed = common::test_data("transformer_mixed_precision.onnx");
    std::fs::write(
        folder.path().join(MANIFEST_FILE),
        serde_json::json!({ "transformer": mixed }).to_string(),
    )?;

    let mut reference = FluxPipeline::load(&common::dev_model(), &common::test_config())?;
    let mut pipeline = FluxPipeline::load(folder.path(), &common::test_config())?;
    assert_eq!(pipeline.description().transformer_precision, FloatType::F16);

    let expected = run(&mut reference, 7)?;
    let other_seed = run(&mut reference, 8)?;
    let seed_gap = common::max_abs_diff(&expected.final_latents, &other_seed.final_latents)?;

    let host = run(&mut pipeline, 7)?;
    pipeline.set_device_resident_loop(true)?;
    let device = run(&mut pipeline, 7)?;
    for (loop_name, result) in [("host loop", &host), ("device loop", &device)] {
        assert!(
            result.final_latents.iter().all(|value| value.is_finite()),
            "{loop_name}: non-finite latents"
        );
        let diff = common::max_abs_diff(&result.final_latents, &expected.final_latents)?;
        eprintln!("{loop_name}: mixed precision vs float32 {diff:.2e} (seed gap {seed_gap:.2e})");
        assert!(
            diff <= LATENT_TOLERANCE,
            "{loop_name}: mixed precision differs from float32 by {diff}"
        );
        assert!(
            diff * 10.0 < seed_gap,
            "{loop_name}: the difference {diff} is not small next to the seed gap {seed_gap}"
        );
    }
    Ok(())
}
