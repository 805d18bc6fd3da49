//! The accept loop: serves each TCP connection with hyper's HTTP/1.1, closes connections whose
//! request headers do not arrive in time or whose client stops reading its answer, and drains
//! in bounded time.
//!
//! It replaces `axum::serve`, which runs hyper without a timer and so without any header read
//! timeout: a client that connects and never sends a request (or trickles its headers) would hold
//! its connection, and a file descriptor, for ever; one that stops reading would pin its answer in
//! memory and keep a drain from ever finishing.
//!
//! The drain has two phases. While admitted generations still run, open connections stay open
//! and are served (a new generation request is answered 503 `shutting_down`, an image can still
//! be fetched); then every connection is asked to finish its answer and close, and whatever is
//! still open after the drain timeout (half-sent headers, a client reading nothing) is closed.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::app_state::AppState;
use crate::conn_io::{ConnIo, ConnState, PendingRequest};
use crate::half_close::client_gone;

/// Serves `router` on `listener` until `shutdown` resolves. Then it stops accepting (the listener
/// is closed), waits until `state` has no admitted generation left while open connections are
/// still served, asks every connection to finish its answer and close, and returns once all have
/// or `drain_timeout` has passed (the rest are closed then).
pub(crate) async fn serve_connections(
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) {
    let read_timeout = state.read_timeout();
    let drain_timeout = state.drain_timeout();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        // A client may shut down its sending side once its request is out (HTTP/1.1 allows it):
        // it still gets its answer. A client that closed altogether is told apart by
        // `half_close::client_gone`.
        .half_close(true);
    let graceful = GracefulShutdown::new();
    let (hard_stop, stopped) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // A connection reset before it was accepted: the client's business, not ours.
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%error, "a connection went away before it was accepted");
                continue;
            }
            // Out of file descriptors, say: retrying at once would spin.
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (stream, watch) = match split_watch(stream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "cannot prepare a connection");
                continue;
            }
        };
        let conn = Arc::new(ConnState::default());
        // Each request carries the peer address (`ConnectInfo`), and the connection knows while
        // a request waits for its answer.
        let service = {
            let (router, conn) = (router.clone(), conn.clone());
            TowerToHyperService::new(tower::service_fn(
                move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    let pending = PendingRequest::begin(&conn, request.version());
                    let call = router.clone().oneshot(request.map(Body::new));
                    async move {
                        let answer = call.await;
                        drop(pending);
                        answer
                    }
                },
            ))
        };
        let io = ConnIo::new(
            TokioIo::new(stream),
            read_timeout,
            conn.clone(),
            state.clone(),
        );
        let connection = graceful.watch(builder.serve_connection(io, service));
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                biased;
                result = &mut connection => {
                    if let Err(error) = result {
                        tracing::debug!(error = %error, "connection ended with an error");
                    }
                }
                () = client_gone(&watch, &conn) => {
                    tracing::debug!(%peer, "the client closed its connection before its answer");
                }
                _ = stopped.wait_for(|stop| *stop) => {
                    tracing::info!(%peer, "closed a connection still open at the end of the drain");
                }
            }
        });
    }
    drop(listener);
    // Phase 1: admitted work finishes; open keep-alive connections are still answered.
    state.wait_idle().await;
    // Phase 2: answers in progress are finished, idle connections closed, within the timeout.
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_timeout_s = drain_timeout.as_secs_f64(),
            "drain timeout: closing the connections still open"
        );
        let _ = hard_stop.send(true);
    }
}

/// The stream for hyper, and a second handle on the same socket that watches for the client
/// closing it while a request is still being answered.
fn split_watch(stream: TcpStream) -> io::Result<(TcpStream, TcpStream)> {
    // Answers are small and single-shot: do not let Nagle hold back their last segment.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let stream = stream.into_std()?;
    let watch = stream.try_clone()?;
    Ok((TcpStream::from_std(stream)?, TcpStream::from_std(watch)?))
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
