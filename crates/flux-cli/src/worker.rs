//! `flux worker`: runs one engine's generations for a fleet. It loads its model (`--model`, or
//! the bundled one), registers it, and takes that variant's jobs from NATS JetStream one at a
//! time; `--health-listen` serves its own `/health`, `/ready` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flux_cluster::{Worker, WorkerConfig, WorkerStats};
use flux_remote::ShutdownSignals;

use crate::fleet::{FleetArgs, connect};
use crate::generate::BackendArgs;
use crate::serve::{parse_duration, print_line};
use crate::serve_defaults;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  flux worker --queue nats://127.0.0.1:4222 --model /models/FLUX.1-dev --image-store /shared/images
  flux worker --queue nats://nats.internal:4222 --model /models/FLUX.1-schnell --device cuda:1 \\
              --health-listen 0.0.0.0:9100

Every process of a fleet (API nodes and workers) must be given the same --queue-depth,
--retention, --ack-wait, --max-attempts and --replicas: the first to start writes them as the
fleet's, and a process given others exits with status 2, naming them.
SIGTERM or Ctrl-C finishes the job under way, then exits.")]
pub struct WorkerArgs {
    #[command(flatten)]
    pub backend: BackendArgs,

    #[command(flatten)]
    pub fleet: FleetArgs,

    /// Queued + running jobs at most per model, for the whole fleet.
    #[arg(long, env = "FLUX_QUEUE_DEPTH", value_name = "N", default_value_t = serve_defaults::queue_depth())]
    pub queue_depth: usize,

    /// How long completed job records are kept: e.g. 1h.
    #[arg(long, env = "FLUX_RETENTION", value_name = "DURATION", default_value_t = serve_defaults::retention())]
    pub retention: String,

    /// A job still running this long after its attempt began fails as timed out: e.g. 10m (the
    /// API node's --request-timeout, carried in each job, bounds it too; the shorter wins).
    #[arg(long, env = "FLUX_JOB_TIMEOUT", value_name = "DURATION", default_value_t = serve_defaults::request_timeout())]
    pub job_timeout: String,

    /// Serve this worker's `/health`, `/ready` and `/metrics` on this address.
    #[arg(long, env = "FLUX_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,

    /// Output logs as JSON lines.
    #[arg(long, env = "FLUX_JSON_LOGS", value_parser = clap::builder::BoolishValueParser::new())]
    pub json_logs: bool,
}

pub fn run(mut args: WorkerArgs, verbose: bool) -> anyhow::Result<()> {
    let level = if verbose { "debug" } else { "info" };
    if args.json_logs {
        crate::logging::init_logging(true, level)?;
    } else {
        crate::init_logging(level);
    }
    let queue =
        args.fleet.queue.clone().ok_or_else(|| {
            crate::BadInput("flux worker needs --queue nats://HOST:PORT".to_owned())
        })?;
    let retention = parse_duration("--retention", &args.retention)?;
    let job_timeout = parse_duration("--job-timeout", &args.job_timeout)?;
    let settings = args.fleet.settings(args.queue_depth, retention)?;
    let images = args
        .fleet
        .images(flux_remote::default_data_dir().join("files"), retention)?;
    let nats_images = args.fleet.wants_nats_images();
    let faults = crate::worker_faults::from_env()?;
    let backend = args.backend.resolve()?;
    // One job at a time: the engine's own queue needs no more than that one.
    let options = args.backend.local_options(1)?;
    let runtime = crate::runtime()?;
    let result = runtime.block_on(async move {
        let mut signals = ShutdownSignals::new().context("cannot listen for SIGINT and SIGTERM")?;
        let stats = WorkerStats::default();
        if let Some(address) = args.health_listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            print_line(&format!(
                "flux worker health on http://{}",
                listener.local_addr()?
            ))?;
            tokio::spawn(crate::worker_health::serve(listener, stats.clone()));
        }
        let description = backend.to_string();
        let generator = tokio::task::spawn_blocking(move || backend.start_with(&options))
            .await
            .context("the backend start-up task failed")?
            .with_context(|| format!("cannot start backend {description}"))?;
        let (client, fleet) = connect(&queue, settings).await?;
        let images = if nats_images {
            FleetArgs::nats_images(client, &settings).await?
        } else {
            images
        };
        let mut config = WorkerConfig::named_randomly(job_timeout);
        config.stats = stats.clone();
        config.stage_hook = faults;
        let worker = Worker::new(fleet, Arc::clone(&generator), images, config);
        let ready = stats.clone();
        tokio::spawn(async move {
            while !ready.is_taking_jobs() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = print_line("flux worker ready");
        });
        worker.run(async move { signals.next().await }).await?;
        drop(generator);
        anyhow::Ok(())
    });
    runtime.shutdown_background();
    result
}
