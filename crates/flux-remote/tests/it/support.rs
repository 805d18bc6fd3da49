//! Shared test fixtures: the workspace's fake `Generator` (`flux_types::test_util`) making real
//! PNG/JPEG bytes, and server configurations for tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use flux_remote::{AppState, RateLimit, ServerConfig};
use flux_types::OutputFormat;

/// At least `MIN_API_KEY_CHARS` (16) long, as the server requires.
pub const KEY: &str = "test-key-alpha-01";
pub const OTHER_KEY: &str = "test-key-beta-002";

pub use flux_types::test_util::FakeGenerator;

/// The shared fake, answering with real solid-colour images of the requested size.
pub fn fake() -> Arc<FakeGenerator> {
    Arc::new(FakeGenerator::new().with_images(encode_image))
}

/// [`fake`], sleeping `delay` in each call before it answers.
pub fn fake_with_delay(delay: Duration) -> Arc<FakeGenerator> {
    Arc::new(
        FakeGenerator::new()
            .with_images(encode_image)
            .with_delay(delay),
    )
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

pub mod raw;

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
