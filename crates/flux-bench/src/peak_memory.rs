//! Peak resident memory per request size (issue 18's table): one fresh worker process per model,
//! size and batch loads the model through the path `flux serve` uses (a diffusers folder through
//! the model builder's graphs: fused attention, image-by-image decoding, one CPU arena for all
//! sessions, given back after a request beyond 1024²), runs one 1-step request, and reports its
//! `VmHWM` beside flux-core's admission estimate for the same request, so the report shows
//! whether the estimate stays an envelope.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use flux_core::denoise::StepControl;
use flux_core::memory::MemoryModel;
use flux_core::pipeline::{FluxPipeline, GenerationParams};
use flux_core::{RuntimeKind, init_runtime};
use flux_types::OutputFormat;
use serde::{Deserialize, Serialize};

use super::memory;
use super::pipeline::session_config;
use super::results::{PeakMemoryEntry, PeakMemoryResult};
use super::worker::{self, WorkerSpec};

/// The requests measured: (width, height, images); the last is the contract's largest.
pub const REQUESTS: [(u32, u32, u32); 5] = [
    (512, 512, 1),
    (1024, 1024, 1),
    (1280, 1280, 1),
    (2048, 2048, 1),
    (2048, 2048, 4),
];
/// `--quick`: the sizes that take seconds.
pub const QUICK_REQUESTS: [(u32, u32, u32); 2] = [(512, 512, 1), (1024, 1024, 1)];

/// One model at one request size, run in its own process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeakMemorySpec {
    pub model_dir: PathBuf,
    pub width: u32,
    pub height: u32,
    pub images: u32,
    pub threads: usize,
}

/// Runs the spec in this process (the worker side).
pub fn measure(spec: &PeakMemorySpec) -> Result<PeakMemoryResult> {
    init_runtime(RuntimeKind::Cpu).context("initialising ONNX Runtime")?;
    let mut pipeline = FluxPipeline::load(&spec.model_dir, &session_config(spec.threads))
        .with_context(|| format!("loading {}", spec.model_dir.display()))?;
    let after_load = memory::own_memory()?;
    let params = GenerationParams {
        prompt: "a red circle on a blue background".to_owned(),
        width: spec.width,
        height: spec.height,
        num_images: spec.images,
        num_inference_steps: 1,
        guidance_scale: 3.5,
        seed: 42,
        output_format: OutputFormat::Jpeg,
        run_safety_checker: false,
    };
    let estimate = MemoryModel::of_folder(
        &pipeline.description().root,
        pipeline.vae_path(),
        &pipeline.description().transformer_path,
    )
    .estimated_peak(&params);
    let started = Instant::now();
    let output = pipeline
        .generate(&params, &mut |_, _| StepControl::Continue)
        .with_context(|| format!("generating {}x{} x{}", spec.width, spec.height, spec.images))?;
    let seconds = started.elapsed().as_secs_f64();
    if output.images.len() != spec.images as usize {
        bail!("the pipeline returned {} images", output.images.len());
    }
    let end = memory::own_memory()?;
    Ok(PeakMemoryResult {
        width: spec.width,
        height: spec.height,
        images: spec.images,
        rss_after_load_bytes: after_load.rss_bytes,
        peak_rss_bytes: end.peak_rss_bytes,
        rss_after_bytes: end.rss_bytes,
        estimated_peak_bytes: estimate,
        seconds,
    })
}

/// The parent side: every request of `requests` for `model_dir`, each in a fresh worker.
pub fn run_all(
    model: &str,
    model_dir: &Path,
    requests: &[(u32, u32, u32)],
    threads: usize,
) -> Result<PeakMemoryEntry> {
    let mut results = Vec::new();
    for &(width, height, images) in requests {
        eprintln!("bench: peak memory, {model} model, {width}x{height} x{images}");
        let spec = PeakMemorySpec {
            model_dir: model_dir.to_owned(),
            width,
            height,
            images,
            threads,
        };
        results.push(worker::spawn(&WorkerSpec::PeakMemory(spec))?);
    }
    Ok(PeakMemoryEntry {
        model: model.to_owned(),
        path: model_dir.display().to_string(),
        results,
    })
}
