//! Shared test fixtures: a fake `Generator` that counts calls and makes real PNG/JPEG bytes, and
//! server configurations for tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use flux_remote::{AppState, RateLimit, ServerConfig};
use flux_types::{
    BoxFuture, GeneratedImage, Generation, GenerationTimings, Generator, GeneratorError,
    OutputFormat, ProgressFn, ValidRequest,
};

pub const KEY: &str = "test-key-alpha";
pub const OTHER_KEY: &str = "test-key-beta";

/// A generator that sleeps `delay`, then returns solid-colour images of the requested size, or
/// the configured failure.
#[derive(Debug, Default)]
pub struct FakeGenerator {
    pub calls: AtomicUsize,
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    pub not_ready: AtomicBool,
    pub delay: Mutex<Duration>,
    /// Every call fails with this while it is set.
    pub failure: Mutex<Option<GeneratorError>>,
    /// The next `n` calls fail with an inference error, later ones succeed.
    pub failures_left: AtomicUsize,
}

impl FakeGenerator {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeGenerator::default())
    }

    pub fn with_delay(delay: Duration) -> Arc<Self> {
        let generator = FakeGenerator::default();
        *generator.delay.lock().unwrap() = delay;
        Arc::new(generator)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn fail_with(&self, error: Option<GeneratorError>) {
        *self.failure.lock().unwrap() = error;
    }
}

/// Encodes a solid `width`×`height` image.
pub fn encode_image(width: u32, height: u32, format: OutputFormat) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([200, 80, 30]));
    let mut bytes = Cursor::new(Vec::new());
    let format = match format {
        OutputFormat::Png => image::ImageFormat::Png,
        _ => image::ImageFormat::Jpeg,
    };
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

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
        _progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            let _guard = RunningGuard(&self.running);
            self.max_running.fetch_max(now_running, Ordering::SeqCst);
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if let Some(error) = self.failure.lock().unwrap().clone() {
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
            let format = request.output_format();
            let content_type = match format {
                OutputFormat::Png => "image/png",
                _ => "image/jpeg",
            };
            let count = request.num_images() as usize;
            let bytes = encode_image(request.width(), request.height(), format);
            Ok(Generation {
                images: (0..count)
                    .map(|_| GeneratedImage {
                        bytes: bytes.clone(),
                        width: request.width(),
                        height: request.height(),
                        content_type: content_type.to_owned(),
                    })
                    .collect(),
                seed: request.seed().unwrap_or(0),
                has_nsfw_concepts: vec![false; count],
                timings: GenerationTimings {
                    inference: delay,
                    queued: Duration::ZERO,
                },
            })
        })
    }

    fn is_ready(&self) -> bool {
        !self.not_ready.load(Ordering::SeqCst)
    }

    fn describe(&self) -> String {
        "fake generator".to_owned()
    }
}

/// A configuration for tests: two keys, a generous rate limit, loopback port 0.
pub fn config(files_dir: &Path) -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_keys: vec![KEY.to_owned(), OTHER_KEY.to_owned()],
        rate_limit: Some("1000/s".parse::<RateLimit>().unwrap()),
        queue_depth: 4,
        files_dir: files_dir.to_owned(),
        request_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    }
}

pub const PUBLIC_URL: &str = "http://flux.test";

pub fn state(config: &ServerConfig, generator: Arc<FakeGenerator>) -> AppState {
    AppState::new(config, generator, PUBLIC_URL.to_owned()).unwrap()
}

/// A POST to the generation route with the test key and a JSON content type.
pub fn post_json(body: &str) -> axum::http::request::Builder {
    let _ = body;
    Request::post(flux_remote::GENERATE_PATH)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
}

pub fn generate_request(body: &str) -> Request<Body> {
    post_json(body).body(Body::from(body.to_owned())).unwrap()
}

/// The body of a response, as JSON.
pub async fn json_body(response: Response<Body>) -> serde_json::Value {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

pub async fn body_bytes(response: Response<Body>) -> Vec<u8> {
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

/// A small valid request (64×64 PNG), so fake images are cheap.
pub const SMALL: &str =
    r#"{"prompt": "a red fox", "image_size": {"width": 64, "height": 64}, "output_format": "png"}"#;

/// Marks a child process started by [`in_own_process`]; its value is the one test the child runs.
pub const CHILD_ENV: &str = "FLUX_RS_TEST_CHILD";

/// `module::test`, the name libtest knows a test of this binary by, from the test's
/// `module_path!()` (`it::module`) and its function name.
pub fn test_name(module_path: &str, test: &str) -> String {
    let module = module_path
        .split_once("::")
        .map_or(module_path, |(_, rest)| rest);
    format!("{module}::{test}")
}

/// For a test that needs a process of its own (a signal goes to the whole process). In the child
/// it returns `Ok(true)`: the test does its work there. In the test binary's own run it runs this
/// test again in a child process, alone, and returns `Ok(false)` only when exactly that one test
/// ran there and passed, so the test can never pass without its body having run.
pub fn in_own_process(module_path: &str, test: &str) -> anyhow::Result<bool> {
    let name = test_name(module_path, test);
    if std::env::var_os(CHILD_ENV).is_some_and(|value| value == name.as_str()) {
        return Ok(true);
    }
    let output = std::process::Command::new(std::env::current_exe()?)
        .args([name.as_str(), "--exact", "--nocapture"])
        .env(CHILD_ENV, &name)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success()
            && stdout.contains("running 1 test")
            && stdout.contains("test result: ok. 1 passed"),
        "{name} failed in its own process ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(false)
}
