//! A fleet on a real nats-server, in one process: API-node job services and workers over fake
//! generators. Each test asserts the fleet's invariant for its case: every accepted job ends in
//! exactly one terminal outcome, seen the same from every node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flux_cluster::servers::NatsServer;
use flux_cluster::{Fleet, FleetJobs, FleetSettings, FolderImages, Worker, WorkerConfig};
use flux_service::{
    IdempotencyScope, JobResult, JobService, JobState, Owner, ServiceError, Submission,
};
use flux_types::test_util::{FakeGenerator, fake_model};
use flux_types::{GenerateResponse, GeneratorError, VariantSpec, parse_request_for};

const OWNER: Owner = Owner([7; 32]);

fn settings() -> FleetSettings {
    FleetSettings {
        ack_wait: Duration::from_millis(800),
        max_deliver: 3,
        queue_depth: 8,
        retention: Duration::from_secs(600),
        duplicate_window: Duration::from_secs(120),
        memory_storage: false,
        replicas: 1,
    }
}

struct Harness {
    nats: NatsServer,
    images: tempfile::TempDir,
    _store: tempfile::TempDir,
    settings: FleetSettings,
}

impl Harness {
    fn start(settings: FleetSettings) -> Result<Harness> {
        let store = tempfile::tempdir()?;
        let nats = NatsServer::start(store.path()).context("start nats-server")?;
        Ok(Harness {
            nats,
            images: tempfile::tempdir()?,
            _store: store,
            settings,
        })
    }

    async fn fleet(&self) -> Result<Fleet> {
        let client = async_nats::connect(self.nats.url()).await?;
        Ok(Fleet::open(client, self.settings).await?)
    }

    async fn node(&self) -> Result<FleetJobs> {
        let client = async_nats::connect(self.nats.url()).await?;
        let fleet = Fleet::open(client.clone(), self.settings).await?;
        let images = Arc::new(FolderImages::new(self.images.path())?);
        Ok(FleetJobs::open(client, fleet, images, "http://api.test".to_owned()).await?)
    }

    /// Starts a worker over `generator` in a task; abort the handle to kill it (no more acks,
    /// heartbeats or writes, as a SIGKILL).
    async fn worker(
        &self,
        generator: Arc<FakeGenerator>,
        name: &str,
    ) -> Result<tokio::task::JoinHandle<()>> {
        self.worker_with_hook(generator, name, None).await
    }

    /// As [`Harness::worker`], with a fault-injection hook.
    async fn worker_with_hook(
        &self,
        generator: Arc<FakeGenerator>,
        name: &str,
        stage_hook: Option<flux_cluster::StageHook>,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let fleet = self.fleet().await?;
        let images = Arc::new(FolderImages::new(self.images.path())?);
        let worker = Worker::new(
            fleet,
            generator,
            images,
            WorkerConfig {
                name: name.to_owned(),
                job_timeout: Duration::from_secs(60),
                stats: Default::default(),
                stage_hook,
            },
        );
        Ok(tokio::spawn(async move {
            if let Err(error) = worker.run(std::future::pending()).await {
                panic!("worker failed: {error}");
            }
        }))
    }
}

fn fake(delay: Duration) -> Arc<FakeGenerator> {
    Arc::new(
        FakeGenerator::new()
            .with_delay(delay)
            .serving(fake_model("fake-dev", VariantSpec::dev())),
    )
}

fn submission(body: &str) -> Result<Submission> {
    Ok(Submission {
        request: parse_request_for(body.as_bytes(), VariantSpec::dev())?,
        owner: OWNER,
        model: "dev".to_owned(),
        deadline: None,
        on_finish: None,
        keep_record: true,
        webhook: None,
        idempotency: None,
    })
}

async fn wait_end(
    node: &FleetJobs,
    id: &flux_service::JobId,
    within: Duration,
) -> Result<JobResult> {
    let events = node.events(id, OWNER).await?;
    match tokio::time::timeout(within, events.wait()).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("job {id} did not end within {within:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_on_one_node_is_run_by_a_worker_and_answered_by_another() -> Result<()> {
    let harness = Harness::start(settings())?;
    let (a, b) = (harness.node().await?, harness.node().await?);
    let generator = fake(Duration::from_millis(50));
    let _worker = harness.worker(Arc::clone(&generator), "w1").await?;
    let submitted = a
        .submit(submission(
            r#"{"prompt": "a red circle", "seed": 42, "num_images": 2}"#,
        )?)
        .await?;
    assert_eq!(submitted.seed, 42);
    let JobResult::Succeeded(stored) = wait_end(&b, &submitted.id, Duration::from_secs(20)).await?
    else {
        bail!("the job did not succeed");
    };
    let body: GenerateResponse = serde_json::from_slice(&stored.body)?;
    assert_eq!(body.images.len(), 2);
    assert_eq!(body.seed, 42);
    for image in &body.images {
        let name = image
            .url
            .strip_prefix("http://api.test/api/v1/files/")
            .with_context(|| format!("an image URL on the API's file route: {}", image.url))?;
        assert!(
            harness.images.path().join(name).is_file(),
            "{name} is in the shared folder"
        );
    }
    // Any node answers, and the same; nobody else's.
    let status = b.status(&submitted.id, OWNER).await?;
    assert!(matches!(
        status.state,
        JobState::Completed(JobResult::Succeeded(_))
    ));
    let record = a.record(&submitted.id, OWNER).await?;
    assert!(
        record
            .logs
            .iter()
            .any(|line| line.message.starts_with("started on w1"))
    );
    assert!(matches!(
        b.status(&submitted.id, Owner([8; 32])).await,
        Err(ServiceError::NotFound)
    ));
    assert_eq!(generator.calls(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_records_nothing() -> Result<()> {
    let harness = Harness::start(FleetSettings {
        queue_depth: 2,
        ..settings()
    })?;
    let node = harness.node().await?;
    let first = node.submit(submission(r#"{"prompt": "one"}"#)?).await?;
    let second = node.submit(submission(r#"{"prompt": "two"}"#)?).await?;
    assert_eq!((first.queue_position, second.queue_position), (0, 1));
    let refused = node.submit(submission(r#"{"prompt": "three"}"#)?).await;
    assert!(
        matches!(refused, Err(ServiceError::Overloaded)),
        "{refused:?}"
    );
    let fleet = harness.fleet().await?;
    let mut keys = fleet_keys(&fleet).await?;
    keys.sort();
    let mut expected = vec![first.id.to_string(), second.id.to_string()];
    expected.sort();
    assert_eq!(keys, expected, "only the accepted jobs have records");
    // A cancelled queued job frees its place at once.
    node.cancel(&first.id, OWNER).await?;
    node.submit(submission(r#"{"prompt": "four"}"#)?).await?;
    Ok(())
}

async fn fleet_keys(fleet: &Fleet) -> Result<Vec<String>> {
    use futures::StreamExt as _;
    let client = fleet.client();
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value(flux_cluster::JOBS_BUCKET).await?;
    let mut keys = kv.keys().await?;
    let mut all = Vec::new();
    while let Some(key) = keys.next().await {
        all.push(key?);
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_cancelled_stops_within_a_moment_and_ends_cancelled_only() -> Result<()> {
    let harness = Harness::start(settings())?;
    let node = harness.node().await?;
    let generator = fake(Duration::from_secs(30));
    let _worker = harness.worker(Arc::clone(&generator), "w1").await?;
    let submitted = node.submit(submission(r#"{"prompt": "slow"}"#)?).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while generator.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        if Instant::now() > deadline {
            bail!("the job never started");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled_at = Instant::now();
    node.cancel(&submitted.id, OWNER).await?;
    while generator.running.load(std::sync::atomic::Ordering::SeqCst) != 0 {
        if cancelled_at.elapsed() > Duration::from_secs(3) {
            bail!("the generation did not stop after the cancel");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        wait_end(&node, &submitted.id, Duration::from_secs(5)).await?,
        JobResult::Cancelled
    ));
    assert!(matches!(
        node.cancel(&submitted.id, OWNER).await,
        Err(ServiceError::AlreadyCompleted)
    ));
    // The worker goes on to the next job.
    generator
        .delay
        .lock()
        .map(|mut delay| *delay = Duration::from_millis(10))
        .ok();
    let next = node.submit(submission(r#"{"prompt": "next"}"#)?).await?;
    assert!(matches!(
        wait_end(&node, &next.id, Duration::from_secs(20)).await?,
        JobResult::Succeeded(_)
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_to_two_nodes_at_once_makes_one_job() -> Result<()> {
    let harness = Harness::start(settings())?;
    let (a, b) = (harness.node().await?, harness.node().await?);
    let keyed = |body: &str| -> Result<Submission> {
        Ok(Submission {
            idempotency: Some(IdempotencyScope {
                key: "order-17".to_owned(),
                body_digest: [body.len() as u8; 32],
            }),
            ..submission(body)?
        })
    };
    let body = r#"{"prompt": "a blue star"}"#;
    let (first, second) = tokio::join!(a.submit(keyed(body)?), b.submit(keyed(body)?));
    let (first, second) = (first?, second?);
    assert_eq!(first.id, second.id);
    assert_eq!(first.seed, second.seed, "one seed, drawn once");
    assert_eq!(u8::from(first.replayed) + u8::from(second.replayed), 1);
    let other = b.submit(keyed(r#"{"prompt": "another body"}"#)?).await;
    assert!(
        matches!(other, Err(ServiceError::IdempotencyMismatch)),
        "{other:?}"
    );
    let generator = fake(Duration::from_millis(10));
    let _worker = harness.worker(Arc::clone(&generator), "w1").await?;
    assert!(matches!(
        wait_end(&a, &first.id, Duration::from_secs(20)).await?,
        JobResult::Succeeded(_)
    ));
    assert_eq!(generator.calls(), 1, "one job, one generation");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_every_attempt_ends_failed_after_the_last_and_the_worker_goes_on()
-> Result<()> {
    let harness = Harness::start(settings())?;
    let node = harness.node().await?;
    let generator = Arc::new(
        FakeGenerator::new()
            .serving(fake_model("fake-dev", VariantSpec::dev()))
            .failing_with(GeneratorError::Inference {
                detail: "the engine crashed".to_owned(),
            }),
    );
    let _worker = harness.worker(Arc::clone(&generator), "w1").await?;
    let submitted = node.submit(submission(r#"{"prompt": "poison"}"#)?).await?;
    let result = wait_end(&node, &submitted.id, Duration::from_secs(30)).await?;
    assert!(matches!(result, JobResult::Failed(_)), "{result:?}");
    assert_eq!(generator.calls(), 3, "max_deliver attempts");
    // No orphan message: the stream is empty once the job ended.
    let fleet = harness.fleet().await?;
    let (mut stream, _) = fleet.model_queue("dev").await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while stream.info().await?.state.messages != 0 {
        if Instant::now() > deadline {
            bail!("the poison job's message is still in the stream");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    generator.fail_with(None);
    let next = node.submit(submission(r#"{"prompt": "fine"}"#)?).await?;
    assert!(matches!(
        wait_end(&node, &next.id, Duration::from_secs(20)).await?,
        JobResult::Succeeded(_)
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_dies_mid_run_is_finished_by_another_once() -> Result<()> {
    let harness = Harness::start(settings())?;
    let node = harness.node().await?;
    let doomed = fake(Duration::from_secs(60));
    let first = harness.worker(Arc::clone(&doomed), "w1").await?;
    let submitted = node.submit(submission(r#"{"prompt": "survive"}"#)?).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while doomed.calls() == 0 {
        if Instant::now() > deadline {
            bail!("the job never started");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.abort();
    let rescuer = fake(Duration::from_millis(20));
    let _second = harness.worker(Arc::clone(&rescuer), "w2").await?;
    let result = wait_end(&node, &submitted.id, Duration::from_secs(30)).await?;
    assert!(matches!(result, JobResult::Succeeded(_)), "{result:?}");
    assert_eq!(rescuer.calls(), 1);
    let record = node.record(&submitted.id, OWNER).await?;
    let completions = record
        .logs
        .iter()
        .filter(|line| line.message == "completed")
        .count();
    assert_eq!(completions, 1, "one terminal outcome: {:?}", record.logs);
    assert!(
        record
            .logs
            .iter()
            .any(|line| line.message.starts_with("started on w2 (attempt 2"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_racing_their_cancels_each_end_cancelled_or_succeeded_never_both() -> Result<()> {
    let harness = Harness::start(FleetSettings {
        queue_depth: 256,
        ..settings()
    })?;
    let (a, b) = (harness.node().await?, harness.node().await?);
    let generator = fake(Duration::ZERO);
    let _worker = harness.worker(Arc::clone(&generator), "w1").await?;
    let mut races = Vec::new();
    for index in 0..200u32 {
        let (a, b) = (a.clone(), b.clone());
        races.push(tokio::spawn(async move {
            let submitted = a
                .submit(submission(&format!(r#"{{"prompt": "race {index}"}}"#))?)
                .await?;
            // Cancel through the other node, some at once and some a moment later.
            if index % 3 == 1 {
                tokio::time::sleep(Duration::from_millis(u64::from(index % 7))).await;
            }
            let cancel = b.cancel(&submitted.id, OWNER).await;
            anyhow::Ok((submitted.id, cancel))
        }));
    }
    let mut cancelled = 0;
    for race in races {
        let (id, cancel) = race.await??;
        let result = wait_end(&a, &id, Duration::from_secs(60)).await?;
        let record = b.record(&id, OWNER).await?;
        let ends = record
            .logs
            .iter()
            .filter(|line| matches!(line.message.as_str(), "completed" | "cancelled" | "failed"))
            .count();
        assert_eq!(ends, 1, "one terminal outcome: {:?}", record.logs);
        match cancel {
            Ok(_) => {
                assert!(
                    matches!(result, JobResult::Cancelled),
                    "a cancel that was accepted, then {result:?}"
                );
                cancelled += 1;
            }
            Err(ServiceError::AlreadyCompleted) => {
                assert!(matches!(result, JobResult::Succeeded(_)), "{result:?}")
            }
            Err(error) => bail!("cancel failed: {error}"),
        }
    }
    assert!(cancelled > 0, "no cancel won a race");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_stream_broken_off_is_taken_up_on_another_node_from_where_the_job_is() -> Result<()>
{
    let harness = Harness::start(settings())?;
    let (a, b) = (harness.node().await?, harness.node().await?);
    let generator = fake(Duration::from_millis(600));
    let _worker = harness.worker(Arc::clone(&generator), "w1").await?;
    let submitted = a.submit(submission(r#"{"prompt": "stream"}"#)?).await?;
    let mut first = a.events(&submitted.id, OWNER).await?;
    let opening = first.next().await.context("no first status")?;
    assert!(!opening.state.is_terminal());
    drop(first);
    // The client reconnects to the other node: the current status first, then to the end.
    let mut second = b.events(&submitted.id, OWNER).await?;
    let mut statuses = Vec::new();
    while let Some(status) = tokio::time::timeout(Duration::from_secs(20), second.next()).await? {
        statuses.push(status);
    }
    let last = statuses.last().context("no status after reconnecting")?;
    assert!(
        matches!(last.state, JobState::Completed(JobResult::Succeeded(_))),
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|status| status.state.is_terminal())
            .count(),
        1,
        "the stream ends after the one terminal status"
    );
    Ok(())
}

/// A hook that freezes the attempt for good at `stage` (the test then kills the worker there) and
/// says when it got there.
fn freeze_at(stage: flux_cluster::Stage) -> (flux_cluster::StageHook, Arc<tokio::sync::Notify>) {
    let reached = Arc::new(tokio::sync::Notify::new());
    let told = Arc::clone(&reached);
    let hook: flux_cluster::StageHook = Arc::new(move |at, _record| {
        let told = Arc::clone(&told);
        Box::pin(async move {
            if at == stage {
                told.notify_one();
                std::future::pending::<()>().await;
            }
        })
    });
    (hook, reached)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_its_upload_before_its_record_leaves_the_next_attempts_images()
-> Result<()> {
    let harness = Harness::start(settings())?;
    let node = harness.node().await?;
    let (hook, reached) = freeze_at(flux_cluster::Stage::Uploaded);
    let first = harness
        .worker_with_hook(fake(Duration::ZERO), "w1", Some(hook))
        .await?;
    let submitted = node
        .submit(submission(
            r#"{"prompt": "upload then die", "num_images": 2}"#,
        )?)
        .await?;
    tokio::time::timeout(Duration::from_secs(10), reached.notified()).await?;
    first.abort();
    let second = fake(Duration::ZERO);
    let _rescuer = harness.worker(Arc::clone(&second), "w2").await?;
    let JobResult::Succeeded(stored) =
        wait_end(&node, &submitted.id, Duration::from_secs(30)).await?
    else {
        bail!("the job did not succeed");
    };
    assert_eq!(second.calls(), 1);
    let body: GenerateResponse = serde_json::from_slice(&stored.body)?;
    let named: Vec<String> = body
        .images
        .iter()
        .filter_map(|image| image.url.rsplit('/').next().map(str::to_owned))
        .collect();
    for (index, name) in named.iter().enumerate() {
        // Attempt 2's own objects: attempt 1's (written, never recorded) are left apart.
        assert_eq!(
            name,
            &flux_cluster::image_name(submitted.id.as_str(), 2, index, "jpg")
        );
        let first_attempt = flux_cluster::image_name(submitted.id.as_str(), 1, index, "jpg");
        assert!(
            harness.images.path().join(&first_attempt).is_file(),
            "attempt 1 uploaded {first_attempt}"
        );
    }
    let record = node.record(&submitted.id, OWNER).await?;
    assert_eq!(
        record
            .logs
            .iter()
            .filter(|line| line.message == "completed")
            .count(),
        1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_its_record_before_its_ack_leaves_one_result_and_no_rerun()
-> Result<()> {
    let harness = Harness::start(settings())?;
    let node = harness.node().await?;
    let (hook, reached) = freeze_at(flux_cluster::Stage::Recorded);
    let first = harness
        .worker_with_hook(fake(Duration::ZERO), "w1", Some(hook))
        .await?;
    let submitted = node
        .submit(submission(r#"{"prompt": "record then die"}"#)?)
        .await?;
    tokio::time::timeout(Duration::from_secs(10), reached.notified()).await?;
    let before = node.record(&submitted.id, OWNER).await?;
    first.abort();
    let second = fake(Duration::ZERO);
    let _next = harness.worker(Arc::clone(&second), "w2").await?;
    // The unacked message comes back after ack_wait; the next worker finds the job done and acks.
    let fleet = harness.fleet().await?;
    let (mut stream, _) = fleet.model_queue("dev").await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while stream.info().await?.state.messages != 0 {
        if Instant::now() > deadline {
            bail!("the recorded job's message was never acked");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(second.calls(), 0, "a recorded job is not run again");
    let after = node.record(&submitted.id, OWNER).await?;
    assert_eq!(after.completed_at, before.completed_at);
    assert_eq!(after.logs.len(), before.logs.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_job_is_forgotten_after_the_retention_on_every_node() -> Result<()> {
    let harness = Harness::start(FleetSettings {
        retention: Duration::from_secs(2),
        ..settings()
    })?;
    let (a, b) = (harness.node().await?, harness.node().await?);
    let _worker = harness.worker(fake(Duration::ZERO), "w1").await?;
    let submitted = a
        .submit(submission(r#"{"prompt": "short-lived"}"#)?)
        .await?;
    assert!(matches!(
        wait_end(&a, &submitted.id, Duration::from_secs(20)).await?,
        JobResult::Succeeded(_)
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match b.status(&submitted.id, OWNER).await {
            Err(ServiceError::NotFound) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => bail!("the record outlived its retention: {other:?}"),
        }
    }
    assert!(matches!(
        a.record(&submitted.id, OWNER).await,
        Err(ServiceError::NotFound)
    ));
    Ok(())
}

/// Every status of a job's events, to the terminal one.
async fn all_statuses(mut events: flux_service::JobEvents) -> Result<Vec<flux_service::JobStatus>> {
    let mut statuses = Vec::new();
    while let Some(status) = tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
        statuses.push(status);
    }
    Ok(statuses)
}

/// The step lines of a job's log.
fn step_lines(record: &flux_service::JobRecord) -> Vec<String> {
    record
        .logs
        .iter()
        .filter(|line| line.message.starts_with("step "))
        .map(|line| line.message.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_steps_are_written_with_the_end_and_slow_ones_each_as_they_come() -> Result<()> {
    let harness = Harness::start(settings())?;
    let node = harness.node().await?;
    let fast = Arc::new(
        FakeGenerator::new()
            .stepping(Duration::from_millis(1))
            .serving(fake_model("fake-dev", VariantSpec::dev())),
    );
    let worker = harness.worker(Arc::clone(&fast), "w1").await?;
    // Four steps within the progress period: one write, the end's, carries the last of them.
    let quick = node
        .submit(submission(
            r#"{"prompt": "quick", "num_inference_steps": 4}"#,
        )?)
        .await?;
    let statuses = all_statuses(quick.events).await?;
    assert!(matches!(
        wait_end(&node, &quick.id, Duration::from_secs(20)).await?,
        JobResult::Succeeded(_)
    ));
    let record = node.record(&quick.id, OWNER).await?;
    assert_eq!(step_lines(&record), ["step 4/4"], "{:?}", record.logs);
    let last_two: Vec<&str> = record
        .logs
        .iter()
        .rev()
        .take(2)
        .map(|line| line.message.as_str())
        .collect();
    assert_eq!(last_two, ["completed", "step 4/4"]);
    assert!(statuses.len() <= 3, "running, then done: {statuses:?}");
    worker.abort();

    // Steps farther apart than the period are each written as it comes, and streamed.
    let slow = Arc::new(
        FakeGenerator::new()
            .stepping(Duration::from_millis(250))
            .serving(fake_model("fake-dev", VariantSpec::dev())),
    );
    let _worker = harness.worker(Arc::clone(&slow), "w2").await?;
    let steady = node
        .submit(submission(
            r#"{"prompt": "steady", "num_inference_steps": 3}"#,
        )?)
        .await?;
    let statuses = all_statuses(steady.events).await?;
    let steps: Vec<u32> = statuses
        .iter()
        .filter_map(|status| match &status.state {
            JobState::Running(progress) => Some(progress.step),
            _ => None,
        })
        .collect();
    // The last step comes with the end (the generation is over within the period after it).
    assert!(
        steps.is_sorted() && steps.contains(&1) && steps.contains(&2),
        "{steps:?}"
    );
    let record = node.record(&steady.id, OWNER).await?;
    assert_eq!(
        step_lines(&record),
        ["step 1/3", "step 2/3", "step 3/3"],
        "{:?}",
        record.logs
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_submits_deadline_fails_timed_out_on_the_worker() -> Result<()> {
    let harness = Harness::start(settings())?;
    let node = harness.node().await?;
    // The worker's own limit is a minute; the submit's (an API node's --request-timeout) wins.
    let _worker = harness.worker(fake(Duration::from_secs(30)), "w1").await?;
    let mut timed = submission(r#"{"prompt": "too slow"}"#)?;
    timed.deadline = Some(Duration::from_millis(400));
    let started = Instant::now();
    let submitted = node.submit(timed).await?;
    let result = wait_end(&node, &submitted.id, Duration::from_secs(20)).await?;
    assert!(
        matches!(
            result,
            JobResult::Failed(flux_service::JobFailure::TimedOut { limit_secs: 0 })
        ),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let record = node.record(&submitted.id, OWNER).await?;
    assert_eq!(
        record
            .logs
            .iter()
            .filter(|line| line.message.starts_with("started on"))
            .count(),
        1,
        "a timed-out job is not tried again: {:?}",
        record.logs
    );
    Ok(())
}
