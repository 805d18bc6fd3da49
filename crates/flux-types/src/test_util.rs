//! Test support (feature `test-util`, enabled only from other crates' dev-dependencies): one fake
//! [`Generator`] with the knobs the workspace's tests need, instead of a hand-made one per test
//! file.
//!
//! Only `std`, like the rest of this crate: its delay runs on a timer thread, so the fake works on
//! any async runtime (or none, with a hand-rolled executor), and pulls no runtime into the tests
//! that use it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::generator::{
    BoxFuture, GeneratedImage, Generation, GenerationTimings, Generator, GeneratorError, ModelInfo,
    ProgressFn,
};
use crate::request::{OutputFormat, ValidRequest};
use crate::variant::VariantSpec;

/// Encodes a `width`×`height` image in a format: how a fake makes image bytes (tests pick an
/// encoder; this crate has none).
pub type EncodeFn = Arc<dyn Fn(u32, u32, OutputFormat) -> Vec<u8> + Send + Sync>;

/// A fake generator. By default it answers at once with `num_images` images of the requested size
/// (empty bytes unless [`FakeGenerator::with_images`] gives an encoder), the request's seed (or 0)
/// and `inference` timing equal to its delay. Each call, in order: counts itself, announces
/// itself, waits the delay, then fails with the set failure, or with one of the `failures_left`
/// injected inference errors, or delegates to the inner generator, or answers.
///
/// The public fields are the knobs tests turn while it runs.
#[derive(Default)]
pub struct FakeGenerator {
    /// Calls so far (counted when a call starts).
    pub calls: AtomicUsize,
    /// Calls running now.
    pub running: AtomicUsize,
    /// The most calls that ran at once.
    pub max_running: AtomicUsize,
    /// `is_ready` reports false while this is set.
    pub not_ready: AtomicBool,
    /// How long each call waits before it answers.
    pub delay: Mutex<Duration>,
    /// Every call fails with this while it is set.
    pub failure: Mutex<Option<GeneratorError>>,
    /// The next `n` calls fail with an inference error, later ones succeed.
    pub failures_left: AtomicUsize,
    /// Timings to report instead of `inference` = the delay.
    pub timings: Mutex<Option<GenerationTimings>>,
    /// Every request it was called with, in order.
    pub requests: Mutex<Vec<ValidRequest>>,
    encode: Option<EncodeFn>,
    inner: Option<Arc<dyn Generator>>,
    announce: Option<Arc<dyn Fn() + Send + Sync>>,
    name: Option<String>,
    /// What `model` reports once `model_hidden` is clear.
    model: Option<ModelInfo>,
    /// `model` reports `None` while this is set (a model still loading).
    pub model_hidden: AtomicBool,
    /// Reports each of the request's steps, this long apart, before answering.
    step_gap: Option<Duration>,
}

/// The facts of a fake model of `variant`, named `id` (CPU, fp32, no safety checker).
pub fn fake_model(id: &str, variant: &'static VariantSpec) -> ModelInfo {
    ModelInfo {
        id: id.to_owned(),
        variant,
        text_length: Some(256),
        precision: Some("fp32".to_owned()),
        device: Some("cpu".to_owned()),
        safety_checker: Some(false),
    }
}

impl FakeGenerator {
    /// A fake that answers at once, with empty image bytes.
    pub fn new() -> Self {
        FakeGenerator::default()
    }

    /// Images encoded by `encode` (for tests that decode or serve them).
    #[must_use]
    pub fn with_images(
        mut self,
        encode: impl Fn(u32, u32, OutputFormat) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        self.encode = Some(Arc::new(encode));
        self
    }

    /// Waits `delay` in each call before answering.
    #[must_use]
    pub fn with_delay(self, delay: Duration) -> Self {
        *lock(&self.delay) = delay;
        self
    }

    /// Every call fails with `error` (until [`FakeGenerator::fail_with`] clears it): queue full,
    /// not ready, rate limited, a refused request…
    #[must_use]
    pub fn failing_with(self, error: GeneratorError) -> Self {
        self.fail_with(Some(error));
        self
    }

    /// Reports not ready (until `not_ready` is cleared).
    #[must_use]
    pub fn not_ready(self) -> Self {
        self.not_ready.store(true, Ordering::SeqCst);
        self
    }

    /// Reports every denoising step of the request to the progress callback, `gap` apart, after
    /// the delay and before answering (as an engine does).
    #[must_use]
    pub fn stepping(mut self, gap: Duration) -> Self {
        self.step_gap = Some(gap);
        self
    }

    /// Reports these timings instead of `inference` = the delay.
    #[must_use]
    pub fn reporting(self, timings: GenerationTimings) -> Self {
        *lock(&self.timings) = Some(timings);
        self
    }

    /// Hands each call that gets past the delay and the failures to `inner` (a real generator
    /// wrapped to count, announce or report not ready).
    #[must_use]
    pub fn delegating_to(mut self, inner: Arc<dyn Generator>) -> Self {
        self.inner = Some(inner);
        self
    }

    /// Calls `announce` when each call starts (tells a test that a generation is running).
    #[must_use]
    pub fn announcing(mut self, announce: impl Fn() + Send + Sync + 'static) -> Self {
        self.announce = Some(Arc::new(announce));
        self
    }

    /// What `describe` says (default: "fake generator", or the inner generator's description).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Reports `model` (default: none, as a backend that cannot say).
    #[must_use]
    pub fn serving(mut self, model: ModelInfo) -> Self {
        self.model = Some(model);
        self
    }

    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The requests of every call so far, in order.
    pub fn requests(&self) -> Vec<ValidRequest> {
        lock(&self.requests).clone()
    }

    /// Sets or clears the failure every call returns.
    pub fn fail_with(&self, error: Option<GeneratorError>) {
        *lock(&self.failure) = error;
    }

    fn answer(&self, request: &ValidRequest, delay: Duration) -> Generation {
        let format = request.output_format();
        let count = request.num_images() as usize;
        let bytes = self
            .encode
            .as_ref()
            .map(|encode| encode(request.width(), request.height(), format))
            .unwrap_or_default();
        Generation {
            images: (0..count)
                .map(|_| GeneratedImage {
                    bytes: bytes.clone(),
                    width: request.width(),
                    height: request.height(),
                    content_type: format.content_type().to_owned(),
                })
                .collect(),
            seed: request.seed().unwrap_or(0),
            has_nsfw_concepts: vec![false; count],
            timings: lock(&self.timings).unwrap_or(GenerationTimings {
                inference: delay,
                queued: Duration::ZERO,
            }),
        }
    }
}

impl fmt::Debug for FakeGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGenerator")
            .field("calls", &self.calls)
            .field("running", &self.running)
            .field("not_ready", &self.not_ready)
            .field("delay", &self.delay)
            .field("failure", &self.failure)
            .field("failures_left", &self.failures_left)
            .field("delegating", &self.inner.is_some())
            .field("name", &self.name)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock only means another test thread panicked; the value is still what was set.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps `running` right however a call ends, cancellation (a dropped future) included.
struct RunningGuard<'a>(&'a AtomicUsize);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Generator for FakeGenerator {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            lock(&self.requests).push(request.clone());
            let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            let _guard = RunningGuard(&self.running);
            self.max_running.fetch_max(now_running, Ordering::SeqCst);
            if let Some(announce) = &self.announce {
                announce();
            }
            let delay = *lock(&self.delay);
            sleep(delay).await;
            let failure = lock(&self.failure).clone();
            if let Some(error) = failure {
                return Err(error);
            }
            let fail_now = self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail_now {
                return Err(GeneratorError::Inference {
                    detail: "injected failure".to_owned(),
                });
            }
            if let (Some(gap), Some(report)) = (self.step_gap, &progress) {
                let total_steps = request.num_inference_steps();
                for step in 1..=total_steps {
                    sleep(gap).await;
                    report(crate::Progress { step, total_steps });
                }
            }
            match &self.inner {
                Some(inner) => inner.generate(request, progress).await,
                None => Ok(self.answer(&request, delay)),
            }
        })
    }

    fn is_ready(&self) -> bool {
        !self.not_ready.load(Ordering::SeqCst)
    }

    fn describe(&self) -> String {
        match (&self.name, &self.inner) {
            (Some(name), _) => name.clone(),
            (None, Some(inner)) => inner.describe(),
            (None, None) => "fake generator".to_owned(),
        }
    }

    fn model(&self) -> Option<ModelInfo> {
        if self.model_hidden.load(Ordering::SeqCst) {
            return None;
        }
        self.model
            .clone()
            .or_else(|| self.inner.as_ref().and_then(|inner| inner.model()))
    }
}

/// Waits `duration` on a timer thread, on whatever executor polls it. A zero wait still yields
/// once, as an async timer's does.
fn sleep(duration: Duration) -> impl Future<Output = ()> {
    Sleep {
        duration,
        state: Arc::new(Mutex::new(SleepState::default())),
        started: false,
    }
}

#[derive(Default)]
struct SleepState {
    done: bool,
    waker: Option<Waker>,
}

struct Sleep {
    duration: Duration,
    state: Arc<Mutex<SleepState>>,
    started: bool,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.started {
            self.started = true;
            if self.duration.is_zero() {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            lock(&self.state).waker = Some(cx.waker().clone());
            let state = Arc::clone(&self.state);
            let duration = self.duration;
            std::thread::spawn(move || {
                std::thread::sleep(duration);
                let mut state = lock(&state);
                state.done = true;
                if let Some(waker) = state.waker.take() {
                    waker.wake();
                }
            });
            return Poll::Pending;
        }
        if self.duration.is_zero() {
            return Poll::Ready(());
        }
        let mut state = lock(&self.state);
        if state.done {
            Poll::Ready(())
        } else {
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GenerateRequest;

    /// Polls a future to completion on this thread.
    fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            std::thread::park();
        }
    }

    fn request() -> Result<ValidRequest, crate::RequestError> {
        GenerateRequest {
            seed: Some(7),
            num_images: 2,
            ..GenerateRequest::new("a cat")
        }
        .validate()
    }

    #[test]
    fn answers_counts_waits_and_fails_as_told() -> Result<(), Box<dyn std::error::Error>> {
        let fake = FakeGenerator::new()
            .with_images(|width, height, _| vec![1; (width * height) as usize % 7])
            .with_delay(Duration::from_millis(30));
        let started = std::time::Instant::now();
        let generation = block_on(fake.generate(request()?, None))?;
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!((generation.seed, generation.images.len()), (7, 2));
        assert_eq!(generation.timings.inference, Duration::from_millis(30));
        assert_eq!(fake.calls(), 1);
        assert_eq!(fake.running.load(Ordering::SeqCst), 0);

        fake.failures_left.store(1, Ordering::SeqCst);
        let refused = block_on(fake.generate(request()?, None));
        assert!(matches!(refused, Err(GeneratorError::Inference { .. })));
        assert!(block_on(fake.generate(request()?, None)).is_ok());

        fake.fail_with(Some(GeneratorError::NotReady));
        assert_eq!(
            block_on(fake.generate(request()?, None)).err(),
            Some(GeneratorError::NotReady)
        );
        assert_eq!(fake.calls(), 4);
        assert!(fake.is_ready());
        assert!(!FakeGenerator::new().not_ready().is_ready());
        Ok(())
    }

    #[test]
    fn delegates_announces_and_names() -> Result<(), Box<dyn std::error::Error>> {
        let announced = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&announced);
        let inner: Arc<dyn Generator> = Arc::new(FakeGenerator::new().named("inner"));
        let outer = FakeGenerator::new()
            .delegating_to(inner)
            .announcing(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            });
        assert_eq!(outer.describe(), "inner");
        assert_eq!(block_on(outer.generate(request()?, None))?.seed, 7);
        assert_eq!(announced.load(Ordering::SeqCst), 1);
        assert_eq!(outer.named("outer").describe(), "outer");
        Ok(())
    }
}
