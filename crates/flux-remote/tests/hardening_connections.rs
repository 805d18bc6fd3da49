//! Connection edge cases on a real loopback server, over raw TCP: early refusals whose body
//! arrives in its own segment, half-closing clients, clients that leave, the bounded drain and
//! 503 `shutting_down` on open connections, and the HTTP layer's own 400/414/431 answers.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::raw::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A refusal given before the body was read, with the body sent in a later segment: the answer
/// comes, and the same connection then serves the next request.
async fn refused_then_reused(addr: std::net::SocketAddr, head: &str, status: u16, code: &str) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buffered = Vec::new();
    send_split(&mut stream, head, SMALL.as_bytes()).await;
    let answer = read_response(&mut stream, &mut buffered)
        .await
        .expect("the refusal was answered");
    assert_eq!(answer.status, status, "{}", answer.head);
    assert_eq!(answer.json()["error"]["code"], code);
    let next = get(&mut stream, &mut buffered, "/health")
        .await
        .unwrap_or_else(|| {
            panic!("the connection was closed after a {status}: the next request is lost")
        });
    assert_eq!(next.status, 200);
}

#[tokio::test]
async fn after_an_early_401_415_or_429_the_connection_takes_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), FakeGenerator::new(), |config| {
        config.rate_limit = Some("1/h".parse().unwrap());
    })
    .await;
    let length = SMALL.len();
    let wrong = generation_head(
        Some("Bearer wrong-key-0123456789"),
        "application/json",
        length,
    );
    refused_then_reused(server.addr, &wrong, 401, "unauthorized").await;
    let bearer = format!("Bearer {KEY}");
    let text = generation_head(Some(&bearer), "text/plain", length);
    refused_then_reused(server.addr, &text, 415, "unsupported_media_type").await;
    // The 415 took the key's only token: the next request is over the rate limit.
    let json = generation_head(Some(&bearer), "application/json", length);
    refused_then_reused(server.addr, &json, 429, "rate_limited").await;
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let generator = FakeGenerator::with_delay(Duration::from_millis(300));
    let server = start(dir.path(), generator.clone(), |_| {}).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = generation_head(
        Some(&format!("Bearer {KEY}")),
        "application/json",
        SMALL.len(),
    );
    stream
        .write_all(format!("{head}\r\n{SMALL}").as_bytes())
        .await
        .unwrap();
    // Done sending: shut down the write side, keep reading.
    stream.shutdown().await.unwrap();
    let mut buffered = Vec::new();
    let answer = read_response(&mut stream, &mut buffered)
        .await
        .expect("a half-closed client got no answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.json()["images"].as_array().unwrap().len(), 1);
    assert_eq!(generator.calls(), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_still_cancels_its_generation_and_is_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let generator = FakeGenerator::with_delay(Duration::from_secs(10));
    let server = start(dir.path(), generator.clone(), |_| {}).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = generation_head(
        Some(&format!("Bearer {KEY}")),
        "application/json",
        SMALL.len(),
    );
    stream
        .write_all(format!("{head}\r\n{SMALL}").as_bytes())
        .await
        .unwrap();
    for _ in 0..200 {
        if generator.calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.state.in_queue(), 1);
    drop(stream);
    let started = Instant::now();
    while (server.state.in_queue() > 0 || generator.running.load(Ordering::SeqCst) > 0)
        && started.elapsed() < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.state.in_queue(),
        0,
        "the gone client's place was kept"
    );
    assert_eq!(generator.running.load(Ordering::SeqCst), 0);
    let gone = metric(
        server.addr,
        r#"flux_http_client_gone_total{route="/api/v1/flux/dev"}"#,
    )
    .await;
    assert_eq!(gone, 1.0, "the request whose client went away is counted");
}

#[tokio::test]
async fn an_http_1_0_client_that_closes_its_sending_side_has_gone_away() {
    let dir = tempfile::tempdir().unwrap();
    let generator = FakeGenerator::with_delay(Duration::from_secs(10));
    let server = start(dir.path(), generator.clone(), |_| {}).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = generation_head(
        Some(&format!("Bearer {KEY}")),
        "application/json",
        SMALL.len(),
    )
    .replace("HTTP/1.1", "HTTP/1.0");
    stream
        .write_all(format!("{head}\r\n{SMALL}").as_bytes())
        .await
        .unwrap();
    for _ in 0..200 {
        if generator.calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stream.shutdown().await.unwrap();
    let started = Instant::now();
    while server.state.in_queue() > 0 && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.state.in_queue(),
        0,
        "the HTTP/1.0 request was not cancelled"
    );
}

#[tokio::test]
async fn the_drain_is_bounded_by_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}.png", "cd".repeat(16));
    std::fs::write(dir.path().join(&name), vec![7u8; 48 * 1024 * 1024]).unwrap();
    let mut server = start(dir.path(), FakeGenerator::new(), |config| {
        // Far longer than the test: only the drain timeout can end these connections.
        config.read_timeout = Duration::from_secs(60);
        config.drain_timeout = Duration::from_millis(300);
    })
    .await;
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(b"POST /api/v1/flux/dev HTTP/1.1\r\nHost: flux\r\nContent-Ty")
        .await
        .unwrap();
    let mut greedy = TcpStream::connect(server.addr).await.unwrap();
    greedy
        .write_all(format!("GET /api/v1/files/{name} HTTP/1.1\r\nHost: flux\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.begin_drain();
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("the drain was held up by a partial request and a client reading nothing")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the drain took {:?}",
        started.elapsed()
    );
    drop((partial, greedy));
}

#[tokio::test]
async fn during_the_drain_an_open_connection_gets_503_shutting_down_not_eof() {
    let dir = tempfile::tempdir().unwrap();
    let generator = FakeGenerator::with_delay(Duration::from_millis(1500));
    let mut server = start(dir.path(), generator.clone(), |_| {}).await;
    let mut open = TcpStream::connect(server.addr).await.unwrap();
    let mut buffered = Vec::new();
    assert_eq!(
        get(&mut open, &mut buffered, "/health")
            .await
            .unwrap()
            .status,
        200
    );

    let running = tokio::spawn({
        let client = flux_remote::FluxClient::builder(&server.url())
            .api_key(KEY)
            .max_attempts(1)
            .build()
            .unwrap();
        async move {
            let request: flux_types::GenerateRequest = serde_json::from_str(SMALL).unwrap();
            client.generate(&request).await
        }
    });
    for _ in 0..200 {
        if generator.calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.begin_drain();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.state.is_draining());

    let head = generation_head(
        Some(&format!("Bearer {KEY}")),
        "application/json",
        SMALL.len(),
    );
    open.write_all(format!("{head}\r\n{SMALL}").as_bytes())
        .await
        .unwrap();
    let answer = read_response(&mut open, &mut buffered)
        .await
        .expect("an open keep-alive connection got EOF during the drain");
    assert_eq!(answer.status, 503, "{}", answer.head);
    assert_eq!(answer.json()["error"]["code"], "shutting_down");
    assert_eq!(answer.header("connection").as_deref(), Some("close"));

    let done = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .expect("the running generation is answered");
    assert_eq!(done.images.len(), 1);
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("the drain ends")
        .unwrap()
        .unwrap();
}

/// Sends raw bytes on a fresh connection and reads the one answer.
async fn raw_answer(addr: std::net::SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream, &mut Vec::new())
        .await
        .expect("an answer")
}

#[tokio::test]
async fn the_http_layers_own_400_414_431_have_the_error_body_request_id_and_a_metric() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), FakeGenerator::new(), |_| {}).await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: flux\r\n\r\n", "a".repeat(70_000));
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: flux\r\nX-Big: {}\r\n\r\n",
        "b".repeat(600_000)
    );
    for (request, status) in [
        (b"BR@KEN\x01 / HTTP/1.1\r\n\r\n".to_vec(), 400u16),
        (long_uri.into_bytes(), 414),
        (big_header.into_bytes(), 431),
    ] {
        let answer = raw_answer(server.addr, &request).await;
        assert_eq!(answer.status, status, "{}", answer.head);
        let body = answer.json();
        assert_eq!(body["error"]["code"], "malformed_request", "{body}");
        let id = answer.header("x-request-id").expect("an X-Request-Id");
        assert_eq!(body["request_id"], id.as_str());
        assert_eq!(
            answer.header("content-type").as_deref(),
            Some("application/json")
        );
        let counted = metric(
            server.addr,
            &format!(r#"flux_http_requests_total{{route="unparsed",status="{status}"}}"#),
        )
        .await;
        assert_eq!(counted, 1.0, "a {status} is counted");
    }
}
