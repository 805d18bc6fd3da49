//! The reaper on a real nats-server: records left non-terminal with no message to carry them
//! (an API node dead between its two writes, a lost message, a zombie's ack) are queued again or
//! ended, owed webhooks are queued, and a healthy job is left alone; two reapers at once do each
//! thing once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use flux_cluster::servers::NatsServer;
use flux_cluster::{
    Fleet, FleetJobs, FleetRecord, FleetSettings, FolderImages, JOBS_BUCKET, ReapReport, Reaper,
    ReaperConfig, Records, Worker, WorkerConfig, job_subject,
};
use flux_service::{
    JobFailure, JobId, JobRecord, JobResult, JobService, JobState, Owner, Submission,
};
use flux_types::test_util::{FakeGenerator, fake_model};
use flux_types::{GeneratorError, QueueProgress, VariantSpec, parse_request_for};
use futures::StreamExt as _;

const OWNER: Owner = Owner([7; 32]);
const GRACE: Duration = Duration::from_millis(300);
/// Jobs the racing reapers find stranded.
const STRANDED: u8 = 12;
const REQUEUED: &str = "queued again by the reaper (its message was lost)";

fn settings() -> FleetSettings {
    FleetSettings {
        // A lease of one second.
        ack_wait: Duration::from_millis(500),
        max_deliver: 3,
        queue_depth: 64,
        retention: Duration::from_secs(600),
        duplicate_window: Duration::from_secs(120),
        memory_storage: false,
        replicas: 1,
    }
}

fn config() -> ReaperConfig {
    ReaperConfig {
        every: Duration::from_millis(100),
        grace: GRACE,
    }
}

struct Harness {
    nats: NatsServer,
    images: tempfile::TempDir,
    _store: tempfile::TempDir,
}

impl Harness {
    fn start() -> Result<Harness> {
        let store = tempfile::tempdir()?;
        let nats = NatsServer::start(store.path()).context("start nats-server")?;
        Ok(Harness {
            nats,
            images: tempfile::tempdir()?,
            _store: store,
        })
    }

    /// A fleet on its own connection, as each API node or worker has.
    async fn fleet(&self) -> Result<Fleet> {
        let client = async_nats::connect(self.nats.url()).await?;
        Ok(Fleet::open(client, settings()).await?)
    }

    async fn reaper(&self) -> Result<Reaper> {
        Ok(Reaper::new(self.fleet().await?, config()))
    }

    async fn js(&self) -> Result<jetstream::Context> {
        Ok(jetstream::new(async_nats::connect(self.nats.url()).await?))
    }

    async fn records(&self) -> Result<Records> {
        self.fleet().await?;
        Ok(Records::new(
            self.js().await?.get_key_value(JOBS_BUCKET).await?,
        ))
    }

    /// Messages in the `dev` model's job stream.
    async fn job_messages(&self) -> Result<u64> {
        let (mut stream, _) = self.fleet().await?.model_queue("dev").await?;
        Ok(stream.info().await?.state.messages)
    }

    async fn webhook_messages(&self) -> Result<u64> {
        let mut stream = self.js().await?.get_stream("FLUX_WEBHOOKS").await?;
        Ok(stream.info().await?.state.messages)
    }

    /// Publishes a job's message as a submit does.
    async fn publish(&self, id: &str) -> Result<()> {
        self.fleet().await?.model_queue("dev").await?;
        let message = jetstream::message::PublishMessage::build()
            .payload(id.to_owned().into())
            .message_id(id);
        self.js()
            .await?
            .send_publish(job_subject("dev", id), message)
            .await?
            .await?;
        Ok(())
    }

    async fn worker(&self, name: &str) -> Result<tokio::task::JoinHandle<()>> {
        let generator =
            Arc::new(FakeGenerator::new().serving(fake_model("fake-dev", VariantSpec::dev())));
        let worker = Worker::new(
            self.fleet().await?,
            generator,
            Arc::new(FolderImages::new(self.images.path())?),
            WorkerConfig {
                name: name.to_owned(),
                job_timeout: Duration::from_secs(30),
                stats: Default::default(),
                stage_hook: None,
            },
        );
        Ok(tokio::spawn(async move {
            if let Err(error) = worker.run(std::future::pending()).await {
                panic!("worker failed: {error}");
            }
        }))
    }
}

fn id(n: u8) -> Result<JobId> {
    JobId::parse(&format!("{n:032x}")).context("a job id")
}

/// A record as a submit writes it, submitted `age` ago, in `state`.
fn record(n: u8, state: JobState, age: Duration) -> Result<FleetRecord> {
    let submitted_at = SystemTime::now() - age;
    let job = JobRecord {
        id: id(n)?,
        owner: OWNER,
        model: "dev".to_owned(),
        request: parse_request_for(
            br#"{"prompt": "a lost cat", "seed": 7}"#,
            VariantSpec::dev(),
        )?,
        state,
        logs: Vec::new(),
        webhook: None,
        webhook_owed: false,
        submitted_at,
        completed_at: None,
        keep_record: true,
    };
    Ok(FleetRecord::new(job, None))
}

/// A record whose attempt `attempt` ran on a worker that went silent `silent` ago.
fn running(n: u8, attempt: u32, silent: Duration) -> Result<FleetRecord> {
    let mut record = record(
        n,
        JobState::Running(QueueProgress {
            step: 3,
            total_steps: 28,
        }),
        silent + Duration::from_secs(1),
    )?;
    record.attempt = attempt;
    record.worker = Some("w-gone".to_owned());
    record.heartbeat = SystemTime::now() - silent;
    Ok(record)
}

async fn get(records: &Records, n: u8) -> Result<(FleetRecord, u64)> {
    records
        .get(id(n)?.as_str())
        .await?
        .context("the record is there")
}

fn gave_up(record: &FleetRecord) -> bool {
    matches!(
        &record.job.state,
        JobState::Completed(JobResult::Failed(JobFailure::Generator(
            GeneratorError::Inference { detail }
        ))) if detail.starts_with("gave up after 3 attempts")
    ) && record.job.completed_at.is_some()
        && record
            .job
            .logs
            .iter()
            .any(|line| line.message == "failed: gave up after 3 attempts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_written_without_its_message_is_published_after_the_grace_and_then_run()
-> Result<()> {
    let harness = Harness::start()?;
    let records = harness.records().await?;
    let reaper = harness.reaper().await?;
    // The API node died between writing the record and publishing its message.
    records
        .create(&record(1, JobState::Queued, Duration::ZERO)?)
        .await?
        .context("created")?;
    let early = reaper.pass().await?;
    assert_eq!(
        early,
        ReapReport {
            examined: 1,
            ..Default::default()
        },
        "within the grace the submit may still be publishing"
    );
    assert_eq!(harness.job_messages().await?, 0);

    tokio::time::sleep(GRACE + Duration::from_millis(100)).await;
    let late = reaper.pass().await?;
    assert_eq!((late.republished, late.failed, late.errors), (1, 0, 0));
    assert_eq!(harness.job_messages().await?, 1);
    let (requeued, _) = get(&records, 1).await?;
    assert!(matches!(requeued.job.state, JobState::Queued));
    assert_eq!(requeued.worker, None);
    assert!(
        requeued
            .job
            .logs
            .iter()
            .any(|line| line.message == REQUEUED)
    );
    // Queued again just now: the next pass gives it another grace.
    assert_eq!(reaper.pass().await?.republished, 0);
    assert_eq!(harness.job_messages().await?, 1);

    let _worker = harness.worker("w1").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now, _) = get(&records, 1).await?;
        match now.job.state {
            JobState::Completed(JobResult::Succeeded(_)) => break,
            JobState::Completed(other) => bail!("the job ended {other:?}"),
            _ if Instant::now() > deadline => bail!("the job was not run: {:?}", now.job.logs),
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_lost_within_the_duplicate_window_is_published_again() -> Result<()> {
    let harness = Harness::start()?;
    let records = harness.records().await?;
    records
        .create(&record(1, JobState::Queued, GRACE * 3)?)
        .await?
        .context("created")?;
    // Published as a submit does (the job id as its `Nats-Msg-Id`), then lost.
    harness.publish(id(1)?.as_str()).await?;
    let (stream, _) = harness.fleet().await?.model_queue("dev").await?;
    let message = stream
        .direct_get_last_for_subject(job_subject("dev", id(1)?.as_str()))
        .await?;
    assert!(stream.delete_message(message.sequence).await?);
    assert_eq!(harness.job_messages().await?, 0);
    let report = harness.reaper().await?.pass().await?;
    assert_eq!(report.republished, 1, "{report:?}");
    assert_eq!(
        harness.job_messages().await?,
        1,
        "not swallowed as a duplicate of the lost one"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapers_passing_at_once_publish_each_stranded_job_once() -> Result<()> {
    let harness = Harness::start()?;
    let records = harness.records().await?;
    let stranded = 1..=STRANDED;
    let mut created = HashMap::new();
    for n in stranded.clone() {
        let revision = records
            .create(&record(n, JobState::Queued, GRACE * 3)?)
            .await?
            .context("created")?;
        created.insert(n, revision);
    }
    // Every write to the stranded records while the reapers pass.
    let last = created.values().copied().max().unwrap_or_default();
    let bucket = harness.js().await?.get_key_value(JOBS_BUCKET).await?;
    let mut watch = bucket.watch_all_from_revision(last + 1).await?;
    let mut reapers = Vec::new();
    for _ in 0..4 {
        reapers.push(harness.reaper().await?);
    }
    let passes = |reapers: &[Reaper]| {
        let passes: Vec<_> = reapers
            .iter()
            .map(|reaper| {
                let reaper = reaper.clone();
                tokio::spawn(async move { reaper.pass().await })
            })
            .collect();
        async move {
            let mut reports = Vec::new();
            for pass in passes {
                reports.push(pass.await??);
            }
            anyhow::Ok(reports)
        }
    };
    // The server stopped while the passes start, so all list the records at the same moment
    // and go through them in step: each reads every record's same revision.
    flux_cluster::servers::signal(harness.nats.pid(), "STOP")?;
    let started = passes(&reapers);
    tokio::time::sleep(Duration::from_millis(200)).await;
    flux_cluster::servers::signal(harness.nats.pid(), "CONT")?;
    let reports = started.await?;
    let republished: usize = reports.iter().map(|report| report.republished).sum();
    assert_eq!(republished, usize::from(STRANDED), "{reports:?}");
    assert_eq!(
        harness.job_messages().await?,
        u64::from(STRANDED),
        "one message per job"
    );
    // One write per record: a reaper that lost the race to another wrote nothing. The passes
    // are over, so the watch holds every write already.
    let mut writes: HashMap<u8, Vec<u64>> = HashMap::new();
    while let Ok(Some(entry)) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await
    {
        let entry = entry?;
        writes
            .entry(u8::from_str_radix(&entry.key, 16)?)
            .or_default()
            .push(entry.revision);
    }
    for n in stranded {
        let (record, revision) = get(&records, n).await?;
        assert!(matches!(record.job.state, JobState::Queued));
        assert_eq!(
            writes.get(&n),
            Some(&vec![revision]),
            "job {n} written once"
        );
    }
    // And again at once: nothing is lost any more.
    let reports = passes(&reapers).await?;
    assert!(
        reports.iter().all(|report| report.republished == 0),
        "{reports:?}"
    );
    assert_eq!(harness.job_messages().await?, u64::from(STRANDED));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_whose_last_attempt_went_silent_ends_failed_and_its_message_goes()
-> Result<()> {
    let harness = Harness::start()?;
    let records = harness.records().await?;
    let lease = settings().lease();
    // 1: its last attempt's worker is gone, and no worker of its model is left to claim it.
    // 2: its last attempt is alive. 3: attempts remain, JetStream redelivers it.
    for record in [
        running(1, 3, lease * 2)?,
        running(2, 3, Duration::ZERO)?,
        running(3, 1, lease * 2)?,
    ] {
        records.create(&record).await?.context("created")?;
        harness.publish(record.job.id.as_str()).await?;
    }
    let report = harness.reaper().await?.pass().await?;
    assert_eq!(
        (report.examined, report.failed, report.republished),
        (3, 1, 0)
    );
    let (failed, _) = get(&records, 1).await?;
    assert!(gave_up(&failed), "{:?}", failed.job);
    assert_eq!(
        harness.job_messages().await?,
        2,
        "the failed job's message is deleted"
    );
    let (stream, _) = harness.fleet().await?.model_queue("dev").await?;
    let lookup = stream
        .direct_get_last_for_subject(job_subject("dev", id(1)?.as_str()))
        .await;
    assert!(
        lookup.is_err(),
        "the failed job's own message is the one gone"
    );
    for n in [2, 3] {
        let (left, _) = get(&records, n).await?;
        assert!(
            matches!(left.job.state, JobState::Running(_)),
            "{n}: {:?}",
            left.job
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_whose_message_was_lost_is_queued_again_or_failed_when_spent() -> Result<()> {
    let harness = Harness::start()?;
    let records = harness.records().await?;
    let lease = settings().lease();
    // A zombie acked their message, then the worker that had them died: no message at all.
    records
        .create(&running(1, 1, lease * 2)?)
        .await?
        .context("created")?;
    records
        .create(&running(2, 3, lease * 2)?)
        .await?
        .context("created")?;
    // Its worker is alive: the job ends with that worker whatever became of its message.
    records
        .create(&running(3, 1, Duration::ZERO)?)
        .await?
        .context("created")?;
    let report = harness.reaper().await?.pass().await?;
    assert_eq!((report.republished, report.failed), (1, 1), "{report:?}");
    let (requeued, _) = get(&records, 1).await?;
    assert!(matches!(requeued.job.state, JobState::Queued));
    assert_eq!(
        requeued.worker, None,
        "the dead attempt's worker no longer owns it"
    );
    assert_eq!(requeued.attempt, 1, "the dead attempt counts");
    let (failed, _) = get(&records, 2).await?;
    assert!(gave_up(&failed), "{:?}", failed.job);
    let (alive, _) = get(&records, 3).await?;
    assert!(matches!(alive.job.state, JobState::Running(_)));
    assert_eq!(harness.job_messages().await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_job_still_owing_its_webhook_has_it_queued_once_after_the_grace() -> Result<()> {
    let harness = Harness::start()?;
    let records = harness.records().await?;
    let mut ended = record(
        1,
        JobState::Completed(JobResult::Failed(JobFailure::BadGeneration)),
        Duration::from_secs(1),
    )?;
    ended.job.webhook = Some("http://hooks.test/flux".to_owned());
    ended.job.webhook_owed = true;
    // Its worker wrote the end just now and is queuing the webhook itself.
    ended.job.completed_at = Some(SystemTime::now());
    records.create(&ended).await?.context("created")?;
    let (a, b) = (harness.reaper().await?, harness.reaper().await?);
    assert_eq!(a.pass().await?.webhooks, 0);
    assert_eq!(harness.webhook_messages().await?, 0);

    // That worker died before it did.
    tokio::time::sleep(GRACE + Duration::from_millis(100)).await;
    let (first, second) = tokio::join!(a.pass(), b.pass());
    let (first, second) = (first?, second?);
    assert_eq!(first.webhooks + second.webhooks, 1, "{first:?} {second:?}");
    assert_eq!(harness.webhook_messages().await?, 1);
    let (cleared, _) = get(&records, 1).await?;
    assert!(!cleared.job.webhook_owed);
    assert_eq!(a.pass().await?.webhooks, 0);
    assert_eq!(harness.webhook_messages().await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_queued_job_is_left_alone() -> Result<()> {
    let harness = Harness::start()?;
    let client = async_nats::connect(harness.nats.url()).await?;
    let fleet = Fleet::open(client.clone(), settings()).await?;
    let images = Arc::new(FolderImages::new(harness.images.path())?);
    let node = FleetJobs::open(client, fleet, images, "http://api.test".to_owned()).await?;
    let submitted = node
        .submit(Submission {
            request: parse_request_for(br#"{"prompt": "waiting"}"#, VariantSpec::dev())?,
            owner: OWNER,
            model: "dev".to_owned(),
            deadline: None,
            on_finish: None,
            keep_record: true,
            webhook: None,
            idempotency: None,
        })
        .await?;
    let records = harness.records().await?;
    let (_, before) = records
        .get(submitted.id.as_str())
        .await?
        .context("its record")?;
    tokio::time::sleep(GRACE + Duration::from_millis(100)).await;
    let report = harness.reaper().await?.pass().await?;
    assert_eq!(
        report,
        ReapReport {
            examined: 1,
            ..Default::default()
        }
    );
    let (after, revision) = records
        .get(submitted.id.as_str())
        .await?
        .context("its record")?;
    assert_eq!(revision, before, "not written");
    assert!(matches!(after.job.state, JobState::Queued));
    assert_eq!(harness.job_messages().await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_reaper_finds_a_stranded_job_and_stops_when_told() -> Result<()> {
    let harness = Harness::start()?;
    let records = harness.records().await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reaper = harness.reaper().await?;
    let running = tokio::spawn(reaper.run(async {
        let _ = stopped.await;
    }));
    records
        .create(&record(1, JobState::Queued, Duration::ZERO)?)
        .await?
        .context("created")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.job_messages().await? == 0 {
        if Instant::now() > deadline {
            bail!("the running reaper did not publish the stranded job");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .context("the reaper stops when told")??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_queued_longer_than_the_retention_is_kept_by_the_reaper_and_then_run() -> Result<()> {
    let harness = Harness::start()?;
    let short = FleetSettings {
        retention: Duration::from_secs(2),
        ..settings()
    };
    let client = async_nats::connect(harness.nats.url()).await?;
    let fleet = Fleet::open(client.clone(), short).await?;
    let images = Arc::new(FolderImages::new(harness.images.path())?);
    let node = FleetJobs::open(
        client,
        fleet.clone(),
        images.clone(),
        "http://api.test".to_owned(),
    )
    .await?;
    let submitted = node
        .submit(Submission {
            request: parse_request_for(br#"{"prompt": "patient"}"#, VariantSpec::dev())?,
            owner: OWNER,
            model: "dev".to_owned(),
            deadline: None,
            on_finish: None,
            keep_record: true,
            webhook: None,
            idempotency: None,
        })
        .await?;
    let reaper = Reaper::new(fleet.clone(), config());
    let mut refreshed = 0;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        refreshed += reaper.pass().await?.refreshed;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refreshed >= 2,
        "written again {refreshed} times in 5 s of a 2 s retention"
    );
    assert!(
        node.status(&submitted.id, OWNER).await.is_ok(),
        "the waiting job was expired"
    );
    let generator =
        Arc::new(FakeGenerator::new().serving(fake_model("fake-dev", VariantSpec::dev())));
    let worker = Worker::new(
        fleet,
        generator,
        images,
        WorkerConfig::named_randomly(Duration::from_secs(30)),
    );
    let _running = tokio::spawn(worker.run(std::future::pending()));
    let events = node.events(&submitted.id, OWNER).await?;
    let result = tokio::time::timeout(Duration::from_secs(20), events.wait()).await??;
    assert!(
        matches!(result, flux_service::JobResult::Succeeded(_)),
        "{result:?}"
    );
    Ok(())
}
