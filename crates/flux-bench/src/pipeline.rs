//! The flux-rs pipeline measurement (run inside a worker process): load one model, then for each
//! size one excluded warm-up run and `repeats` measured runs per step count, timed per stage by
//! flux-core itself ([`StageTimings`]), with the process's peak RSS at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flux_core::config::SessionConfig;
use flux_core::denoise::StepControl;
use flux_core::pipeline::{FluxPipeline, GenerationParams, StageTimings};
use flux_core::{RuntimeKind, init_runtime};
use flux_types::OutputFormat;
use serde::{Deserialize, Serialize};

use super::memory;
use super::results::{RunResult, WorkerDocument, implementation, stage};
use super::stats;

/// One model at some sizes and step counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub model_dir: PathBuf,
    pub sizes: Vec<[u32; 2]>,
    pub steps: Vec<u32>,
    pub repeats: usize,
    pub threads: usize,
    pub prompt: String,
    pub seed: u64,
    pub guidance: f64,
    pub output_format: String,
}

/// Session settings every flux-rs measurement uses: the given intra-op thread count (the peers
/// use the same), everything else flux-core's defaults.
pub fn session_config(threads: usize) -> SessionConfig {
    SessionConfig {
        intra_op_threads: Some(threads),
        ..SessionConfig::default()
    }
}

/// Parameters of one benchmark generation: one image, no safety checker (neither peer has one).
pub fn params(
    spec_prompt: &str,
    seed: u64,
    guidance: f64,
    format: OutputFormat,
    size: [u32; 2],
    steps: u32,
) -> GenerationParams {
    GenerationParams {
        prompt: spec_prompt.to_owned(),
        width: size[0],
        height: size[1],
        num_images: 1,
        num_inference_steps: steps,
        guidance_scale: guidance as f32,
        seed,
        output_format: format,
        run_safety_checker: false,
    }
}

/// Runs the spec in this process (the worker side).
pub fn measure(spec: &PipelineSpec) -> Result<WorkerDocument> {
    let Some(format) = OutputFormat::from_name(&spec.output_format) else {
        bail!("unknown output format `{}`", spec.output_format);
    };
    // The runtime library is loaded before the clock starts: load time is the model's.
    init_runtime(RuntimeKind::Cpu).context("initialising ONNX Runtime")?;
    let load_started = Instant::now();
    let mut pipeline = FluxPipeline::load(&spec.model_dir, &session_config(spec.threads))
        .with_context(|| format!("loading {}", spec.model_dir.display()))?;
    let load_seconds = load_started.elapsed().as_secs_f64();

    let mut runs = Vec::new();
    for &size in &spec.sizes {
        generate(
            &mut pipeline,
            &params(&spec.prompt, spec.seed, spec.guidance, format, size, 1),
        )?;
        for &steps in &spec.steps {
            let request = params(&spec.prompt, spec.seed, spec.guidance, format, size, steps);
            let samples = (0..spec.repeats)
                .map(|_| generate(&mut pipeline, &request).map(|timings| sample(&timings, steps)))
                .collect::<Result<Vec<_>>>()?;
            runs.push(RunResult {
                width: size[0],
                height: size[1],
                image_tokens: (size[0] / 16) * (size[1] / 16),
                steps,
                repeats: spec.repeats,
                median: medians(&samples),
                samples,
            });
        }
    }
    Ok(WorkerDocument {
        implementation: implementation::FLUX_RS.to_owned(),
        versions: BTreeMap::from([
            ("flux-core".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            (
                "onnxruntime".to_owned(),
                flux_core::ONNXRUNTIME_VERSION.to_owned(),
            ),
        ]),
        threads: spec.threads,
        load_seconds,
        peak_rss_bytes: memory::own_memory()?.peak_rss_bytes,
        runs,
    })
}

fn generate(pipeline: &mut FluxPipeline, params: &GenerationParams) -> Result<StageTimings> {
    let output = pipeline
        .generate(params, &mut |_, _| StepControl::Continue)
        .with_context(|| {
            format!(
                "generating {}x{} with {} steps",
                params.width, params.height, params.num_inference_steps
            )
        })?;
    if output.images.len() != 1 || output.images[0].bytes.is_empty() {
        bail!("the pipeline returned no image");
    }
    Ok(output.timings)
}

/// One run's stage times in seconds, keyed like every implementation's results.
pub fn sample(timings: &StageTimings, steps: u32) -> BTreeMap<String, f64> {
    let seconds = |d: Duration| d.as_secs_f64();
    BTreeMap::from([
        (stage::TOKENIZE.to_owned(), seconds(timings.tokenize)),
        (stage::CLIP.to_owned(), seconds(timings.clip)),
        (stage::T5.to_owned(), seconds(timings.t5)),
        (stage::DENOISE.to_owned(), seconds(timings.denoise)),
        (stage::VAE.to_owned(), seconds(timings.vae)),
        (stage::SAFETY.to_owned(), seconds(timings.safety)),
        (stage::ENCODE.to_owned(), seconds(timings.encode)),
        (stage::TOTAL.to_owned(), seconds(timings.total)),
        (
            stage::ORT_SESSION_TOTAL.to_owned(),
            seconds(timings.ort_session_total),
        ),
        (
            stage::PER_STEP.to_owned(),
            seconds(timings.denoise) / f64::from(steps.max(1)),
        ),
    ])
}

/// The median of every stage present in all samples.
pub fn medians(samples: &[BTreeMap<String, f64>]) -> BTreeMap<String, f64> {
    let Some(first) = samples.first() else {
        return BTreeMap::new();
    };
    first
        .keys()
        .filter_map(|key| {
            let values: Vec<f64> = samples.iter().filter_map(|s| s.get(key).copied()).collect();
            (values.len() == samples.len())
                .then(|| stats::median(&values).map(|m| (key.clone(), m)))
                .flatten()
        })
        .collect()
}

/// Parameter count of a generated model (`parameters.json`, written by `generate.py --medium`:
/// one count per component; `vae_decoder` is part of `vae` and not added again).
pub fn parameter_count(model_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(model_dir.join("parameters.json")).ok()?;
    let counts: BTreeMap<String, u64> = serde_json::from_str(&text).ok()?;
    Some(
        counts
            .iter()
            .filter(|(name, _)| name.as_str() != "vae_decoder")
            .map(|(_, n)| n)
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_keys_and_per_step() {
        let timings = StageTimings {
            denoise: Duration::from_millis(400),
            total: Duration::from_millis(500),
            ort_session_total: Duration::from_millis(490),
            ..StageTimings::default()
        };
        let sample = sample(&timings, 4);
        assert_eq!(sample.get(stage::PER_STEP).copied(), Some(0.1));
        assert_eq!(sample.get(stage::TOTAL).copied(), Some(0.5));
        assert_eq!(sample.len(), 10);
    }

    #[test]
    fn medians_skip_stages_missing_from_a_sample() {
        let a = BTreeMap::from([("total".to_owned(), 1.0), ("vae".to_owned(), 0.5)]);
        let b = BTreeMap::from([("total".to_owned(), 3.0)]);
        let c = BTreeMap::from([("total".to_owned(), 2.0), ("vae".to_owned(), 0.1)]);
        assert_eq!(
            medians(&[a, b, c]),
            BTreeMap::from([("total".to_owned(), 2.0)])
        );
        assert!(medians(&[]).is_empty());
    }
}
