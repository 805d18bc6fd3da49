//! The engine: bounded queue refused at once when full, failed and panicking jobs answered with
//! errors while the thread keeps serving, cancellation between steps, progress per step, and a
//! shutdown that finishes queued work. Queue mechanics use a stand-in runner (instant and
//! controllable); progress and cancellation also run on the real tiny pipeline.

use crate::common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flux_core::FluxError;
use flux_core::denoise::StepControl;
use flux_core::engine::{Engine, Job, JobRunner};
use flux_core::pipeline::{GenerationParams, PipelineOutput, StageTimings};
use flux_types::OutputFormat;

const WAIT: Duration = Duration::from_secs(60);

fn params(prompt: &str, steps: u32) -> GenerationParams {
    GenerationParams {
        prompt: prompt.to_owned(),
        width: 64,
        height: 64,
        num_images: 1,
        num_inference_steps: steps,
        guidance_scale: 3.5,
        seed: 7,
        output_format: OutputFormat::Png,
        run_safety_checker: true,
    }
}

fn job(prompt: &str, steps: u32) -> Job {
    Job {
        params: params(prompt, steps),
        on_progress: None,
    }
}

/// What the stand-in runners answer a job with.
fn no_images() -> PipelineOutput {
    PipelineOutput {
        images: Vec::new(),
        nsfw: Vec::new(),
        nsfw_probabilities: None,
        timings: StageTimings::default(),
    }
}

/// A runner that answers by prompt: "fail" errors, "panic" panics, "wait" blocks until the test
/// opens the gate, anything else succeeds after calling on_step for each step.
struct StandIn {
    gate: mpsc::Receiver<()>,
}

impl JobRunner for StandIn {
    fn run_job(
        &mut self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> flux_core::Result<PipelineOutput> {
        match params.prompt.as_str() {
            "fail" => {
                return Err(FluxError::InvalidInput {
                    param: "prompt",
                    message: "refused".to_owned(),
                });
            }
            "panic" => panic!("stand-in panic"),
            "log" => tracing::info!("stand-in job running"),
            "wait" => {
                let _ = self.gate.recv_timeout(WAIT);
            }
            _ => {}
        }
        let total = params.num_inference_steps as usize;
        for step in 1..=total {
            if on_step(step, total) == StepControl::Cancel {
                return Err(FluxError::Cancelled);
            }
        }
        Ok(no_images())
    }
}

fn stand_in_engine(capacity: usize) -> anyhow::Result<(Engine, mpsc::Sender<()>)> {
    let (open, gate) = mpsc::channel();
    let engine = Engine::start_with(move || Ok(StandIn { gate }), capacity)?;
    Ok((engine, open))
}

type Replies = mpsc::Receiver<(String, flux_core::Result<PipelineOutput>)>;

fn submit(
    engine: &Engine,
    prompt: &str,
    replies: &mpsc::Sender<(String, flux_core::Result<PipelineOutput>)>,
) -> flux_core::Result<flux_core::engine::JobHandle> {
    let replies = replies.clone();
    let name = prompt.to_owned();
    engine.try_submit(
        job(prompt, 2),
        Box::new(move |result| drop(replies.send((name, result)))),
    )
}

/// The engine takes a job out of the queue when it starts it.
fn wait_until_started(engine: &Engine) {
    let deadline = Instant::now() + WAIT;
    while engine.queued_jobs() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        engine.queued_jobs(),
        0,
        "the engine did not start the first job"
    );
}

fn next(replies: &Replies) -> anyhow::Result<(String, flux_core::Result<PipelineOutput>)> {
    Ok(replies.recv_timeout(WAIT)?)
}

#[test]
fn failed_and_panicking_jobs_get_errors_and_the_next_job_succeeds() -> anyhow::Result<()> {
    let (engine, _open) = stand_in_engine(4)?;
    let (sender, replies) = mpsc::channel();
    for prompt in ["fail", "panic", "ok"] {
        submit(&engine, prompt, &sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let (name, result) = next(&replies)?;
    assert_eq!(name, "fail");
    assert!(
        matches!(result, Err(FluxError::InvalidInput { .. })),
        "{result:?}"
    );
    let (name, result) = next(&replies)?;
    assert_eq!(name, "panic");
    assert!(
        matches!(&result, Err(FluxError::Engine(message)) if message.contains("stand-in panic")),
        "{result:?}"
    );
    let (name, result) = next(&replies)?;
    assert_eq!(name, "ok");
    assert!(result.is_ok(), "{result:?}");
    Ok(())
}

#[test]
fn a_full_queue_is_refused_immediately_and_nothing_is_lost() -> anyhow::Result<()> {
    let (engine, open) = stand_in_engine(1)?;
    let (sender, replies) = mpsc::channel();
    submit(&engine, "wait", &sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    wait_until_started(&engine);
    submit(&engine, "queued", &sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(engine.queued_jobs(), 1);

    let started = Instant::now();
    let refused = submit(&engine, "one too many", &sender);
    assert!(
        matches!(refused, Err(FluxError::QueueFull { capacity: 1 })),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "try_submit blocked for {:?}",
        started.elapsed()
    );
    assert_eq!(engine.queued_jobs(), 1, "a refused job is not counted");

    open.send(())?;
    assert_eq!(next(&replies)?.0, "wait");
    assert_eq!(next(&replies)?.0, "queued");
    assert!(
        replies.recv_timeout(Duration::from_millis(50)).is_err(),
        "the refused job must never run"
    );
    Ok(())
}

#[test]
fn shutdown_finishes_queued_jobs_then_refuses_new_ones() -> anyhow::Result<()> {
    let (engine, open) = stand_in_engine(3)?;
    let (sender, replies) = mpsc::channel();
    submit(&engine, "wait", &sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    wait_until_started(&engine);
    for prompt in ["a", "b", "c"] {
        submit(&engine, prompt, &sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    engine.close();
    let late = submit(&engine, "late", &sender);
    assert!(matches!(late, Err(FluxError::EngineClosed)), "{late:?}");
    open.send(())?;
    engine.shutdown();
    let names: Vec<String> = replies
        .try_iter()
        .map(|(name, result)| {
            assert!(result.is_ok(), "{name}: {result:?}");
            name
        })
        .collect();
    assert_eq!(names, ["wait", "a", "b", "c"]);
    Ok(())
}

#[test]
fn a_reply_holding_the_last_reference_ends_the_engine_without_joining_itself() -> anyhow::Result<()>
{
    // The engine thread cannot join itself: dropping the engine there used to panic inside
    // `Drop` ("failed to join thread: Resource deadlock avoided"). The reply must come back
    // normally and the thread end on its own.
    let (engine, open) = stand_in_engine(1)?;
    let engine = Arc::new(engine);
    let (sender, replies) = mpsc::channel();
    let last_reference = Mutex::new(Some(Arc::clone(&engine)));
    let dropped_on_engine_thread = Arc::new(Mutex::new(None));
    let report = Arc::clone(&dropped_on_engine_thread);
    engine.try_submit(
        job("wait", 2),
        Box::new(move |result| {
            let engine = last_reference.lock().ok().and_then(|mut held| held.take());
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(engine)));
            if let Ok(mut report) = report.lock() {
                *report = Some(outcome.is_ok());
            }
            drop(sender.send(result.map(|_| ())));
        }),
    )?;
    drop(engine);
    open.send(())?;
    let result = replies.recv_timeout(WAIT)?;
    assert!(result.is_ok(), "{result:?}");
    let dropped_cleanly = *dropped_on_engine_thread
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    assert_eq!(
        dropped_cleanly,
        Some(true),
        "dropping the engine on its own thread panicked"
    );
    Ok(())
}

#[test]
fn a_job_cancelled_while_queued_never_runs_and_gives_its_place_back_at_once() -> anyhow::Result<()>
{
    let (engine, open) = stand_in_engine(1)?;
    let (sender, replies) = mpsc::channel();
    submit(&engine, "wait", &sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    wait_until_started(&engine);
    let handle = submit(&engine, "doomed", &sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(engine.queued_jobs(), 1);
    handle.cancel();
    // The place is free while the first job still runs: no spurious QueueFull for the next one.
    assert_eq!(engine.queued_jobs(), 0, "a cancelled job is not counted");
    submit(&engine, "next", &sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    let refused = submit(&engine, "one too many", &sender);
    assert!(
        matches!(refused, Err(FluxError::QueueFull { capacity: 1 })),
        "{refused:?}"
    );

    open.send(())?;
    // The cancelled job is answered at the running job's first step boundary, before it ends.
    let (name, result) = next(&replies)?;
    assert_eq!(name, "doomed");
    assert!(matches!(result, Err(FluxError::Cancelled)), "{result:?}");
    for expected in ["wait", "next"] {
        let (name, result) = next(&replies)?;
        assert_eq!(name, expected);
        assert!(result.is_ok(), "{name}: {result:?}");
    }
    assert!(
        replies.recv_timeout(Duration::from_millis(50)).is_err(),
        "the refused job must never run, the cancelled one never twice"
    );
    Ok(())
}

#[test]
fn a_queue_of_capacity_zero_takes_a_job_only_when_idle() -> anyhow::Result<()> {
    let (engine, open) = stand_in_engine(0)?;
    let (sender, replies) = mpsc::channel();
    // The engine thread reports idle once it waits for work; until then a submit may be refused.
    let deadline = Instant::now() + WAIT;
    while submit(&engine, "wait", &sender).is_err() {
        assert!(
            Instant::now() < deadline,
            "the idle engine never took a job"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let busy = submit(&engine, "busy", &sender);
    assert!(
        matches!(busy, Err(FluxError::QueueFull { capacity: 0 })),
        "{busy:?}"
    );
    open.send(())?;
    assert_eq!(next(&replies)?.0, "wait");
    let deadline = Instant::now() + WAIT;
    while submit(&engine, "after", &sender).is_err() {
        assert!(
            Instant::now() < deadline,
            "the engine never became idle again"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let (name, result) = next(&replies)?;
    assert_eq!(name, "after");
    assert!(result.is_ok(), "{result:?}");
    Ok(())
}

#[test]
fn real_pipeline_reports_each_step_and_stops_between_steps_when_cancelled() -> anyhow::Result<()> {
    let engine = Engine::start(common::dev_model(), common::test_config(), 2)?;
    assert!(engine.description().is_some());

    // Progress: one event per step, in order, then a successful result.
    let events = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&events);
    let (sender, replies) = mpsc::channel();
    let on_progress = Box::new(move |step, total| {
        recorded
            .lock()
            .map(|mut e| e.push((step, total)))
            .unwrap_or(())
    });
    let reply_to = sender.clone();
    engine
        .try_submit(
            Job {
                params: params("a lighthouse", 3),
                on_progress: Some(on_progress),
            },
            Box::new(move |result| drop(reply_to.send(result))),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let output = replies.recv_timeout(WAIT)??;
    assert_eq!(output.images.len(), 1);
    assert_eq!(
        *events.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
        vec![(1, 3), (2, 3), (3, 3)]
    );

    // Cancellation: the progress callback of step 1 waits until the test has cancelled, so the
    // engine must stop before step 2.
    let (at_step, step_seen) = mpsc::channel();
    let (go, wait_for_go) = mpsc::channel::<()>();
    let wait_for_go = Mutex::new(wait_for_go);
    let on_progress = Box::new(move |step: usize, _total: usize| {
        let _ = at_step.send(step);
        if step == 1 {
            let _ = wait_for_go
                .lock()
                .map(|receiver| receiver.recv_timeout(WAIT));
        }
    });
    let handle = engine
        .try_submit(
            Job {
                params: params("a lighthouse", 6),
                on_progress: Some(on_progress),
            },
            Box::new(move |result| drop(sender.send(result))),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(step_seen.recv_timeout(WAIT)?, 1);
    handle.cancel();
    go.send(())?;
    let result = replies.recv_timeout(WAIT)?;
    assert!(matches!(result, Err(FluxError::Cancelled)), "{result:?}");
    let later_steps: Vec<usize> = step_seen.try_iter().collect();
    assert!(
        later_steps.is_empty(),
        "steps after cancellation: {later_steps:?}"
    );
    Ok(())
}

#[test]
fn starting_on_a_broken_folder_reports_the_load_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let result = Engine::start(dir.path().to_owned(), common::test_config(), 1);
    assert!(
        matches!(result, Err(FluxError::InvalidModel { .. })),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn the_engine_can_be_shared_between_request_handlers() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Engine>();
    shareable::<flux_core::engine::JobHandle>();
}

#[test]
fn an_idle_engine_takes_one_job_and_queues_capacity_more_at_once() -> anyhow::Result<()> {
    let (engine, open) = stand_in_engine(1)?;
    let (sender, replies) = mpsc::channel();
    // Wait until the engine thread is idle (it reports so once it waits for work).
    let deadline = Instant::now() + WAIT;
    while !engine.is_idle() {
        assert!(Instant::now() < deadline, "the engine never became idle");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Back to back, whether or not the engine thread has taken the first one yet: one runs, one
    // waits, the third is refused (a submit that marked the engine busy before it took the job
    // used to refuse the second when it came first).
    submit(&engine, "wait", &sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    submit(&engine, "second", &sender).map_err(|e| anyhow::anyhow!("{e}"))?;
    let third = submit(&engine, "third", &sender);
    assert!(
        matches!(third, Err(FluxError::QueueFull { capacity: 1 })),
        "{third:?}"
    );
    open.send(())?;
    for expected in ["wait", "second"] {
        let (name, result) = next(&replies)?;
        assert_eq!(name, expected);
        assert!(result.is_ok(), "{name}: {result:?}");
    }
    Ok(())
}

/// A runner whose jobs succeed at once and which records when it was asked to give memory back.
struct Releasing {
    releases: Arc<Mutex<Vec<Instant>>>,
}

impl JobRunner for Releasing {
    fn run_job(
        &mut self,
        _params: &GenerationParams,
        _on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> flux_core::Result<PipelineOutput> {
        Ok(no_images())
    }

    fn release_idle_memory(&mut self) {
        self.releases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Instant::now());
    }
}

#[test]
fn memory_is_given_back_once_the_engine_has_been_idle_for_its_delay_and_only_then()
-> anyhow::Result<()> {
    const DELAY: Duration = Duration::from_secs(1);
    let releases = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&releases);
    let engine = Engine::start_with(move || Ok(Releasing { releases: recorded }), 4)?;
    engine.set_release_after_idle(Some(DELAY));
    let count = || releases.lock().map_or(0, |releases| releases.len());
    let (sender, replies) = mpsc::channel();

    // Nothing ran yet, so nothing is held: an idle engine never releases.
    std::thread::sleep(2 * DELAY);
    assert_eq!(count(), 0, "released before any job");

    // Jobs back to back (each submitted as the previous one is answered): no release between.
    for _ in 0..3 {
        submit(&engine, "quick", &sender)?;
        let (_, result) = next(&replies)?;
        assert!(result.is_ok(), "{result:?}");
    }
    let last_answer = Instant::now();
    assert_eq!(count(), 0, "released between back-to-back jobs");

    // Idle after them: exactly one release, no earlier than the delay, and none after it.
    let deadline = Instant::now() + WAIT;
    while count() == 0 {
        assert!(Instant::now() < deadline, "never released after going idle");
        std::thread::sleep(Duration::from_millis(10));
    }
    let released_at = releases.lock().map_or(last_answer, |releases| releases[0]);
    // The engine starts its wait as it answers, a moment before this thread sees the answer.
    assert!(
        released_at.duration_since(last_answer) >= DELAY - Duration::from_millis(50),
        "released {:?} after the last answer, before the {DELAY:?} delay",
        released_at.duration_since(last_answer)
    );
    std::thread::sleep(3 * DELAY);
    assert_eq!(count(), 1, "released again without another job");

    // Switched off: a job leaves its memory held.
    engine.set_release_after_idle(None);
    submit(&engine, "quick", &sender)?;
    let (_, result) = next(&replies)?;
    assert!(result.is_ok(), "{result:?}");
    std::thread::sleep(3 * DELAY);
    assert_eq!(count(), 1, "released with the release switched off");
    Ok(())
}

#[test]
fn a_detached_shutdown_does_not_wait_and_the_running_job_is_still_answered() -> anyhow::Result<()> {
    let (engine, open_gate) = stand_in_engine(2)?;
    let (replies_to, replies) = mpsc::channel();
    submit(&engine, "wait", &replies_to)?;
    wait_until_started(&engine);

    // The running job waits for the gate (up to a minute): a shutdown that joined the engine
    // thread would wait with it.
    let began = Instant::now();
    engine.shutdown_detached();
    drop(engine);
    assert!(
        began.elapsed() < WAIT / 4,
        "the shutdown waited {:?} for the running job",
        began.elapsed()
    );

    open_gate.send(())?;
    let (name, result) = replies.recv_timeout(WAIT)?;
    assert_eq!(name, "wait");
    assert!(result.is_ok(), "{result:?}");
    Ok(())
}

/// Appends what a log line writes to a shared buffer.
#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_engine_threads_log_lines_carry_the_submitters_span() -> anyhow::Result<()> {
    // A process of its own: the subscriber is process-wide, and other tests' engines log the same
    // line without this span.
    if !common::in_own_process(
        module_path!(),
        "the_engine_threads_log_lines_carry_the_submitters_span",
    )? {
        return Ok(());
    }
    let captured = Arc::new(Mutex::new(Vec::new()));
    let writer = CaptureWriter(Arc::clone(&captured));
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The engine logs on its own thread: only a process-wide subscriber sees it.
    tracing::subscriber::set_global_default(subscriber)?;
    let (engine, _open) = stand_in_engine(1)?;
    let (sender, replies) = mpsc::channel();
    {
        let span = tracing::info_span!("request", request_id = "req-span-test");
        let _entered = span.enter();
        submit(&engine, "log", &sender)?;
    }
    let (_, result) = next(&replies)?;
    result?;
    let text = String::from_utf8(
        captured
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone(),
    )?;
    let line = text
        .lines()
        .find(|line| line.contains("stand-in job running"))
        .ok_or_else(|| anyhow::anyhow!("the engine logged nothing: {text:?}"))?;
    anyhow::ensure!(
        line.contains("request_id=\"req-span-test\""),
        "the engine's line lost the request's span: {line}"
    );
    Ok(())
}
