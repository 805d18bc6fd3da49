//! The process's log subscriber, installed by the binary (never by a library): text or JSON lines
//! on stderr, so stdout stays for the lines scripts read; the filter is `RUST_LOG` when set and
//! valid (at any level), else the command's default.

use tracing_subscriber::EnvFilter;

/// The log filter when `RUST_LOG` is not set: `default_level` for flux's own crates, warnings for
/// the rest.
pub(crate) fn default_log_directives(default_level: &str) -> String {
    format!(
        "warn,flux={default_level},flux_facade={default_level},flux_core={default_level},flux_remote={default_level},flux_builder={default_level}"
    )
}

/// Installs the global subscriber on stderr: JSON lines when `json` is true, readable text
/// otherwise; the filter is `RUST_LOG` when set and valid, else `default_level` for flux's own
/// crates and warnings for the rest.
pub(crate) fn init_logging(json: bool, default_level: &str) -> anyhow::Result<()> {
    let filter = log_filter(
        std::env::var("RUST_LOG").ok().as_deref(),
        &default_log_directives(default_level),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
    result.map_err(|error| anyhow::anyhow!("cannot set up logging: {error}"))
}

/// The log filter: `rust_log` (the value of `RUST_LOG`) when given and valid, else `default`.
fn log_filter(rust_log: Option<&str>, default: &str) -> EnvFilter {
    rust_log
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::log_filter;

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
            .with_env_filter(log_filter(rust_log, "info"))
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
}
