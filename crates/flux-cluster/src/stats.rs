//! A worker's counters, for its `/metrics` and `/ready`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
struct Counters {
    taking_jobs: AtomicBool,
    running: AtomicBool,
    attempts: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    retried: AtomicU64,
    lost: AtomicU64,
}

/// How a worker is doing. Cheap to clone (shared counters).
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    counters: Arc<Counters>,
}

/// How one attempt ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptEnd {
    Succeeded,
    Failed,
    Cancelled,
    /// Failed in a way another attempt may not: the job goes back to the queue.
    Retried,
    /// The job went to another worker while this one was stopped: nothing written.
    Lost,
}

impl WorkerStats {
    /// Whether the worker has registered its model and is pulling jobs.
    pub fn is_taking_jobs(&self) -> bool {
        self.counters.taking_jobs.load(Ordering::SeqCst)
    }

    pub(crate) fn set_taking_jobs(&self, taking: bool) {
        self.counters.taking_jobs.store(taking, Ordering::SeqCst);
    }

    pub(crate) fn started(&self) {
        self.counters.running.store(true, Ordering::SeqCst);
        self.counters.attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ended(&self, end: AttemptEnd) {
        self.counters.running.store(false, Ordering::SeqCst);
        let counter = match end {
            AttemptEnd::Succeeded => &self.counters.succeeded,
            AttemptEnd::Failed => &self.counters.failed,
            AttemptEnd::Cancelled => &self.counters.cancelled,
            AttemptEnd::Retried => &self.counters.retried,
            AttemptEnd::Lost => &self.counters.lost,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Attempts this worker started.
    pub fn attempts(&self) -> u64 {
        self.counters.attempts.load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        let c = &self.counters;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# HELP flux_worker_ready Whether the worker is taking jobs."
        );
        let _ = writeln!(text, "# TYPE flux_worker_ready gauge");
        let _ = writeln!(
            text,
            "flux_worker_ready {}",
            u8::from(c.taking_jobs.load(Ordering::SeqCst))
        );
        let _ = writeln!(
            text,
            "# HELP flux_worker_busy Whether a job is running now."
        );
        let _ = writeln!(text, "# TYPE flux_worker_busy gauge");
        let _ = writeln!(
            text,
            "flux_worker_busy {}",
            u8::from(c.running.load(Ordering::SeqCst))
        );
        let _ = writeln!(text, "# HELP flux_worker_attempts_total Attempts started.");
        let _ = writeln!(text, "# TYPE flux_worker_attempts_total counter");
        let _ = writeln!(
            text,
            "flux_worker_attempts_total {}",
            c.attempts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            text,
            "# HELP flux_worker_attempt_ends_total Attempts ended, by how."
        );
        let _ = writeln!(text, "# TYPE flux_worker_attempt_ends_total counter");
        for (outcome, counter) in [
            ("succeeded", &c.succeeded),
            ("failed", &c.failed),
            ("cancelled", &c.cancelled),
            ("retried", &c.retried),
            ("lost", &c.lost),
        ] {
            let _ = writeln!(
                text,
                "flux_worker_attempt_ends_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        text
    }
}
