//! Builds a diffusers folder and runs it through flux-core's own pipeline (the loader's interface
//! checks, tokenizers, sampler, VAE) on one reference case, by hand:
//! `cargo run -p flux-builder --example load_built -- SRC_DIR CASE_DIR [TEXT_LENGTH]`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use flux_core::config::SessionConfig;
use flux_core::denoise::StepControl;
use flux_core::pipeline::{FluxPipeline, GenerationParams};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (src, case) = match args.as_slice() {
        [src, case, ..] => (PathBuf::from(src), PathBuf::from(case)),
        _ => bail!("usage: load_built SRC_DIR CASE_DIR [TEXT_LENGTH]"),
    };
    let text_length = args.get(2).map(|t| t.parse()).transpose()?;
    let cache = tempfile::tempdir()?;
    let opts = flux_builder::BuildOptions {
        text_length,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let model = flux_builder::build_cached(&src, &opts, cache.path())?;
    println!("built {} in {:.2?}", model.display(), start.elapsed());
    let config = SessionConfig {
        intra_op_threads: Some(1),
        ..SessionConfig::default()
    };
    let mut pipeline = FluxPipeline::load(&model, &config)?;
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.json"))?)?;
    let num = |k: &str| info[k].as_f64().with_context(|| k.to_owned());
    let params = GenerationParams {
        prompt: info["prompt"].as_str().context("prompt")?.to_owned(),
        width: num("width")? as u32,
        height: num("height")? as u32,
        num_images: num("num_images")? as u32,
        num_inference_steps: num("num_inference_steps")? as u32,
        guidance_scale: num("guidance_scale")? as f32,
        seed: info["seed"].as_u64().context("seed")?,
        output_format: flux_types::OutputFormat::Png,
        run_safety_checker: false,
    };
    let raw = pipeline.generate_raw(&params, &mut |_, _| StepControl::Continue)?;
    let rgb = flux_core::pixels::to_rgb8(raw.images.view())?;
    for (i, image) in rgb.iter().enumerate() {
        let reference = image::open(case.join(format!("image_{i}.png")))?.to_rgb8();
        let diff = image
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(&a, &b)| (i16::from(a) - i16::from(b)).abs())
            .max()
            .unwrap_or(0);
        println!("image {i}: max {diff} level(s) from the diffusers reference");
    }
    Ok(())
}
