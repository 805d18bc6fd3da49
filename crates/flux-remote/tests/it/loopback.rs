//! The client against the real server on loopback (127.0.0.1): success, error classes, retries,
//! idempotent replay, overload, graceful shutdown and the file route over raw TCP.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use flux_remote::{AppState, FluxClient, RemoteError, Server, ServerConfig};
use flux_types::{ErrorCode, GenerateRequest, ImageSize, OutputFormat};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

struct Running {
    addr: SocketAddr,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), RemoteError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> flux_remote::FluxClientBuilder {
        FluxClient::builder(&self.url())
            .api_key(KEY)
            .backoff(Duration::from_millis(10), Duration::from_millis(100))
            .total_timeout(Duration::from_secs(30))
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

async fn start(generator: Arc<FakeGenerator>, adjust: impl FnOnce(&mut ServerConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    adjust(&mut config);
    let server = Server::bind(config, generator).await.unwrap();
    let addr = server.local_addr().unwrap();
    let state = server.state().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        state,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

fn small_request(width: u32, height: u32, format: OutputFormat) -> GenerateRequest {
    GenerateRequest {
        image_size: ImageSize::Custom { width, height },
        output_format: format,
        ..GenerateRequest::new("a red fox in the snow")
    }
}

/// A client for `addr` that does not retry: an answer comes back as it was given.
fn single_attempt_client(addr: SocketAddr) -> FluxClient {
    FluxClient::builder(&format!("http://{addr}"))
        .api_key(KEY)
        .max_attempts(1)
        .build()
        .unwrap()
}

/// The request a test proxy sends upstream for `parts` and `body`: same method, path, body and
/// the headers that matter to the API.
fn forwarded(
    http: &reqwest::Client,
    upstream: &str,
    parts: &axum::http::request::Parts,
    body: axum::body::Bytes,
) -> reqwest::RequestBuilder {
    let mut forward = http
        .request(
            parts.method.clone(),
            format!("{upstream}{}", parts.uri.path()),
        )
        .body(body);
    for name in ["authorization", "content-type", "idempotency-key"] {
        if let Some(value) = parts.headers.get(name) {
            forward = forward.header(name, value.clone());
        }
    }
    forward
}

fn api_code(error: &RemoteError) -> Option<ErrorCode> {
    error.error_body().map(|body| body.error.code)
}

#[tokio::test]
async fn generate_and_fetch_images_back() {
    let generator = fake();
    let server = start(generator.clone(), |_| {}).await;
    let client = server.client().build().unwrap();
    let mut request = small_request(128, 64, OutputFormat::Png);
    request.num_images = 2;
    request.seed = Some(7);
    let response = client.generate(&request).await.unwrap();
    assert_eq!(response.seed, 7);
    assert_eq!(response.images.len(), 2);
    assert_eq!(response.has_nsfw_concepts, vec![false, false]);
    for image in &response.images {
        assert!(
            image
                .url
                .starts_with(&format!("{}/api/v1/files/", server.url()))
        );
        let bytes = client.fetch_image(&image.url).await.unwrap();
        let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (128, 64));
    }

    let mut request = small_request(64, 128, OutputFormat::Jpeg);
    request.sync_mode = true;
    let response = client.generate(&request).await.unwrap();
    assert!(
        response.images[0]
            .url
            .starts_with("data:image/jpeg;base64,")
    );
    let bytes = client.fetch_image(&response.images[0].url).await.unwrap();
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 128));
    assert_eq!(generator.calls(), 2);
    server.stop().await;
}

#[tokio::test]
async fn error_classes_keep_status_body_and_raw_body() {
    let generator = fake();
    let server = start(generator.clone(), |_| {}).await;
    let client = server.client().build().unwrap();

    let mut request = small_request(64, 64, OutputFormat::Png);
    request.num_images = 5;
    let error = client.generate(&request).await.unwrap_err();
    assert_eq!(error.status(), Some(400));
    let body = error.error_body().unwrap();
    assert_eq!(body.error.code, ErrorCode::InvalidParameter);
    assert_eq!(body.error.param.as_deref(), Some("num_images"));
    match &error {
        RemoteError::Api { raw_body, .. } => assert!(raw_body.contains("num_images")),
        other => panic!("expected an API error, got {other:?}"),
    }
    assert!(error.to_string().contains("400"), "{error}");

    let wrong = FluxClient::builder(&server.url())
        .api_key("nope")
        .build()
        .unwrap();
    let error = wrong.generate(&request).await.unwrap_err();
    assert_eq!(error.status(), Some(401));
    assert_eq!(api_code(&error), Some(ErrorCode::Unauthorized));

    let error = client
        .fetch_image(&format!(
            "{}/api/v1/files/{}.png",
            server.url(),
            "0".repeat(32)
        ))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(404));
    assert_eq!(api_code(&error), Some(ErrorCode::NotFound));

    // 503 with a Retry-After longer than the client will wait: returned, not waited for.
    generator.not_ready.store(true, Ordering::SeqCst);
    let patient = server
        .client()
        .max_retry_after(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = patient
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(error.status(), Some(503));
    assert_eq!(api_code(&error), Some(ErrorCode::NotReady));
    match &error {
        RemoteError::Api { retry_after, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(5)))
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    generator.not_ready.store(false, Ordering::SeqCst);

    // Without an Idempotency-Key a 500 is not retried.
    let no_key = server.client().auto_idempotency_key(false).build().unwrap();
    generator.failures_left.store(1, Ordering::SeqCst);
    let error = no_key
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(500));
    assert_eq!(api_code(&error), Some(ErrorCode::InferenceFailed));
    assert_eq!(generator.calls(), 1, "no retry without a key");

    // With one (the default), the failed first attempt was not stored: the retry generates.
    generator.failures_left.store(1, Ordering::SeqCst);
    client
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap();
    assert_eq!(generator.calls(), 3);

    // The total timeout bounds the whole call.
    *generator.delay.lock().unwrap() = Duration::from_secs(3);
    let hasty = server
        .client()
        .total_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = hasty
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap_err();
    assert!(matches!(error, RemoteError::Timeout(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    *generator.delay.lock().unwrap() = Duration::ZERO;
    server.stop().await;
}

#[tokio::test]
async fn connection_refused_is_a_transport_error_after_bounded_attempts() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = FluxClient::builder(&format!("http://127.0.0.1:{port}"))
        .api_key(KEY)
        .max_attempts(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(20))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = client
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap_err();
    match &error {
        RemoteError::Transport(inner) => assert!(inner.is_connect(), "{inner:?}"),
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn rate_limited_call_waits_retry_after_then_succeeds() {
    let generator = fake();
    let server = start(generator.clone(), |config| {
        config.rate_limit = Some("1/s".parse().unwrap());
    })
    .await;
    let client = server.client().build().unwrap();
    client
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap();
    let started = Instant::now();
    client
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap();
    let waited = started.elapsed();
    // Retry-After is 1 s (whole seconds, rounded up); the client waits it before the retry.
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(generator.calls(), 2);

    let impatient = server.client().max_attempts(1).build().unwrap();
    let error = impatient
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(429));
    assert_eq!(api_code(&error), Some(ErrorCode::RateLimited));
    match error {
        RemoteError::Api { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(1)))
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

/// A proxy in front of the server that forwards every request but answers the first one with a
/// 500, as a broken hop would after the server had already generated. Records whether the
/// server's answers were replays.
async fn start_lossy_proxy(
    upstream: String,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<bool>>>,
) {
    let seen = Arc::new(AtomicUsize::new(0));
    let replays = Arc::new(std::sync::Mutex::new(Vec::new()));
    let http = reqwest::Client::new();
    let (seen_in, replays_in) = (seen.clone(), replays.clone());
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (seen, replays, http, upstream) =
            (seen_in.clone(), replays_in.clone(), http.clone(), upstream.clone());
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let forward = forwarded(&http, &upstream, &parts, body);
            let answer = forward.send().await.unwrap();
            replays
                .lock()
                .unwrap()
                .push(answer.headers().get("idempotent-replayed").is_some_and(|v| v == "true"));
            let status = answer.status();
            let bytes = answer.bytes().await.unwrap();
            if n == 0 {
                let lost = r#"{"error":{"code":"inference_failed","message":"upstream answer lost"},"request_id":"proxy"}"#;
                return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "application/json")], lost.as_bytes().to_vec());
            }
            (status, [("content-type", "application/json")], bytes.to_vec())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen, replays)
}

#[tokio::test]
async fn a_lost_answer_500_is_retried_once_and_replayed_without_generating_again() {
    let generator = fake();
    let server = start(generator.clone(), |_| {}).await;
    let (proxy, seen, replays) = start_lossy_proxy(server.url()).await;
    let client = FluxClient::builder(&format!("http://{proxy}"))
        .api_key(KEY)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .unwrap();
    let mut request = small_request(64, 64, OutputFormat::Png);
    request.seed = Some(99);
    let response = client.generate(&request).await.unwrap();
    assert_eq!(response.seed, 99);
    assert_eq!(seen.load(Ordering::SeqCst), 2, "one retry");
    assert_eq!(
        *replays.lock().unwrap(),
        vec![false, true],
        "the retry was a replay"
    );
    assert_eq!(generator.calls(), 1, "no second generation");
    // The replayed URL serves the image generated the first time.
    let bytes = client.fetch_image(&response.images[0].url).await.unwrap();
    assert_eq!(bytes, encode_image(64, 64, OutputFormat::Png));
    server.stop().await;
}

#[tokio::test]
async fn overload_50_concurrent_against_depth_4() {
    let generator = fake_with_delay(Duration::from_millis(300));
    let server = start(generator.clone(), |config| config.queue_depth = 4).await;
    let client = server.client().max_attempts(1).build().unwrap();
    let started = Instant::now();
    let calls = (0..50).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .generate(&small_request(64, 64, OutputFormat::Png))
                .await
        })
    });
    let results = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(calls))
        .await
        .expect("every request is answered within 20 s");
    let elapsed = started.elapsed();
    let mut ok = Vec::new();
    let mut overloaded = 0;
    for result in results {
        match result.unwrap() {
            Ok(response) => ok.push(response),
            Err(RemoteError::Api {
                status: 429,
                body: Some(body),
                retry_after,
                ..
            }) => {
                assert_eq!(body.error.code, ErrorCode::Overloaded);
                assert!(retry_after.is_some_and(|r| r >= Duration::from_secs(1)));
                overloaded += 1;
            }
            Err(other) => panic!("only 200 or 429 overloaded allowed, got {other:?}"),
        }
    }
    assert_eq!(ok.len() + overloaded, 50);
    assert!(
        ok.len() >= 4,
        "at least the first 4 are admitted, got {}",
        ok.len()
    );
    assert!(
        overloaded >= 1,
        "50 requests over a depth of 4 must overflow"
    );
    assert!(generator.max_running.load(Ordering::SeqCst) <= 4);
    assert_eq!(
        generator.calls(),
        ok.len(),
        "refused requests never reached the generator"
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let expected = encode_image(64, 64, OutputFormat::Png);
    for response in &ok {
        let bytes = client.fetch_image(&response.images[0].url).await.unwrap();
        assert_eq!(bytes, expected, "a complete image");
    }
    assert_eq!(server.state.in_queue(), 0);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_running_work_and_refuses_new_connections() {
    let generator = fake_with_delay(Duration::from_millis(1500));
    let mut server = start(generator.clone(), |_| {}).await;
    let client = server.client().max_attempts(1).build().unwrap();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .generate(&small_request(64, 64, OutputFormat::Png))
                .await
        }
    });
    for _ in 0..200 {
        if generator.calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(generator.calls(), 1);
    let _ = server.stop.take().unwrap().send(());

    // New connections are refused while the generation still runs.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(server.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener was closed");
    assert!(server.state.is_draining());
    assert_eq!(
        generator.running.load(Ordering::SeqCst),
        1,
        "still generating"
    );
    let fresh = FluxClient::builder(&server.url())
        .api_key(KEY)
        .max_attempts(1)
        .build()
        .unwrap();
    let error = fresh
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap_err();
    assert!(matches!(error, RemoteError::Transport(_)), "{error:?}");

    let answer = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .unwrap()
        .unwrap()
        .expect("the running generation is answered");
    assert_eq!(answer.images.len(), 1);
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("the server exits after draining")
        .unwrap()
        .unwrap();
    assert_eq!(generator.calls(), 1);
}

/// Sends a raw request line (so no client normalises the path) and returns the whole answer.
async fn raw_get(addr: SocketAddr, target: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn file_route_over_tcp_refuses_traversal() {
    let generator = fake();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("secret.txt"), "TOP SECRET").unwrap();
    let files_dir = root.path().join("files");
    let server = start(generator, |config| config.files_dir = files_dir.clone()).await;
    let client = server.client().build().unwrap();
    let response = client
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap();
    let real_path = response.images[0]
        .url
        .strip_prefix(&server.url())
        .unwrap()
        .to_owned();
    assert!(
        raw_get(server.addr, &real_path)
            .await
            .starts_with("HTTP/1.1 200")
    );
    let absolute = root.path().join("secret.txt");
    let targets = [
        "/api/v1/files/../secret.txt".to_owned(),
        "/api/v1/files/../../secret.txt".to_owned(),
        "/api/v1/files/..%2Fsecret.txt".to_owned(),
        "/api/v1/files/..%2fsecret.txt".to_owned(),
        "/api/v1/files/%2e%2e%2fsecret.txt".to_owned(),
        "/api/v1/files/%2e%2e/secret.txt".to_owned(),
        "/api/v1/files/..%5csecret.txt".to_owned(),
        format!("/api/v1/files/{}", absolute.display()),
        format!(
            "/api/v1/files/{}",
            absolute.display().to_string().replace('/', "%2F")
        ),
        "/api/v1/files//etc/passwd".to_owned(),
        "/api/v1/files/".to_owned(),
        "/api/v1/files/abc.png".to_owned(),
        format!("{}x", real_path),
        real_path.replace(".png", ".jpg"),
        real_path.replace(".png", ".PNG"),
        real_path[..real_path.len() - 6].to_owned() + ".png",
    ];
    for target in &targets {
        let answer = raw_get(server.addr, target).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{target}: {answer}");
        assert!(!answer.contains("SECRET"), "{target}");
        assert!(answer.contains("\"not_found\""), "{target}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("x-request-id:"),
            "{target}"
        );
    }
    server.stop().await;
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a new connection
/// neither succeeds nor is refused, and only the connect timeout ends the attempt.
async fn unresponsive_listener() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    // Never accepted: these fill the queue (its length is the backlog plus one, or a little more).
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    (listener, fillers)
}

#[tokio::test]
async fn a_connect_timeout_is_a_retried_connection_error_not_the_total_timeout() {
    let (listener, _fillers) = unresponsive_listener().await;
    let addr = listener.local_addr().unwrap();
    let client = FluxClient::builder(&format!("http://{addr}"))
        .api_key(KEY)
        .connect_timeout(Duration::from_millis(200))
        .total_timeout(Duration::from_secs(20))
        .max_attempts(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(20))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = client
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    match &error {
        RemoteError::Transport(inner) => assert!(inner.is_connect(), "{inner:?}"),
        other => panic!("expected a connection error after 3 attempts, got {other:?}"),
    }
    // Three connect timeouts of 200 ms each, far from the 20 s total timeout.
    assert!(elapsed >= Duration::from_millis(550), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn an_oversized_error_body_is_cut_and_the_status_kept() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let huge = 3 * 1024 * 1024;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 64 * 1024];
        let _ = stream.read(&mut request).await.unwrap();
        let head = format!(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: {huge}\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..huge / chunk.len() {
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let client = single_attempt_client(addr);
    let error = client
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap_err();
    match error {
        RemoteError::Api {
            status,
            body,
            raw_body,
            ..
        } => {
            assert_eq!(status, 502);
            assert!(body.is_none());
            assert_eq!(raw_body.len(), 1024 * 1024, "cut at 1 MiB");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    server.abort();
}

/// A proxy whose first answer is a 502 at once (a hop that failed) while it still forwards that
/// first request upstream in the background; later requests are forwarded and answered.
async fn start_first_answer_lost_proxy(upstream: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::new();
    let seen_in = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (seen, http, upstream) = (seen_in.clone(), http.clone(), upstream.clone());
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let forward = forwarded(&http, &upstream, &parts, body);
            if n == 0 {
                tokio::spawn(forward.send());
                return axum::http::Response::builder()
                    .status(502)
                    .body(axum::body::Body::from("bad gateway"))
                    .unwrap();
            }
            let answer = forward.send().await.unwrap();
            let mut response = axum::http::Response::builder().status(answer.status());
            for name in ["content-type", "retry-after", "idempotent-replayed"] {
                if let Some(value) = answer.headers().get(name) {
                    response = response.header(name, value.clone());
                }
            }
            response
                .body(axum::body::Body::from(answer.bytes().await.unwrap()))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test]
async fn waiting_for_its_own_running_attempt_does_not_use_up_the_attempts() {
    // The first attempt's answer is lost while the server goes on generating for 2.5 s; every
    // retry meanwhile gets 409 with a Retry-After. Two attempts would not outlast that if each
    // 409 used one up.
    let generator = fake_with_delay(Duration::from_millis(2500));
    let server = start(generator.clone(), |_| {}).await;
    let (proxy, seen) = start_first_answer_lost_proxy(server.url()).await;
    let client = FluxClient::builder(&format!("http://{proxy}"))
        .api_key(KEY)
        .max_attempts(2)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .total_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let started = Instant::now();
    let response = client
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap();
    assert_eq!(response.images.len(), 1);
    assert_eq!(
        generator.calls(),
        1,
        "answered by a replay, not a second generation"
    );
    let requests = seen.load(Ordering::SeqCst);
    assert!(
        requests >= 3,
        "the 502, at least one 409, the replay: {requests}"
    );
    // The server's Retry-After (at least 1 s) paced the polling: not a busy loop.
    assert!(
        requests <= 6,
        "{requests} requests in {:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_conflict_answer_carries_retry_after() {
    let generator = fake_with_delay(Duration::from_millis(1500));
    let server = start(generator.clone(), |_| {}).await;
    let http = reqwest::Client::new();
    let send = || {
        http.post(format!("{}{}", server.url(), flux_remote::GENERATE_PATH))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .header("idempotency-key", "conflict-1")
            .body(SMALL)
            .send()
    };
    let first = tokio::spawn(send());
    while generator.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let conflict = send().await.unwrap();
    assert_eq!(conflict.status().as_u16(), 409);
    let wait: u64 = conflict.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1, "{wait}");
    assert_eq!(first.await.unwrap().unwrap().status().as_u16(), 200);
    server.stop().await;
}

/// A server that answers the first connection with a 200 whose body stops half-way (the
/// connection drops), and later connections with a whole 200; counts the connections.
async fn start_body_cut_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let n = counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = stream.read(&mut request).await;
                let body = r#"{"images":[{"url":"http://flux.test/a.png","width":64,"height":64,"content_type":"image/png"}],"seed":7,"has_nsfw_concepts":[false],"timings":{"inference":0.1}}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let sent = if n == 0 {
                    &body[..body.len() / 2]
                } else {
                    body
                };
                let _ = stream.write_all(sent.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn a_body_cut_off_is_retried_when_safe_and_a_transport_error_when_not() {
    let (addr, connections) = start_body_cut_server().await;
    let keyed = FluxClient::builder(&format!("http://{addr}"))
        .api_key(KEY)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .unwrap();
    let response = keyed
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap();
    assert_eq!(response.seed, 7);
    assert_eq!(connections.load(Ordering::SeqCst), 2, "one retry");

    let (addr, connections) = start_body_cut_server().await;
    let keyless = FluxClient::builder(&format!("http://{addr}"))
        .api_key(KEY)
        .auto_idempotency_key(false)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .unwrap();
    let error = keyless
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap_err();
    assert!(matches!(error, RemoteError::Transport(_)), "{error:?}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "a generation without a key is never sent twice"
    );
}

#[tokio::test]
async fn an_error_body_cut_off_keeps_the_status() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 64 * 1024];
        let _ = stream.read(&mut request).await;
        let head = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 7\r\ncontent-length: 500\r\nconnection: close\r\n\r\n{\"error\":";
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.shutdown().await;
    });
    let client = single_attempt_client(addr);
    let error = client
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap_err();
    match error {
        RemoteError::Api {
            status,
            retry_after,
            raw_body,
            ..
        } => {
            assert_eq!(status, 503);
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
            assert_eq!(raw_body, "{\"error\":");
        }
        other => panic!("expected the 503 kept, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unbounded_total_timeout_does_not_overflow() {
    let generator = fake();
    let server = start(generator, |_| {}).await;
    let client = server
        .client()
        .total_timeout(Duration::MAX)
        .build()
        .unwrap();
    let response = client
        .generate(&small_request(64, 64, OutputFormat::Png))
        .await
        .unwrap();
    assert_eq!(response.images.len(), 1);
    server.stop().await;
}
