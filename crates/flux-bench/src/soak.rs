//! Memory over many sequential requests (run inside a worker process): resident memory after the
//! model load, after a warm-up, sampled along the run and at the end, with the least-squares slope
//! after warm-up. A leak of even a few KiB per request shows as a clearly positive slope over
//! 1,000 requests; allocator noise does not.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use flux_core::denoise::StepControl;
use flux_core::pipeline::FluxPipeline;
use flux_core::{RuntimeKind, init_runtime};
use flux_types::OutputFormat;
use serde::{Deserialize, Serialize};

use super::memory;
use super::pipeline::{params, session_config};
use super::results::SoakResults;
use super::stats;

/// How many requests, of which size, on which model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakSpec {
    pub model_dir: PathBuf,
    pub threads: usize,
    pub requests: usize,
    pub warmup_requests: usize,
    pub size: [u32; 2],
    pub steps: u32,
}

impl SoakSpec {
    /// One step at the smallest preset (512²), or at the smallest legal size (64²) for `--quick`.
    pub fn new(model_dir: PathBuf, threads: usize, requests: usize, quick: bool) -> SoakSpec {
        SoakSpec {
            model_dir,
            threads,
            requests,
            warmup_requests: (requests / 10).clamp(1, 50),
            size: if quick { [64, 64] } else { [512, 512] },
            steps: 1,
        }
    }
}

/// Runs the spec in this process (the worker side).
pub fn measure(spec: &SoakSpec) -> Result<SoakResults> {
    if spec.requests == 0 {
        bail!("the memory run needs at least one request");
    }
    init_runtime(RuntimeKind::Cpu).context("initialising ONNX Runtime")?;
    let load_started = Instant::now();
    let mut pipeline = FluxPipeline::load(&spec.model_dir, &session_config(spec.threads))
        .with_context(|| format!("loading {}", spec.model_dir.display()))?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let rss_after_load_bytes = memory::own_memory()?.rss_bytes;

    let mut run = |seed: usize| -> Result<()> {
        let request = params(
            "A photo of a cat sitting on a wooden table",
            seed as u64,
            3.5,
            OutputFormat::Jpeg,
            spec.size,
            spec.steps,
        );
        let output = pipeline.generate(&request, &mut |_, _| StepControl::Continue)?;
        if output.images.is_empty() {
            bail!("request {seed} returned no image");
        }
        Ok(())
    };
    for seed in 0..spec.warmup_requests {
        run(seed)?;
    }
    let rss_after_warmup_bytes = memory::own_memory()?.rss_bytes;

    let every = (spec.requests / 50).max(1);
    let mut rss_samples = vec![(0, rss_after_warmup_bytes)];
    let started = Instant::now();
    for done in 1..=spec.requests {
        run(spec.warmup_requests + done)?;
        if done % every == 0 || done == spec.requests {
            rss_samples.push((done, memory::own_memory()?.rss_bytes));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let end = memory::own_memory()?;
    let points: Vec<(f64, f64)> = rss_samples
        .iter()
        .map(|&(done, rss)| (done as f64, rss as f64))
        .collect();
    Ok(SoakResults {
        model: "tiny".to_owned(),
        width: spec.size[0],
        height: spec.size[1],
        steps: spec.steps,
        requests: spec.requests,
        warmup_requests: spec.warmup_requests,
        rss_after_load_bytes,
        rss_after_warmup_bytes,
        rss_end_bytes: end.rss_bytes,
        peak_rss_bytes: end.peak_rss_bytes,
        slope_bytes_per_request: stats::slope(&points).unwrap_or(0.0),
        rss_samples,
        seconds,
        load_seconds,
    })
}
