//! The fleet serves the contract, survives killed and stopped workers, a killed nats-server, a
//! flaky webhook receiver and a chaos soak, with images in a folder, S3 or the object store.

use flux_cluster::ImageStore as _;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_nodes_and_two_workers_serve_the_contract_with_the_one_machine_images()
-> anyhow::Result<()> {
    let fleet = Fleet::start()?;
    let (a, b) = (fleet.api_node()?, fleet.api_node()?);
    let _workers = (fleet.worker()?, fleet.worker()?);
    let http = reqwest::Client::new();
    let (a, b) = (a.url()?.to_owned(), b.url()?.to_owned());
    wait_served(&http, &a).await?;
    wait_served(&http, &b).await?;

    let models: Value = http
        .get(format!("{b}/api/v1/models"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(models["models"][0]["id"] == "tiny-flux-dev", "{models}");
    let ready = http.get(format!("{a}/ready")).send().await?;
    ensure!(ready.status() == 200);

    let body = json!({"prompt": "a red circle", "seed": 7, "num_images": 2,
                      "image_size": {"width": 64, "height": 64}, "num_inference_steps": 2});
    let id = submit(&http, &a, &body).await?;
    let done = completed(&http, &b, &id, Duration::from_secs(60)).await?;
    ensure!(done["outcome"] == "succeeded", "{done}");
    let answer = result(&http, &b, &id).await?;
    ensure!(
        answer["seed"] == 7 && answer["images"].as_array().map(Vec::len) == Some(2),
        "{answer}"
    );

    // The same request to a one-machine server makes the same images.
    assert_one_machine_images(&fleet, &http, &body, &answer).await?;

    // The sync route on the other node, and cancel of someone's job through another node.
    let sync: Value = http
        .post(format!("{b}/api/v1/flux/dev"))
        .json(&json!({"prompt": "a blue square", "seed": 3, "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1}))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        sync["seed"] == 3 && sync["images"][0]["width"] == 64,
        "{sync}"
    );
    // One Idempotency-Key sent to both nodes: one job.
    let keyed = |node: String| {
        let http = http.clone();
        let body = body.clone();
        async move {
            let response = http
                .post(format!("{node}/api/v1/queue/flux/dev"))
                .header("Idempotency-Key", "fleet-key-1")
                .json(&body)
                .send()
                .await?;
            anyhow::Ok(response.json::<Value>().await?)
        }
    };
    let (first, second) = tokio::join!(keyed(a.clone()), keyed(b.clone()));
    let (first, second) = (first?, second?);
    ensure!(
        first["request_id"] == second["request_id"],
        "{first} vs {second}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_and_a_stopped_one_leave_each_job_one_outcome() -> anyhow::Result<()> {
    let fleet = Fleet::start()?;
    let node = fleet.api_node()?;
    let node = node.url()?.to_owned();
    let http = reqwest::Client::new();
    // Long enough to be caught running (a few seconds on one thread).
    let slow = json!({"prompt": "a green star", "seed": 11,
                      "image_size": {"width": 512, "height": 512}, "num_inference_steps": 12});

    // SIGKILL mid-job: another worker finishes it.
    let mut doomed = fleet.worker()?;
    let id = submit(&http, &node, &slow).await?;
    wait_running(&http, &node, &id).await?;
    doomed.kill();
    let rescuer = fleet.worker()?;
    let done = completed(&http, &node, &id, Duration::from_secs(120)).await?;
    ensure!(done["outcome"] == "succeeded", "{done}");
    ensure!(log_count(&done, "completed") == 1, "{done}");
    ensure!(log_count(&done, "started on") == 2, "{done}");
    let first_answer = result(&http, &node, &id).await?;

    // SIGSTOP past the lease, then SIGCONT: the zombie changes nothing.
    let stopped = fleet.worker()?;
    let id2 = submit(
        &http,
        &node,
        &json!({"prompt": "a white ring", "seed": 12,
        "image_size": {"width": 512, "height": 512}, "num_inference_steps": 12}),
    )
    .await?;
    wait_running(&http, &node, &id2).await?;
    // Stop whichever worker runs it (the log names it: `started on worker-<pid>-…`).
    let running = status(&http, &node, &id2).await?;
    let runner: u32 = running["logs"]
        .as_array()
        .and_then(|logs| {
            logs.iter()
                .rev()
                .find_map(|line| line["message"].as_str()?.strip_prefix("started on worker-"))
        })
        .and_then(|rest| rest.split('-').next()?.parse().ok())
        .context("no worker named in the log")?;
    ensure!(
        runner == stopped.pid() || runner == rescuer.pid(),
        "{running}"
    );
    signal(runner, "STOP")?;
    let done2 = completed(&http, &node, &id2, Duration::from_secs(120)).await;
    signal(runner, "CONT")?;
    let done2 = done2?;
    ensure!(done2["outcome"] == "succeeded", "{done2}");
    let answer2 = result(&http, &node, &id2).await?;
    // Give the woken worker time to finish its own (stale) attempt.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = status(&http, &node, &id2).await?;
    ensure!(log_count(&after, "completed") == 1, "{after}");
    ensure!(
        result(&http, &node, &id2).await? == answer2,
        "the zombie changed the result"
    );
    ensure!(result(&http, &node, &id).await? == first_answer);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_with_jobs_queued_and_running_recovers_without_restarting_the_fleet()
-> anyhow::Result<()> {
    let mut fleet = Fleet::start()?;
    let node = fleet.api_node()?;
    let _worker = fleet.worker()?;
    let node = node.url()?.to_owned();
    let http = reqwest::Client::new();
    let body = |seed: u64| {
        json!({"prompt": "a purple cross", "seed": seed,
        "image_size": {"width": 256, "height": 256}, "num_inference_steps": 8})
    };
    let mut ids = Vec::new();
    for seed in 0..4 {
        ids.push(submit(&http, &node, &body(seed)).await?);
    }
    wait_running(&http, &node, &ids[0]).await?;
    fleet.nats.kill()?;
    // Meanwhile the API answers 503, not 500, and accepts nothing.
    let refused = http
        .post(format!("{node}/api/v1/queue/flux/dev"))
        .json(&body(9))
        .send()
        .await?;
    ensure!(
        refused.status() == 503,
        "submit without NATS answered {}",
        refused.status()
    );
    ensure!(
        refused.headers().get("retry-after").is_some(),
        "a 503 without Retry-After"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.nats.restart()?;
    for id in &ids {
        let done = completed(&http, &node, id, Duration::from_secs(120)).await?;
        ensure!(done["outcome"] == "succeeded", "{done}");
        ensure!(log_count(&done, "completed") == 1, "{done}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_refused_three_times_is_delivered_on_the_fourth_with_one_id() -> anyhow::Result<()>
{
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let fleet = Fleet::start()?;
    std::fs::write(
        fleet.dir.path().join("webhook-secret"),
        format!("{SECRET}\n"),
    )?;
    let flags = [
        "--webhook-secret-file",
        "webhook-secret",
        "--webhook-allow-private",
        "--webhook-first-retry",
        "1s",
    ];
    // Two API nodes take deliveries from the one stream: whichever does, one id.
    let a = fleet.api_node_with(&flags, &[])?;
    let _b = fleet.api_node_with(&flags, &[])?;
    let _worker = fleet.worker()?;
    let (hook, posts) = flaky_receiver(3)?;
    let http = reqwest::Client::new();
    let node = a.url()?;
    wait_served(&http, node).await?;
    let response = http
        .post(format!("{node}/api/v1/queue/flux/dev"))
        .query(&[("fal_webhook", hook.as_str())])
        .json(&json!({"prompt": "a yellow triangle", "seed": 5,
                      "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1}))
        .send()
        .await?;
    ensure!(response.status() == 202, "{}", response.status());
    let id = response.json::<Value>().await?["request_id"]
        .as_str()
        .context("no id")?
        .to_owned();
    let mut attempts = Vec::new();
    while attempts.len() < 4 {
        let post = posts
            .recv_timeout(Duration::from_secs(60))
            .with_context(|| format!("only {} webhook attempts arrived", attempts.len()))?;
        attempts.push(post);
    }
    ensure!(
        attempts
            .iter()
            .map(|(_, _, accepted)| *accepted)
            .collect::<Vec<_>>()
            == [false, false, false, true]
    );
    let header = |headers: &Headers, name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    for (headers, body, _) in &attempts {
        ensure!(
            header(headers, "webhook-id") == format!("msg_{id}"),
            "{headers:?}"
        );
        flux_remote::verify_webhook(
            SECRET,
            &header(headers, "webhook-id"),
            &header(headers, "webhook-timestamp"),
            &header(headers, "webhook-signature"),
            body,
            now,
        )?;
        ensure!(
            flux_remote::verify_webhook(
                "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                &header(headers, "webhook-id"),
                &header(headers, "webhook-timestamp"),
                &header(headers, "webhook-signature"),
                body,
                now,
            )
            .is_err(),
            "a wrong secret verified"
        );
        let body: Value = serde_json::from_slice(body)?;
        ensure!(
            body["request_id"] == id.as_str() && body["status"] == "OK",
            "{body}"
        );
        ensure!(
            body["payload"]["images"][0]["url"]
                .as_str()
                .is_some_and(|url| url.starts_with("http://127.0.0.1:")),
            "{body}"
        );
    }
    // Delivered: no fifth attempt.
    ensure!(
        posts.recv_timeout(Duration::from_secs(3)).is_err(),
        "a delivered webhook was sent again"
    );
    Ok(())
}

/// The bounded chaos soak: 200 jobs (256², 4 steps) over four workers, one of them SIGKILLed (and
/// replaced) every second, and nats-server SIGKILLed and restarted once half-way: every job
/// ends in exactly one terminal outcome, succeeded, with an image of the requested size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_soak_of_killed_workers_and_a_nats_restart_loses_no_job() -> anyhow::Result<()> {
    const JOBS: u64 = 200;
    let mut fleet = Fleet::start_with_depth("256", &[])?;
    let node = fleet.api_node()?;
    let node = node.url()?.to_owned();
    let mut workers = [
        fleet.worker()?,
        fleet.worker()?,
        fleet.worker()?,
        fleet.worker()?,
    ];
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for seed in 0..JOBS {
        let body = json!({"prompt": "chaos", "seed": seed,
                          "image_size": {"width": 256, "height": 256}, "num_inference_steps": 4});
        ids.push(submit(&http, &node, &body).await?);
    }
    let started = Instant::now();
    let mut kills = 0;
    let mut restarted = false;
    loop {
        let mut open = 0;
        for id in &ids {
            if let Ok(status) = status(&http, &node, id).await
                && status["status"] != "COMPLETED"
            {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(240),
            "{open} jobs still open after 4 minutes"
        );
        if !restarted && open <= JOBS as usize / 2 {
            fleet.nats.kill()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            fleet.nats.restart()?;
            restarted = true;
        } else if kills < 20 {
            let victim = usize::try_from(rand_index(kills, workers.len())).unwrap_or_default();
            workers[victim].kill();
            workers[victim] = fleet.worker()?;
            kills += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ensure!(restarted, "the soak ended before nats-server was restarted");
    ensure!(
        kills >= 3,
        "only {kills} workers were killed before the soak ended"
    );
    for id in &ids {
        let done = status(&http, &node, id).await?;
        ensure!(done["outcome"] == "succeeded", "{done}");
        ensure!(terminal_lines(&done) == 1, "{done}");
        let answer = result(&http, &node, id).await?;
        let image = image::load_from_memory(&image_bytes(&http, &answer, 0).await?)?;
        ensure!((image.width(), image.height()) == (256, 256));
    }
    Ok(())
}

/// A worker index that moves around without a random-number dependency in this test.
fn rand_index(kill: usize, workers: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.subsec_nanos())
        .unwrap_or_default();
    (u64::from(nanos) + kill as u64) % workers as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_with_images_in_s3_answers_presigned_urls_from_its_api_nodes() -> anyhow::Result<()>
{
    // A short retention: the API node deletes the image from S3 once it has passed.
    let fleet = Fleet::start_with_depth("128", &["--retention", "8s"])?;
    let s3 = flux_cluster::servers::SeaweedS3::start(
        &fleet.dir.path().join("s3"),
        "flux",
        "fleet-access",
        "fleet-secret-0123456789",
    )?;
    let env = [
        ("AWS_ACCESS_KEY_ID", "fleet-access".to_owned()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "fleet-secret-0123456789".to_owned(),
        ),
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_REGION", s3.region().to_owned()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
    ];
    let store = ["--image-store", "s3://flux/images"];
    let node = fleet.api_node_with(&store, &env)?;
    let _worker = fleet.worker_with(&store, &env)?;
    let http = reqwest::Client::new();
    let node = node.url()?;
    let id = submit(
        &http,
        node,
        &json!({"prompt": "an orange ring", "seed": 2,
        "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1}),
    )
    .await?;
    completed(&http, node, &id, Duration::from_secs(60)).await?;
    let answer = result(&http, node, &id).await?;
    let image_url = answer["images"][0]["url"].as_str().context("no url")?;
    ensure!(
        image_url.starts_with(&s3.endpoint()) && image_url.contains("X-Amz-Signature="),
        "{answer}"
    );
    let decoded = image::load_from_memory(&image_bytes(&http, &answer, 0).await?)?;
    ensure!((decoded.width(), decoded.height()) == (64, 64));
    let name = image_url
        .split('?')
        .next()
        .and_then(|path| path.rsplit('/').next())
        .context("no object name in the URL")?;
    let objects = flux_cluster::S3Images::on_endpoint(
        "s3://flux/images",
        &s3.endpoint(),
        s3.region(),
        "fleet-access",
        "fleet-secret-0123456789",
        Duration::from_secs(60),
    )?;
    ensure!(objects.get(name).await?.is_some(), "{name} is not in S3");
    let deadline = Instant::now() + Duration::from_secs(40);
    while objects.get(name).await?.is_some() {
        ensure!(
            Instant::now() < deadline,
            "{name} is still in S3 past the retention"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_with_images_in_the_jetstream_object_store_serves_them_from_every_api_node()
-> anyhow::Result<()> {
    let fleet = Fleet::start()?;
    let store = ["--image-store", "nats://"];
    let a = fleet.api_node_with(&store, &[])?;
    let b = fleet.api_node_with(&store, &[])?;
    let _worker = fleet.worker_with(&store, &[])?;
    let http = reqwest::Client::new();
    let (a, b) = (a.url()?, b.url()?);
    let id = submit(
        &http,
        a,
        &json!({"prompt": "a black square", "seed": 4,
        "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1}),
    )
    .await?;
    completed(&http, a, &id, Duration::from_secs(60)).await?;
    let answer = result(&http, a, &id).await?;
    let image_url = answer["images"][0]["url"].as_str().context("no url")?;
    ensure!(
        image_url.starts_with(&format!("{a}/api/v1/files/")),
        "{answer}"
    );
    let from_a = image_bytes(&http, &answer, 0).await?;
    let name = image_url.rsplit('/').next().context("no name")?;
    let from_b = http
        .get(format!("{b}/api/v1/files/{name}"))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    ensure!(
        from_a == from_b.to_vec(),
        "both API nodes serve the same object"
    );
    let decoded = image::load_from_memory(&from_a)?;
    ensure!((decoded.width(), decoded.height()) == (64, 64));
    let missing = http
        .get(format!("{b}/api/v1/files/{}.jpg", "0".repeat(32)))
        .send()
        .await?;
    ensure!(missing.status() == 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_cancelled_on_another_node_stops_its_worker_within_a_step()
-> anyhow::Result<()> {
    let fleet = Fleet::start()?;
    let (a, b) = (fleet.api_node()?, fleet.api_node()?);
    let _worker = fleet.worker()?;
    let http = reqwest::Client::new();
    let (a, b) = (a.url()?, b.url()?);
    wait_served(&http, b).await?;
    let id = submit(
        &http,
        a,
        &json!({"prompt": "a long job", "seed": 8,
        "image_size": {"width": 512, "height": 512}, "num_inference_steps": 40}),
    )
    .await?;
    wait_running(&http, a, &id).await?;
    let cancelled = http
        .put(format!("{b}/api/v1/queue/flux/dev/requests/{id}/cancel"))
        .send()
        .await?;
    ensure!(
        cancelled.status() == 202,
        "cancel answered {}",
        cancelled.status()
    );
    let done = completed(&http, a, &id, Duration::from_secs(10)).await?;
    ensure!(done["outcome"] == "cancelled", "{done}");
    // The worker is free again at once: a short job after it completes quickly.
    let started = Instant::now();
    let next = submit(
        &http,
        b,
        &json!({"prompt": "next", "seed": 9,
        "image_size": {"width": 64, "height": 64}, "num_inference_steps": 1}),
    )
    .await?;
    let after = completed(&http, b, &next, Duration::from_secs(30)).await?;
    ensure!(after["outcome"] == "succeeded", "{after}");
    let steps_done = log_count(&status(&http, a, &id).await?, "step ");
    ensure!(steps_done < 40, "the cancelled job ran all its steps");
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "the worker was not freed by the cancel"
    );
    Ok(())
}
