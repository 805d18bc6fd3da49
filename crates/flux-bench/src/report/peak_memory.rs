//! The report's "Peak RSS per request size" section: each request in a fresh process, beside the
//! admission estimate that `--memory-limit` refuses by (issue 18).

use std::fmt::Write as _;

use super::{BenchResults, mib};

pub(super) fn peak_memory_section(out: &mut String, results: &BenchResults) {
    if results.peak_memory.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Peak RSS per request size\n\n\
         One 1-step request per fresh process, loaded as `flux serve --model DIR` loads a diffusers folder \
         (the model builder's graphs: fused attention, batch decoded image by image, one CPU arena for \
         all sessions, given back after a request beyond 1024²). Peak = `VmHWM` of that process (MiB); \
         after = `VmRSS` once the answer is made; estimate = flux-core's admission estimate for the request (`--memory-limit` refuses a job whose \
         estimate is over the limit), which must stay at or above the peak.\n\n\
         | model | request | after load | peak | after the answer | estimate | estimate / peak | seconds |\n\
         |---|---|---:|---:|---:|---:|---:|---:|"
    );
    for entry in &results.peak_memory {
        for r in &entry.results {
            let ratio = r.estimated_peak_bytes as f64 / r.peak_rss_bytes.max(1) as f64;
            let _ = writeln!(
                out,
                "| {} | {}×{} ×{} | {} | {} | {} | {} | {:.2}{} | {:.1} |",
                entry.model,
                r.width,
                r.height,
                r.images,
                mib(r.rss_after_load_bytes),
                mib(r.peak_rss_bytes),
                mib(r.rss_after_bytes),
                mib(r.estimated_peak_bytes),
                ratio,
                if ratio < 1.0 { " (under)" } else { "" },
                r.seconds
            );
        }
    }
    let _ = writeln!(out);
}
