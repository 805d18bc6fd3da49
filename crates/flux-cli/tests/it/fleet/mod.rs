//! A fleet of real processes on one machine: a real `nats-server` (from its PyPI wheel), `flux
//! serve --queue` API nodes and `flux worker` processes on the tiny model, sharing an image
//! folder. Each test asserts the fleet's invariant for its failure: every accepted job ends in
//! exactly one terminal outcome, its images decode at the requested size and equal what a
//! one-machine server makes for the same seed. This module is the harness; `serving` runs the
//! contract and the crash tests, `faults` the tests that need a worker killed at a chosen point.

mod faults;
mod serving;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use flux_cluster::servers::{NatsServer, signal};
use serde_json::{Value, json};

use crate::cli::{ServeProcess, flux, read_output};
use crate::serve_queue::{Headers, read_post};

/// Fleet settings every process gets (ack wait short so that failures show within seconds).
const FLEET_FLAGS: [&str; 6] = [
    "--ack-wait",
    "1s",
    "--max-attempts",
    "3",
    "--queue-depth",
    "128",
];

fn tiny_dev() -> anyhow::Result<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny-flux-dev")
        .canonicalize()?;
    path.to_str()
        .map(str::to_owned)
        .context("a fixture path that is not UTF-8")
}

/// A `flux` process of the fleet, killed on drop.
struct FleetProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    base_url: Option<String>,
}

impl FleetProcess {
    /// Runs `flux args` in `cwd` with `env` added and waits for its `ready` line.
    fn start_with_env(
        cwd: &Path,
        args: &[&str],
        env: &[(&str, String)],
        ready: &str,
    ) -> anyhow::Result<FleetProcess> {
        let mut child = flux()
            .args(args)
            .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (lines, stderr_rx) = read_output(&mut child)?;
        let mut process = FleetProcess {
            child,
            lines,
            stderr: stderr_rx,
            base_url: None,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match process.lines.recv_timeout(left) {
                Ok(line) if line == ready => return Ok(process),
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("flux server listening on ") {
                        process.base_url = Some(url.to_owned());
                    }
                }
                Err(_) => {
                    let _ = process.child.kill();
                    let stderr = process
                        .stderr
                        .recv_timeout(Duration::from_secs(5))
                        .unwrap_or_default();
                    bail!(
                        "`flux {}` did not print {ready:?}; stderr: {stderr}",
                        args.join(" ")
                    );
                }
            }
        }
    }

    fn url(&self) -> anyhow::Result<&str> {
        self.base_url.as_deref().context("not an API node")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has ended (of itself: a fault it was given, a crash).
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the process has ended of itself.
    async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !self.exited() {
            ensure!(
                Instant::now() < deadline,
                "process {} is still running after {within:?}",
                self.pid()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FleetProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A nats-server and an image folder in one temporary directory, and the settings every process
/// of the fleet is started with.
struct Fleet {
    dir: tempfile::TempDir,
    nats: NatsServer,
    images: PathBuf,
    settings: Vec<String>,
}

impl Fleet {
    fn start() -> anyhow::Result<Fleet> {
        Fleet::start_with(&FLEET_FLAGS)
    }

    /// A fleet of the test settings with `queue_depth` and `extra` settings.
    fn start_with_depth(queue_depth: &str, extra: &[&str]) -> anyhow::Result<Fleet> {
        let mut settings = FLEET_FLAGS.to_vec();
        if let Some(depth) = settings.iter().position(|flag| *flag == "--queue-depth") {
            settings[depth + 1] = queue_depth;
        }
        settings.extend(extra);
        Fleet::start_with(&settings)
    }

    /// A fleet whose processes get `settings` (all of them the same, as `flux worker --help` asks).
    fn start_with(settings: &[&str]) -> anyhow::Result<Fleet> {
        let dir = tempfile::tempdir()?;
        let nats = NatsServer::start(&dir.path().join("nats"))?;
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images)?;
        let settings = settings.iter().map(|flag| (*flag).to_owned()).collect();
        Ok(Fleet {
            dir,
            nats,
            images,
            settings,
        })
    }

    fn api_node(&self) -> anyhow::Result<FleetProcess> {
        self.api_node_with(&[], &[])
    }

    /// An API node with `extra` flags (an `--image-store` among them replaces the shared folder)
    /// and `env`.
    fn api_node_with(
        &self,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<FleetProcess> {
        // The tests poll statuses faster than the default per-key limit allows.
        let base = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-unauthenticated",
            "--rate-limit",
            "off",
        ];
        self.process(&base, extra, env, "flux server ready")
    }

    fn worker(&self) -> anyhow::Result<FleetProcess> {
        self.worker_with(&[], &[])
    }

    /// A worker of the tiny model on one thread, with `extra` flags and `env`.
    fn worker_with(&self, extra: &[&str], env: &[(&str, String)]) -> anyhow::Result<FleetProcess> {
        let model = tiny_dev()?;
        let base = ["worker", "--model", &model, "--threads", "1"];
        self.process(&base, extra, env, "flux worker ready")
    }

    fn process(
        &self,
        base: &[&str],
        extra: &[&str],
        env: &[(&str, String)],
        ready: &str,
    ) -> anyhow::Result<FleetProcess> {
        let url = self.nats.url();
        let images = self.images.to_str().context("a non-UTF-8 path")?;
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--queue", &url]);
        if !extra.contains(&"--image-store") {
            args.extend(["--image-store", images]);
        }
        args.extend(self.settings.iter().map(String::as_str));
        args.extend(extra);
        FleetProcess::start_with_env(self.dir.path(), &args, env, ready)
    }

    /// Messages left in the dev model's work queue (0 once every job's message is acked).
    async fn queued_messages(&self) -> anyhow::Result<u64> {
        let js = async_nats::jetstream::new(async_nats::connect(self.nats.url()).await?);
        let mut stream = js.get_stream(flux_cluster::jobs_stream("dev")).await?;
        Ok(stream.info().await?.state.messages)
    }

    /// Job records in the fleet's bucket.
    async fn job_records(&self) -> anyhow::Result<usize> {
        use futures::TryStreamExt;
        let js = async_nats::jetstream::new(async_nats::connect(self.nats.url()).await?);
        let bucket = js.get_key_value(flux_cluster::JOBS_BUCKET).await?;
        Ok(bucket.keys().await?.try_collect::<Vec<_>>().await?.len())
    }

    /// Waits until the dev model's work queue is empty: no job's message is left behind.
    async fn wait_queue_empty(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let left = self.queued_messages().await?;
            if left == 0 {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{left} messages are still in the work queue"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until `node` lists the dev model: an API node learns a worker's model through a watch of
/// the models bucket, a moment after the worker registered it (until then the route is 404).
async fn wait_served(http: &reqwest::Client, node: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed: Value = http
            .get(format!("{node}/api/v1/models"))
            .send()
            .await?
            .json()
            .await?;
        if listed["models"]
            .as_array()
            .is_some_and(|models| models.iter().any(|model| model["variant"] == "dev"))
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{node} never listed the dev model: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(http: &reqwest::Client, node: &str, body: &Value) -> anyhow::Result<String> {
    wait_served(http, node).await?;
    let response = http
        .post(format!("{node}/api/v1/queue/flux/dev"))
        .json(body)
        .send()
        .await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    ensure!(status == 202, "submit answered {status}: {answer}");
    answer["request_id"]
        .as_str()
        .map(str::to_owned)
        .context("no request_id")
}

async fn status(http: &reqwest::Client, node: &str, id: &str) -> anyhow::Result<Value> {
    let response = http
        .get(format!(
            "{node}/api/v1/queue/flux/dev/requests/{id}/status?logs=1"
        ))
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "status answered {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// Polls a job's status on `node` until it is COMPLETED.
async fn completed(
    http: &reqwest::Client,
    node: &str,
    id: &str,
    within: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(status) = status(http, node, id).await
            && status["status"] == "COMPLETED"
        {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("job {id} did not complete within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_running(http: &reqwest::Client, node: &str, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = status(http, node, id).await?;
        if status["status"] == "IN_PROGRESS" {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "job {id} never started: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn result(http: &reqwest::Client, node: &str, id: &str) -> anyhow::Result<Value> {
    let response = http
        .get(format!("{node}/api/v1/queue/flux/dev/requests/{id}"))
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "result answered {}",
        response.status()
    );
    Ok(response.json().await?)
}

async fn image_bytes(
    http: &reqwest::Client,
    body: &Value,
    index: usize,
) -> anyhow::Result<Vec<u8>> {
    let url = body["images"][index]["url"]
        .as_str()
        .context("no image url")?;
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?
        .to_vec())
}

/// Checks the fleet's `answer` to `body` against a one-machine `flux serve` on the same model:
/// every image decodes at the requested size and is byte-equal to the one-machine server's.
async fn assert_one_machine_images(
    fleet: &Fleet,
    http: &reqwest::Client,
    body: &Value,
    answer: &Value,
) -> anyhow::Result<()> {
    let single = ServeProcess::start(
        fleet.dir.path(),
        &["--allow-unauthenticated", "--model", &tiny_dev()?],
    )?;
    let reference: Value = http
        .post(format!("{}/api/v1/flux/dev", single.base_url))
        .json(body)
        .send()
        .await?
        .json()
        .await?;
    let size = (
        body["image_size"]["width"].as_u64().context("no width")?,
        body["image_size"]["height"].as_u64().context("no height")?,
    );
    let count = answer["images"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_default();
    ensure!(count > 0, "no images: {answer}");
    for index in 0..count {
        let image = image_bytes(http, answer, index).await?;
        let decoded = image::load_from_memory(&image)?;
        ensure!((u64::from(decoded.width()), u64::from(decoded.height())) == size);
        ensure!(
            image == image_bytes(http, &reference, index).await?,
            "image {index} differs from the one-machine server's"
        );
    }
    Ok(())
}

/// One POST a receiver got: its headers, its body, and whether it was accepted.
type Post = (Headers, Vec<u8>, bool);

/// A webhook receiver on loopback that refuses the first `refusals` POSTs (500), then accepts;
/// every POST goes to the channel with whether it was accepted.
fn flaky_receiver(refusals: usize) -> anyhow::Result<(String, mpsc::Receiver<Post>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for (seen, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let accept = seen >= refusals;
            if let Ok((headers, body)) = read_post(stream, accept)
                && sender.send((headers, body, accept)).is_err()
            {
                return;
            }
        }
    });
    Ok((url, receiver))
}

/// The terminal lines of a job's log (`completed`, `cancelled`, `failed…`): one per outcome.
fn terminal_lines(status: &Value) -> usize {
    status["logs"]
        .as_array()
        .map(|logs| {
            logs.iter()
                .filter(|line| {
                    line["message"].as_str().is_some_and(|m| {
                        m == "completed" || m == "cancelled" || m.starts_with("failed")
                    })
                })
                .count()
        })
        .unwrap_or_default()
}

fn log_count(status: &Value, prefix: &str) -> usize {
    status["logs"]
        .as_array()
        .map(|logs| {
            logs.iter()
                .filter(|line| {
                    line["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with(prefix))
                })
                .count()
        })
        .unwrap_or_default()
}
