// Pending: moves to crates/flux-core/tests/it/scene_model.rs (with `mod scene_model;` in main.rs)
// when tools/scene-flux/train.py gives a checkpoint worth committing as fixtures/scene-flux-dev.
//! The semantic test of the bundled scene model (`fixtures/scene-flux-dev`, trained by
//! `tools/scene-flux/train.py`): generated through the Rust pipeline from its diffusers folder
//! (the model builder's graphs), its pictures are read back by the scene detector and compared with
//! what each prompt states. Every prompt names a colour × shape pair training never showed.
//!
//! The thresholds are the issue's: at the API defaults (28 steps, guidance 3.5) at least 90 % of
//! the stated attributes agree; guidance 7.0 does not lower that; four steps still agree on at
//! least 75 %; seeds move the layout; every preset size and a custom one give a scene.

use std::path::PathBuf;

use anyhow::{Context, Result};
use image::RgbImage;

use flux_core::denoise::StepControl;
use flux_core::pipeline::{FluxPipeline, GenerationParams};
use flux_types::OutputFormat;

use crate::common::{fixtures, test_config};
use crate::scene_detector::{Detection, Detector, StatedPrompt, scene_eval};

/// The size the agreement is measured at: a small object (0.15 of the shorter side) spans about
/// five latent pixels, enough to tell a star from a cross.
const SIDE: u32 = 256;

pub fn scene_model() -> PathBuf {
    fixtures().join("scene-flux-dev")
}

fn load() -> Result<FluxPipeline> {
    FluxPipeline::load(&scene_model(), &test_config()).context("loading fixtures/scene-flux-dev")
}

fn generate(
    pipeline: &mut FluxPipeline,
    prompt: &str,
    (width, height): (u32, u32),
    steps: u32,
    guidance: f32,
    seed: u64,
) -> Result<RgbImage> {
    let params = GenerationParams {
        prompt: prompt.to_owned(),
        width,
        height,
        num_images: 1,
        num_inference_steps: steps,
        guidance_scale: guidance,
        seed,
        output_format: OutputFormat::Png,
        run_safety_checker: false,
    };
    let output = pipeline.generate(&params, &mut |_, _| StepControl::Continue)?;
    let bytes = &output.images.first().context("no image")?.bytes;
    Ok(image::load_from_memory(bytes)?.to_rgb8())
}

/// Agreement over every attribute the prompts state, as (agreeing, stated).
fn agreement(
    pipeline: &mut FluxPipeline,
    detector: &Detector,
    prompts: &[StatedPrompt],
    steps: u32,
    guidance: f32,
) -> Result<(usize, usize)> {
    let (mut agree, mut total) = (0, 0);
    for (i, case) in prompts.iter().enumerate() {
        let image = generate(pipeline, &case.prompt, (SIDE, SIDE), steps, guidance, 100 + i as u64)?;
        let (scores, found) = detector.score(&image, &case.stated);
        total += scores.len();
        agree += scores.values().filter(|v| **v).count();
        if scores.values().any(|v| !v) {
            eprintln!("{steps} steps, guidance {guidance}: {:?}: found {found:?}: {scores:?}", case.prompt);
        }
    }
    eprintln!("{steps} steps, guidance {guidance}: {agree}/{total} stated attributes agree");
    Ok((agree, total))
}

#[test]
fn the_scene_model_loads_with_its_own_text_length() -> Result<()> {
    let pipeline = load()?;
    // flux-rs-model.json in the folder: the model was trained on 32 T5 tokens, not FLUX's 512.
    assert_eq!(pipeline.description().text_length, 32);
    assert!(!pipeline.has_safety_checker(), "the scene model ships without a classifier");
    Ok(())
}

#[test]
fn held_out_prompts_are_drawn_as_stated() -> Result<()> {
    let eval = scene_eval()?;
    let detector = Detector::new(&eval.colours);
    let mut pipeline = load()?;
    let prompts = &eval.held_out;
    assert!(prompts.len() >= 40);

    let (agree, total) = agreement(&mut pipeline, &detector, prompts, 28, 3.5)?;
    assert!(agree * 100 >= total * 90, "API defaults: {agree}/{total} < 90 %");

    let (agree_high, total_high) = agreement(&mut pipeline, &detector, prompts, 28, 7.0)?;
    assert_eq!(total_high, total);
    assert!(
        agree_high >= agree,
        "guidance 7.0 lowered the agreement: {agree_high} < {agree} of {total}"
    );

    let (agree_fast, total_fast) = agreement(&mut pipeline, &detector, prompts, 4, 3.5)?;
    assert!(
        agree_fast * 100 >= total_fast * 75,
        "4 steps: {agree_fast}/{total_fast} < 75 %"
    );
    Ok(())
}

#[test]
fn different_seeds_give_different_layouts() -> Result<()> {
    let eval = scene_eval()?;
    let detector = Detector::new(&eval.colours);
    let mut pipeline = load()?;
    let (mut pairs, mut moved) = (0, 0);
    for case in &eval.unplaced {
        let centres: Vec<Detection> = (0..3)
            .map(|seed| {
                let image = generate(&mut pipeline, &case.prompt, (SIDE, SIDE), 28, 3.5, 1000 + seed)?;
                Ok(detector.detect(&image))
            })
            .collect::<Result<_>>()?;
        for a in 0..centres.len() {
            for b in a + 1..centres.len() {
                pairs += 1;
                if let (Some((xa, ya)), Some((xb, yb))) = (centres[a].centre, centres[b].centre) {
                    if (xa - xb).hypot(ya - yb) > 0.05 {
                        moved += 1;
                    }
                }
            }
        }
    }
    eprintln!("{moved} of {pairs} seed pairs moved the objects by more than 0.05");
    assert!(moved * 3 >= pairs * 2, "{moved} of {pairs} pairs moved");
    Ok(())
}

/// Every preset size of the contract and a custom size give a scene: a background from the
/// palette and the prompt's object colour, at the API's default 28 steps.
#[test]
fn every_preset_size_gives_a_scene() -> Result<()> {
    let eval = scene_eval()?;
    let detector = Detector::new(&eval.colours);
    let mut pipeline = load()?;
    let sizes = [
        (1024, 1024),
        (512, 512),
        (768, 1024),
        (576, 1024),
        (1024, 768),
        (1024, 576),
        (400, 304),
    ];
    let mut failures = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let case = &eval.held_out[i];
        let image = generate(&mut pipeline, &case.prompt, size, 28, 3.5, 7 + i as u64)?;
        assert_eq!((image.width(), image.height()), size);
        let (scores, found) = detector.score(&image, &case.stated);
        eprintln!("{size:?} {:?}: found {found:?}: {scores:?}", case.prompt);
        let background_ok = case.stated.background.is_none() || scores["background"];
        if !(found.background.is_some() && found.count > 0 && scores["colour"] && background_ok) {
            failures.push(format!("{size:?}: {:?} found {found:?}", case.prompt));
        }
    }
    assert!(failures.is_empty(), "not a scene of the prompt: {failures:#?}");
    Ok(())
}
