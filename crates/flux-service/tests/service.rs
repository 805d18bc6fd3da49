//! The service alone (no HTTP): one admission bound, seeds drawn at submit, the event order, and
//! cancel races (every job ends with exactly one outcome).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use flux_service::{
    GenerationService, JobFailure, JobResult, JobState, MemoryJobStore, Owner, ResultStore,
    ServiceConfig, ServiceError, StoredResult, Submission,
};
use flux_types::{
    BoxFuture, GenerateRequest, Generation, GenerationTimings, Generator, GeneratorError, Outcome,
    Progress, ProgressFn, ValidRequest,
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
