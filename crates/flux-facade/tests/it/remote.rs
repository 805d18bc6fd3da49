//! `RemoteGenerator` against a real flux-remote server on loopback fronting a `LocalGenerator`
//! with the bundled tiny model: success, 400 → `InvalidRequest`, 429 → `Overloaded`, 401, an
//! unreachable server, and failover.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use flux_facade::{
    Backend, FailoverGenerator, GenerateRequest, Generator, GeneratorError, ImageSize,
    LocalGenerator, LocalOptions, Progress, ProgressFn, RemoteGenerator, ValidRequest, bundled,
};
use flux_remote::{FluxClient, Server, ServerConfig};
use flux_types::test_util::FakeGenerator;

/// At least 16 characters, as the server requires of its keys.
const KEY: &str = "sk-facade-test-key";

struct TestServer {
    base_url: String,
    _files: tempfile::TempDir,
}

async fn serve(generator: Arc<dyn Generator>, queue_depth: usize) -> anyhow::Result<TestServer> {
    let files = tempfile::tempdir()?;
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        api_keys: vec![KEY.to_owned()],
        queue_depth,
        rate_limit: None,
        files_dir: files.path().to_path_buf(),
        ..ServerConfig::default()
    };
    let server = Server::bind(config, generator).await?;
    let base_url = format!("http://{}", server.local_addr()?);
    tokio::spawn(server.run(std::future::pending()));
    Ok(TestServer {
        base_url,
        _files: files,
    })
}

async fn local() -> anyhow::Result<Arc<dyn Generator>> {
    tokio::task::spawn_blocking(|| -> anyhow::Result<Arc<dyn Generator>> {
        let dir = bundled::bundled_model_dir()?;
        Ok(Arc::new(LocalGenerator::start(
            &dir,
            &LocalOptions::default(),
        )?))
    })
    .await?
}

fn request(width: u32, height: u32, steps: u32, seed: Option<u64>) -> anyhow::Result<ValidRequest> {
    Ok(GenerateRequest {
        image_size: ImageSize::Custom { width, height },
        num_inference_steps: steps,
        seed,
        ..GenerateRequest::new("a red fox in the snow")
    }
    .validate()?)
}

/// A client that does not retry, so an error class comes back as it was answered.
fn single_attempt(base_url: &str, key: &str) -> anyhow::Result<RemoteGenerator> {
    Ok(RemoteGenerator::from_client(
        FluxClient::builder(base_url)
            .api_key(key)
            .max_attempts(1)
            .build()?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generates_through_the_server_with_the_seed_and_size_asked() -> anyhow::Result<()> {
    let local = local().await?;
    let server = serve(local.clone(), 4).await?;
    let backend: Backend = server.base_url.parse()?;
    let remote = backend.with_api_key(Some(KEY.to_owned())).start()?;
    assert!(remote.describe().contains(&server.base_url));

    let steps = Arc::new(AtomicU32::new(0));
    let sink = steps.clone();
    let progress: ProgressFn =
        Arc::new(move |p: Progress| sink.store(p.step * 100 + p.total_steps, Ordering::SeqCst));
    let generation = remote
        .generate(request(96, 64, 2, Some(9))?, Some(progress))
        .await?;
    assert_eq!(generation.seed, 9);
    assert_eq!(generation.images.len(), 1);
    let image = &generation.images[0];
    assert_eq!(
        (image.width, image.height, image.content_type.as_str()),
        (96, 64, "image/jpeg")
    );
    let decoded = image::load_from_memory_with_format(&image.bytes, image::ImageFormat::Jpeg)?;
    assert_eq!((decoded.width(), decoded.height()), (96, 64));
    assert_eq!(
        steps.load(Ordering::SeqCst),
        202,
        "the final step is reported"
    );

    // Same seed through the server and directly: the same bytes (nothing re-encoded on the way).
    let direct = local.generate(request(96, 64, 2, Some(9))?, None).await?;
    assert_eq!(direct.images[0].bytes, image.bytes);
    Ok(())
}

/// Answers every request with what the model would say about a size it cannot serve.
fn refuses_everything() -> Arc<FakeGenerator> {
    Arc::new(
        FakeGenerator::new()
            .failing_with(GeneratorError::InvalidRequest {
                param: Some("image_size".to_owned()),
                message: "image_size is larger than this model supports".to_owned(),
            })
            .named("refuses everything"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_becomes_invalid_request_with_the_server_message() -> anyhow::Result<()> {
    let server = serve(refuses_everything(), 4).await?;
    let remote = single_attempt(&server.base_url, KEY)?;
    let error = remote
        .generate(request(64, 64, 1, Some(1))?, None)
        .await
        .err();
    assert_eq!(
        error,
        Some(GeneratorError::InvalidRequest {
            param: Some("image_size".to_owned()),
            message: "image_size is larger than this model supports".to_owned(),
        })
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_queue_is_overloaded_with_retry_after() -> anyhow::Result<()> {
    // Tells when a generation has started inside the server.
    let started = Arc::new(tokio::sync::Notify::new());
    let announcing = FakeGenerator::new()
        .delegating_to(local().await?)
        .announcing({
            let started = started.clone();
            move || started.notify_one()
        });
    let server = serve(Arc::new(announcing), 1).await?;
    let busy = single_attempt(&server.base_url, KEY)?;
    let long = request(512, 512, 50, Some(1))?;
    let long = tokio::spawn(async move { busy.generate(long, None).await });
    tokio::time::timeout(Duration::from_secs(60), started.notified())
        .await
        .map_err(|_| anyhow::anyhow!("the long generation never started"))?;

    // The only admission slot is taken: the next request is refused at once, with a hint.
    let remote = single_attempt(&server.base_url, KEY)?;
    let refused = remote.generate(request(64, 64, 1, Some(2))?, None).await;
    let Err(GeneratorError::Overloaded { retry_after }) = refused else {
        anyhow::bail!("expected Overloaded, got {refused:?}");
    };
    ensure!(
        retry_after.is_some_and(|d| d >= Duration::from_secs(1)),
        "Retry-After missing: {retry_after:?}"
    );
    let long = long.await?;
    ensure!(long.is_ok(), "the admitted request failed: {long:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_and_a_dead_server_are_remote_errors() -> anyhow::Result<()> {
    let server = serve(refuses_everything(), 4).await?;
    let wrong_key = single_attempt(&server.base_url, "sk-wrong")?;
    let error = wrong_key
        .generate(request(64, 64, 1, None)?, None)
        .await
        .err();
    assert!(
        matches!(
            error,
            Some(GeneratorError::Remote {
                status: Some(401),
                ..
            })
        ),
        "{error:?}"
    );

    let dead = dead_address()?;
    let unreachable = single_attempt(&dead, KEY)?;
    let error = unreachable
        .generate(request(64, 64, 1, None)?, None)
        .await
        .err();
    assert!(
        matches!(error, Some(GeneratorError::Remote { status: None, .. })),
        "{error:?}"
    );
    // A server fronting this generator reports `/ready` 503 for a while rather than 200 over an
    // upstream that refuses connections; a wrong key says nothing about readiness.
    assert!(!unreachable.is_ready());
    assert!(wrong_key.is_ready());
    Ok(())
}

/// A loopback URL nothing listens on.
fn dead_address() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{address}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_skips_an_unreachable_server_but_not_a_bad_request() -> anyhow::Result<()> {
    let server = serve(local().await?, 4).await?;
    let failover = FailoverGenerator::new(vec![
        single_attempt(&dead_address()?, KEY)?,
        single_attempt(&server.base_url, KEY)?,
    ]);
    assert!(failover.describe().starts_with("failover over"));
    let generation = failover
        .generate(request(64, 64, 1, Some(3))?, None)
        .await?;
    assert_eq!(generation.seed, 3);

    let refusing = serve(refuses_everything(), 4).await?;
    let failover = FailoverGenerator::new(vec![
        single_attempt(&refusing.base_url, KEY)?,
        single_attempt(&server.base_url, KEY)?,
    ]);
    let error = failover
        .generate(request(64, 64, 1, Some(3))?, None)
        .await
        .err();
    assert!(
        matches!(error, Some(GeneratorError::InvalidRequest { .. })),
        "{error:?}"
    );
    Ok(())
}

/// A generator that reports not ready until the test clears `not_ready` (a server still loading
/// its model).
fn loading(inner: Arc<dyn Generator>) -> Arc<FakeGenerator> {
    Arc::new(
        FakeGenerator::new()
            .not_ready()
            .delegating_to(inner)
            .named("loading"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_makes_the_remote_not_ready_only_for_a_while() -> anyhow::Result<()> {
    let upstream = loading(local().await?);
    let server = serve(upstream.clone(), 4).await?;
    let remote = single_attempt(&server.base_url, KEY)?;
    assert!(remote.is_ready(), "nothing was asked yet");
    let refused = remote.generate(request(64, 64, 1, Some(1))?, None).await;
    assert!(
        matches!(refused, Err(GeneratorError::NotReady)),
        "{refused:?}"
    );
    assert!(!remote.is_ready(), "the 503 is reported");

    // The upstream finishes loading. A server fronting `remote` asks it nothing while it reports
    // not ready, so the report must expire by itself (the upstream's Retry-After, at most 5 s).
    upstream.not_ready.store(false, Ordering::SeqCst);
    let started = std::time::Instant::now();
    while !remote.is_ready() {
        ensure!(
            started.elapsed() < Duration::from_secs(15),
            "the remote stayed not ready after the upstream became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let generation = remote.generate(request(64, 64, 1, Some(1))?, None).await?;
    assert_eq!(generation.images.len(), 1);
    assert!(remote.is_ready());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_backend_does_not_wait_on_a_server_that_is_not_ready() -> anyhow::Result<()> {
    // The first server answers 503 `not_ready` with `Retry-After: 5`. A default client would
    // wait that out three times (about 15 s) before the failover could ask the second one.
    let loading = serve(loading(refuses_everything()), 4).await?;
    let server = serve(local().await?, 4).await?;
    let backend: Backend = format!("failover:{},{}", loading.base_url, server.base_url).parse()?;
    let failover = backend.with_api_key(Some(KEY.to_owned())).start()?;
    let started = std::time::Instant::now();
    let generation = failover
        .generate(request(64, 64, 1, Some(5))?, None)
        .await?;
    assert_eq!(generation.seed, 5);
    // Generous against a loaded machine (the generation takes milliseconds), and still well
    // below the three 5 s waits of a client that honours the first server's Retry-After.
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "the failover took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// A remote backend names its server and serves its dev route; what the server runs it on is not
/// known here. A failover names every server.
#[test]
fn remote_backends_report_the_dev_model_of_their_servers() -> anyhow::Result<()> {
    let one = RemoteGenerator::new("http://127.0.0.1:9", None)?;
    let model = one.model().context("a remote backend reports its model")?;
    ensure!(
        model.id == "http://127.0.0.1:9" && model.variant.name == "dev",
        "{model:?}"
    );
    ensure!(
        model.text_length.is_none()
            && model.precision.is_none()
            && model.device.is_none()
            && model.safety_checker.is_none(),
        "{model:?}"
    );
    let failover = FailoverGenerator::new(vec![
        RemoteGenerator::for_failover("http://a.test:1", None)?,
        RemoteGenerator::for_failover("http://b.test:2", None)?,
    ]);
    let model = failover.model().context("a failover reports its model")?;
    ensure!(
        model.id == "failover:http://a.test:1,http://b.test:2" && model.variant.name == "dev",
        "{model:?}"
    );
    Ok(())
}
