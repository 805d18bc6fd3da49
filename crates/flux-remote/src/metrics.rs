//! Prometheus metrics, kept with atomics and rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::files::StorageStats;

/// The gauges of one rendering, read from the server's state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    /// Generation requests admitted now.
    pub in_queue: usize,
    /// The queue depth limit.
    pub capacity: usize,
    pub ready: bool,
    pub storage: StorageStats,
}

/// Upper bounds (seconds) of the generation histogram's buckets.
const GENERATION_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// (route template, status) → count. Routes are templates, so the set is small and fixed.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// route template → requests dropped before their answer (the client went away).
    client_gone: Mutex<BTreeMap<String, u64>>,
    generation_buckets: [AtomicU64; GENERATION_BUCKETS.len()],
    generation_count: AtomicU64,
    generation_micros: AtomicU64,
    images_generated: AtomicU64,
}

impl Metrics {
    pub(crate) fn record_request(&self, route: &str, status: u16) {
        let mut requests = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *requests.entry((route.to_owned(), status)).or_default() += 1;
    }

    pub(crate) fn record_client_gone(&self, route: &str) {
        let mut gone = self
            .client_gone
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *gone.entry(route.to_owned()).or_default() += 1;
    }

    pub(crate) fn record_generation(&self, took: Duration, images: usize) {
        let secs = took.as_secs_f64();
        for (bound, bucket) in GENERATION_BUCKETS.iter().zip(&self.generation_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.generation_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.generation_micros.fetch_add(micros, Ordering::Relaxed);
        self.images_generated
            .fetch_add(images as u64, Ordering::Relaxed);
    }

    /// Mean generation time so far (queueing excluded), for `Retry-After` hints: a full queue
    /// frees a place about when the running generation ends. 1 s before the first one.
    pub(crate) fn mean_generation(&self) -> Duration {
        let count = self.generation_count.load(Ordering::Relaxed);
        if count == 0 {
            return Duration::from_secs(1);
        }
        Duration::from_micros(self.generation_micros.load(Ordering::Relaxed) / count)
    }

    /// The exposition text, with the gauges of `now`.
    pub(crate) fn render(&self, now: &Snapshot) -> String {
        let Snapshot {
            in_queue,
            capacity,
            ready,
            storage,
        } = *now;
        let mut out = String::new();
        out.push_str(
            "# HELP flux_http_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE flux_http_requests_total counter\n");
        {
            let requests = self
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((route, status), count) in requests.iter() {
                let route = route.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(
                    out,
                    "flux_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
                );
            }
        }
        out.push_str("# HELP flux_http_client_gone_total Requests whose client went away before their answer, by route.\n");
        out.push_str("# TYPE flux_http_client_gone_total counter\n");
        {
            let gone = self
                .client_gone
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (route, count) in gone.iter() {
                let route = route.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(
                    out,
                    "flux_http_client_gone_total{{route=\"{route}\"}} {count}"
                );
            }
        }
        out.push_str(
            "# HELP flux_queue_depth Generation requests admitted now (queued and running).\n",
        );
        out.push_str("# TYPE flux_queue_depth gauge\n");
        let _ = writeln!(out, "flux_queue_depth {in_queue}");
        out.push_str("# HELP flux_queue_capacity Generation requests admitted at most.\n");
        out.push_str("# TYPE flux_queue_capacity gauge\n");
        let _ = writeln!(out, "flux_queue_capacity {capacity}");
        out.push_str(
            "# HELP flux_ready Whether the model is loaded and the server accepts work.\n",
        );
        out.push_str("# TYPE flux_ready gauge\n");
        let _ = writeln!(out, "flux_ready {}", u8::from(ready));
        out.push_str(
            "# HELP flux_generation_seconds Seconds spent generating (not queueing), per request.\n",
        );
        out.push_str("# TYPE flux_generation_seconds histogram\n");
        for (bound, bucket) in GENERATION_BUCKETS.iter().zip(&self.generation_buckets) {
            let _ = writeln!(
                out,
                "flux_generation_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.generation_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "flux_generation_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.generation_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "flux_generation_seconds_sum {sum}");
        let _ = writeln!(out, "flux_generation_seconds_count {count}");
        out.push_str("# HELP flux_storage_healthy Whether the files folder takes new images.\n");
        out.push_str("# TYPE flux_storage_healthy gauge\n");
        let _ = writeln!(out, "flux_storage_healthy {}", u8::from(storage.healthy));
        out.push_str("# HELP flux_storage_bytes Bytes the stored images take.\n");
        out.push_str("# TYPE flux_storage_bytes gauge\n");
        let _ = writeln!(out, "flux_storage_bytes {}", storage.bytes);
        if let Some(quota) = storage.quota {
            out.push_str("# HELP flux_storage_quota_bytes The files folder's size quota.\n");
            out.push_str("# TYPE flux_storage_quota_bytes gauge\n");
            let _ = writeln!(out, "flux_storage_quota_bytes {quota}");
        }
        out.push_str(
            "# HELP flux_storage_evicted_total Images deleted before their retention ended, to keep to the quota.\n",
        );
        out.push_str("# TYPE flux_storage_evicted_total counter\n");
        let _ = writeln!(out, "flux_storage_evicted_total {}", storage.evicted);
        out.push_str("# HELP flux_storage_failures_total Images that could not be written.\n");
        out.push_str("# TYPE flux_storage_failures_total counter\n");
        let _ = writeln!(out, "flux_storage_failures_total {}", storage.failures);
        out.push_str("# HELP flux_images_generated_total Images generated.\n");
        out.push_str("# TYPE flux_images_generated_total counter\n");
        let _ = writeln!(
            out,
            "flux_images_generated_total {}",
            self.images_generated.load(Ordering::Relaxed)
        );
        out
    }
}
