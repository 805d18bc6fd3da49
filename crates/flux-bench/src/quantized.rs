//! 8- and 4-bit weights (`--precision int8|int4`) against fp32 on the same checkpoint: each
//! precision is built by flux-builder (parent side, so the build's own memory is not measured),
//! then run in a fresh worker process over the same prompt × seed cases: weight bytes of the
//! transformer and T5 graphs, peak RSS, load time, seconds per denoising step, and the images,
//! whose PSNR and largest pixel difference against fp32's the parent computes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use flux_builder::onnx::initializer_bytes;
use flux_builder::{BuildOptions, Precision};
use flux_core::pipeline::FluxPipeline;
use flux_core::{RuntimeKind, init_runtime};
use flux_types::OutputFormat;
use serde::{Deserialize, Serialize};

use super::memory;
use super::pipeline::{params, session_config};
use super::worker::{self, WorkerSpec};

/// The API's default guidance.
const GUIDANCE: f64 = 3.5;

/// The precisions compared; the first is the reference.
pub const PRECISIONS: [&str; 3] = ["fp32", "int8", "int4"];

/// Prompts of the quality cases (each with its own seed): varied, as a user's would be.
const PROMPTS: [&str; 10] = [
    "a red circle on a blue background",
    "two small yellow stars at the top",
    "a large green triangle in the bottom left corner, white background",
    "a lighthouse on a cliff at dusk",
    "a bowl of ramen, studio photograph",
    "an orange cat sleeping on a purple sofa",
    "a watercolor map of an island",
    "three black crosses on an orange background",
    "a city street at night in the rain, neon signs",
    "a white ring in the centre, black background",
];

/// One precision of one model, run in its own process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuantizedSpec {
    /// The built ONNX folder.
    pub model_dir: PathBuf,
    pub precision: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub threads: usize,
    /// (prompt, seed) per case.
    pub cases: Vec<(String, u64)>,
    /// Where the case images go, as raw RGB bytes (`<precision>-<case>.rgb`).
    pub images_dir: PathBuf,
}

/// What one precision's worker measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuantizedRun {
    pub precision: String,
    /// Initializer bytes the transformer graph loads.
    pub transformer_bytes: u64,
    /// Initializer bytes the T5 graph loads.
    pub t5_bytes: u64,
    /// Initializer bytes of CLIP and the VAE (fp32 at every precision).
    #[serde(default)]
    pub other_bytes: u64,
    pub load_seconds: f64,
    pub rss_after_load_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Denoising seconds per step, one per case (after one warm-up generation).
    pub step_seconds: Vec<f64>,
}

/// One precision's images against the reference's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quality {
    pub precision: String,
    /// PSNR in dB per case (8-bit pixels; infinite when identical).
    pub psnr_db: Vec<f64>,
    /// Largest pixel difference over all cases (0–255).
    pub max_diff: u8,
}

/// One model's comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuantizedEntry {
    pub model: String,
    pub source: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cases: usize,
    pub runs: Vec<QuantizedRun>,
    pub quality: Vec<Quality>,
}

fn transformer_graph(model_dir: &Path) -> Result<PathBuf> {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir.join("flux-rs.json")).context("flux-rs.json")?,
    )?;
    let relative = manifest["transformer"]
        .as_str()
        .context("flux-rs.json names no transformer")?;
    Ok(model_dir.join(relative))
}

/// The worker side: loads the built folder and runs every case.
pub fn measure(spec: &QuantizedSpec) -> Result<QuantizedRun> {
    init_runtime(RuntimeKind::Cpu).context("initialising ONNX Runtime")?;
    let started = Instant::now();
    let mut pipeline = FluxPipeline::load(&spec.model_dir, &session_config(spec.threads))
        .with_context(|| format!("loading {}", spec.model_dir.display()))?;
    let load_seconds = started.elapsed().as_secs_f64();
    let after_load = memory::own_memory()?;
    let (first_prompt, first_seed) = spec.cases.first().context("no cases")?;
    let size = [spec.width, spec.height];
    let warm_up = params(
        first_prompt,
        *first_seed,
        GUIDANCE,
        OutputFormat::Jpeg,
        size,
        1,
    );
    pipeline.generate_raw(&warm_up, &mut |_, _| {
        flux_core::denoise::StepControl::Continue
    })?;
    let mut step_seconds = Vec::new();
    for (i, (prompt, seed)) in spec.cases.iter().enumerate() {
        let request = params(
            prompt,
            *seed,
            GUIDANCE,
            OutputFormat::Jpeg,
            size,
            spec.steps,
        );
        let raw = pipeline.generate_raw(&request, &mut |_, _| {
            flux_core::denoise::StepControl::Continue
        })?;
        step_seconds.push(raw.timings.denoise.as_secs_f64() / f64::from(spec.steps));
        let images = flux_core::pixels::to_rgb8(raw.images.view())?;
        let image = images.first().context("no image")?;
        let path = spec.images_dir.join(format!("{}-{i}.rgb", spec.precision));
        std::fs::write(&path, image.as_raw())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let end = memory::own_memory()?;
    Ok(QuantizedRun {
        precision: spec.precision.clone(),
        transformer_bytes: initializer_bytes(&transformer_graph(&spec.model_dir)?)?,
        t5_bytes: initializer_bytes(&spec.model_dir.join("t5.opt/model.onnx"))?,
        other_bytes: initializer_bytes(&spec.model_dir.join("clip.opt/model.onnx"))?
            + initializer_bytes(&spec.model_dir.join("vae.opt/model.onnx"))?,
        load_seconds,
        rss_after_load_bytes: after_load.rss_bytes,
        peak_rss_bytes: end.peak_rss_bytes,
        step_seconds,
    })
}

/// PSNR (dB) and largest difference of two 8-bit images.
pub fn compare(a: &[u8], b: &[u8]) -> (f64, u8) {
    let mut squared = 0f64;
    let mut max = 0u8;
    for (&x, &y) in a.iter().zip(b) {
        let d = x.abs_diff(y);
        max = max.max(d);
        squared += f64::from(d) * f64::from(d);
    }
    let mse = squared / a.len().max(1) as f64;
    (10.0 * (255.0f64 * 255.0 / mse).log10(), max)
}

/// The parent side: builds each precision of `source` (a diffusers folder), measures each in a
/// fresh worker, and compares the images with fp32's.
pub fn run_all(
    model: &str,
    source: &Path,
    size: [u32; 2],
    steps: u32,
    cases: usize,
    threads: usize,
) -> Result<QuantizedEntry> {
    let cache = flux_core::runtime::cache_root()?;
    let images = tempfile_dir()?;
    let cases: Vec<(String, u64)> = PROMPTS
        .iter()
        .cycle()
        .take(cases)
        .enumerate()
        .map(|(i, prompt)| ((*prompt).to_owned(), 1000 + i as u64))
        .collect();
    let mut runs = Vec::new();
    for precision in PRECISIONS {
        eprintln!(
            "bench: {model} model at {precision}: building, then {} cases",
            cases.len()
        );
        let opts = BuildOptions {
            precision: precision.parse::<Precision>()?,
            ..BuildOptions::default()
        };
        let built = flux_builder::build_cached(source, &opts, &cache)
            .with_context(|| format!("building {} at {precision}", source.display()))?;
        let spec = QuantizedSpec {
            model_dir: built,
            precision: precision.to_owned(),
            width: size[0],
            height: size[1],
            steps,
            threads,
            cases: cases.clone(),
            images_dir: images.clone(),
        };
        runs.push(worker::spawn::<QuantizedRun>(&WorkerSpec::Quantized(spec))?);
    }
    let mut quality = Vec::new();
    for precision in &PRECISIONS[1..] {
        let mut psnr_db = Vec::new();
        let mut max_diff = 0;
        for i in 0..cases.len() {
            let read = |p: &str| std::fs::read(images.join(format!("{p}-{i}.rgb")));
            let (reference, quantized) = (read(PRECISIONS[0])?, read(precision)?);
            if reference.len() != quantized.len() {
                bail!("case {i}: images of different sizes");
            }
            let (psnr, max) = compare(&reference, &quantized);
            psnr_db.push(psnr);
            max_diff = max_diff.max(max);
        }
        quality.push(Quality {
            precision: (*precision).to_owned(),
            psnr_db,
            max_diff,
        });
    }
    let _ = std::fs::remove_dir_all(&images);
    Ok(QuantizedEntry {
        model: model.to_owned(),
        source: source.display().to_string(),
        width: size[0],
        height: size[1],
        steps,
        cases: cases.len(),
        runs,
        quality,
    })
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("flux-bench-quantized-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn psnr_of_one_step_everywhere_is_48_db() {
        let (psnr, max) = compare(&[10, 20, 30], &[11, 19, 31]);
        assert!((psnr - 48.13).abs() < 0.01, "{psnr}");
        assert_eq!(max, 1);
        assert!(compare(&[5, 5], &[5, 5]).0.is_infinite());
    }
}
