//! A job's webhook survives a crash between its end being committed and its delivery being
//! queued: the record's owed mark makes a restart queue it, once, with the `webhook-id` derived
//! from the job; a delivery already queued (or already made) is not made again.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flux_service::{
    CompletionListener, GenerationService, JobFailure, JobId, JobResult, JobStore, MemoryJobStore,
    MemoryOutbox, Outbox, Owner, RedbStore, ResultStore, ServiceConfig, ServiceError, StoredResult,
    Submission, WebhookDelivery,
};
use flux_types::test_util::FakeGenerator;
use flux_types::{BoxFuture, GenerateRequest, Generation, ValidRequest};

const OWNER: Owner = Owner([9; 32]);

/// Stores nothing: the body is a fixed text.
struct NoFiles;

impl ResultStore for NoFiles {
    fn store<'a>(
        &'a self,
        _request: &'a ValidRequest,
        _generation: Generation,
        _started: Instant,
    ) -> BoxFuture<'a, Result<StoredResult, JobFailure>> {
        Box::pin(async move {
            Ok(StoredResult {
                body: "{}".into(),
                written_from: Instant::now(),
                written_from_wall: SystemTime::now(),
            })
        })
    }
}

fn service(jobs: Arc<dyn JobStore>) -> GenerationService {
    GenerationService::new(
        Arc::new(FakeGenerator::new()),
        Arc::new(NoFiles),
        jobs,
        ServiceConfig {
            capacity: 8,
            retention: Duration::from_secs(600),
        },
    )
}

fn with_webhook(url: &str) -> Submission {
    Submission {
        request: GenerateRequest::new("a lighthouse").validate().unwrap(),
        owner: OWNER,
        model: "dev".to_owned(),
        deadline: None,
        on_finish: None,
        keep_record: true,
        webhook: Some(url.to_owned()),
        idempotency: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn delivery_of(job: &JobId, url: &str) -> WebhookDelivery {
    WebhookDelivery::new(job.to_string(), url.to_owned(), "the end".into())
}

/// A listener as the server's: queues the job's delivery (leaving a pending one alone) and says
/// so; counts the jobs it was told of.
fn queuing(store: Arc<RedbStore>, told: Arc<Mutex<Vec<JobId>>>) -> CompletionListener {
    Arc::new(move |record| {
        told.lock().unwrap().push(record.id.clone());
        if let Some(url) = &record.webhook {
            store.put_new(delivery_of(&record.id, url))?;
        }
        Ok(())
    })
}

fn pending(store: &RedbStore) -> BTreeMap<String, WebhookDelivery> {
    let later = SystemTime::now() + Duration::from_secs(24 * 3600);
    store
        .due(later)
        .unwrap()
        .into_iter()
        .map(|delivery| (delivery.id.clone(), delivery))
        .collect()
}

#[test]
fn a_webhook_owed_when_the_process_died_is_queued_once_by_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let retried_at = SystemTime::now() + Duration::from_secs(3600);
    // The first process. Its listener dies (answers Err, leaving the store as a kill -9 would)
    // before queuing for `before`, after queuing (a delivery already retried twice) for `after`,
    // and queues normally for `queued` and `delivered`; `delivered`'s delivery is then made and
    // removed, as the deliverer does.
    let jobs = {
        let rt = runtime();
        let store = RedbStore::open(dir.path()).unwrap();
        let service = service(store.clone());
        let outbox = store.clone();
        service.set_completion_listener(Arc::new(move |record| {
            let url = record.webhook.clone().unwrap();
            let mut delivery = delivery_of(&record.id, &url);
            if url.ends_with("/before") {
                return Err(ServiceError::Store("killed before the put".to_owned()));
            }
            if url.ends_with("/after") {
                delivery.attempts = 2;
                delivery.next_attempt_at = retried_at;
                outbox.put_new(delivery)?;
                return Err(ServiceError::Store("killed after the put".to_owned()));
            }
            outbox.put_new(delivery)?;
            Ok(())
        }));
        let jobs: BTreeMap<&str, JobId> = rt.block_on(async {
            let mut jobs = BTreeMap::new();
            for name in ["before", "after", "queued", "delivered"] {
                let url = format!("http://hooks.example/{name}");
                let submitted = service.submit(with_webhook(&url)).unwrap();
                assert!(matches!(
                    service.wait(&submitted.id, OWNER).await.unwrap(),
                    JobResult::Succeeded(_)
                ));
                jobs.insert(name, submitted.id);
            }
            service.wait_idle().await;
            jobs
        });
        Outbox::remove(
            &*store,
            &WebhookDelivery::id_for(jobs["delivered"].as_str()),
        )
        .unwrap();
        assert_eq!(pending(&store).len(), 2, "after and queued");
        jobs
    };

    // The restart: the job ended, so nothing runs again, but `before`'s webhook is queued and
    // `after`'s is left as it was.
    let told = Arc::new(Mutex::new(Vec::new()));
    {
        let rt = runtime();
        let store = RedbStore::open(dir.path()).unwrap();
        let service = service(store.clone());
        service.set_completion_listener(queuing(store.clone(), told.clone()));
        rt.block_on(async { assert_eq!(service.recover(None).unwrap(), 0) });
        let mut heard = told.lock().unwrap().clone();
        heard.sort();
        let mut owed = vec![jobs["before"].clone(), jobs["after"].clone()];
        owed.sort();
        assert_eq!(heard, owed, "only the jobs still owing a webhook");

        let pending = pending(&store);
        let ids: Vec<&String> = pending.keys().collect();
        let mut expected = ["before", "after", "queued"]
            .map(|name| format!("msg_{}", jobs[name]))
            .to_vec();
        expected.sort();
        assert_eq!(ids, expected.iter().collect::<Vec<_>>());
        let before = &pending[&format!("msg_{}", jobs["before"])];
        assert_eq!(before.job, jobs["before"].as_str());
        assert_eq!(before.url, "http://hooks.example/before");
        assert_eq!(before.attempts, 0);
        // Not reset: its retries go on from where they were.
        let after = &pending[&format!("msg_{}", jobs["after"])];
        assert_eq!((after.attempts, after.next_attempt_at), (2, retried_at));
        for name in ["before", "after", "queued", "delivered"] {
            assert!(!service.record(&jobs[name], OWNER).unwrap().webhook_owed);
        }
    }

    // A second restart owes nothing more.
    told.lock().unwrap().clear();
    let rt = runtime();
    let store = RedbStore::open(dir.path()).unwrap();
    let service = service(store.clone());
    service.set_completion_listener(queuing(store.clone(), told.clone()));
    rt.block_on(async { assert_eq!(service.recover(None).unwrap(), 0) });
    assert!(told.lock().unwrap().is_empty());
    assert_eq!(pending(&store).len(), 3);
}

#[test]
fn the_owed_mark_is_cleared_only_once_the_listener_queued_the_webhook() {
    let rt = runtime();
    let jobs = Arc::new(MemoryJobStore::default());
    let service = service(jobs.clone());
    service.set_completion_listener(Arc::new(|record| match &record.webhook {
        Some(url) if url.ends_with("/fails") => Err(ServiceError::Store("outbox down".to_owned())),
        _ => Ok(()),
    }));
    rt.block_on(async {
        let queued = service
            .submit(with_webhook("http://hooks.example/ok"))
            .unwrap();
        let failed = service
            .submit(with_webhook("http://hooks.example/fails"))
            .unwrap();
        let mut none = with_webhook("http://hooks.example/unused");
        none.webhook = None;
        let none = service.submit(none).unwrap();
        assert!(service.record(&queued.id, OWNER).unwrap().webhook_owed);
        assert!(!service.record(&none.id, OWNER).unwrap().webhook_owed);
        service.wait_idle().await;
        assert!(!service.record(&queued.id, OWNER).unwrap().webhook_owed);
        assert!(service.record(&failed.id, OWNER).unwrap().webhook_owed);
        let owing: Vec<JobId> = jobs
            .owing_webhooks()
            .unwrap()
            .into_iter()
            .map(|record| record.id)
            .collect();
        assert_eq!(owing, vec![failed.id.clone()]);
    });
}

#[test]
fn a_pending_delivery_is_not_replaced_by_a_second_put_new() {
    let outbox = MemoryOutbox::default();
    let job = "0123456789abcdef0123456789abcdef";
    let mut first =
        WebhookDelivery::new(job.to_owned(), "http://a.example/".to_owned(), "1".into());
    first.attempts = 3;
    assert_eq!(first.id, format!("msg_{job}"));
    assert!(outbox.put_new(first.clone()).unwrap());
    let again = WebhookDelivery::new(job.to_owned(), "http://a.example/".to_owned(), "2".into());
    assert_eq!(again.id, first.id);
    assert!(!outbox.put_new(again).unwrap());
    let later = SystemTime::now() + Duration::from_secs(60);
    assert_eq!(outbox.due(later).unwrap(), vec![first]);
}
