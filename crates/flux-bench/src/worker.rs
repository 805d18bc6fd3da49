//! Child processes of the benchmark: every measurement runs in a fresh `flux-bench worker`
//! process, so its peak RSS (`VmHWM`) belongs to that measurement alone and no state (ONNX
//! Runtime arenas, thread pools, page cache of another model) carries over between them.
//!
//! Protocol: the parent passes one JSON [`WorkerSpec`] as the argument after `worker`; the child
//! prints its result as one line `FLUX_BENCH_RESULT <json>` on stdout (anything else on stdout is
//! ignored; stderr is passed through).

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::pipeline::PipelineSpec;
use super::server::ServerSpec;
use super::soak::SoakSpec;

const RESULT_PREFIX: &str = "FLUX_BENCH_RESULT ";

/// One measurement to run in a child process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerSpec {
    Pipeline(PipelineSpec),
    Soak(SoakSpec),
    Server(ServerSpec),
    /// Only the 429 floods (run again at another compute priority).
    Overload(ServerSpec),
    /// The queue API: submit → 202, step → SSE event.
    Queue(ServerSpec),
    /// One request's peak RSS.
    PeakMemory(super::peak_memory::PeakMemorySpec),
    /// One precision's cases (8- and 4-bit weights against fp32).
    Quantized(super::quantized::QuantizedSpec),
    /// The NATS fleet against one machine (its workers are `FleetWorker` children).
    Fleet(super::fleet::FleetSpec),
    /// One worker of that fleet, until its stdin closes.
    FleetWorker(super::fleet::FleetWorkerSpec),
}

/// Entry point of `flux-bench worker <spec-json>` (the child side).
pub fn run(args: &[String]) -> Result<()> {
    let [spec] = args else {
        bail!("usage: flux-bench worker <spec-json> (started by `cargo xtask bench` itself)");
    };
    let spec: WorkerSpec = serde_json::from_str(spec).context("parsing the worker spec")?;
    let result = match spec {
        WorkerSpec::Pipeline(spec) => serde_json::to_string(&super::pipeline::measure(&spec)?)?,
        WorkerSpec::Soak(spec) => serde_json::to_string(&super::soak::measure(&spec)?)?,
        WorkerSpec::Server(spec) => serde_json::to_string(&super::server::measure(&spec)?)?,
        WorkerSpec::Overload(spec) => {
            serde_json::to_string(&super::server::measure_overload(&spec)?)?
        }
        WorkerSpec::Queue(spec) => serde_json::to_string(&super::queue::measure(&spec)?)?,
        WorkerSpec::PeakMemory(spec) => {
            serde_json::to_string(&super::peak_memory::measure(&spec)?)?
        }
        WorkerSpec::Quantized(spec) => serde_json::to_string(&super::quantized::measure(&spec)?)?,
        WorkerSpec::Fleet(spec) => serde_json::to_string(&super::fleet::measure(&spec)?)?,
        WorkerSpec::FleetWorker(spec) => serde_json::to_string(&super::fleet::run_worker(&spec)?)?,
    };
    println!("{RESULT_PREFIX}{result}");
    Ok(())
}

/// Runs `spec` in a fresh child process of this executable and parses its result (the parent side).
pub fn spawn<T: DeserializeOwned>(spec: &WorkerSpec) -> Result<T> {
    let exe = std::env::current_exe().context("locating the flux-bench executable")?;
    let spec_json = serde_json::to_string(spec)?;
    let output = Command::new(exe)
        .args(["worker", &spec_json])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting a benchmark worker process")?;
    if !output.status.success() {
        bail!("benchmark worker {spec_json} failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(RESULT_PREFIX))
    else {
        bail!("benchmark worker {spec_json} printed no result line");
    };
    serde_json::from_str(line).context("parsing a benchmark worker's result")
}
