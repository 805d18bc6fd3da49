//! The NATS fleet against one machine (run inside a worker process, with the fleet's workers in
//! processes of their own, as deployed).
//!
//! Throughput: the tiny model, one ONNX Runtime intra-op thread per engine. A batch of jobs is
//! submitted at once to a job service and each job's events are followed to its end; jobs/s is
//! the batch over the time from the first submit to the last end, after a warm-up batch. The
//! paths take turns for a few rounds (a shared virtual machine's speed drifts by tens of percent
//! over a minute), and each path's jobs/s is all its jobs over all its batches' time. One
//! machine: flux-service's `GenerationService` over one `LocalGenerator` (the redb job database,
//! images as files: how `flux serve` runs). The fleet: an API node's `FleetJobs` in this process,
//! on a nats-server with JetStream (file storage), and 1, then 2, `flux_cluster::Worker`s, each
//! a `flux-bench worker` child process over its own `LocalGenerator` (images in a shared folder).
//!
//! Latency: a generator that answers at once (one small pre-encoded JPEG), so that the time from
//! submit to the job's terminal event is the path's own. Jobs one at a time, the paths taken in
//! turn (one machine with redb, one machine in memory, the fleet with one worker process), so
//! background noise hits them alike; the warm-up jobs are left out.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use flux_cluster::servers::{NATS_SERVER_VERSION, NatsServer};
use flux_cluster::{Fleet, FleetJobs, FleetSettings, FolderImages, Worker, WorkerConfig};
use flux_facade::{Generator, LocalGenerator, LocalOptions};
use flux_service::{
    GenerationService, JobFailure, JobResult, JobService, MemoryJobStore, Owner, RedbStore,
    ResultStore, ServiceConfig, StoredResult, Submission,
};
use flux_types::{
    BoxFuture, GenerateResponse, GeneratedImage, Generation, GenerationTimings, GeneratorError,
    ImageRef, ModelInfo, ProgressFn, Timings, ValidRequest, VariantSpec,
};
use serde::{Deserialize, Serialize};

mod stand_ins;
mod worker_process;

use stand_ins::{FolderResults, InstantGenerator};
use worker_process::WorkerProcess;
pub use worker_process::run_worker;

use super::pipeline::session_config;
use super::results::LatencyStats;
use super::server::{body, client_runtime};
use super::worker::WorkerSpec;

/// What a fleet worker child prints on stdout once it takes jobs.
const READY_LINE: &str = "FLUX_BENCH_FLEET_WORKER_READY";
/// The job owner of every benchmark job.
const OWNER: Owner = Owner([7; 32]);
/// Intra-op threads of every engine of this section (one core each).
const THREADS: usize = 1;
/// How long a worker child may take to load its model and start taking jobs.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The first seed of warm-up jobs (the measured ones start at 0).
const WARM_UP_SEEDS: usize = 1_000_000;
/// The size of the latency jobs' request (the generator answering at once ignores it).
const LATENCY_SIZE: [u32; 2] = [64, 64];

/// What the fleet section measures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetSpec {
    pub model_dir: PathBuf,
    /// Jobs of each throughput batch, all submitted at once.
    pub jobs: usize,
    /// Batches per path: the paths take turns, round after round, so that a drift of the
    /// machine's speed (a shared virtual machine's) hits them alike.
    pub rounds: usize,
    /// The size and steps of every throughput job (the tiny model).
    pub size: [u32; 2],
    pub steps: u32,
    /// Fleet sizes of the throughput runs.
    pub worker_counts: Vec<usize>,
    /// Jobs per latency path, one at a time, after `latency_warmup` left out.
    pub latency_jobs: usize,
    pub latency_warmup: usize,
}

impl FleetSpec {
    /// 512² (the smallest preset), 4 steps: about half a second per job on one thread of a
    /// 2-core machine, so that a batch measures the engines, not the queue's own per-job cost
    /// (that is the latency part's: at 64², 1 step, a job is a few milliseconds of work).
    pub fn new(model_dir: PathBuf, quick: bool) -> FleetSpec {
        FleetSpec {
            model_dir,
            jobs: if quick { 10 } else { 20 },
            rounds: if quick { 2 } else { 3 },
            size: [512, 512],
            steps: 4,
            worker_counts: vec![1, 2],
            latency_jobs: if quick { 50 } else { 200 },
            latency_warmup: if quick { 10 } else { 20 },
        }
    }

    /// The fleet's admission bound: the batch and its warm-up fit with room to spare.
    fn queue_depth(&self) -> usize {
        (self.jobs * 2).max(64)
    }
}

/// Which engine a fleet worker child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetEngine {
    /// The tiny model in a `LocalGenerator`, one intra-op thread.
    Tiny,
    /// [`InstantGenerator`]: answers at once.
    Instant,
}

/// One `flux_cluster::Worker` in a child process; it stops when its stdin closes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetWorkerSpec {
    pub name: String,
    pub nats_url: String,
    pub images_dir: PathBuf,
    pub model_dir: PathBuf,
    pub engine: FleetEngine,
    /// [`FleetSettings::queue_depth`]; every process of a fleet uses the same settings.
    pub queue_depth: usize,
}

/// What a fleet worker child reports when it stops.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetWorkerDone {
    pub name: String,
    pub attempts: u64,
}

/// The batches of one path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetThroughput {
    /// Engines serving the batches (1 for one machine).
    pub engines: usize,
    /// Jobs of all its batches.
    pub jobs: usize,
    /// Sum over its batches of the time from the first submit to the last job's end.
    pub seconds: f64,
    /// `jobs / seconds`.
    pub jobs_per_second: f64,
    /// Each batch's jobs/s, in the order run.
    pub rounds: Vec<f64>,
}

impl FleetThroughput {
    /// The path's batches of `jobs` jobs each, from their seconds.
    fn new(engines: usize, jobs: usize, batch_seconds: &[f64]) -> FleetThroughput {
        let seconds: f64 = batch_seconds.iter().sum();
        let total = jobs * batch_seconds.len();
        FleetThroughput {
            engines,
            jobs: total,
            seconds,
            jobs_per_second: total as f64 / seconds,
            rounds: batch_seconds.iter().map(|s| jobs as f64 / s).collect(),
        }
    }
}

/// A throughput path: the one-machine service, or the fleet with this many workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    OneMachine,
    Fleet(usize),
}

/// The fleet section's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetResults {
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// Intra-op threads of each engine.
    pub threads: usize,
    pub nats_server_version: String,
    pub ack_wait_seconds: f64,
    /// `GenerationService` over one `LocalGenerator` (redb job database, images as files).
    pub one_machine: FleetThroughput,
    /// One entry per fleet size, in the order run.
    pub fleet: Vec<FleetThroughput>,
    /// Submit → terminal event, the generator answering at once: one machine with the redb job
    /// database (`flux serve`'s default), one machine in memory, the fleet with one worker.
    pub latency_one_machine: LatencyStats,
    pub latency_one_machine_memory: LatencyStats,
    pub latency_fleet: LatencyStats,
    pub latency_warmup: usize,
}

impl FleetResults {
    /// The fleet run with `workers` workers.
    pub fn with_workers(&self, workers: usize) -> Option<&FleetThroughput> {
        self.fleet.iter().find(|run| run.engines == workers)
    }
}

/// The settings of every process of the benchmark's fleet: as deployed (file storage, 30 s ack
/// wait), with an admission bound the batches fit in.
fn fleet_settings(queue_depth: usize) -> FleetSettings {
    FleetSettings {
        ack_wait: Duration::from_secs(30),
        queue_depth,
        memory_storage: false,
        ..FleetSettings::default()
    }
}

/// Runs the fleet section in this process (the worker side); its fleet workers are children.
pub fn measure(spec: &FleetSpec) -> Result<FleetResults> {
    let runtime = client_runtime()?;
    let dir = std::env::temp_dir().join(format!("flux-bench-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let measured = runtime.block_on(measure_in(spec, &dir));
    // Dropping a runtime blocks, which async code must not do.
    runtime.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

async fn measure_in(spec: &FleetSpec, dir: &Path) -> Result<FleetResults> {
    let store = dir.join("nats");
    let nats = tokio::task::spawn_blocking(move || NatsServer::start(&store))
        .await
        .context("the nats-server start task")?
        .context("starting nats-server")?;
    let settings = fleet_settings(spec.queue_depth());
    let images_dir = dir.join("images");
    let client = async_nats::connect(nats.url())
        .await
        .context("connecting to nats-server")?;
    let fleet = Fleet::open(client.clone(), settings).await?;
    let images = Arc::new(FolderImages::new(&images_dir)?);
    let node: Arc<dyn JobService> =
        Arc::new(FleetJobs::open(client, fleet, images, "http://127.0.0.1".to_owned()).await?);
    let worker_spec = |index: usize, engine: FleetEngine| FleetWorkerSpec {
        name: format!("bench-worker-{index}"),
        nats_url: nats.url(),
        images_dir: images_dir.clone(),
        model_dir: spec.model_dir.clone(),
        engine,
        queue_depth: spec.queue_depth(),
    };

    // The one-machine engine stays loaded (and idle) while the fleet's batches run.
    let generator = start_tiny(&spec.model_dir, spec.queue_depth()).await?;
    let one_machine = one_machine_service(
        Arc::clone(&generator),
        &dir.join("one-machine"),
        true,
        spec.queue_depth(),
    )?;
    run_batch(&one_machine, spec, 2, WARM_UP_SEEDS).await?;

    let paths: Vec<Route> = std::iter::once(Route::OneMachine)
        .chain(spec.worker_counts.iter().copied().map(Route::Fleet))
        .collect();
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 0..spec.rounds {
        for turn in 0..paths.len() {
            let index = (round + turn) % paths.len();
            let batch = match paths[index] {
                Route::OneMachine => run_batch(&one_machine, spec, spec.jobs, 0).await?,
                Route::Fleet(workers) => {
                    fleet_batch(node.as_ref(), spec, workers, |index| {
                        worker_spec(index, FleetEngine::Tiny)
                    })
                    .await?
                }
            };
            eprintln!(
                "bench:   round {}, {}: {:.2} jobs/s",
                round + 1,
                match paths[index] {
                    Route::OneMachine => "one machine".to_owned(),
                    Route::Fleet(1) => "fleet, 1 worker".to_owned(),
                    Route::Fleet(workers) => format!("fleet, {workers} workers"),
                },
                spec.jobs as f64 / batch
            );
            seconds[index].push(batch);
        }
    }
    drop(one_machine);
    // Its engine thread is joined off the async threads.
    tokio::task::spawn_blocking(move || drop(generator))
        .await
        .context("stopping the engine")?;
    let mut runs = paths
        .iter()
        .zip(&seconds)
        .map(|(path, seconds)| match path {
            Route::OneMachine => FleetThroughput::new(1, spec.jobs, seconds),
            Route::Fleet(workers) => FleetThroughput::new(*workers, spec.jobs, seconds),
        });
    let one_machine = runs.next().context("no one-machine run")?;
    let fleet_runs: Vec<FleetThroughput> = runs.collect();

    let (latency_one_machine, latency_one_machine_memory, latency_fleet) = latencies(
        spec,
        &dir.join("latency"),
        Arc::clone(&node),
        worker_spec(0, FleetEngine::Instant),
    )
    .await?;
    eprintln!(
        "bench:   submit → end p50 / p99: one machine {:.2} / {:.2} ms (redb), {:.2} / {:.2} ms (memory), fleet {:.2} / {:.2} ms",
        latency_one_machine.p50_ms,
        latency_one_machine.p99_ms,
        latency_one_machine_memory.p50_ms,
        latency_one_machine_memory.p99_ms,
        latency_fleet.p50_ms,
        latency_fleet.p99_ms
    );
    drop(node);
    tokio::task::spawn_blocking(move || {
        let mut nats = nats;
        nats.stop()
    })
    .await
    .context("the nats-server stop task")?
    .context("stopping nats-server")?;
    Ok(FleetResults {
        model: "tiny".to_owned(),
        width: spec.size[0],
        height: spec.size[1],
        steps: spec.steps,
        threads: THREADS,
        nats_server_version: NATS_SERVER_VERSION.to_owned(),
        ack_wait_seconds: settings.ack_wait.as_secs_f64(),
        one_machine,
        fleet: fleet_runs,
        latency_one_machine,
        latency_one_machine_memory,
        latency_fleet,
        latency_warmup: spec.latency_warmup,
    })
}

/// One batch through the fleet with `workers` fresh worker processes, after a warm-up of two jobs
/// per worker (every engine has run this size before the clock starts): its seconds.
async fn fleet_batch(
    node: &dyn JobService,
    spec: &FleetSpec,
    workers: usize,
    worker_spec: impl Fn(usize) -> FleetWorkerSpec,
) -> Result<f64> {
    let mut processes = Vec::with_capacity(workers);
    for index in 0..workers {
        processes.push(WorkerProcess::spawn(&worker_spec(index))?);
    }
    for process in &mut processes {
        process.wait_ready(READY_TIMEOUT).await?;
    }
    run_batch(node, spec, workers * 2, WARM_UP_SEEDS).await?;
    let seconds = run_batch(node, spec, spec.jobs, 0).await?;
    for process in processes {
        process.stop().await?;
    }
    Ok(seconds)
}

/// A `GenerationService` as `flux serve` builds one: images as files in `dir`, and the redb job
/// database in `dir` when `durable` (else records in memory).
fn one_machine_service(
    generator: Arc<dyn Generator>,
    dir: &Path,
    durable: bool,
    capacity: usize,
) -> Result<GenerationService> {
    let results = Arc::new(FolderResults::new(dir.join("files"))?);
    let jobs: Arc<dyn flux_service::JobStore> = if durable {
        RedbStore::open(&dir.join("data"))
            .map_err(|error| anyhow::anyhow!("opening the job database: {error}"))?
    } else {
        Arc::new(MemoryJobStore::default())
    };
    Ok(GenerationService::new(
        generator,
        results,
        jobs,
        ServiceConfig {
            capacity,
            retention: Duration::from_secs(3600),
        },
    ))
}

/// The tiny model behind a `LocalGenerator` with one intra-op thread, loaded off the async
/// threads.
async fn start_tiny(model_dir: &Path, queue_capacity: usize) -> Result<Arc<dyn Generator>> {
    let options = LocalOptions {
        queue_capacity,
        session: session_config(THREADS),
        ..LocalOptions::default()
    };
    let model_dir = model_dir.to_path_buf();
    let local = tokio::task::spawn_blocking(move || {
        LocalGenerator::start(&model_dir, &options).map_err(|error| anyhow::anyhow!(error))
    })
    .await
    .context("loading the model")?
    .context("starting the local generator")?;
    Ok(Arc::new(local))
}

fn submission(seed: usize, size: [u32; 2], steps: u32) -> Result<Submission> {
    let request =
        flux_types::parse_request_for(body(seed, size, steps).as_bytes(), VariantSpec::dev())
            .context("the benchmark request")?;
    Ok(Submission {
        request,
        owner: OWNER,
        model: "dev".to_owned(),
        deadline: None,
        on_finish: None,
        keep_record: true,
        webhook: None,
        idempotency: None,
    })
}

fn succeeded(result: JobResult) -> Result<()> {
    match result {
        JobResult::Succeeded(_) => Ok(()),
        JobResult::Failed(failure) => bail!("a benchmark job failed: {failure:?}"),
        JobResult::Cancelled => bail!("a benchmark job was cancelled"),
    }
}

/// Submits `count` jobs at once (seeds from `first_seed`) and follows each to its end: the
/// seconds from the first submit to the last end. Every job must succeed.
async fn run_batch(
    service: &dyn JobService,
    spec: &FleetSpec,
    count: usize,
    first_seed: usize,
) -> Result<f64> {
    let started = Instant::now();
    let mut waits = tokio::task::JoinSet::new();
    for seed in first_seed..first_seed + count {
        let submitted = service
            .submit(submission(seed, spec.size, spec.steps)?)
            .await
            .context("submitting a benchmark job")?;
        waits.spawn(async move {
            let result = submitted.events.wait().await;
            (result, Instant::now())
        });
    }
    let mut last = started;
    while let Some(joined) = waits.join_next().await {
        let (result, ended) = joined.context("a job's wait")?;
        succeeded(result.context("waiting for a benchmark job")?)?;
        last = last.max(ended);
    }
    Ok(last.duration_since(started).as_secs_f64())
}

/// Submit → terminal event of one job, seconds.
async fn one_job(service: &dyn JobService, seed: usize) -> Result<f64> {
    let started = Instant::now();
    let submitted = service
        .submit(submission(seed, LATENCY_SIZE, 1)?)
        .await
        .context("submitting a benchmark job")?;
    succeeded(
        submitted
            .events
            .wait()
            .await
            .context("waiting for a benchmark job")?,
    )?;
    Ok(started.elapsed().as_secs_f64())
}

/// The latency of each path, the generator answering at once: one machine (redb), one machine
/// (memory), the fleet with one worker process.
async fn latencies(
    spec: &FleetSpec,
    dir: &Path,
    node: Arc<dyn JobService>,
    worker: FleetWorkerSpec,
) -> Result<(LatencyStats, LatencyStats, LatencyStats)> {
    let generator: Arc<dyn Generator> = Arc::new(InstantGenerator::new()?);
    let capacity = spec.queue_depth();
    let durable: Arc<dyn JobService> = Arc::new(one_machine_service(
        Arc::clone(&generator),
        &dir.join("durable"),
        true,
        capacity,
    )?);
    let memory: Arc<dyn JobService> = Arc::new(one_machine_service(
        Arc::clone(&generator),
        &dir.join("memory"),
        false,
        capacity,
    )?);
    let mut process = WorkerProcess::spawn(&worker)?;
    process.wait_ready(READY_TIMEOUT).await?;
    let paths = [durable, memory, node];
    let mut samples: [Vec<f64>; 3] = Default::default();
    for job in 0..spec.latency_warmup + spec.latency_jobs {
        // Which path goes first turns with each job, so none always follows the same one.
        for turn in 0..paths.len() {
            let path = (job + turn) % paths.len();
            let seconds = one_job(paths[path].as_ref(), job).await?;
            if job >= spec.latency_warmup {
                samples[path].push(seconds);
            }
        }
    }
    process.stop().await?;
    let stats = |samples: &[f64]| LatencyStats::from_seconds(samples).context("no latency samples");
    Ok((
        stats(&samples[0])?,
        stats(&samples[1])?,
        stats(&samples[2])?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_all_jobs_over_all_batches_time() {
        let run = FleetThroughput::new(2, 20, &[10.0, 5.0, 5.0]);
        assert_eq!((run.engines, run.jobs, run.seconds), (2, 60, 20.0));
        assert_eq!(run.jobs_per_second, 3.0);
        assert_eq!(run.rounds, vec![2.0, 4.0, 4.0]);
    }

    #[test]
    fn the_queue_holds_a_batch_and_its_warm_up() {
        let spec = FleetSpec::new(PathBuf::from("m"), false);
        assert!(
            spec.queue_depth()
                >= spec.jobs + 2 * spec.worker_counts.iter().max().copied().unwrap_or(1)
        );
        let quick = FleetSpec::new(PathBuf::from("m"), true);
        assert!(quick.jobs < spec.jobs && quick.rounds <= spec.rounds);
    }
}
