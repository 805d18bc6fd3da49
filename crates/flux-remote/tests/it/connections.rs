//! Connection handling of the real server on a loopback socket: a client that never sends its
//! request headers, or stalls half-way through them, is disconnected after the read timeout, while
//! ordinary keep-alive clients are served.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::support::*;
use flux_remote::{FluxClient, Server};
use flux_types::{GenerateRequest, ImageSize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_TIMEOUT: Duration = Duration::from_millis(300);

/// Starts a server with a short read timeout; returns its address and a handle that stops it.
async fn start(dir: &std::path::Path) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    start_with(dir, fake()).await
}

async fn start_with(
    dir: &std::path::Path,
    generator: std::sync::Arc<FakeGenerator>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut config = config(dir);
    config.read_timeout = READ_TIMEOUT;
    let server = Server::bind(config, generator).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the server kept a stalled connection open for 10 s");
        match read {
            Ok(0) | Err(_) => return (received, started.elapsed()),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _stop) = start(dir.path()).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    expect_closed_after_the_read_timeout(&mut silent).await;
}

/// The server closes `stream` once the read timeout has passed, answering nothing but (at most)
/// a 408, since no whole request came.
async fn expect_closed_after_the_read_timeout(stream: &mut TcpStream) {
    let (received, after) = read_until_closed(stream).await;
    assert!(
        after >= READ_TIMEOUT - Duration::from_millis(50),
        "{after:?}"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn headers_that_stall_half_way_are_closed_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _stop) = start(dir.path()).await;
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /api/v1/flux/dev HTTP/1.1\r\nHost: flux\r\nContent-Type: appl")
        .await
        .unwrap();
    expect_closed_after_the_read_timeout(&mut stalled).await;
}

fn client(addr: std::net::SocketAddr) -> FluxClient {
    FluxClient::builder(&format!("http://{addr}"))
        .api_key(KEY)
        .max_attempts(1)
        .build()
        .unwrap()
}

fn small_request() -> GenerateRequest {
    GenerateRequest {
        image_size: ImageSize::Custom {
            width: 64,
            height: 64,
        },
        ..GenerateRequest::new("a fox")
    }
}

#[tokio::test]
async fn a_generation_longer_than_the_read_timeout_is_still_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = start_with(dir.path(), fake_with_delay(READ_TIMEOUT * 4)).await;
    // The read timeout covers receiving the request, not the time it takes to answer it.
    let response = client(addr).generate(&small_request()).await.unwrap();
    assert_eq!(response.images.len(), 1);
    let _ = stop.send(());
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body) from `stream`; returns the head.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("no response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "the server closed the connection instead of answering"
        );
        received.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a Content-Length");
    while received.len() < head_end + length {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the body was cut short");
        received.extend_from_slice(&buffer[..n]);
    }
    head
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_reused_within_the_read_timeout_and_closed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = start(dir.path()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let health = b"GET /health HTTP/1.1\r\nHost: flux\r\n\r\n";
    for _ in 0..3 {
        stream.write_all(health).await.unwrap();
        let head = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // Shorter than the read timeout: the same connection takes the next request.
        tokio::time::sleep(READ_TIMEOUT / 3).await;
    }
    // Longer than the read timeout without a request: the server has closed the connection.
    tokio::time::sleep(READ_TIMEOUT * 3).await;
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("the idle connection is still open after three read timeouts");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the connection closed, read {read:?}"
    );

    // The Rust client, whose pooled connection the server closed the same way, still succeeds.
    let client = client(addr);
    let request = small_request();
    let response = client.generate(&request).await.unwrap();
    assert_eq!(response.images.len(), 1);
    tokio::time::sleep(READ_TIMEOUT * 3).await;
    let response = client.generate(&request).await.unwrap();
    assert_eq!(response.images.len(), 1);
    let _ = stop.send(());
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_dropped_and_the_drain_finishes() {
    let dir = tempfile::tempdir().unwrap();
    // An image far larger than the socket buffers, so the answer cannot be written in full
    // unless the client reads it.
    let name = format!("{}.png", "ab".repeat(16));
    std::fs::write(dir.path().join(&name), vec![7u8; 48 * 1024 * 1024]).unwrap();
    let mut config = config(dir.path());
    config.read_timeout = READ_TIMEOUT;
    let server = Server::bind(config, fake()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let mut greedy = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /api/v1/files/{name} HTTP/1.1\r\nHost: flux\r\n\r\n");
    greedy.write_all(request.as_bytes()).await.unwrap();
    // Let the server fill the socket buffers, then drain it while the client still reads nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop.send(());
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the drain waited for ever on a client that reads nothing")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    // The server gave up on that answer: what the client can still read ends early.
    let mut received = 0usize;
    let mut buffer = vec![0u8; 1024 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), greedy.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the connection stayed open after the drain"),
        }
    }
    assert!(received < 48 * 1024 * 1024, "{received} bytes arrived");
}
