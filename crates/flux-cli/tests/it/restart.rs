//! Durable on one machine: a real `flux serve --data-dir` holding a completed job (with an
//! Idempotency-Key and a webhook its receiver keeps refusing), a running one and a queued one is
//! killed with SIGKILL and started again on the same folder. Every job finishes with the images an
//! uninterrupted run gives, the completed result is still served, the Idempotency-Key replay
//! answers the original job, every status URL handed out answers (on the new port), and the
//! webhook arrives with its original `webhook-id`.
//!
//! Which job is running at the kill is seen, not assumed: a chain of large jobs is queued and the
//! server is killed at the first poll that finds one in progress with the next still queued (on a
//! loaded machine one poll can miss a whole job; CI once saw the first one go from queued to
//! completed between two polls).

use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use flux_remote::{FluxClient, verify_webhook};
use flux_types::{GenerateRequest, GenerateResponse, ImageSize, QueueState};

use crate::cli::ServeProcess;
use crate::serve_queue::read_post;

const KEY: &str = "restart-test-key-000001";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The size and steps of the chain of jobs one of which is caught running and the next queued.
const BIG: (u32, u32) = (512, 512);
const BIG_STEPS: u32 = 40;
/// The seeds of that chain: one seen running needs one after it queued, and a poll may miss a
/// whole job.
const CHAIN_SEEDS: [u64; 4] = [12, 13, 14, 15];

/// One webhook attempt as the receiver saw it.
struct Attempt {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    accepted: bool,
}

impl Attempt {
    fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    }
}

/// A webhook receiver on loopback that answers 500 until `accept` is set, then 200; every attempt
/// goes to the channel.
fn webhook_receiver() -> anyhow::Result<(String, Arc<AtomicBool>, mpsc::Receiver<Attempt>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let accept = Arc::new(AtomicBool::new(false));
    let (sender, receiver) = mpsc::channel();
    let accepting = Arc::clone(&accept);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let accepted = accepting.load(Ordering::SeqCst);
            if let Ok((headers, body)) = read_post(stream, accepted)
                && sender
                    .send(Attempt {
                        headers,
                        body,
                        accepted,
                    })
                    .is_err()
            {
                return;
            }
        }
    });
    Ok((url, accept, receiver))
}

fn request(seed: u64, size: (u32, u32), steps: u32) -> GenerateRequest {
    let mut request = GenerateRequest::new("a lighthouse in a storm");
    request.image_size = ImageSize::Custom {
        width: size.0,
        height: size.1,
    };
    request.num_inference_steps = steps;
    request.seed = Some(seed);
    request
}

/// `url` with its scheme and authority replaced by `base`'s (the restarted server has a new port).
fn on_base(url: &str, base: &str) -> anyhow::Result<String> {
    let path_start = url
        .find("/api/")
        .with_context(|| format!("no API path in {url}"))?;
    Ok(format!("{base}{}", &url[path_start..]))
}

/// The bytes of every image of `result`, fetched from `base`.
async fn images(
    http: &reqwest::Client,
    base: &str,
    result: &GenerateResponse,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut all = Vec::new();
    for image in &result.images {
        let response = http.get(on_base(&image.url, base)?).send().await?;
        ensure!(response.status() == 200, "GET {}", image.url);
        all.push(response.bytes().await?.to_vec());
    }
    Ok(all)
}

/// What the sync route gives for `request` on `base`: the uninterrupted run.
async fn uninterrupted(
    http: &reqwest::Client,
    base: &str,
    request: &GenerateRequest,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let response = http
        .post(format!("{base}/api/v1/flux/dev"))
        .bearer_auth(KEY)
        .json(request)
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "sync generation: {}",
        response.status()
    );
    let result: GenerateResponse = response.json().await?;
    images(http, base, &result).await
}

fn kill_9(server: &mut ServeProcess) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-KILL", &server.child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -KILL failed");
    server.child.wait()?;
    Ok(())
}

#[test]
fn a_killed_server_restarted_on_its_data_dir_loses_nothing() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    std::fs::write(cwd.path().join("keys"), format!("{KEY}\n"))?;
    std::fs::write(cwd.path().join("webhook-secret"), format!("{SECRET}\n"))?;
    let args = [
        "--api-key-file",
        "keys",
        "--webhook-secret-file",
        "webhook-secret",
        "--webhook-allow-private",
        "--rate-limit",
        "off",
    ];
    let (hook_url, accept_hooks, attempts) = webhook_receiver()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let http = reqwest::Client::new();

    // Before the kill: one job completed (its webhook refused), one running, one queued.
    let mut first = ServeProcess::start(cwd.path(), &args)?;
    let small = request(11, (64, 64), 3);
    let chain: Vec<GenerateRequest> = CHAIN_SEEDS
        .iter()
        .map(|&seed| request(seed, BIG, BIG_STEPS))
        .collect();
    let before = runtime.block_on(async {
        let client = FluxClient::new(&first.base_url, KEY)?;
        let done = client
            .submit_with("dev", &small, Some("restart-key-1"), Some(&hook_url))
            .await?;
        let done_result = client.wait("dev", &done.request_id, |_| {}).await?;
        let done_images = images(&http, &first.base_url, &done_result).await?;
        let mut jobs = Vec::new();
        for job in &chain {
            jobs.push(client.submit_with("dev", job, None, None).await?);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut states = Vec::new();
            for job in &jobs {
                states.push(client.status("dev", &job.request_id, false).await?.status);
            }
            let first_open = states
                .iter()
                .position(|state| *state != QueueState::Completed);
            if let Some(at) = first_open
                && states[at] == QueueState::InProgress
                && states.get(at + 1) == Some(&QueueState::InQueue)
            {
                break;
            }
            ensure!(
                first_open.is_some_and(|at| at + 1 < states.len()) && Instant::now() < deadline,
                "no job of the chain was seen running with the next one queued: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok((done, done_result, done_images, jobs))
    })?;
    let (done, done_result, done_images, jobs) = before;
    let refused = attempts
        .recv_timeout(Duration::from_secs(30))
        .context("the webhook was never attempted")?;
    ensure!(!refused.accepted);
    let webhook_id = refused.header("webhook-id");
    ensure!(webhook_id.starts_with("msg_"), "{webhook_id:?}");
    kill_9(&mut first)?;
    accept_hooks.store(true, Ordering::SeqCst);

    // Restarted on the same folder, on another port.
    let second = ServeProcess::start(cwd.path(), &args)?;
    let base = second.base_url.clone();
    let outcome = runtime.block_on(async {
        let client = FluxClient::new(&base, KEY)?;
        for job in std::iter::once(&done).chain(&jobs) {
            let answer = http
                .get(on_base(&job.status_url, &base)?)
                .bearer_auth(KEY)
                .send()
                .await?;
            ensure!(
                answer.status() == 200,
                "{}: {}",
                job.status_url,
                answer.status()
            );
        }
        // Completed before the kill, killed while running, or queued: each gives the images of
        // an uninterrupted run.
        for (job, request) in jobs.iter().zip(&chain) {
            let after = client.wait("dev", &job.request_id, |_| {}).await?;
            ensure!(Some(after.seed) == request.seed, "seed {}", after.seed);
            ensure!(
                images(&http, &base, &after).await? == uninterrupted(&http, &base, request).await?,
                "the job of seed {} gave other images than an uninterrupted run",
                after.seed
            );
        }

        let kept = client.result("dev", &done.request_id).await?;
        ensure!(kept == done_result, "the completed result changed");
        ensure!(images(&http, &base, &kept).await? == done_images);
        let replay = client
            .submit_with("dev", &small, Some("restart-key-1"), Some(&hook_url))
            .await?;
        ensure!(
            replay.request_id == done.request_id,
            "the Idempotency-Key replay made a new job"
        );
        anyhow::Ok(())
    });
    let delivered = (|| -> anyhow::Result<Attempt> {
        loop {
            let attempt = attempts
                .recv_timeout(Duration::from_secs(30))
                .context("the webhook was not delivered after the restart")?;
            if attempt.accepted {
                return Ok(attempt);
            }
        }
    })();
    let stderr = || second.stderr_text();
    outcome.with_context(|| format!("after the restart; stderr: {}", stderr()))?;
    let delivered = delivered?;
    ensure!(
        delivered.header("webhook-id") == webhook_id,
        "the webhook came with a new id"
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    verify_webhook(
        SECRET,
        &delivered.header("webhook-id"),
        &delivered.header("webhook-timestamp"),
        &delivered.header("webhook-signature"),
        &delivered.body,
        now,
    )?;
    let body: serde_json::Value = serde_json::from_slice(&delivered.body)?;
    ensure!(body["request_id"] == done.request_id.as_str() && body["status"] == "OK");
    Ok(())
}
