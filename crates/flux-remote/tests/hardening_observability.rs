//! Logging: the filter honours `RUST_LOG` at any level (below INFO too) in both formats, and JSON
//! lines carry the level.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_lines_with(rust_log: Option<&str>) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(flux_remote::log_filter(rust_log, "info"))
        .with_writer(move || writer.clone())
        .json()
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::debug!(target: "flux_remote::server", "a debug line");
        tracing::trace!(target: "flux_remote::server", "a trace line");
        tracing::info!(target: "flux_remote::server", "an info line");
    });
    String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn rust_log_below_info_is_honoured() {
    let debug = json_lines_with(Some("debug"));
    assert!(
        debug.contains("a debug line") && debug.contains(r#""level":"DEBUG""#),
        "{debug}"
    );
    assert!(!debug.contains("a trace line"));
    let trace = json_lines_with(Some("flux_remote=trace"));
    assert!(trace.contains("a trace line"), "{trace}");
    let default = json_lines_with(None);
    assert!(
        default.contains("an info line") && !default.contains("a debug line"),
        "{default}"
    );
    // A malformed RUST_LOG falls back to the default instead of silencing everything.
    let malformed = json_lines_with(Some("=[=="));
    assert!(malformed.contains("an info line"), "{malformed}");
}
