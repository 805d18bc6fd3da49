//! "How close to the machine": the transformer step's linear layers and attention as achieved
//! GFLOP/s (operations counted from the architecture over the profiler's kernel time) against
//! the CPU's fp32 peak (cores × FLOP per cycle × clock, derived from its vector units).

use std::fmt::Write as _;

use super::*;

fn rate(flops: f64, ms: f64) -> Option<f64> {
    (ms > 0.0).then(|| flops / (ms * 1e-3) / 1e9)
}

pub(super) fn machine_section(out: &mut String, results: &BenchResults) {
    let profiles: Vec<&StepProfile> = results
        .step_profiles
        .iter()
        .filter(|p| p.flops.is_some())
        .collect();
    if profiles.is_empty() {
        return;
    }
    let peak = results.host.cpu_peak.as_ref();
    let _ = match peak {
        Some(peak) => writeln!(
            out,
            "How close to the machine: the profiled steps' linear layers and attention in GFLOP/s (operations \
             counted from the architecture, `step_profile.py`'s `step_flops`, over the kernels' time under the \
             profiler), against this CPU's fp32 peak of **{:.0} GFLOP/s**: {} cores × {} FLOP per cycle × \
             {:.2} GHz ({}).\n\n\
             | model | size | runtime | linear GFLOP/s | of peak | attention GFLOP/s | of peak |\n\
             |---|---|---|---:|---:|---:|---:|",
            peak.gflops, peak.cores, peak.flops_per_cycle, peak.ghz, peak.how
        ),
        None => writeln!(
            out,
            "How close to the machine: GFLOP/s of the profiled steps (this run could not read the CPU's \
             vector units or clock, so no peak is stated).\n\n\
             | model | size | runtime | linear GFLOP/s | of peak | attention GFLOP/s | of peak |\n\
             |---|---|---|---:|---:|---:|---:|"
        ),
    };
    let share = |gflops: Option<f64>| match (gflops, peak) {
        (Some(g), Some(peak)) if peak.gflops > 0.0 => format!("{:.0} %", 100.0 * g / peak.gflops),
        _ => "—".to_owned(),
    };
    let fmt = |gflops: Option<f64>| gflops.map_or_else(|| "—".to_owned(), |g| format!("{g:.1}"));
    for profile in profiles {
        let Some(flops) = &profile.flops else {
            continue;
        };
        for (runtime, split) in super::sections::runtime_rows(profile) {
            let linear = rate(flops.linear, split.linear_ms);
            let attention = rate(flops.attention, split.attention_ms);
            let _ = writeln!(
                out,
                "| {} | {}×{} | {runtime} | {} | {} | {} | {} |",
                profile.model,
                profile.width,
                profile.height,
                fmt(linear),
                share(linear),
                fmt(attention),
                share(attention)
            );
        }
    }
    let _ = writeln!(out);
}
