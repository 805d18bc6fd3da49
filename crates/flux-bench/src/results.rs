//! The benchmark's result document: written as JSON under `bench-results/`, read back to render
//! `docs/benchmarks.md`. Every implementation (flux-rs and the Python peers) reports a pipeline
//! measurement in the same [`WorkerDocument`] shape, so one reader serves all three.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::host::HostInfo;

/// Bumped when a field changes meaning; the reader refuses other versions.
pub const SCHEMA_VERSION: u32 = 1;

/// Stage names of a pipeline measurement (seconds). A peer that cannot see a stage omits it.
pub mod stage {
    pub const TOKENIZE: &str = "tokenize";
    pub const CLIP: &str = "clip";
    pub const T5: &str = "t5";
    pub const DENOISE: &str = "denoise";
    pub const VAE: &str = "vae";
    pub const SAFETY: &str = "safety";
    pub const ENCODE: &str = "encode";
    pub const TOTAL: &str = "total";
    pub const ORT_SESSION_TOTAL: &str = "ort_session_total";
    pub const PER_STEP: &str = "per_step";
}

/// Implementation names as they appear in results.
pub mod implementation {
    pub const FLUX_RS: &str = "flux-rs";
    pub const PYTHON_ORT: &str = "python-onnxruntime";
    pub const DIFFUSERS: &str = "diffusers";
    /// flux-rs on flux-builder's graphs of the same weights (what `--model DIFFUSERS_DIR` runs).
    pub const FLUX_RS_BUILT: &str = "flux-rs-built";
    /// The same under `--precision int8` (the transformer's linears in integer GEMMs).
    pub const FLUX_RS_BUILT_INT8: &str = "flux-rs-built-int8";
}

/// One complete benchmark run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResults {
    pub schema_version: u32,
    pub host: HostInfo,
    pub settings: Settings,
    pub models: Vec<ModelInfo>,
    /// One entry per implementation, model and image size.
    pub pipeline: Vec<PipelineEntry>,
    pub server: Option<ServerResults>,
    /// The queue API's own costs (absent from runs before it was measured).
    #[serde(default)]
    pub queue: Option<QueueResults>,
    pub soak: Option<SoakResults>,
    /// The NATS fleet against one machine (absent from runs before it was measured).
    #[serde(default)]
    pub fleet: Option<super::fleet::FleetResults>,
    /// Peak RSS per request size, one process per request (absent from runs before it was measured).
    #[serde(default)]
    pub peak_memory: Vec<PeakMemoryEntry>,
    /// One transformer step of each model split into attention, linear layers and the rest, in
    /// ONNX Runtime and in torch (with the peers only).
    #[serde(default)]
    pub step_profiles: Vec<StepProfile>,
    /// int8 and int4 weights against fp32, per model (absent from runs before it was measured).
    #[serde(default)]
    pub quantized: Vec<super::quantized::QuantizedEntry>,
    /// candle's transformer step per model and size (the Rust peer; absent from older runs).
    #[serde(default)]
    pub candle: Vec<super::candle::CandleStep>,
    pub gpu: GpuSection,
    /// What was skipped or could not be measured, and why.
    pub notes: Vec<String>,
    /// Wall time of the whole benchmark run.
    pub duration_seconds: f64,
}

/// How the run was configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    /// Intra-op threads of every ONNX Runtime session and of torch, in every implementation.
    pub threads: usize,
    pub repeats: usize,
    pub peers: bool,
    pub prompt: String,
    pub seed: u64,
    pub guidance: f64,
    pub output_format: String,
}

/// A benchmarked model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// `tiny` or `medium`.
    pub name: String,
    pub path: String,
    pub parameters: Option<u64>,
    pub sizes: Vec<[u32; 2]>,
    pub steps: Vec<u32>,
}

/// One worker's measurement of one model at one image size, tagged with the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineEntry {
    pub model: String,
    #[serde(flatten)]
    pub document: WorkerDocument,
}

/// What a pipeline worker prints: the Rust worker and both Python peers emit this shape
/// (`tools/bench/bench_common.py` documents it on the Python side).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerDocument {
    pub implementation: String,
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
    pub threads: usize,
    pub load_seconds: f64,
    pub peak_rss_bytes: u64,
    pub runs: Vec<RunResult>,
}

/// One model's peak memory per request size ([`super::peak_memory`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeakMemoryEntry {
    pub model: String,
    /// The folder loaded (a diffusers folder goes through the model builder).
    pub path: String,
    pub results: Vec<PeakMemoryResult>,
}

/// One 1-step request in a fresh process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeakMemoryResult {
    pub width: u32,
    pub height: u32,
    pub images: u32,
    pub rss_after_load_bytes: u64,
    /// `VmHWM` at the end: the request's peak (the process did nothing else).
    pub peak_rss_bytes: u64,
    /// `VmRSS` after the answer: what the arenas gave back.
    pub rss_after_bytes: u64,
    /// flux-core's admission estimate for the same request (`MemoryModel::estimated_peak`).
    pub estimated_peak_bytes: u64,
    pub seconds: f64,
}

/// Repeated measurements of one size and step count (warm-up excluded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub width: u32,
    pub height: u32,
    pub image_tokens: u32,
    pub steps: u32,
    pub repeats: usize,
    /// Median of each stage over the samples, seconds.
    pub median: BTreeMap<String, f64>,
    pub samples: Vec<BTreeMap<String, f64>>,
}

impl RunResult {
    pub fn median_of(&self, stage: &str) -> Option<f64> {
        self.median.get(stage).copied()
    }

    /// Median over the samples of end-to-end − time inside ONNX Runtime, seconds. (The difference
    /// of the two medians is not this: they can come from different runs.)
    pub fn median_outside_ort(&self) -> Option<f64> {
        let outside: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|sample| {
                Some(*sample.get(stage::TOTAL)? - *sample.get(stage::ORT_SESSION_TOTAL)?)
            })
            .collect();
        super::stats::median(&outside)
    }

    /// Median over the samples of (end-to-end − time inside ONNX Runtime) / end-to-end, in %.
    pub fn overhead_percent(&self) -> Option<f64> {
        let shares: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|sample| {
                let total = *sample.get(stage::TOTAL)?;
                let ort = *sample.get(stage::ORT_SESSION_TOTAL)?;
                (total > 0.0).then(|| (total - ort) / total * 100.0)
            })
            .collect();
        super::stats::median(&shares)
    }
}

/// Latency distribution of a set of requests, milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LatencyStats {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl LatencyStats {
    /// `None` for no samples.
    pub fn from_seconds(samples: &[f64]) -> Option<LatencyStats> {
        let ms: Vec<f64> = samples.iter().map(|s| s * 1000.0).collect();
        Some(LatencyStats {
            count: ms.len(),
            p50_ms: super::stats::percentile(&ms, 50.0)?,
            p99_ms: super::stats::percentile(&ms, 99.0)?,
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            min_ms: ms.iter().copied().fold(f64::INFINITY, f64::min),
            max_ms: ms.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// Requests from `clients` concurrent callers, direct library calls versus HTTP on loopback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConcurrencyLevel {
    pub clients: usize,
    pub requests: usize,
    pub direct_seconds: f64,
    pub direct_throughput_rps: f64,
    pub direct_latency: LatencyStats,
    pub http_seconds: f64,
    pub http_throughput_rps: f64,
    pub http_latency: LatencyStats,
}

/// Time to answer 429 `overloaded` while the admission queue is full.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverloadResults {
    /// Concurrent flooding clients.
    pub clients: usize,
    /// Scheduling priority of the inference threads (`normal` or `idle`).
    #[serde(default = "normal_priority")]
    pub compute_priority: String,
    pub queue_depth: usize,
    pub attempts: usize,
    pub rejected: usize,
    /// Admitted (answered 200) while the flood ran.
    pub accepted: usize,
    /// Any other status (should be none).
    pub other: usize,
    pub rejected_with_retry_after: usize,
    pub rejection_latency: Option<LatencyStats>,
}

/// The HTTP server against direct calls of the same `LocalGenerator`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerResults {
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// One client, one request at a time.
    pub direct_sequential: LatencyStats,
    /// Images stored as files (the default): includes the durable write.
    pub http_sequential: LatencyStats,
    /// `sync_mode`: images returned as `data:` URIs, nothing stored.
    pub http_sync_mode_sequential: LatencyStats,
    /// HTTP p50 − direct p50, one client, files stored.
    pub added_latency_p50_ms: f64,
    /// HTTP p50 − direct p50, one client, `sync_mode`.
    pub added_latency_sync_mode_p50_ms: f64,
    /// Median of the per-pair differences (HTTP request i − direct request i, run back to back):
    /// less sensitive to slow drifts of the machine than a difference of two medians.
    pub added_latency_paired_median_ms: f64,
    pub added_latency_sync_mode_paired_median_ms: f64,
    pub concurrency: Vec<ConcurrencyLevel>,
    pub overload: Vec<OverloadResults>,
}

/// The queue API on loopback: submit → 202, and a finished step → its SSE event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueResults {
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// Jobs measured (after the warm-up), one at a time.
    pub jobs: usize,
    /// From sending the submit to having its whole 202 answer, the queue idle.
    pub submit_to_accepted: LatencyStats,
    /// From the generator's progress callback for a step to the client having that step's event.
    pub step_to_event: LatencyStats,
    /// The same two with the job database (`--data-dir`, redb: the accept is an fsync'd commit).
    #[serde(default)]
    pub submit_to_accepted_durable: Option<LatencyStats>,
    #[serde(default)]
    pub step_to_event_durable: Option<LatencyStats>,
}

/// Resident memory over many sequential requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakResults {
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub requests: usize,
    pub warmup_requests: usize,
    pub rss_after_load_bytes: u64,
    pub rss_after_warmup_bytes: u64,
    pub rss_end_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Least-squares slope of RSS over the requests after warm-up.
    pub slope_bytes_per_request: f64,
    /// (requests done, RSS bytes), sampled along the run.
    pub rss_samples: Vec<(usize, u64)>,
    pub seconds: f64,
    pub load_seconds: f64,
}

/// The GPU part of the issue: measured only on a machine with a CUDA device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuSection {
    pub measured: bool,
    pub note: String,
}

impl BenchResults {
    pub fn read(path: &Path) -> Result<BenchResults> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let results: BenchResults =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if results.schema_version != SCHEMA_VERSION {
            bail!(
                "{} has result schema version {}, this xtask reads version {SCHEMA_VERSION}: rerun `cargo xtask bench`",
                path.display(),
                results.schema_version
            );
        }
        Ok(results)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The run of `implementation` on `model` at this size and step count.
    pub fn find_run(
        &self,
        implementation: &str,
        model: &str,
        size: [u32; 2],
        steps: u32,
    ) -> Option<&RunResult> {
        self.pipeline
            .iter()
            .filter(|entry| entry.model == model && entry.document.implementation == implementation)
            .flat_map(|entry| entry.document.runs.iter())
            .find(|run| [run.width, run.height] == size && run.steps == steps)
    }
}

/// `tools/bench/step_profile.py`'s document: one transformer step at one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepProfile {
    /// Set by xtask (the script does not know the model's name).
    #[serde(default)]
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub image_tokens: u32,
    pub text_tokens: u32,
    pub threads: usize,
    pub repeats: usize,
    pub onnxruntime: StepSplit,
    pub torch: StepSplit,
    /// The same weights built by flux-builder (fused attention), in ONNX Runtime; absent from
    /// runs before it was measured.
    #[serde(default)]
    pub onnxruntime_built: Option<StepSplit>,
    /// The step's operations, counted from the architecture (absent from older runs).
    #[serde(default)]
    pub flops: Option<StepFlops>,
}

/// Floating-point operations of one transformer step (batch 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepFlops {
    /// Every linear layer: 2 × tokens × inputs × outputs.
    pub linear: f64,
    /// QKᵀ and PV of every block: 4 × S² × width.
    pub attention: f64,
}

/// Milliseconds of one transformer step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSplit {
    pub step_ms: f64,
    /// ONNX: Softmax and the activation-by-activation MatMuls (QK^T, PV); torch: SDPA.
    pub attention_ms: f64,
    /// Projections and MLPs: MatMul/Gemm against weights, `aten::linear`.
    pub linear_ms: f64,
    pub other_ms: f64,
}

fn normal_priority() -> String {
    "normal".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(total: f64, ort: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([
            (stage::TOTAL.to_owned(), total),
            (stage::ORT_SESSION_TOTAL.to_owned(), ort),
        ])
    }

    /// Three runs whose time outside ONNX Runtime is 0.01, 0.1 and 0.5 s (1 %, 5 %, 50 %).
    fn three_runs() -> RunResult {
        RunResult {
            width: 64,
            height: 64,
            image_tokens: 16,
            steps: 1,
            repeats: 3,
            median: BTreeMap::new(),
            samples: vec![sample(1.0, 0.99), sample(2.0, 1.9), sample(1.0, 0.5)],
        }
    }

    #[test]
    fn overhead_is_the_median_share_outside_onnx_runtime() {
        let run = three_runs();
        let overhead = run.overhead_percent().unwrap_or(f64::NAN);
        assert!((overhead - 5.0).abs() < 1e-9, "{overhead}");
        let without_ort = RunResult {
            samples: vec![BTreeMap::from([(stage::TOTAL.to_owned(), 1.0)])],
            ..run
        };
        assert_eq!(without_ort.overhead_percent(), None);
    }

    #[test]
    fn time_outside_onnx_runtime_is_a_median_of_each_runs_own() {
        // The medians' difference (1.0 − 0.99) would say 0.01 s.
        let outside = three_runs().median_outside_ort().unwrap_or(f64::NAN);
        assert!((outside - 0.1).abs() < 1e-9, "{outside}");
    }

    #[test]
    fn latency_stats_in_milliseconds() {
        let seconds: Vec<f64> = (1..=100).map(|i| f64::from(i) / 1000.0).collect();
        let stats = LatencyStats::from_seconds(&seconds)
            .map(|s| (s.count, s.p50_ms, s.p99_ms, s.min_ms, s.max_ms));
        assert_eq!(stats, Some((100, 50.0, 99.0, 1.0, 100.0)));
        assert!(LatencyStats::from_seconds(&[]).is_none());
    }

    #[test]
    fn python_peer_documents_parse() -> Result<()> {
        // Shape printed by tools/bench/bench_common.py (diffusers has no ORT time, no stages).
        let text = r#"{"implementation": "diffusers", "versions": {"torch": "2.15.0"}, "threads": 2,
            "load_seconds": 0.25, "peak_rss_bytes": 1000,
            "runs": [{"width": 512, "height": 512, "image_tokens": 1024, "steps": 4, "repeats": 1,
                      "median": {"total": 4.3, "encode": 0.01, "per_step": 0.5},
                      "samples": [{"total": 4.3, "encode": 0.01, "per_step": 0.5}]}]}"#;
        let document: WorkerDocument = serde_json::from_str(text)?;
        assert_eq!(document.runs[0].median_of(stage::TOTAL), Some(4.3));
        assert_eq!(document.runs[0].overhead_percent(), None);
        Ok(())
    }
}
