//! The service alone (no HTTP): one admission bound, seeds drawn at submit, the event order,
//! cancel races (every job ends with exactly one outcome), and the durable redb store across a
//! reopen (jobs queued again with their seeds, outbox, idempotency records, expiry), and
//! several models (each job on its variant's generator, after a restart too).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use flux_service::{
    GenerationService, IdempotencyLog, IdempotencyRecord, JobFailure, JobResult, JobState,
    JobStore, MemoryJobStore, Outbox, Owner, RedbStore, ResultStore, ServedModels, ServiceConfig,
    ServiceError, StoredResult, Submission, WebhookDelivery,
};
use flux_types::test_util::{FakeGenerator, fake_model};
use flux_types::{
    BoxFuture, GenerateRequest, Generation, GenerationTimings, Generator, GeneratorError, Outcome,
    Progress, ProgressFn, ValidRequest, parse_request_for, variant,
};

#[derive(Debug, Default)]
struct Steps {
    finished: AtomicUsize,
}

impl Generator for Steps {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        Box::pin(async move {
            let total_steps = request.num_inference_steps();
            for step in 1..=total_steps {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if let Some(progress) = &progress {
                    progress(Progress { step, total_steps });
                }
            }
            self.finished.fetch_add(1, Ordering::SeqCst);
            Ok(Generation {
                images: Vec::new(),
                seed: request.seed().unwrap(),
                has_nsfw_concepts: Vec::new(),
                timings: GenerationTimings::default(),
            })
        })
    }

    fn describe(&self) -> String {
        "steps".to_owned()
    }
}

/// The "stored result" is the seed, as text.
struct SeedResults;

impl ResultStore for SeedResults {
    fn store<'a>(
        &'a self,
        _request: &'a ValidRequest,
        generation: Generation,
        _started: Instant,
    ) -> BoxFuture<'a, Result<StoredResult, JobFailure>> {
        Box::pin(async move {
            Ok(StoredResult {
                body: generation.seed.to_string().into(),
                written_from: Instant::now(),
                written_from_wall: SystemTime::now(),
            })
        })
    }
}

const OWNER: Owner = Owner([7; 32]);

fn service(capacity: usize) -> (GenerationService, Arc<Steps>) {
    let generator = Arc::new(Steps::default());
    let service = GenerationService::new(
        generator.clone(),
        Arc::new(SeedResults),
        Arc::new(MemoryJobStore::default()),
        ServiceConfig {
            capacity,
            retention: Duration::from_secs(60),
        },
    );
    (service, generator)
}

fn submission(steps: u32) -> Submission {
    let mut request = GenerateRequest::new("a red fox");
    request.num_inference_steps = steps;
    Submission {
        request: request.validate().unwrap(),
        owner: OWNER,
        model: "dev".to_owned(),
        deadline: None,
        on_finish: None,
        keep_record: true,
        webhook: None,
        idempotency: None,
    }
}

#[tokio::test]
async fn the_seed_is_drawn_at_submit_and_the_events_come_in_order() {
    let (service, _) = service(4);
    let submitted = service.submit(submission(3)).unwrap();
    let stored_seed = service.record(&submitted.id, OWNER).unwrap().request.seed();
    assert_eq!(stored_seed, Some(submitted.seed));
    let mut events = service.events(&submitted.id, OWNER).unwrap();
    let mut seen = Vec::new();
    while let Some(status) = events.next().await {
        seen.push(match status.state {
            JobState::Queued => "queued".to_owned(),
            JobState::Running(progress) => format!("step {}", progress.step),
            JobState::Completed(result) => format!("{:?}", result.outcome()),
        });
    }
    assert_eq!(seen, ["queued", "step 1", "step 2", "step 3", "Succeeded"]);
    match service.wait(&submitted.id, OWNER).await.unwrap() {
        JobResult::Succeeded(stored) => {
            assert_eq!(stored.body, submitted.seed.to_string().as_bytes())
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        service.status(&submitted.id, Owner([8; 32])),
        Err(ServiceError::NotFound)
    ));
}

#[tokio::test]
async fn one_bound_covers_queued_and_running_jobs() {
    let (service, _) = service(2);
    let first = service.submit(submission(5)).unwrap();
    let _second = service.submit(submission(5)).unwrap();
    assert!(matches!(
        service.submit(submission(5)),
        Err(ServiceError::Overloaded)
    ));
    service.cancel(&first.id, OWNER).unwrap();
    // A cancelled job's place is free at once.
    service.submit(submission(5)).unwrap();
    service.wait_idle().await;
    assert_eq!(service.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_cancel_races_end_every_job_exactly_once() {
    let (service, generator) = service(256);
    let mut jobs = Vec::new();
    for index in 0..200 {
        let submitted = service.submit(submission(2)).unwrap();
        if index % 3 != 0 {
            tokio::task::yield_now().await;
        }
        let cancelled = service.cancel(&submitted.id, OWNER).is_ok();
        jobs.push((submitted.id, cancelled));
    }
    service.wait_idle().await;
    let mut succeeded = 0;
    for (id, cancel_accepted) in &jobs {
        let JobState::Completed(result) = service.record(id, OWNER).unwrap().state else {
            panic!("not completed");
        };
        match result.outcome() {
            Outcome::Cancelled => assert!(cancel_accepted),
            Outcome::Succeeded => {
                assert!(
                    !cancel_accepted,
                    "a cancel was accepted for a job that succeeded"
                );
                succeeded += 1;
            }
            Outcome::Failed => panic!("failed"),
        }
    }
    // Nothing generated to the end for a cancelled job.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(generator.finished.load(Ordering::SeqCst) >= succeeded);
    assert_eq!(service.in_flight(), 0);
}

/// Never finishes (a process killed mid-job); its first call reports a step, so that job is
/// running and the others are still queued.
#[derive(Debug, Default)]
struct Stuck {
    calls: AtomicUsize,
}

impl Generator for Stuck {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        Box::pin(async move {
            if let Some(progress) = progress.filter(|_| first) {
                progress(Progress {
                    step: 1,
                    total_steps: request.num_inference_steps(),
                });
            }
            std::future::pending().await
        })
    }

    fn describe(&self) -> String {
        "stuck".to_owned()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_reopened_durable_store_runs_what_was_accepted_with_the_same_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let config = |capacity| ServiceConfig {
        capacity,
        retention: Duration::from_secs(60),
    };
    // The first process: one job running, one queued (seeds drawn), a sync one; then it dies
    // (runtime, service and store dropped with the jobs unfinished).
    let (accepted, sync_id) = {
        let rt = runtime();
        let store = RedbStore::open(dir.path()).unwrap();
        let service = GenerationService::new(
            Arc::new(Stuck::default()),
            Arc::new(SeedResults),
            store,
            config(3),
        );
        rt.block_on(async {
            let running = service.submit(submission(3)).unwrap();
            let queued = service.submit(submission(3)).unwrap();
            let mut sync = submission(3);
            sync.keep_record = false;
            let sync = service.submit(sync).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(matches!(
                service.status(&running.id, OWNER).unwrap().state,
                JobState::Running(_)
            ));
            assert!(matches!(
                service.status(&queued.id, OWNER).unwrap().state,
                JobState::Queued
            ));
            (
                vec![(running.id, running.seed), (queued.id, queued.seed)],
                sync.id,
            )
        })
    };
    // The restart, with a bound of 1 (the second job waits for a place) and a generator that
    // finishes.
    let rt = runtime();
    let store = RedbStore::open(dir.path()).unwrap();
    let service = GenerationService::new(
        Arc::new(Steps::default()),
        Arc::new(SeedResults),
        store.clone(),
        config(1),
    );
    rt.block_on(async {
        assert_eq!(service.recover(None).unwrap(), 2);
        // The sync job's caller went away with the old process: it is dropped.
        assert!(matches!(
            service.status(&sync_id, OWNER),
            Err(ServiceError::NotFound)
        ));
        for (id, seed) in &accepted {
            match service.wait(id, OWNER).await.unwrap() {
                JobResult::Succeeded(stored) => assert_eq!(stored.body, seed.to_string()),
                other => panic!("{other:?}"),
            }
            let logs = service.record(id, OWNER).unwrap().logs;
            assert!(
                logs.iter()
                    .any(|line| line.message.starts_with("queued again after a restart")),
                "{logs:?}"
            );
        }
        service.wait_idle().await;
    });
    drop(service);
    drop(rt);
    assert!(store.unfinished().unwrap().is_empty());
    // Retention still applies to what a restart brought back.
    assert_eq!(
        store
            .expire(Duration::from_secs(60), SystemTime::now())
            .unwrap(),
        0
    );
    let later = SystemTime::now() + Duration::from_secs(61);
    assert_eq!(store.expire(Duration::from_secs(60), later).unwrap(), 2);
}

#[test]
fn the_outbox_and_idempotency_records_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let delivery = WebhookDelivery::new(
        "0123456789abcdef0123456789abcdef".to_owned(),
        "http://127.0.0.1:9/hook".to_owned(),
        r#"{"status":"OK"}"#.into(),
    );
    let record = IdempotencyRecord {
        caller: [3; 32],
        key: "queue\0k".to_owned(),
        body_digest: [4; 32],
        body: r#"{"request_id":"x"}"#.into(),
        files_written_at: SystemTime::now(),
    };
    {
        let store = RedbStore::open(dir.path()).unwrap();
        Outbox::put(&*store, delivery.clone()).unwrap();
        IdempotencyLog::put(&*store, &record).unwrap();
        // A second server on the same folder is refused while this one holds it.
        let refused = RedbStore::open(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("in use"), "{refused}");
    }
    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(
        store.due(SystemTime::now()).unwrap(),
        vec![delivery.clone()]
    );
    assert_eq!(store.next_due().unwrap(), Some(delivery.next_attempt_at));
    assert_eq!(store.all().unwrap(), vec![record.clone()]);
    Outbox::remove(&*store, &delivery.id).unwrap();
    IdempotencyLog::remove(&*store, &record.caller, &record.key).unwrap();
    assert!(store.due(SystemTime::now()).unwrap().is_empty());
    assert!(store.all().unwrap().is_empty());
}

/// The dev and schnell fakes of one process, each reporting its variant.
fn two_models(delay: Duration) -> (ServedModels, Arc<FakeGenerator>, Arc<FakeGenerator>) {
    let dev = Arc::new(
        FakeGenerator::new()
            .with_delay(delay)
            .serving(fake_model("tiny-dev", &variant::DEV)),
    );
    let schnell = Arc::new(
        FakeGenerator::new()
            .with_delay(delay)
            .serving(fake_model("tiny-schnell", &variant::SCHNELL)),
    );
    let models = ServedModels::by_variant(vec![
        dev.clone() as Arc<dyn Generator>,
        schnell.clone() as Arc<dyn Generator>,
    ]);
    (models, dev, schnell)
}

fn schnell_submission() -> Submission {
    Submission {
        request: parse_request_for(br#"{"prompt": "a red fox"}"#, &variant::SCHNELL).unwrap(),
        model: "schnell".to_owned(),
        ..submission(3)
    }
}

#[tokio::test]
async fn each_job_runs_on_its_models_generator_and_queues_only_behind_that_model() {
    let (models, dev, schnell) = two_models(Duration::from_millis(50));
    let service = GenerationService::with_models(
        models,
        Arc::new(SeedResults),
        Arc::new(MemoryJobStore::default()),
        ServiceConfig {
            capacity: 8,
            retention: Duration::from_secs(60),
        },
    );
    let first_dev = service.submit(submission(3)).unwrap();
    let second_dev = service.submit(submission(3)).unwrap();
    let fast = service.submit(schnell_submission()).unwrap();
    assert_eq!(
        (
            first_dev.queue_position,
            second_dev.queue_position,
            fast.queue_position
        ),
        (0, 1, 0),
        "dev jobs are not ahead of a schnell job"
    );
    assert!(matches!(
        service.wait(&fast.id, OWNER).await.unwrap(),
        JobResult::Succeeded(_)
    ));
    service.wait_idle().await;
    assert_eq!((dev.calls(), schnell.calls()), (2, 1));
    assert_eq!(schnell.requests()[0].num_inference_steps(), 4);
}

#[test]
fn a_recovered_job_runs_on_the_model_of_its_variant_with_that_variants_rules() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServiceConfig {
        capacity: 4,
        retention: Duration::from_secs(60),
    };
    let accepted = {
        let rt = runtime();
        let (models, _, _) = two_models(Duration::from_secs(600));
        let store = RedbStore::open(dir.path()).unwrap();
        let service = GenerationService::with_models(models, Arc::new(SeedResults), store, config);
        rt.block_on(async {
            let dev = service.submit(submission(20)).unwrap();
            let schnell = service.submit(schnell_submission()).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            [(dev.id, dev.seed), (schnell.id, schnell.seed)]
        })
    };
    let rt = runtime();
    let (models, dev, schnell) = two_models(Duration::ZERO);
    let store = RedbStore::open(dir.path()).unwrap();
    let service = GenerationService::with_models(models, Arc::new(SeedResults), store, config);
    rt.block_on(async {
        assert_eq!(service.recover(None).unwrap(), 2);
        for (id, seed) in &accepted {
            match service.wait(id, OWNER).await.unwrap() {
                JobResult::Succeeded(stored) => assert_eq!(stored.body, seed.to_string()),
                other => panic!("{other:?}"),
            }
        }
    });
    assert_eq!((dev.calls(), schnell.calls()), (1, 1));
    assert_eq!(dev.requests()[0].num_inference_steps(), 20);
    assert_eq!(schnell.requests()[0].num_inference_steps(), 4);
    assert_eq!(schnell.requests()[0].seed(), Some(accepted[1].1));
}

#[test]
fn a_recovered_job_of_a_model_no_longer_served_fails_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServiceConfig {
        capacity: 4,
        retention: Duration::from_secs(60),
    };
    let id = {
        let rt = runtime();
        let (models, _, _) = two_models(Duration::from_secs(600));
        let store = RedbStore::open(dir.path()).unwrap();
        let service = GenerationService::with_models(models, Arc::new(SeedResults), store, config);
        rt.block_on(async { service.submit(schnell_submission()).unwrap().id })
    };
    let rt = runtime();
    let dev_only = Arc::new(FakeGenerator::new().serving(fake_model("tiny-dev", &variant::DEV)));
    let store = RedbStore::open(dir.path()).unwrap();
    let service = GenerationService::with_models(
        ServedModels::by_variant(vec![dev_only.clone() as Arc<dyn Generator>]),
        Arc::new(SeedResults),
        store,
        config,
    );
    rt.block_on(async {
        assert_eq!(service.recover(None).unwrap(), 1);
        match service.wait(&id, OWNER).await.unwrap() {
            JobResult::Failed(JobFailure::Generator(GeneratorError::InvalidRequest {
                message,
                ..
            })) => assert!(message.contains("\"schnell\""), "{message}"),
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(dev_only.calls(), 0);
}
