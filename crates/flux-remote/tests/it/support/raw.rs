//! A real server on a loopback port, and raw HTTP/1.1 over TCP for tests about the connection
//! itself (segments, half-closes, keep-alive).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flux_remote::{AppState, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::FakeGenerator;

/// A running server: its address, state, the stop switch and the task that returns when the
/// drain is done.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), flux_remote::RemoteError>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn begin_drain(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Binds `config` (after `adjust`) on a random loopback port and runs it.
pub async fn start(
    dir: &std::path::Path,
    generator: Arc<FakeGenerator>,
    adjust: impl FnOnce(&mut ServerConfig),
) -> Running {
    let mut config = super::config(dir);
    adjust(&mut config);
    let server = Server::bind(config, generator).await.unwrap();
    let addr = server.local_addr().unwrap();
    let state = server.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        state,
        stop: Some(stop),
        task,
    }
}

/// One parsed answer.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one final answer (skipping interim 1xx answers) with a `Content-Length` body. `None`
/// when the server closed the connection first.
pub async fn read_response(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> Option<RawResponse> {
    loop {
        let head_end = loop {
            if let Some(at) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("no answer within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            buffered.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffered[..head_end]).into_owned();
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap();
        if (100..200).contains(&status) {
            buffered.drain(..head_end);
            continue;
        }
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buffered.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("the body did not come within 10 s")
                .unwrap_or(0);
            assert!(n > 0, "the body was cut short");
            buffered.extend_from_slice(&chunk[..n]);
        }
        let body = buffered[head_end..head_end + length].to_vec();
        buffered.drain(..head_end + length);
        return Some(RawResponse { status, head, body });
    }
}

/// A generation request's head (without the blank line), with the test key unless `auth` says
/// otherwise, for a body of `length` bytes.
pub fn generation_head(auth: Option<&str>, content_type: &str, length: usize) -> String {
    let mut head = format!(
        "POST /api/v1/flux/dev HTTP/1.1\r\nHost: flux\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
    );
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    head
}

/// Sends `head`, then `body` in a separate segment a little later.
pub async fn send_split(stream: &mut TcpStream, head: &str, body: &[u8]) {
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"\r\n").await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
}

/// `GET path` on `stream`.
pub async fn get(
    stream: &mut TcpStream,
    buffered: &mut Vec<u8>,
    path: &str,
) -> Option<RawResponse> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: flux\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    read_response(stream, buffered).await
}

/// The value of one metric line (`name{labels}` exactly), 0 when absent.
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
