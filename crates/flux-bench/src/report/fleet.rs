//! The report's "NATS fleet versus one machine" section and its two targets: jobs/s with 2
//! workers against 1 (≥ 1.8×), and the latency the NATS path adds per job (p50 ≤ 5 ms).

use std::fmt::Write as _;

use super::{BenchResults, fmt_ratio, met};
use crate::fleet::{FleetResults, FleetThroughput};
use crate::results::LatencyStats;

const TARGET_SCALING: f64 = 1.8;
const TARGET_ADDED_P50_MS: f64 = 5.0;

/// `a`'s jobs/s over `b`'s; `None` when `b` measured none.
fn speedup(a: &FleetThroughput, b: &FleetThroughput) -> Option<f64> {
    (b.jobs_per_second > 0.0).then(|| a.jobs_per_second / b.jobs_per_second)
}

/// (p50, p99) of `path` minus those of `reference`, in ms: the difference of the distributions'
/// percentiles (the paths ran different jobs, so there are no pairs).
fn added_ms(path: &LatencyStats, reference: &LatencyStats) -> (f64, f64) {
    (
        path.p50_ms - reference.p50_ms,
        path.p99_ms - reference.p99_ms,
    )
}

/// 2 workers over 1, when both ran.
fn scaling(fleet: &FleetResults) -> Option<(f64, &FleetThroughput, &FleetThroughput)> {
    let one = fleet.with_workers(1)?;
    let two = fleet.with_workers(2)?;
    Some((speedup(two, one)?, one, two))
}

/// The section's rows of the targets table.
pub(super) fn fleet_targets(out: &mut String, results: &BenchResults) {
    let Some(fleet) = &results.fleet else {
        return;
    };
    if let Some((ratio, one, two)) = scaling(fleet) {
        let _ = writeln!(
            out,
            "| NATS fleet throughput, 2 workers / 1 worker, {} model, {} thread each (target ≥ {TARGET_SCALING}×) | \
             {} ({:.2} vs {:.2} jobs/s; {} cores shared with the API node and nats-server) | {} |",
            fleet.model,
            fleet.threads,
            fmt_ratio(Some(ratio)),
            two.jobs_per_second,
            one.jobs_per_second,
            results.host.cores,
            met(ratio >= TARGET_SCALING)
        );
    }
    let (p50, p99) = added_ms(&fleet.latency_fleet, &fleet.latency_one_machine);
    let _ = writeln!(
        out,
        "| NATS fleet added latency per job, p50 (target ≤ {TARGET_ADDED_P50_MS} ms) | p50 {p50:+.2} ms, p99 {p99:+.2} ms \
         over `flux serve`'s path | {} |",
        met(p50 <= TARGET_ADDED_P50_MS)
    );
}

pub(super) fn fleet_section(out: &mut String, results: &BenchResults) {
    if let Some(fleet) = &results.fleet {
        render(out, fleet, results.host.cores);
    }
}

fn render(out: &mut String, fleet: &FleetResults, cores: usize) {
    let _ = writeln!(
        out,
        "## NATS fleet versus one machine\n\n\
         The {} model at {}×{}, {} steps, {} ONNX Runtime intra-op thread per engine. Batches of {} jobs are submitted \
         at once through the job service (`JobService::submit`, then each job's events followed to its end), \
         after a warm-up; a batch's time runs from its first submit to its last job's end, and the paths take \
         turns for {} rounds, so that a drift of the machine's speed hits them alike; jobs/s = all of a path's \
         jobs / all its batches' time. One machine: flux-service's \
         `GenerationService` over one `LocalGenerator`, with the redb job database and images as files (as \
         `flux serve` runs). Fleet: an API node's `FleetJobs` in the benchmark process, nats-server {} with \
         JetStream file storage (every write fsynced), ack wait {:.0} s, and 1 or 2 `flux_cluster::Worker`s, \
         each in its own process with its own engine, images in a shared folder. This machine has {cores} \
         cores: with 2 workers, both engines, the API node and nats-server share them.\n\n\
         | path | engines | jobs | seconds | jobs/s | jobs/s per round | vs one machine |\n\
         |---|---:|---:|---:|---:|---|---:|",
        fleet.model,
        fleet.width,
        fleet.height,
        fleet.steps,
        fleet.threads,
        fleet.one_machine.jobs / fleet.one_machine.rounds.len().max(1),
        fleet.one_machine.rounds.len(),
        fleet.nats_server_version,
        fleet.ack_wait_seconds
    );
    let row = |out: &mut String, label: &str, run: &FleetThroughput| {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {:.2} | {:.2} | {} | {} |",
            run.engines,
            run.jobs,
            run.seconds,
            run.jobs_per_second,
            run.rounds
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            fmt_ratio(speedup(run, &fleet.one_machine))
        );
    };
    row(out, "one machine (`GenerationService`)", &fleet.one_machine);
    for run in &fleet.fleet {
        let label = format!(
            "fleet over NATS, {} worker{}",
            run.engines,
            if run.engines == 1 { "" } else { "s" }
        );
        row(out, &label, run);
    }
    let _ = writeln!(out);
    if let Some((ratio, one, two)) = scaling(fleet) {
        let verdict = if ratio >= TARGET_SCALING {
            "met".to_owned()
        } else {
            format!(
                "**not met**: {:.2} jobs/s with 2 workers against {:.2} with 1, on {cores} cores that the two \
                 engines share with the API node and nats-server",
                two.jobs_per_second, one.jobs_per_second
            )
        };
        let _ = writeln!(
            out,
            "2 workers / 1 worker: **{}** (target ≥ {TARGET_SCALING}×: {verdict}).\n",
            fmt_ratio(Some(ratio))
        );
    }

    let _ = writeln!(
        out,
        "Added latency: a generator that answers at once (one pre-encoded 64×64 JPEG; the request's one \
         step reported), {} jobs per path one at a time after {} warm-up jobs, the paths taken in turn; \
         the time from submit to the job's terminal event, measured in the benchmark process. The fleet's \
         worker runs in its own process, as deployed.\n\n\
         | path | jobs | p50 ms | p99 ms | mean ms | max ms |\n|---|---:|---:|---:|---:|---:|",
        fleet.latency_fleet.count, fleet.latency_warmup
    );
    for (label, stats) in [
        (
            "one machine, redb job database (`flux serve`'s default)",
            &fleet.latency_one_machine,
        ),
        ("one machine, in memory", &fleet.latency_one_machine_memory),
        ("fleet over NATS, 1 worker", &fleet.latency_fleet),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            stats.count, stats.p50_ms, stats.p99_ms, stats.mean_ms, stats.max_ms
        );
    }
    let (p50, p99) = added_ms(&fleet.latency_fleet, &fleet.latency_one_machine);
    let (memory_p50, memory_p99) =
        added_ms(&fleet.latency_fleet, &fleet.latency_one_machine_memory);
    let verdict = if p50 <= TARGET_ADDED_P50_MS {
        "met".to_owned()
    } else {
        format!(
            "**not met**: p50 {:.2} ms over NATS against {:.2} ms on one machine",
            fleet.latency_fleet.p50_ms, fleet.latency_one_machine.p50_ms
        )
    };
    let _ = writeln!(
        out,
        "\nAdded by the NATS path over `flux serve`'s (differences of the percentiles): p50 **{p50:+.2} ms**, \
         p99 **{p99:+.2} ms** (target p50 ≤ {TARGET_ADDED_P50_MS} ms: {verdict}); over the in-memory service: \
         p50 {memory_p50:+.2} ms, p99 {memory_p99:+.2} ms.\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(p50_ms: f64, p99_ms: f64) -> LatencyStats {
        LatencyStats {
            count: 200,
            p50_ms,
            p99_ms,
            mean_ms: p50_ms,
            min_ms: p50_ms / 2.0,
            max_ms: p99_ms * 2.0,
        }
    }

    fn run(engines: usize, seconds: f64) -> FleetThroughput {
        FleetThroughput {
            engines,
            jobs: 40,
            seconds,
            jobs_per_second: 40.0 / seconds,
            rounds: vec![20.0 / (seconds / 2.0); 2],
        }
    }

    fn synthetic(two_workers_seconds: f64, fleet_p50_ms: f64) -> FleetResults {
        FleetResults {
            model: "tiny".to_owned(),
            width: 512,
            height: 512,
            steps: 4,
            threads: 1,
            nats_server_version: "2.15.1".to_owned(),
            ack_wait_seconds: 30.0,
            one_machine: run(1, 8.0),
            fleet: vec![run(1, 10.0), run(2, two_workers_seconds)],
            latency_one_machine: stats(1.5, 3.0),
            latency_one_machine_memory: stats(0.5, 1.0),
            latency_fleet: stats(fleet_p50_ms, 9.0),
            latency_warmup: 20,
        }
    }

    #[test]
    fn speedup_and_added_latency() {
        assert_eq!(speedup(&run(2, 5.0), &run(1, 10.0)), Some(2.0));
        let idle = FleetThroughput {
            jobs_per_second: 0.0,
            ..run(1, 1.0)
        };
        assert_eq!(speedup(&run(2, 5.0), &idle), None);
        assert_eq!(added_ms(&stats(4.0, 9.0), &stats(1.5, 3.0)), (2.5, 6.0));
        let fleet = synthetic(5.0, 4.0);
        let (ratio, one, two) = scaling(&fleet).expect("both fleet sizes ran");
        assert_eq!((ratio, one.engines, two.engines), (2.0, 1, 2));
        let only_one = FleetResults {
            fleet: vec![run(1, 10.0)],
            ..synthetic(5.0, 4.0)
        };
        assert!(scaling(&only_one).is_none());
    }

    #[test]
    fn section_with_targets_met_and_missed() {
        let mut out = String::new();
        render(&mut out, &synthetic(5.0, 4.0), 2);
        assert!(
            out.contains(
                "| one machine (`GenerationService`) | 1 | 40 | 8.00 | 5.00 | 5.00, 5.00 | 1.00× |"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "| fleet over NATS, 2 workers | 2 | 40 | 5.00 | 8.00 | 8.00, 8.00 | 1.60× |"
            ),
            "{out}"
        );
        assert!(out.contains("2 workers / 1 worker: **2.00×** (target ≥ 1.8×: met)."));
        assert!(
            out.contains("Batches of 20 jobs") && out.contains("for 2 rounds"),
            "{out}"
        );
        assert!(
            out.contains("| fleet over NATS, 1 worker | 200 | 4.00 | 9.00 | 4.00 | 18.00 |"),
            "{out}"
        );
        assert!(
            out.contains("p50 **+2.50 ms**, p99 **+6.00 ms** (target p50 ≤ 5 ms: met)"),
            "{out}"
        );
        assert!(out.contains("over the in-memory service: p50 +3.50 ms, p99 +8.00 ms."));

        let mut out = String::new();
        render(&mut out, &synthetic(8.0, 7.0), 2);
        assert!(
            out.contains(
                "2 workers / 1 worker: **1.25×** (target ≥ 1.8×: **not met**: 5.00 jobs/s with 2 workers \
                 against 4.00 with 1, on 2 cores"
            ),
            "{out}"
        );
        assert!(
            out.contains("(target p50 ≤ 5 ms: **not met**: p50 7.00 ms over NATS against 1.50 ms on one machine)"),
            "{out}"
        );
    }
}
