//! Tells a client that half-closed its connection (it sent its request, then shut down its
//! sending side, as HTTP/1.1 allows) from one that went away, while its request is answered.
//!
//! Both look the same to the server: the end of the stream. The first must get its answer, the
//! second's generation should be cancelled (the contract frees a queue place at once). A socket
//! that is gone answers any data with a reset, so once the stream has ended mid-request the
//! watcher sends an interim `HTTP/1.1 100 Continue` (every HTTP/1.1 client must accept and skip
//! an unexpected 1xx answer) and waits for a reset. Nothing else is ever written here: hyper
//! writes nothing while the request waits for its answer, so the two cannot interleave.

use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::conn_io::ConnState;

const PROBE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Resolves when the client has closed its connection altogether while a request on it was still
/// waiting for its answer; pending for ever otherwise (a client that only shut down its sending
/// side, or a connection that ends normally).
pub(crate) async fn client_gone(watch: &TcpStream, conn: &ConnState) {
    if wait_for_end_of_stream(watch).await.is_err() {
        return std::future::pending().await;
    }
    loop {
        let changed = conn.changed.notified();
        if conn.awaiting_answer() {
            break;
        }
        // Ended between requests: hyper reads the end itself and closes the connection.
        changed.await;
    }
    if !conn.is_http11() {
        // An HTTP/1.0 client must not get a 1xx answer, and HTTP/1.0 has no half-close: the end
        // of its stream means it went away.
        return;
    }
    match watch.try_write(PROBE) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
            return std::future::pending().await;
        }
        // Already reset.
        Err(_) => return,
    }
    wait_for_reset(watch).await;
}

/// Waits until the peer's FIN (or a reset) has arrived, without reading anything: the bytes
/// belong to hyper.
async fn wait_for_end_of_stream(watch: &TcpStream) -> io::Result<()> {
    loop {
        let ready = watch.ready(Interest::READABLE).await?;
        if ready.is_read_closed() {
            return Ok(());
        }
        // Readable because of data hyper will read: forget this readiness and wait for the next.
        let _ = watch.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
}

/// Waits until the socket reports a reset (write side closed, or an error).
async fn wait_for_reset(watch: &TcpStream) {
    loop {
        match watch.ready(Interest::WRITABLE).await {
            Ok(ready) if ready.is_write_closed() => return,
            Ok(_) => {}
            Err(_) => return,
        }
        if let Ok(Some(_)) = watch.take_error() {
            return;
        }
        let _ = watch.try_io(Interest::WRITABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
}
