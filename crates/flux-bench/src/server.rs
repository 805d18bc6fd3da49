//! The HTTP server against direct library calls (run inside a worker process): one
//! `LocalGenerator` on the tiny model, called directly and through flux-remote's server on
//! loopback with the same request bodies, alternating so background noise hits both alike; then
//! throughput at several client counts; then the time to answer 429 `overloaded` while the
//! admission queue is full.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flux_facade::{ComputePriority, Generator, LocalGenerator, LocalOptions, SessionConfig};
use flux_remote::{GENERATE_PATH, Server, ServerConfig};
use serde::{Deserialize, Serialize};

use super::pipeline::session_config;
use super::results::{ConcurrencyLevel, LatencyStats, OverloadResults, ServerResults};

/// At least `MIN_API_KEY_CHARS` (16) long, or the server refuses to start.
pub(super) const API_KEY: &str = "flux-bench-key-0123456789";

/// What the server benchmark sends and how much of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSpec {
    pub model_dir: PathBuf,
    pub threads: usize,
    /// Requests per path (direct, HTTP) with one client.
    pub sequential_requests: usize,
    pub client_counts: Vec<usize>,
    pub requests_per_level: usize,
    /// The generation every latency request asks for (the smallest legal size, one step: the
    /// server's own cost is then as visible as it gets).
    pub size: [u32; 2],
    pub steps: u32,
    /// Admission queue of the overload phase; it is kept full by long generations.
    pub overload_queue_depth: usize,
    pub overload_attempts: usize,
    /// Client counts of the floods: one client shows the server's own answer time, many show
    /// it under a burst (client and server then share the two cores with the busy model).
    pub overload_clients: Vec<usize>,
    /// Scheduling priority of the model's threads (`normal` or `idle`).
    pub compute_priority: String,
}

impl ServerSpec {
    pub fn new(model_dir: PathBuf, threads: usize, quick: bool) -> ServerSpec {
        ServerSpec {
            model_dir,
            threads,
            sequential_requests: if quick { 30 } else { 200 },
            client_counts: if quick { vec![4] } else { vec![1, 4, 16] },
            requests_per_level: if quick { 32 } else { 128 },
            size: [64, 64],
            steps: 1,
            overload_queue_depth: 2,
            // A 32-client flood answers ~30,000 requests a second: 10,000 attempts keep it
            // going for a fraction of a second, long enough that p99 is not one scheduler slice.
            overload_attempts: if quick { 1000 } else { 10_000 },
            overload_clients: vec![1, 32],
            compute_priority: ComputePriority::Normal.to_string(),
        }
    }

    fn session_config(&self) -> Result<SessionConfig> {
        let mut config = session_config(self.threads);
        config.compute_priority = self
            .compute_priority
            .parse::<ComputePriority>()
            .map_err(|error| anyhow::anyhow!(error))?;
        Ok(config)
    }
}

/// Runs the spec in this process (the worker side).
pub fn measure(spec: &ServerSpec) -> Result<ServerResults> {
    client_runtime()?.block_on(measure_async(spec))
}

/// Runs only the spec's 429 floods in this process (the worker side).
pub fn measure_overload(spec: &ServerSpec) -> Result<Vec<OverloadResults>> {
    client_runtime()?.block_on(async {
        let generator = start_generator(spec).await?;
        let client = bench_client()?;
        let files_dir = bench_files_dir();
        floods(spec, generator, &files_dir, &client).await
    })
}

/// The spec's 429 floods, one per client count, each against a fresh server; then the files go.
async fn floods(
    spec: &ServerSpec,
    generator: Arc<dyn Generator>,
    files_dir: &std::path::Path,
    client: &reqwest::Client,
) -> Result<Vec<OverloadResults>> {
    let mut overloads = Vec::new();
    for &clients in &spec.overload_clients {
        let dir = files_dir.join(format!("overload-{clients}"));
        overloads.push(overload(spec, clients, generator.clone(), dir, client).await?);
    }
    let _ = std::fs::remove_dir_all(files_dir);
    Ok(overloads)
}

/// The benchmark's HTTP client: keep-alive connections for every concurrent client.
pub(super) fn bench_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?)
}

/// The runtime of the benchmark's clients (and of the direct calls).
pub(super) fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")
}

pub(super) fn bench_files_dir() -> PathBuf {
    std::env::temp_dir().join(format!("flux-bench-files-{}", std::process::id()))
}

/// The tiny model behind a `LocalGenerator`, loaded off the async threads.
pub(super) async fn start_generator(spec: &ServerSpec) -> Result<Arc<dyn Generator>> {
    let options = LocalOptions {
        queue_capacity: 64,
        session: spec.session_config()?,
        ..LocalOptions::default()
    };
    let model_dir = spec.model_dir.clone();
    let local = tokio::task::spawn_blocking(move || {
        LocalGenerator::start(&model_dir, &options).map_err(|error| anyhow::anyhow!(error))
    })
    .await
    .context("loading the model")?
    .context("starting the local generator")?;
    Ok(Arc::new(local))
}

pub(super) fn body(seed: usize, size: [u32; 2], steps: u32) -> String {
    body_with(seed, size, steps, false)
}

fn body_with(seed: usize, size: [u32; 2], steps: u32, sync_mode: bool) -> String {
    serde_json::json!({
        "prompt": "A photo of a cat sitting on a wooden table",
        "image_size": {"width": size[0], "height": size[1]},
        "num_inference_steps": steps,
        "seed": seed,
        "enable_safety_checker": false,
        "output_format": "jpeg",
        "sync_mode": sync_mode,
    })
    .to_string()
}

/// A running server on loopback, on a runtime of its own (as in `flux serve`), so that the
/// benchmark's clients, like real ones, are not scheduled on the server's worker threads.
pub(super) struct RunningServer {
    pub(super) url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), flux_remote::RemoteError>>,
    state: flux_remote::AppState,
    runtime: tokio::runtime::Runtime,
}

pub(super) async fn start_server(
    generator: Arc<dyn Generator>,
    queue_depth: usize,
    files_dir: PathBuf,
) -> Result<RunningServer> {
    start_server_with(generator, queue_depth, files_dir, None).await
}

/// As [`start_server`], with the job database in `data_dir` (`flux serve --data-dir`) when given.
pub(super) async fn start_server_with(
    generator: Arc<dyn Generator>,
    queue_depth: usize,
    files_dir: PathBuf,
    data_dir: Option<PathBuf>,
) -> Result<RunningServer> {
    let config = ServerConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        api_keys: vec![API_KEY.to_owned()],
        rate_limit: None,
        queue_depth,
        files_dir,
        data_dir,
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("flux-bench-server")
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    let bound = runtime.spawn(Server::bind(config, generator)).await;
    let server = match bound {
        Ok(Ok(server)) => server,
        failed => {
            // Dropping a runtime blocks, which async code must not do: the error is reported.
            runtime.shutdown_background();
            return Err(match failed {
                Ok(Err(error)) => anyhow::Error::new(error).context("binding the benchmark server"),
                Err(error) => anyhow::Error::new(error).context("binding task"),
                Ok(Ok(_)) => anyhow::anyhow!("unreachable"),
            });
        }
    };
    let url = format!("http://{}{GENERATE_PATH}", server.local_addr()?);
    let state = server.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Ok(RunningServer {
        url,
        stop,
        task,
        state,
        runtime,
    })
}

impl RunningServer {
    pub(super) async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("server task")?.context("server")?;
        // Dropping a runtime blocks, which async code must not do.
        self.runtime.shutdown_background();
        Ok(())
    }
}

async fn direct_call(generator: &dyn Generator, body: &str) -> Result<f64> {
    let request = flux_types::parse_request(body.as_bytes())
        .map_err(|e| anyhow::anyhow!("benchmark request invalid: {e:?}"))?;
    let started = Instant::now();
    let generation = generator
        .generate(request, None)
        .await
        .context("direct generation")?;
    let elapsed = started.elapsed().as_secs_f64();
    if generation.images.is_empty() {
        bail!("direct generation returned no image");
    }
    Ok(elapsed)
}

async fn http_call(client: &reqwest::Client, url: &str, body: &str) -> Result<f64> {
    let started = Instant::now();
    let response = client
        .post(url)
        .bearer_auth(API_KEY)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .context("HTTP request")?;
    let status = response.status();
    let text = response.text().await.context("HTTP response body")?;
    let elapsed = started.elapsed().as_secs_f64();
    if status != reqwest::StatusCode::OK {
        bail!("server answered {status}: {text}");
    }
    Ok(elapsed)
}

async fn measure_async(spec: &ServerSpec) -> Result<ServerResults> {
    let files_dir = bench_files_dir();
    let generator = start_generator(spec).await?;
    let server = start_server(generator.clone(), 64, files_dir.join("main")).await?;
    let client = bench_client()?;

    // Warm-up: both paths, so sessions, pools and connections exist before the clock runs.
    for seed in 0..5 {
        let text = body(seed, spec.size, spec.steps);
        direct_call(generator.as_ref(), &text).await?;
        http_call(&client, &server.url, &text).await?;
    }

    // Alternating, so that background noise hits every path alike.
    let mut direct = Vec::with_capacity(spec.sequential_requests);
    let mut http = Vec::with_capacity(spec.sequential_requests);
    let mut http_sync = Vec::with_capacity(spec.sequential_requests);
    for seed in 0..spec.sequential_requests {
        let text = body(seed, spec.size, spec.steps);
        direct.push(direct_call(generator.as_ref(), &text).await?);
        http.push(http_call(&client, &server.url, &text).await?);
        http_sync.push(
            http_call(
                &client,
                &server.url,
                &body_with(seed, spec.size, spec.steps, true),
            )
            .await?,
        );
    }
    let direct_sequential = LatencyStats::from_seconds(&direct).context("no direct samples")?;
    let http_sequential = LatencyStats::from_seconds(&http).context("no HTTP samples")?;
    let http_sync_mode_sequential =
        LatencyStats::from_seconds(&http_sync).context("no HTTP samples")?;
    eprintln!(
        "bench:   sequential p50: direct {:.2} ms, HTTP {:.2} ms (files), {:.2} ms (sync_mode)",
        direct_sequential.p50_ms, http_sequential.p50_ms, http_sync_mode_sequential.p50_ms
    );

    let mut concurrency = Vec::new();
    for (index, &clients) in spec.client_counts.iter().enumerate() {
        let run_direct = || {
            concurrent(clients, spec.requests_per_level, spec, |text| {
                let generator = generator.clone();
                async move { direct_call(generator.as_ref(), &text).await }
            })
        };
        let run_http = || {
            concurrent(clients, spec.requests_per_level, spec, |text| {
                let client = client.clone();
                let url = server.url.clone();
                async move { http_call(&client, &url, &text).await }
            })
        };
        // Which path goes first alternates between levels, so a drift of the machine's speed
        // during the run does not always favour the same one.
        let ((direct_seconds, direct_latencies), (http_seconds, http_latencies)) = if index % 2 == 0
        {
            let direct = run_direct().await?;
            (direct, run_http().await?)
        } else {
            let http = run_http().await?;
            (run_direct().await?, http)
        };
        let level = ConcurrencyLevel {
            clients,
            requests: spec.requests_per_level,
            direct_seconds,
            direct_throughput_rps: spec.requests_per_level as f64 / direct_seconds,
            direct_latency: LatencyStats::from_seconds(&direct_latencies).context("no samples")?,
            http_seconds,
            http_throughput_rps: spec.requests_per_level as f64 / http_seconds,
            http_latency: LatencyStats::from_seconds(&http_latencies).context("no samples")?,
        };
        eprintln!(
            "bench:   {clients} clients: direct {:.1} req/s, HTTP {:.1} req/s",
            level.direct_throughput_rps, level.http_throughput_rps
        );
        concurrency.push(level);
    }
    server.shutdown().await?;

    let overloads = floods(spec, generator, &files_dir, &client).await?;
    Ok(ServerResults {
        model: "tiny".to_owned(),
        width: spec.size[0],
        height: spec.size[1],
        steps: spec.steps,
        added_latency_p50_ms: http_sequential.p50_ms - direct_sequential.p50_ms,
        added_latency_sync_mode_p50_ms: http_sync_mode_sequential.p50_ms - direct_sequential.p50_ms,
        added_latency_paired_median_ms: paired_median_ms(&http, &direct),
        added_latency_sync_mode_paired_median_ms: paired_median_ms(&http_sync, &direct),
        direct_sequential,
        http_sequential,
        http_sync_mode_sequential,
        concurrency,
        overload: overloads,
    })
}

/// Median of `a[i] − b[i]`, in milliseconds.
fn paired_median_ms(a: &[f64], b: &[f64]) -> f64 {
    let differences: Vec<f64> = a.iter().zip(b).map(|(a, b)| (a - b) * 1000.0).collect();
    super::stats::median(&differences).unwrap_or(f64::NAN)
}

/// `requests` calls spread over `clients` concurrent callers; wall time and every latency.
async fn concurrent<F, Fut>(
    clients: usize,
    requests: usize,
    spec: &ServerSpec,
    call: F,
) -> Result<(f64, Vec<f64>)>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<f64>> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        // Futures are lazy: client `c` runs requests c, c + clients, ... one after the other.
        let pending: Vec<Fut> = (client..requests)
            .step_by(clients)
            .map(|seed| call(body(seed, spec.size, spec.steps)))
            .collect();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(pending.len());
            for future in pending {
                latencies.push(future.await?);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(requests);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.context("client task")??);
    }
    Ok((started.elapsed().as_secs_f64(), latencies))
}

/// Fills a small admission queue with long generations, then floods the server and times the
/// answers; every rejection must be 429 `overloaded` with `Retry-After`.
async fn overload(
    spec: &ServerSpec,
    clients: usize,
    generator: Arc<dyn Generator>,
    files_dir: PathBuf,
    client: &reqwest::Client,
) -> Result<OverloadResults> {
    let server = start_server(generator, spec.overload_queue_depth, files_dir).await?;
    // 28 steps at 1024²: seconds of work per request on the tiny model, far longer than the flood.
    let mut long = Vec::new();
    for seed in 0..spec.overload_queue_depth {
        let client = client.clone();
        let url = server.url.clone();
        let text = body(seed, [1024, 1024], 28);
        long.push(tokio::spawn(async move {
            http_call(&client, &url, &text).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.state.in_queue() < spec.overload_queue_depth {
        if Instant::now() > deadline {
            bail!("the long requests never filled the admission queue");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let next = next.clone();
        let client = client.clone();
        let url = server.url.clone();
        let attempts = spec.overload_attempts;
        let text = body(7, spec.size, spec.steps);
        tasks.spawn(async move {
            let mut answers = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < attempts {
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(text.clone())
                    .send()
                    .await?;
                let status = response.status();
                let retry_after = response
                    .headers()
                    .contains_key(reqwest::header::RETRY_AFTER);
                let text = response.text().await?;
                answers.push((
                    started.elapsed().as_secs_f64(),
                    status,
                    retry_after,
                    text.contains("\"overloaded\""),
                ));
            }
            Ok::<_, anyhow::Error>(answers)
        });
    }
    let mut rejection_latencies = Vec::new();
    let (mut accepted, mut other, mut with_retry_after) = (0, 0, 0);
    while let Some(done) = tasks.join_next().await {
        for (seconds, status, retry_after, overloaded) in done.context("flood task")?? {
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS && overloaded {
                rejection_latencies.push(seconds);
                with_retry_after += usize::from(retry_after);
            } else if status == reqwest::StatusCode::OK {
                accepted += 1;
            } else {
                other += 1;
            }
        }
    }
    for task in long {
        task.await.context("long request")??;
    }
    server.shutdown().await?;
    let rejection_latency = LatencyStats::from_seconds(&rejection_latencies);
    if let Some(stats) = &rejection_latency {
        eprintln!(
            "bench:   429 overloaded, {clients} clients, {} compute priority: p50 {:.2} ms, p99 {:.2} ms",
            spec.compute_priority, stats.p50_ms, stats.p99_ms
        );
    }
    Ok(OverloadResults {
        clients,
        compute_priority: spec.compute_priority.clone(),
        queue_depth: spec.overload_queue_depth,
        attempts: spec.overload_attempts,
        rejected: rejection_latencies.len(),
        accepted,
        other,
        rejected_with_retry_after: with_retry_after,
        rejection_latency,
    })
}
