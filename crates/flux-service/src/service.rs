//! [`GenerationService`]: submit, status, events, wait, cancel, over a generator, a job store and
//! a result store.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use flux_types::{Generator, GeneratorError, LogLine, Progress, ProgressFn, QueueProgress};
use tokio::sync::{Semaphore, broadcast};
use tracing::Instrument;

use crate::clock::rfc3339_millis;
use crate::error::ServiceError;
use crate::events::JobEvents;
use crate::job::{JobFailure, JobId, JobResult, JobState, JobStatus, Owner};
use crate::models::{ModelLookup, ServedModels};
use crate::queue_eta::{Place, QueueClock};
use crate::store::{JobRecord, JobStore};

mod live;
mod recovery;
mod submission;

use live::{Live, LiveJob};
pub use submission::{
    Cancelled, CompletionListener, FinishHook, IdempotencyScope, ResultStore, ServiceConfig,
    Submission, Submitted,
};

/// Events a slow status-stream reader may fall behind by before it re-reads the current status.
const EVENT_BUFFER: usize = 256;

/// The generation service. Cheap to clone.
#[derive(Clone)]
pub struct GenerationService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GenerationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationService")
            .field("capacity", &self.inner.config.capacity)
            .finish_non_exhaustive()
    }
}

struct Inner {
    models: ServedModels,
    results: Arc<dyn ResultStore>,
    jobs: Arc<dyn JobStore>,
    admission: Arc<Semaphore>,
    clock: Arc<QueueClock>,
    config: ServiceConfig,
    live: Mutex<Live>,
    listener: Mutex<Option<CompletionListener>>,
}

fn log_line(message: impl Into<String>) -> LogLine {
    LogLine {
        message: message.into(),
        timestamp: rfc3339_millis(SystemTime::now()),
    }
}

impl GenerationService {
    /// A service with one generator, on the dev routes (see [`ServedModels::dev`]).
    pub fn new(
        generator: Arc<dyn Generator>,
        results: Arc<dyn ResultStore>,
        jobs: Arc<dyn JobStore>,
        config: ServiceConfig,
    ) -> Self {
        Self::with_models(ServedModels::dev(generator), results, jobs, config)
    }

    /// A service over several models: a job runs on the generator of the variant it was
    /// submitted to (`Submission::model`). The admission bound (`config.capacity`) is one for
    /// all of them; each generator queues and runs its own jobs, so a job of one model never
    /// waits behind another model's.
    pub fn with_models(
        models: ServedModels,
        results: Arc<dyn ResultStore>,
        jobs: Arc<dyn JobStore>,
        config: ServiceConfig,
    ) -> Self {
        GenerationService {
            inner: Arc::new(Inner {
                models,
                results,
                jobs,
                admission: Arc::new(Semaphore::new(config.capacity)),
                clock: Arc::default(),
                config,
                live: Mutex::default(),
                listener: Mutex::default(),
            }),
        }
    }

    /// Sets the one completion listener.
    pub fn set_completion_listener(&self, listener: CompletionListener) {
        *self
            .inner
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(listener);
    }

    /// The served models, by variant.
    pub fn models(&self) -> &ServedModels {
        &self.inner.models
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // Changes under this lock are single map operations: a panic leaves it consistent.
        self.inner
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a job, or refuses at once when queued + running jobs are at the bound. The seed is
    /// drawn here and stored with the job.
    pub fn submit(&self, submission: Submission) -> Result<Submitted, ServiceError> {
        let permit = Arc::clone(&self.inner.admission)
            .try_acquire_owned()
            .map_err(|_| ServiceError::Overloaded)?;
        let place = self.inner.clock.admit(permit);
        let Submission {
            request,
            owner,
            model,
            deadline,
            on_finish,
            keep_record,
            webhook,
            idempotency: _,
        } = submission;
        let request = request.with_drawn_seed();
        let seed = request.seed().unwrap_or_default();
        let record = JobRecord {
            id: JobId::random(),
            owner,
            model,
            request,
            state: JobState::Queued,
            logs: vec![log_line("accepted")],
            webhook_owed: webhook.is_some(),
            webhook,
            submitted_at: SystemTime::now(),
            completed_at: None,
            keep_record,
        };
        let id = record.id.clone();
        let (queue_position, events) = self.enqueue(record, Some(place), true)?;
        self.spawn_run(&id, deadline, on_finish, false);
        Ok(Submitted {
            id,
            queue_position,
            seed,
            events,
            replayed: false,
        })
    }

    /// Puts a job in the live table and its record in the store (when `store`): it is queued.
    fn enqueue(
        &self,
        record: JobRecord,
        place: Option<Place>,
        store: bool,
    ) -> Result<(u32, JobEvents), ServiceError> {
        let mut live = self.live();
        let (id, owner, keep_record) = (record.id.clone(), record.owner, record.keep_record);
        let model = record.model.clone();
        if store {
            self.inner.jobs.put(record)?;
        }
        let seq = live.next_seq;
        live.next_seq += 1;
        live.queued.insert(seq, id.clone());
        let (sender, receiver) = broadcast::channel(EVENT_BUFFER);
        live.jobs.insert(
            id.clone(),
            LiveJob {
                model,
                events: sender,
                abort: None,
                seq,
                keep_record,
                place,
            },
        );
        let position = live.position(&id).unwrap_or_default();
        let events = JobEvents {
            service: Some(self.clone()),
            owner,
            id,
            first: None,
            receiver: Some(receiver),
            stream: None,
            done: false,
        };
        Ok((position, events))
    }

    fn spawn_run(
        &self,
        id: &JobId,
        deadline: Option<Duration>,
        on_finish: Option<FinishHook>,
        recovered: bool,
    ) {
        let task = tokio::spawn(
            self.clone()
                .run(id.clone(), deadline, on_finish, recovered)
                .instrument(tracing::Span::current()),
        );
        if let Some(job) = self.live().jobs.get_mut(id) {
            job.abort = Some(task.abort_handle());
        }
    }

    async fn run(
        self,
        id: JobId,
        deadline: Option<Duration>,
        on_finish: Option<FinishHook>,
        recovered: bool,
    ) {
        if recovered && !self.wait_to_start(&id).await {
            return;
        }
        let (request, model) = match self.inner.jobs.get(&id) {
            Ok(Some(record)) if !record.state.is_terminal() => (record.request, record.model),
            // Cancelled before it started.
            Ok(_) => return,
            Err(error) => {
                tracing::error!(%error, job = %id, "cannot read a job to run");
                self.complete(&id, JobResult::Failed(JobFailure::Storage));
                return;
            }
        };
        let progress: ProgressFn = {
            let service = self.clone();
            let id = id.clone();
            Arc::new(move |progress| service.on_progress(&id, progress))
        };
        let generator = match self.inner.models.lookup(&model) {
            ModelLookup::Served(generator) => generator,
            ModelLookup::Loading => {
                self.complete(
                    &id,
                    JobResult::Failed(JobFailure::Generator(GeneratorError::NotReady)),
                );
                return;
            }
            ModelLookup::NotServed => {
                tracing::warn!(job = %id, model = %model, "a job of a model this server does not serve");
                self.complete(&id, JobResult::Failed(not_served(&model)));
                return;
            }
        };
        let started = Instant::now();
        let generation = generator.generate(request.clone(), Some(progress));
        let generated = match deadline {
            None => generation.await.map_err(JobFailure::Generator),
            Some(limit) => match tokio::time::timeout(limit, generation).await {
                Ok(generated) => generated.map_err(JobFailure::Generator),
                Err(_elapsed) => Err(JobFailure::TimedOut {
                    limit_secs: limit.as_secs(),
                }),
            },
        };
        if let Err(JobFailure::Generator(
            error @ (GeneratorError::Inference { .. } | GeneratorError::Remote { .. }),
        )) = &generated
        {
            // Once, here: answers built from the record later (status reads, the result route,
            // a webhook) carry no detail and log nothing.
            tracing::error!(%error, job = %id, "generation failed");
        }
        let result = match generated {
            Ok(generation) => match self
                .inner
                .results
                .store(&request, generation, started)
                .await
            {
                Ok(stored) => JobResult::Succeeded(stored),
                Err(failure) => JobResult::Failed(failure),
            },
            Err(failure) => JobResult::Failed(failure),
        };
        if let Some(hook) = on_finish {
            hook(&result);
        }
        self.complete(&id, result);
    }

    /// A step finished: the job is running (it left the queue with its first step).
    fn on_progress(&self, id: &JobId, progress: Progress) {
        let mut live = self.live();
        let left_queue = live.leave_queue(id);
        let progress = QueueProgress {
            step: progress.step,
            total_steps: progress.total_steps,
        };
        let updated = self.inner.jobs.update(id, &mut |record| {
            if record.state.is_terminal() {
                return;
            }
            if left_queue {
                record.logs.push(log_line("started"));
            }
            record.state = JobState::Running(progress);
            record.logs.push(log_line(format!(
                "step {}/{}",
                progress.step, progress.total_steps
            )));
        });
        match updated {
            Ok(Some(record)) => self.publish(&live, &record),
            Ok(None) => {}
            Err(error) => tracing::error!(%error, job = %id, "cannot record a job's progress"),
        }
        if left_queue {
            self.publish_positions(&live);
        }
    }

    /// Records the job's end, unless it already ended (a cancel won the race).
    fn complete(&self, id: &JobId, result: JobResult) -> bool {
        let mut live = self.live();
        let mut changed = false;
        let message = match &result {
            JobResult::Succeeded(_) => "completed".to_owned(),
            JobResult::Failed(failure) => format!("failed: {}", failure_summary(failure)),
            JobResult::Cancelled => "cancelled".to_owned(),
        };
        let updated = self.inner.jobs.update(id, &mut |record| {
            if record.state.is_terminal() {
                return;
            }
            record.state = JobState::Completed(result.clone());
            record.completed_at = Some(SystemTime::now());
            record.logs.push(log_line(message.clone()));
            changed = true;
        });
        if let Err(error) = &updated {
            tracing::error!(%error, job = %id, "cannot record a job's end");
        }
        let left_queue = live.leave_queue(id);
        if let Ok(Some(record)) = &updated
            && changed
        {
            self.publish(&live, record);
            self.tell_listener(record);
        }
        if let Some(job) = live.jobs.remove(id)
            && !job.keep_record
            && let Err(error) = self.inner.jobs.remove(id)
        {
            tracing::error!(%error, job = %id, "cannot forget a finished job");
        }
        if left_queue {
            self.publish_positions(&live);
        }
        changed
    }

    fn status_of(&self, live: &Live, record: &JobRecord) -> JobStatus {
        JobStatus {
            id: record.id.clone(),
            state: record.state.clone(),
            queue_position: match record.state {
                JobState::Queued => live.position(&record.id),
                _ => None,
            },
            logs: record.logs.clone(),
        }
    }

    fn publish(&self, live: &Live, record: &JobRecord) {
        if let Some(job) = live.jobs.get(&record.id) {
            // No receiver is fine: nobody is watching.
            let _ = job.events.send(self.status_of(live, record));
        }
    }

    /// Every queued job's position may have changed.
    fn publish_positions(&self, live: &Live) {
        for id in live.queued.values() {
            if let Ok(Some(record)) = self.inner.jobs.get(id) {
                self.publish(live, &record);
            }
        }
    }

    fn owned_record(&self, id: &JobId, owner: Owner) -> Result<JobRecord, ServiceError> {
        match self.inner.jobs.get(id)? {
            Some(record) if record.owner == owner => Ok(record),
            _ => Err(ServiceError::NotFound),
        }
    }

    /// The job's record, for its owner.
    pub fn record(&self, id: &JobId, owner: Owner) -> Result<JobRecord, ServiceError> {
        self.owned_record(id, owner)
    }

    /// The job's current status, for its owner.
    pub fn status(&self, id: &JobId, owner: Owner) -> Result<JobStatus, ServiceError> {
        let live = self.live();
        let record = self.owned_record(id, owner)?;
        Ok(self.status_of(&live, &record))
    }

    /// The job's current status first, then every change, ending after the terminal one.
    pub fn events(&self, id: &JobId, owner: Owner) -> Result<JobEvents, ServiceError> {
        let live = self.live();
        let record = self.owned_record(id, owner)?;
        let current = self.status_of(&live, &record);
        let receiver = live.jobs.get(id).map(|job| job.events.subscribe());
        Ok(JobEvents {
            service: Some(self.clone()),
            owner,
            id: id.clone(),
            first: Some(current),
            receiver,
            stream: None,
            done: false,
        })
    }

    /// Waits for the job's end.
    pub async fn wait(&self, id: &JobId, owner: Owner) -> Result<JobResult, ServiceError> {
        self.events(id, owner)?.wait().await
    }

    /// Cancels the job: a queued one ends at once, a running one's generation is dropped (the
    /// backend stops at its next denoising step boundary). Nothing more is stored for it.
    pub fn cancel(&self, id: &JobId, owner: Owner) -> Result<Cancelled, ServiceError> {
        let record = self.owned_record(id, owner)?;
        if record.state.is_terminal() {
            return Err(ServiceError::AlreadyCompleted);
        }
        let abort = self
            .live()
            .jobs
            .get_mut(id)
            .and_then(|job| job.abort.take());
        if !self.complete(id, JobResult::Cancelled) {
            return Err(ServiceError::AlreadyCompleted);
        }
        if let Some(abort) = abort {
            abort.abort();
        }
        Ok(Cancelled)
    }

    /// Queued + running jobs now.
    pub fn in_flight(&self) -> usize {
        self.inner.config.capacity - self.inner.admission.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.inner.config.capacity
    }

    /// About when the queue frees its next place, given the mean generation time.
    pub fn next_place_in(&self, mean_generation: Duration) -> Duration {
        self.inner.clock.next_place_in(mean_generation)
    }

    /// Waits until no job is queued or running.
    pub async fn wait_idle(&self) {
        let all = u32::try_from(self.inner.config.capacity).unwrap_or(u32::MAX);
        // The semaphore is never closed, so this only returns once every permit is back.
        if let Ok(permits) = self.inner.admission.acquire_many(all).await {
            drop(permits);
        }
    }

    /// Forgets jobs completed longer ago than the retention; returns how many.
    pub fn sweep(&self) -> usize {
        match self
            .inner
            .jobs
            .expire(self.inner.config.retention, SystemTime::now())
        {
            Ok(removed) => removed,
            Err(error) => {
                tracing::error!(%error, "cannot expire job records");
                0
            }
        }
    }
}

/// The failure of a job whose model this server does not serve (any more: a durable job
/// recovered by a server started without that model).
pub(crate) fn not_served(model: &str) -> JobFailure {
    JobFailure::Generator(GeneratorError::InvalidRequest {
        param: None,
        message: format!("this server does not serve the model {model:?}"),
    })
}

fn failure_summary(failure: &JobFailure) -> String {
    match failure {
        JobFailure::Generator(error) => match error {
            GeneratorError::Inference { .. } | GeneratorError::Remote { .. } => {
                "generation failed".to_owned()
            }
            other => other.to_string(),
        },
        JobFailure::TimedOut { limit_secs } => format!("not finished within {limit_secs} s"),
        JobFailure::Storage => "the images could not be stored".to_owned(),
        JobFailure::BadGeneration => "the generator answered something unusable".to_owned(),
    }
}
