//! Failures at chosen points of real processes: `flux worker` SIGKILLed exactly after its upload
//! or after its record (`FLUX_WORKER_FAULT`), a poison job that kills every worker taking it,
//! 200 submit+cancel races across two API nodes, a full queue, a status stream taken up through
//! another node, and records and images expiring (records never while queued).

use super::*;

/// The worker fault injection's variable (see `flux worker`'s `worker_faults` module).
const FAULT: &str = "FLUX_WORKER_FAULT";

fn fault(at: &str) -> [(&'static str, String); 1] {
    [(FAULT, at.to_owned())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_after_their_upload_and_after_their_record_leave_one_outcome()
-> anyhow::Result<()> {
    let fleet = Fleet::start()?;
    std::fs::write(
        fleet.dir.path().join("webhook-secret"),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
    )?;
    let node = fleet.api_node_with(
        &[
            "--webhook-secret-file",
            "webhook-secret",
            "--webhook-allow-private",
        ],
        &[],
    )?;
    let node = node.url()?.to_owned();
    let http = reqwest::Client::new();
    let (hook, posts) = flaky_receiver(0)?;
    let body = json!({"prompt": "a yellow arrow", "seed": 21, "num_images": 2,
                      "image_size": {"width": 64, "height": 64}, "num_inference_steps": 2});

    // Attempt 1 dies with its images uploaded and its end not yet written.
    let mut after_upload = fleet.worker_with(&[], &fault("uploaded"))?;
    wait_served(&http, &node).await?;
    let submitted = http
        .post(format!("{node}/api/v1/queue/flux/dev"))
        .query(&[("fal_webhook", hook.as_str())])
        .json(&body)
        .send()
        .await?;
    ensure!(submitted.status() == 202, "{}", submitted.status());
    let id = submitted.json::<Value>().await?["request_id"]
        .as_str()
        .context("no id")?
        .to_owned();
    after_upload.wait_exit(Duration::from_secs(60)).await?;
    let between = status(&http, &node, &id).await?;
    ensure!(between["status"] != "COMPLETED", "{between}");

    // Attempt 2 writes the end, then dies before acking its message.
    let mut after_record = fleet.worker_with(&[], &fault("recorded"))?;
    after_record.wait_exit(Duration::from_secs(60)).await?;
    let done = status(&http, &node, &id).await?;
    ensure!(done["outcome"] == "succeeded", "{done}");
    ensure!(fleet.queued_messages().await? == 1, "the message was acked");
    let answer = result(&http, &node, &id).await?;

    // A healthy worker gets the message again, finds the job done, and only acks it.
    let _healthy = fleet.worker()?;
    fleet.wait_queue_empty(Duration::from_secs(30)).await?;
    let after = status(&http, &node, &id).await?;
    ensure!(log_count(&after, "started on") == 2, "{after}");
    ensure!(terminal_lines(&after) == 1, "{after}");
    ensure!(
        result(&http, &node, &id).await? == answer,
        "the result changed"
    );
    // One webhook, though two workers queued it (the dead one and the one that only acked).
    let (headers, delivered, _) = posts
        .recv_timeout(Duration::from_secs(30))
        .context("no webhook")?;
    let delivered: Value = serde_json::from_slice(&delivered)?;
    ensure!(
        delivered["status"] == "OK" && delivered["payload"] == answer,
        "{delivered}"
    );
    ensure!(
        headers
            .iter()
            .any(|(name, value)| name == "webhook-id" && *value == format!("msg_{id}")),
        "{headers:?}"
    );
    ensure!(
        posts.recv_timeout(Duration::from_secs(3)).is_err(),
        "a second webhook"
    );
    // Both attempts' images are kept under their own names: none overwrote the other.
    let stored = std::fs::read_dir(&fleet.images)?.count();
    ensure!(
        stored >= 4,
        "{stored} image files for two attempts of two images"
    );

    assert_one_machine_images(&fleet, &http, &body, &answer).await?;
    Ok(())
}

/// Workers restarted whenever they die, as a service manager would; counts the restarts.
struct Supervised<'a> {
    fleet: &'a Fleet,
    env: Vec<(&'static str, String)>,
    workers: Vec<FleetProcess>,
    restarts: usize,
}

impl Supervised<'_> {
    fn restart_dead(&mut self) -> anyhow::Result<()> {
        for worker in &mut self.workers {
            if worker.exited() {
                *worker = self.fleet.worker_with(&[], &self.env)?;
                self.restarts += 1;
            }
        }
        Ok(())
    }

    /// Polls `id` on `node`, restarting dead workers meanwhile, until it is COMPLETED.
    async fn completed(
        &mut self,
        http: &reqwest::Client,
        node: &str,
        id: &str,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.restart_dead()?;
            let now = status(http, node, id).await?;
            if now["status"] == "COMPLETED" {
                return Ok(now);
            }
            ensure!(Instant::now() < deadline, "job {id} never ended: {now}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_killing_every_worker_ends_failed_after_the_last_attempt_and_workers_go_on()
-> anyhow::Result<()> {
    let fleet = Fleet::start()?;
    let node = fleet.api_node()?;
    let node = node.url()?.to_owned();
    let http = reqwest::Client::new();
    // Every worker dies (SIGKILL, as the out-of-memory killer would) as it starts the poison job.
    let env = fault("started:poison").to_vec();
    let mut workers = Supervised {
        fleet: &fleet,
        workers: vec![fleet.worker_with(&[], &env)?, fleet.worker_with(&[], &env)?],
        env,
        restarts: 0,
    };
    let tiny = |prompt: &str| {
        json!({"prompt": prompt, "seed": 5,
        "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1})
    };
    let poison = submit(&http, &node, &tiny("a poison apple")).await?;
    let fine = submit(&http, &node, &tiny("a ripe apple")).await?;

    let failed = workers.completed(&http, &node, &poison).await?;
    ensure!(failed["outcome"] == "failed", "{failed}");
    ensure!(log_count(&failed, "started on") == 3, "{failed}");
    ensure!(terminal_lines(&failed) == 1, "{failed}");
    let answer = http
        .get(format!("{node}/api/v1/queue/flux/dev/requests/{poison}"))
        .send()
        .await?;
    ensure!(
        answer.status() == 500,
        "a failed job's result: {}",
        answer.status()
    );
    // The workers go on: the other job and a new one succeed on the restarted workers.
    let done = workers.completed(&http, &node, &fine).await?;
    ensure!(done["outcome"] == "succeeded", "{done}");
    let later = submit(&http, &node, &tiny("a green apple")).await?;
    let done = workers.completed(&http, &node, &later).await?;
    ensure!(done["outcome"] == "succeeded", "{done}");
    ensure!(
        workers.restarts == 3,
        "{} workers died for 3 attempts",
        workers.restarts
    );
    // No orphan message: the poison job's is acked once it ended.
    fleet.wait_queue_empty(Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_submit_and_cancel_races_across_nodes_each_end_one_way() -> anyhow::Result<()> {
    let fleet = Fleet::start_with_depth("256", &[])?;
    let (a, b) = (fleet.api_node()?, fleet.api_node()?);
    let _workers = (fleet.worker()?, fleet.worker()?);
    let (a, b) = (a.url()?.to_owned(), b.url()?.to_owned());
    let http = reqwest::Client::new();
    wait_served(&http, &a).await?;
    let mut races = tokio::task::JoinSet::new();
    for index in 0..200u64 {
        let (http, a, b) = (http.clone(), a.clone(), b.clone());
        races.spawn(async move {
            let body = json!({"prompt": format!("race {index}"), "seed": index,
                "image_size": {"width": 64, "height": 64}, "num_inference_steps": 2});
            let id = submit(&http, &a, &body).await?;
            // Through the other node: some at once, some once the job may be running.
            if index % 3 == 1 {
                tokio::time::sleep(Duration::from_millis(index % 40)).await;
            }
            let cancel = http
                .put(format!("{b}/api/v1/queue/flux/dev/requests/{id}/cancel"))
                .send()
                .await?
                .status();
            anyhow::Ok((id, cancel))
        });
    }
    let mut cancels = Vec::new();
    while let Some(race) = races.join_next().await {
        cancels.push(race??);
    }
    let (mut cancelled, mut succeeded) = (0, 0);
    for (id, cancel) in cancels {
        let done = completed(&http, &a, &id, Duration::from_secs(120)).await?;
        ensure!(terminal_lines(&done) == 1, "one terminal outcome: {done}");
        let fetched = http
            .get(format!("{b}/api/v1/queue/flux/dev/requests/{id}"))
            .send()
            .await?
            .status();
        match cancel.as_u16() {
            202 => {
                ensure!(
                    done["outcome"] == "cancelled" && fetched == 410,
                    "a cancel accepted, then {done} ({fetched})"
                );
                cancelled += 1;
            }
            400 => {
                ensure!(
                    done["outcome"] == "succeeded" && fetched == 200,
                    "a cancel refused as done, then {done} ({fetched})"
                );
                succeeded += 1;
            }
            other => bail!("cancel answered {other}"),
        }
    }
    ensure!(
        cancelled > 0 && cancelled + succeeded == 200,
        "{cancelled} cancelled, {succeeded} succeeded"
    );
    fleet.wait_queue_empty(Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_records_nothing() -> anyhow::Result<()> {
    let fleet = Fleet::start_with_depth("3", &[])?;
    let node = fleet.api_node()?;
    let node = node.url()?.to_owned();
    let http = reqwest::Client::new();
    // A worker announces the model, then stops: jobs stay queued.
    let mut announcer = fleet.worker()?;
    wait_served(&http, &node).await?;
    announcer.kill();
    let body = |seed: u64| {
        json!({"prompt": "a full queue", "seed": seed,
        "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1})
    };
    let mut accepted = Vec::new();
    for seed in 0..3 {
        accepted.push(submit(&http, &node, &body(seed)).await?);
    }
    let keyed = || {
        http.post(format!("{node}/api/v1/queue/flux/dev"))
            .header("Idempotency-Key", "late-one")
            .json(&body(9))
            .send()
    };
    let refused = keyed().await?;
    ensure!(
        refused.status() == 429,
        "a fourth job: {}",
        refused.status()
    );
    ensure!(
        refused.headers().contains_key("retry-after"),
        "no Retry-After"
    );
    let error: Value = refused.json().await?;
    ensure!(error["error"]["code"] == "overloaded", "{error}");
    ensure!(
        fleet.job_records().await? == 3,
        "the refused job was recorded"
    );
    ensure!(fleet.queued_messages().await? == 3);

    // Once the queue drains, the same key is a new job (the refusal kept nothing of it).
    let _worker = fleet.worker()?;
    for id in &accepted {
        completed(&http, &node, id, Duration::from_secs(60)).await?;
    }
    let retried = keyed().await?;
    ensure!(retried.status() == 202, "{}", retried.status());
    let retried: Value = retried.json().await?;
    let id = retried["request_id"].as_str().context("no request_id")?;
    ensure!(!accepted.iter().any(|old| old == id));
    completed(&http, &node, id, Duration::from_secs(60)).await?;
    ensure!(fleet.job_records().await? == 4);
    Ok(())
}

/// The `data:` status objects of a status stream, read as they come, until `stop` says so or
/// the stream ends.
async fn read_statuses(
    mut response: reqwest::Response,
    mut stop: impl FnMut(&Value) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let mut pending = String::new();
    let mut statuses = Vec::new();
    while let Some(chunk) =
        tokio::time::timeout(Duration::from_secs(60), response.chunk()).await??
    {
        pending.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for data in event.lines().filter_map(|line| line.strip_prefix("data:")) {
                let status: Value = serde_json::from_str(data.trim())?;
                let done = stop(&status);
                statuses.push(status);
                if done {
                    return Ok(statuses);
                }
            }
        }
    }
    Ok(statuses)
}

fn step(status: &Value) -> u64 {
    status["progress"]["step"].as_u64().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_stream_broken_off_is_taken_up_through_another_node() -> anyhow::Result<()> {
    let fleet = Fleet::start()?;
    let (a, b) = (fleet.api_node()?, fleet.api_node()?);
    let _worker = fleet.worker()?;
    let (a, b) = (a.url()?.to_owned(), b.url()?.to_owned());
    let http = reqwest::Client::new();
    let body = json!({"prompt": "a slow river", "seed": 4,
                      "image_size": {"width": 512, "height": 512}, "num_inference_steps": 12});
    let id = submit(&http, &a, &body).await?;
    let stream = |node: &str| {
        http.get(format!(
            "{node}/api/v1/queue/flux/dev/requests/{id}/status/stream"
        ))
        .send()
    };
    // Read on one node until the job is a step in, then break the connection off.
    let first = read_statuses(stream(&a).await?, |status| step(status) >= 1).await?;
    let seen = first.last().context("no status before the break")?;
    ensure!(seen["status"] == "IN_PROGRESS", "{first:?}");
    // The other node goes on from where the job is: no step goes back, one terminal status.
    let second = read_statuses(stream(&b).await?, |_| false).await?;
    let opening = second.first().context("no status after reconnecting")?;
    ensure!(
        step(opening) >= step(seen) || opening["status"] == "COMPLETED",
        "{opening} after {seen}"
    );
    let steps: Vec<u64> = second
        .iter()
        .filter(|status| status["status"] == "IN_PROGRESS")
        .map(step)
        .collect();
    ensure!(steps.is_sorted(), "steps went back: {steps:?}");
    let ends: Vec<&Value> = second
        .iter()
        .filter(|status| status["status"] == "COMPLETED")
        .collect();
    ensure!(
        ends.len() == 1 && second.last() == ends.first().copied(),
        "{second:?}"
    );
    ensure!(ends[0]["outcome"] == "succeeded", "{second:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expire_after_the_retention_but_never_while_queued() -> anyhow::Result<()> {
    let fleet = Fleet::start_with_depth("16", &["--retention", "3s"])?;
    let (a, b) = (fleet.api_node()?, fleet.api_node()?);
    let (a, b) = (a.url()?.to_owned(), b.url()?.to_owned());
    let http = reqwest::Client::new();
    let mut announcer = fleet.worker()?;
    wait_served(&http, &a).await?;
    announcer.kill();
    let body = json!({"prompt": "an old letter", "seed": 8,
                      "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1});
    let id = submit(&http, &a, &body).await?;
    // Queued for twice the retention: still there, on both nodes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for node in [&a, &b] {
        let waiting = status(&http, node, &id).await?;
        ensure!(waiting["status"] == "IN_QUEUE", "{waiting}");
    }
    let _worker = fleet.worker()?;
    completed(&http, &b, &id, Duration::from_secs(60)).await?;
    let answer = result(&http, &a, &id).await?;
    let image = answer["images"][0]["url"]
        .as_str()
        .context("no image url")?
        .to_owned();
    ensure!(http.get(&image).send().await?.status() == 200);
    // Completed: gone from every node once the retention has passed, and its image too.
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in [&a, &b] {
        loop {
            let answer = http
                .get(format!("{node}/api/v1/queue/flux/dev/requests/{id}/status"))
                .send()
                .await?
                .status();
            if answer == 404 {
                break;
            }
            ensure!(answer == 200, "status answered {answer}");
            ensure!(
                Instant::now() < deadline,
                "job {id} never expired on {node}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    ensure!(fleet.job_records().await? == 0);
    while http.get(&image).send().await?.status() != 404 {
        ensure!(
            Instant::now() < deadline,
            "the image {image} was never swept"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_given_other_fleet_settings_refuses_to_start_and_names_them() -> anyhow::Result<()>
{
    let fleet = Fleet::start()?;
    let _node = fleet.api_node()?;
    let (url, model) = (fleet.nats.url(), tiny_dev()?);
    let images = fleet.images.to_str().context("a non-UTF-8 path")?;
    let output = flux()
        .args([
            "worker",
            "--queue",
            &url,
            "--model",
            &model,
            "--threads",
            "1",
        ])
        .args(["--image-store", images, "--max-attempts", "3"])
        .args(["--ack-wait", "2s", "--queue-depth", "64"])
        .current_dir(fleet.dir.path())
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(2),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(
        stderr.contains("--ack-wait is 1s in the fleet, 2s here")
            && stderr.contains("--queue-depth is 128 in the fleet, 64 here"),
        "{stderr}"
    );
    // The same flags as the fleet's: it starts.
    let _worker = fleet.worker()?;
    Ok(())
}
