//! One connection's socket as hyper sees it: writes that stall past the read timeout fail (the
//! client stopped reading), and hyper's own bodiless 400/414/431 answers to requests it could not
//! parse are replaced by the contract's error answer, with `X-Request-Id`, a log line and a
//! metric.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::app_state::AppState;

/// What the accept loop, the socket and the close watcher share about one connection.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Requests handed to the router whose answer has not been produced yet.
    pending: AtomicUsize,
    /// Whether the latest request was HTTP/1.1 (only those may get an interim `100 Continue`).
    http11: AtomicBool,
    /// Woken when `pending` changes.
    pub(crate) changed: Notify,
}

impl ConnState {
    /// Whether a request is waiting for its answer, so hyper writes nothing on this connection.
    pub(crate) fn awaiting_answer(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn is_http11(&self) -> bool {
        self.http11.load(Ordering::SeqCst)
    }
}

/// Held while the router works on a request; dropped when its answer is produced (or the request
/// is cancelled).
#[derive(Debug)]
pub(crate) struct PendingRequest(Arc<ConnState>);

impl PendingRequest {
    pub(crate) fn begin(conn: &Arc<ConnState>, version: hyper::Version) -> Self {
        conn.http11
            .store(version == hyper::Version::HTTP_11, Ordering::SeqCst);
        conn.pending.fetch_add(1, Ordering::SeqCst);
        conn.changed.notify_waiters();
        PendingRequest(conn.clone())
    }
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// The socket wrapper.
pub(crate) struct ConnIo<T> {
    inner: T,
    limit: Duration,
    /// Armed when a write is pending, dropped when one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
    conn: Arc<ConnState>,
    state: AppState,
    /// The contract's answer being written in place of hyper's own, how much of it is out, and
    /// how many bytes of hyper's to report written once it all is.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<T> ConnIo<T> {
    pub(crate) fn new(inner: T, limit: Duration, conn: Arc<ConnState>, state: AppState) -> Self {
        ConnIo {
            inner,
            limit,
            stalled: None,
            conn,
            state,
            replacing: None,
        }
    }

    /// Turns a pending write into an error once it has been pending for `limit`.
    fn check_stall<R>(
        &mut self,
        polled: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of its answer for the read timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// When no request is waiting for an answer, a write can only be hyper's own answer to a
    /// request it could not parse: starts replacing it if `buf` is one.
    fn start_replacing(&mut self, buf: &[u8]) {
        if self.replacing.is_none()
            && !self.conn.awaiting_answer()
            && let Some(status) = hyper_parse_error_status(buf)
        {
            let answer = crate::http_errors::parse_error_answer(&self.state, status);
            self.replacing = Some((answer, 0, buf.len()));
        }
    }
}

/// The status of hyper's automatic answer to an unparseable request (`HTTP/1.1 400 Bad
/// Request`, 414 or 431, with an empty body and nothing after the head), if `buf` is one.
fn hyper_parse_error_status(buf: &[u8]) -> Option<u16> {
    if buf.len() > 512 || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(buf).ok()?;
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))?
        .get(..3)?;
    let status = match status {
        "400" => 400,
        "414" => 414,
        "431" => 431,
        _ => return None,
    };
    let empty = text
        .lines()
        .any(|line| line.eq_ignore_ascii_case("content-length: 0"));
    empty.then_some(status)
}

impl<T: hyper::rt::Write + Unpin> ConnIo<T> {
    /// Writes the replacement answer; reports hyper's bytes written once all of it is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<usize>>> {
        let (answer, mut written, claimed) = self.replacing.take()?;
        while written < answer.len() {
            let polled = Pin::new(&mut self.inner).poll_write(cx, &answer[written..]);
            match self.check_stall(polled, cx) {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(error)) => return Some(Poll::Ready(Err(error))),
                Poll::Pending => {
                    self.replacing = Some((answer, written, claimed));
                    return Some(Poll::Pending);
                }
            }
        }
        Some(Poll::Ready(Ok(claimed)))
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.start_replacing(buf);
        if let Some(polled) = this.poll_replacement(cx) {
            return polled;
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check_stall(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(first) = bufs.iter().find(|buf| !buf.is_empty()) {
            this.start_replacing(first);
        }
        if let Some(polled) = this.poll_replacement(cx) {
            return polled;
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check_stall(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.check_stall(polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check_stall(polled, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::hyper_parse_error_status;

    #[test]
    fn only_hypers_bodiless_parse_error_answers_are_recognised() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n";
        assert_eq!(hyper_parse_error_status(hyper_400), Some(400));
        assert_eq!(
            hyper_parse_error_status(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
            ),
            Some(431)
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 90\r\n\r\n";
        assert_eq!(hyper_parse_error_status(ours), None);
        assert_eq!(
            hyper_parse_error_status(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
    }
}
