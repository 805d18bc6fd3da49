//! The queue API's own costs (run inside a worker process), on the tiny model behind flux-remote's
//! server on loopback: the time from sending a submit to having its whole 202 answer, and the
//! delay from a finished denoising step (the generator's progress callback) to that step's SSE
//! event at the client. Both clocks are this process's monotonic clock.
//!
//! Each job is held at the generator's door until its status stream is open (its first event
//! read), so every step's event is one the stream carries live; submits find an idle queue.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use flux_facade::Generator;
use flux_remote::{FluxClient, GENERATE_PATH, QUEUE_PATH};
use flux_types::{BoxFuture, Generation, GeneratorError, ProgressFn, QueueState, ValidRequest};
use futures::StreamExt as _;
use tokio::sync::Semaphore;

use super::results::{LatencyStats, QueueResults};
use super::server::{
    API_KEY, ServerSpec, bench_client, bench_files_dir, body, client_runtime, start_generator,
    start_server_with,
};

/// Steps per job: enough events per job, short generations.
const STEPS: u32 = 4;

/// The real generator, behind a gate (one permit per job) and a log of when each step finished.
struct Timed {
    inner: Arc<dyn Generator>,
    gate: Arc<Semaphore>,
    finished: Arc<Mutex<Vec<(u32, Instant)>>>,
}

impl Generator for Timed {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        let finished = Arc::clone(&self.finished);
        let timed: ProgressFn = Arc::new(move |step| {
            // Taken before the service hears of the step: the event's delay starts here.
            let at = Instant::now();
            finished
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((step.step, at));
            if let Some(progress) = &progress {
                progress(step);
            }
        });
        Box::pin(async move {
            match self.gate.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Err(GeneratorError::ShuttingDown),
            }
            self.inner.generate(request, Some(timed)).await
        })
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Runs the queue measurement in this process (the worker side).
pub fn measure(spec: &ServerSpec) -> Result<QueueResults> {
    client_runtime()?.block_on(measure_async(spec))
}

async fn measure_async(spec: &ServerSpec) -> Result<QueueResults> {
    let files_dir = bench_files_dir();
    let gate = Arc::new(Semaphore::new(0));
    let finished = Arc::new(Mutex::new(Vec::new()));
    let generator: Arc<dyn Generator> = Arc::new(Timed {
        inner: start_generator(spec).await?,
        gate: Arc::clone(&gate),
        finished: Arc::clone(&finished),
    });
    // In memory (the library's default), then with the job database (`flux serve`'s default).
    let (jobs, submits, delays) = one_server(
        spec,
        &generator,
        &gate,
        &finished,
        files_dir.join("memory"),
        None,
    )
    .await?;
    let (_, durable_submits, durable_delays) = one_server(
        spec,
        &generator,
        &gate,
        &finished,
        files_dir.join("durable"),
        Some(files_dir.join("data")),
    )
    .await?;
    let _ = std::fs::remove_dir_all(&files_dir);
    let results = QueueResults {
        model: "tiny".to_owned(),
        width: spec.size[0],
        height: spec.size[1],
        steps: STEPS,
        jobs,
        submit_to_accepted: LatencyStats::from_seconds(&submits).context("no submits")?,
        step_to_event: LatencyStats::from_seconds(&delays).context("no step events")?,
        submit_to_accepted_durable: LatencyStats::from_seconds(&durable_submits),
        step_to_event_durable: LatencyStats::from_seconds(&durable_delays),
    };
    eprintln!(
        "bench:   queue p50: submit → 202 {:.3} ms, step → SSE event {:.3} ms (in memory); {:.3} ms, {:.3} ms (--data-dir)",
        results.submit_to_accepted.p50_ms,
        results.step_to_event.p50_ms,
        results
            .submit_to_accepted_durable
            .as_ref()
            .map_or(f64::NAN, |s| s.p50_ms),
        results
            .step_to_event_durable
            .as_ref()
            .map_or(f64::NAN, |s| s.p50_ms),
    );
    Ok(results)
}

/// One server (in memory, or on a job database in `data_dir`) through [`run_jobs`].
async fn one_server(
    spec: &ServerSpec,
    generator: &Arc<dyn Generator>,
    gate: &Semaphore,
    finished: &Mutex<Vec<(u32, Instant)>>,
    files_dir: std::path::PathBuf,
    data_dir: Option<std::path::PathBuf>,
) -> Result<(usize, Vec<f64>, Vec<f64>)> {
    let server = start_server_with(Arc::clone(generator), 64, files_dir, data_dir).await?;
    let base = server
        .url
        .strip_suffix(GENERATE_PATH)
        .map(str::to_owned)
        .context("the server URL");
    // Whatever happens, the server's runtime is shut down outside async drop glue.
    let measured = match base {
        Ok(base) => run_jobs(spec, &base, gate, finished).await,
        Err(error) => Err(error),
    };
    server.shutdown().await?;
    measured
}

/// Submits and watches `spec.sequential_requests` jobs (after a warm-up): the submit times and
/// every step's delay, in seconds.
async fn run_jobs(
    spec: &ServerSpec,
    base: &str,
    gate: &Semaphore,
    finished: &Mutex<Vec<(u32, Instant)>>,
) -> Result<(usize, Vec<f64>, Vec<f64>)> {
    let http = bench_client()?;
    let client = FluxClient::new(base, API_KEY)?;
    let submit_url = format!("{base}{QUEUE_PATH}/dev");

    let warm_up = 3;
    let jobs = spec.sequential_requests;
    let mut submits = Vec::with_capacity(jobs);
    let mut delays = Vec::with_capacity(jobs * STEPS as usize);
    for seed in 0..warm_up + jobs {
        finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let text = body(seed, spec.size, STEPS);
        let sent = Instant::now();
        let response = http
            .post(&submit_url)
            .bearer_auth(API_KEY)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(text)
            .send()
            .await
            .context("submit")?;
        let status = response.status();
        let answer = response.bytes().await.context("submit answer")?;
        let submit_seconds = sent.elapsed().as_secs_f64();
        if status != reqwest::StatusCode::ACCEPTED {
            bail!("submit answered {status}");
        }
        let submitted: flux_types::QueueSubmitted = serde_json::from_slice(&answer)?;
        let stream = client.stream("dev", &submitted.request_id).await?;
        let mut stream = std::pin::pin!(stream);
        let first = stream.next().await.context("no first event")??;
        ensure!(first.status == QueueState::InQueue, "{first:?}");
        gate.add_permits(1);
        let mut arrived = Vec::new();
        while let Some(event) = stream.next().await {
            let event = event?;
            let at = Instant::now();
            if let Some(progress) = event.progress {
                arrived.push((progress.step, at));
            }
            if event.status == QueueState::Completed {
                break;
            }
        }
        let finished_steps = finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        ensure!(
            arrived.len() == STEPS as usize && finished_steps.len() == STEPS as usize,
            "{} events for {} finished steps",
            arrived.len(),
            finished_steps.len()
        );
        if seed < warm_up {
            continue;
        }
        submits.push(submit_seconds);
        for ((step, done), (event_step, at)) in finished_steps.iter().zip(&arrived) {
            ensure!(step == event_step, "step {step} came as event {event_step}");
            delays.push(at.saturating_duration_since(*done).as_secs_f64());
        }
    }
    Ok((jobs, submits, delays))
}
