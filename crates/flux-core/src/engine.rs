//! The engine: one owner thread holds the pipeline (all ONNX Runtime sessions) and serves jobs
//! from a bounded queue, one at a time.
//!
//! Architecture invariants:
//! - Submitting never blocks: a full queue is refused at once ([`FluxError::QueueFull`], which
//!   the HTTP layer answers with 429), never buffered without bound.
//! - Results go back through the job's reply closure, on the engine thread; no async runtime is
//!   involved here (the facade bridges with a oneshot sender inside the closure).
//! - A failed job (bad input, ONNX Runtime error, even a panic) is answered with a typed error and
//!   the thread goes on with the next job.
//! - Cancellation is cooperative: checked before a job starts and between denoising steps. A
//!   job cancelled while it waits gives its queue place back at once (the capacity counts only
//!   live jobs), and is answered `Cancelled` on the engine thread at the next step boundary or
//!   when the engine reaches it, whichever comes first; it never runs.
//! - Shutdown closes the queue, finishes every job already queued, then joins the thread.
//! - Memory a job left in ONNX Runtime's CPU arena goes back to the system once the engine has
//!   been idle for [`RELEASE_AFTER_IDLE`] ([`JobRunner::release_idle_memory`]; see
//!   [`crate::cpu_arena`] for why it is kept until then).
//!
//! Loading happens on the engine thread and [`Engine::start`] waits for it, so a broken model
//! folder is reported by `start` itself; callers that must not block (an async server) run
//! `start` on a blocking thread and report "not ready" meanwhile.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::SessionConfig;
use crate::denoise::StepControl;
use crate::error::{FluxError, Result};
use crate::memory::{MemoryModel, default_memory_limit};
use crate::model::ModelDescription;
use crate::model::source::BuildOptions;
use crate::pipeline::{FluxPipeline, GenerationParams, PipelineOutput};

/// Called after each denoising step with (step, total), 1-based, on the engine thread.
pub type ProgressCallback = Box<dyn FnMut(usize, usize) + Send>;
/// Receives the job's result, on the engine thread. Must not block for long.
pub type Reply = Box<dyn FnOnce(Result<PipelineOutput>) + Send>;

/// One generation request for the engine.
pub struct Job {
    pub params: GenerationParams,
    pub on_progress: Option<ProgressCallback>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("params", &self.params)
            .field("on_progress", &self.on_progress.is_some())
            .finish()
    }
}

/// Lets the submitter cancel a queued or running job.
#[derive(Debug, Clone)]
pub struct JobHandle {
    cancelled: Arc<AtomicBool>,
}

impl JobHandle {
    /// Asks the engine to stop this job: a queued job never starts, a running one stops after
    /// the current denoising step. Its reply then receives [`FluxError::Cancelled`].
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// How long the engine waits, idle after a job, before it gives the memory the job left behind
/// back to the system. Back-to-back requests (a client's next one, a queue being drained) reuse
/// it; a server left alone returns to its idle size.
pub const RELEASE_AFTER_IDLE: Duration = Duration::from_secs(10);

/// What the engine thread runs jobs on: the real pipeline, or a stand-in in tests.
pub trait JobRunner {
    fn run_job(
        &mut self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<PipelineOutput>;

    /// Called once the engine has been idle for its release delay after a job: gives back memory
    /// kept for the next job. Nothing by default.
    fn release_idle_memory(&mut self) {}
}

impl JobRunner for FluxPipeline {
    fn run_job(
        &mut self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<PipelineOutput> {
        self.generate(params, on_step)
    }

    fn release_idle_memory(&mut self) {
        match self.release_memory() {
            Ok(()) => tracing::debug!("idle: the CPU arena's free memory was given back"),
            Err(error) => tracing::warn!(%error, "idle: the CPU arena could not be shrunk"),
        }
    }
}

struct Envelope {
    job: Job,
    reply: Reply,
    cancelled: Arc<AtomicBool>,
    submitted: Instant,
    /// The submitter's span, entered on the engine thread while the job runs and is answered,
    /// so the engine's log lines carry the request's fields (its request id).
    span: tracing::Span,
}

impl Envelope {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// The jobs waiting for the engine thread, and whether it takes more.
struct Waiting {
    jobs: VecDeque<Envelope>,
    /// False after [`Engine::close`], or once the engine thread has ended.
    open: bool,
    /// The engine thread is blocked waiting for work (a capacity of 0 admits a job only then).
    idle: bool,
    /// How long the engine waits idle after a job before [`JobRunner::release_idle_memory`];
    /// `None`: never.
    release_after_idle: Option<Duration>,
}

impl Waiting {
    /// Jobs that wait and have not been cancelled: what the capacity is measured against.
    fn live(&self) -> usize {
        self.jobs.iter().filter(|job| !job.is_cancelled()).count()
    }
}

/// What the engine thread does next.
enum Next {
    Run(Envelope),
    /// Idle for the release delay: give the memory back.
    ReleaseMemory,
    /// Closed and empty: the thread ends.
    Closed,
}

/// The queue shared by the submitters and the engine thread.
struct Queue {
    waiting: Mutex<Waiting>,
    work: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Blocks until a job waits (returned in order, cancelled ones too), the queue is closed and
    /// empty, or (when the runner `holds_memory` from a job) the release delay passes idle.
    fn next(&self, holds_memory: bool) -> Next {
        let mut waiting = self.lock();
        let idle_since = Instant::now();
        loop {
            if let Some(envelope) = waiting.jobs.pop_front() {
                waiting.idle = false;
                return Next::Run(envelope);
            }
            if !waiting.open {
                return Next::Closed;
            }
            // `idle` stays set while the memory is released: a job arriving meanwhile is admitted
            // as to an idle engine and waits only for that short run.
            waiting.idle = true;
            waiting = match waiting.release_after_idle.filter(|_| holds_memory) {
                None => self
                    .work
                    .wait(waiting)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
                Some(delay) => {
                    let left = delay.saturating_sub(idle_since.elapsed());
                    if left.is_zero() {
                        return Next::ReleaseMemory;
                    }
                    self.work
                        .wait_timeout(waiting, left)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
            };
        }
    }

    /// Takes the cancelled jobs out of the queue, so their replies can be sent.
    fn take_cancelled(&self) -> Vec<Envelope> {
        let mut waiting = self.lock();
        if !waiting.jobs.iter().any(Envelope::is_cancelled) {
            return Vec::new();
        }
        let (cancelled, live): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut waiting.jobs)
            .into_iter()
            .partition(Envelope::is_cancelled);
        waiting.jobs = live;
        cancelled.into()
    }

    fn close(&self) {
        self.lock().open = false;
        self.work.notify_all();
    }
}

/// Closes the queue when the engine thread ends, however it ends, and answers what still waits:
/// without it, submitters would wait forever on a thread that is gone.
struct CloseOnExit(Arc<Queue>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        let left: Vec<Envelope> = {
            let mut waiting = self.0.lock();
            waiting.open = false;
            waiting.idle = false;
            waiting.jobs.drain(..).collect()
        };
        for envelope in left {
            answer(envelope.reply, Err(FluxError::EngineClosed));
        }
    }
}

/// The running engine. `Sync`: share it (e.g. in an `Arc`) between request handlers.
pub struct Engine {
    queue: Arc<Queue>,
    worker: Mutex<Option<JoinHandle<()>>>,
    capacity: usize,
    description: Option<ModelDescription>,
    /// The loaded model's memory figures and the limit jobs are admitted under.
    memory: Option<(MemoryModel, u64)>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("queued", &self.queued_jobs())
            .field("capacity", &self.capacity)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads the model folder on a new engine thread and waits until it is loaded. At most
    /// `queue_capacity` jobs wait while one runs; `0` accepts a job only when the engine is idle.
    pub fn start(model_dir: PathBuf, config: SessionConfig, queue_capacity: usize) -> Result<Self> {
        Self::start_model(model_dir, config, BuildOptions::default(), queue_capacity)
    }

    /// As [`Engine::start`], with the model builder's options for a checkpoint folder (a
    /// diffusers folder or BFL files; see [`crate::model::source`]).
    pub fn start_model(
        model_dir: PathBuf,
        config: SessionConfig,
        build: BuildOptions,
        queue_capacity: usize,
    ) -> Result<Self> {
        let (loaded_sender, loaded) = mpsc::channel();
        let mut engine = Self::start_with(
            move || {
                // Before loading: pools made while loading inherit this thread's priority.
                config.compute_priority.apply_to_current_thread()?;
                let pipeline = FluxPipeline::load_with(&model_dir, &config, &build)?;
                // The description leaves the thread once; the pipeline never does.
                let description = pipeline.description().clone();
                let memory = MemoryModel::of_folder(
                    &description.root,
                    pipeline.vae_path(),
                    &description.transformer_path,
                );
                let _ = loaded_sender.send((description, memory));
                Ok(pipeline)
            },
            queue_capacity,
        )?;
        if let Ok((description, memory)) = loaded.recv() {
            engine.description = Some(description);
            engine.memory = default_memory_limit().map(|limit| (memory, limit));
        }
        Ok(engine)
    }

    /// Starts an engine thread on the runner `load` makes there (tests use a stand-in runner).
    /// Waits for `load` and returns its error, if any.
    pub fn start_with<R, F>(load: F, queue_capacity: usize) -> Result<Self>
    where
        R: JobRunner + 'static,
        F: FnOnce() -> Result<R> + Send + 'static,
    {
        let queue = Arc::new(Queue {
            waiting: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                open: true,
                idle: false,
                release_after_idle: Some(RELEASE_AFTER_IDLE),
            }),
            work: Condvar::new(),
        });
        let (ready_sender, ready) = mpsc::channel::<Result<()>>();
        let worker_queue = Arc::clone(&queue);
        let worker = std::thread::Builder::new()
            .name("flux-engine".to_owned())
            .spawn(move || {
                let _close_on_exit = CloseOnExit(Arc::clone(&worker_queue));
                let runner = match catch_unwind(AssertUnwindSafe(load)) {
                    Ok(Ok(runner)) => runner,
                    Ok(Err(error)) => {
                        let _ = ready_sender.send(Err(error));
                        return;
                    }
                    Err(panic) => {
                        let _ = ready_sender.send(Err(FluxError::Engine(format!(
                            "model loading panicked: {}",
                            panic_message(&panic)
                        ))));
                        return;
                    }
                };
                let _ = ready_sender.send(Ok(()));
                serve(runner, &worker_queue);
            })
            .map_err(|error| {
                FluxError::Engine(format!("cannot spawn the engine thread: {error}"))
            })?;

        match ready.recv() {
            Ok(Ok(())) => Ok(Self {
                queue,
                worker: Mutex::new(Some(worker)),
                capacity: queue_capacity,
                description: None,
                memory: None,
            }),
            Ok(Err(error)) => {
                let _ = worker.join();
                Err(error)
            }
            Err(_) => {
                let _ = worker.join();
                Err(FluxError::Engine(
                    "the engine thread exited while loading".to_owned(),
                ))
            }
        }
    }

    /// Queues a job without blocking. `reply` is called exactly once with the result (or with
    /// [`FluxError::Cancelled`]) unless the job is refused here, in which case it is dropped
    /// uncalled and nothing was queued.
    ///
    /// Refusals: [`FluxError::QueueFull`] when `queue_capacity` live (not cancelled) jobs
    /// already wait (HTTP 429), [`FluxError::EngineClosed`] after [`Engine::close`] or when the
    /// thread is gone (HTTP 503).
    pub fn try_submit(&self, job: Job, reply: Reply) -> Result<JobHandle> {
        // Jobs run one at a time, so a job fits when its own peak fits: one that fits waits its
        // turn, one that never can is refused before it takes a place.
        if let Some((memory, limit)) = &self.memory {
            memory.check(&job.params, *limit)?;
        }
        let mut waiting = self.queue.lock();
        if !waiting.open {
            return Err(FluxError::EngineClosed);
        }
        // An idle engine is about to take a job, so one more fits than the queue holds.
        let places = self.capacity + usize::from(waiting.idle);
        if waiting.live() >= places {
            return Err(FluxError::QueueFull {
                capacity: self.capacity,
            });
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        waiting.jobs.push_back(Envelope {
            job,
            reply,
            cancelled: Arc::clone(&cancelled),
            submitted: Instant::now(),
            span: tracing::Span::current(),
        });
        // `idle` stays set until the engine thread takes a job: until then every job is counted
        // in `live` against `capacity + 1` places, the one the idle engine is about to free.
        drop(waiting);
        self.queue.work.notify_one();
        Ok(JobHandle { cancelled })
    }

    /// Sets the memory limit jobs are admitted under (bytes); the default is the cgroup's limit or
    /// the machine's memory ([`crate::memory::default_memory_limit`]). No effect on an engine
    /// started with [`Engine::start_with`] (its runner's memory is unknown).
    pub fn set_memory_limit(&mut self, limit: u64) {
        if let Some((_, current)) = self.memory.as_mut() {
            *current = limit;
        }
    }

    /// How long the engine waits idle after a job before it gives that job's memory back
    /// ([`RELEASE_AFTER_IDLE`] by default); `None`: never.
    pub fn set_release_after_idle(&self, delay: Option<Duration>) {
        self.queue.lock().release_after_idle = delay;
        // A thread already waiting re-reads the delay.
        self.queue.work.notify_all();
    }

    /// The memory limit jobs are admitted under and the loaded model's memory figures.
    pub fn memory(&self) -> Option<(MemoryModel, u64)> {
        self.memory
    }

    /// Whether the engine thread is waiting for work (nothing runs, nothing waits).
    pub fn is_idle(&self) -> bool {
        let waiting = self.queue.lock();
        waiting.idle && waiting.jobs.is_empty()
    }

    /// Jobs accepted, not yet started, and not cancelled.
    pub fn queued_jobs(&self) -> usize {
        self.queue.lock().live()
    }

    /// How many jobs may wait while one runs.
    pub fn queue_capacity(&self) -> usize {
        self.capacity
    }

    /// The loaded model, when started with [`Engine::start`].
    pub fn description(&self) -> Option<&ModelDescription> {
        self.description.as_ref()
    }

    /// Refuses new jobs from now on; queued ones still run.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Closes the queue and lets the engine thread finish the queued jobs on its own, without
    /// waiting for it: for an owner that must not block, such as one dropped on an async
    /// runtime's worker thread. The jobs' callers are still answered; after this, dropping the
    /// engine does not wait either.
    pub fn shutdown_detached(&self) {
        self.close();
        // Dropping the join handle detaches the thread.
        drop(
            self.worker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
    }

    /// Closes the queue, lets the engine finish every queued job, and waits for its thread.
    ///
    /// Called on the engine thread itself (a reply or progress callback that held the last
    /// reference to the engine), it cannot wait for itself: it only closes the queue, and the
    /// thread ends by itself once the queued jobs are done.
    pub fn shutdown(&self) {
        self.close();
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(worker) = &worker
            && worker.thread().id() == std::thread::current().id()
        {
            return;
        }
        if let Some(worker) = worker
            && worker.join().is_err()
        {
            tracing::error!("the engine thread panicked outside a job");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve<R: JobRunner>(mut runner: R, queue: &Queue) {
    let mut holds_memory = false;
    loop {
        // After close, `next` keeps returning the jobs that wait, then ends the loop.
        let envelope = match queue.next(holds_memory) {
            Next::Run(envelope) => envelope,
            Next::ReleaseMemory => {
                runner.release_idle_memory();
                holds_memory = false;
                continue;
            }
            Next::Closed => break,
        };
        holds_memory = true;
        let Envelope {
            job,
            reply,
            cancelled,
            submitted,
            span,
        } = envelope;
        let _entered = span.enter();
        let queued_for = submitted.elapsed();
        let result = if cancelled.load(Ordering::SeqCst) {
            Err(FluxError::Cancelled)
        } else {
            run_one(&mut runner, job, &cancelled, queue).map(|mut output| {
                output.timings.queued = queued_for;
                output
            })
        };
        answer(reply, result);
    }
}

/// Sends a job's result; a panicking reply is logged and the engine goes on.
fn answer(reply: Reply, result: Result<PipelineOutput>) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(move || reply(result))) {
        tracing::error!(panic = %panic_message(&panic), "a job's reply callback panicked");
    }
}

fn run_one<R: JobRunner>(
    runner: &mut R,
    job: Job,
    cancelled: &AtomicBool,
    queue: &Queue,
) -> Result<PipelineOutput> {
    let Job {
        params,
        mut on_progress,
    } = job;
    let mut on_step = |step: usize, total: usize| {
        if let Some(progress) = on_progress.as_mut() {
            progress(step, total);
        }
        // Waiting jobs cancelled meanwhile are answered now rather than after this job.
        for envelope in queue.take_cancelled() {
            let _entered = envelope.span.enter();
            answer(envelope.reply, Err(FluxError::Cancelled));
        }
        if cancelled.load(Ordering::SeqCst) {
            StepControl::Cancel
        } else {
            StepControl::Continue
        }
    };
    match catch_unwind(AssertUnwindSafe(|| runner.run_job(&params, &mut on_step))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic_message(&panic);
            tracing::error!(panic = %message, "a job panicked; the engine goes on");
            Err(FluxError::Engine(format!("the job panicked: {message}")))
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_owned()
    }
}
