//! The performance issue's targets and table: flux-rs on flux-builder's graphs (fused attention,
//! what `--model DIFFUSERS_DIR` runs) against the export of the same weights and against the peers
//! (the fused step and attention on the medium model at 1024×576, end to end against diffusers),
//! the same at `--precision int8` (reported beside the fp32 rows, as a different precision whose
//! fidelity the 8/4-bit section measures), JPEG encoding against Pillow, and one table per model.

use std::fmt::Write as _;

use super::*;

/// The built graphs' transformer step against the export's (medium model, 1024×576).
const TARGET_FUSED_STEP: f64 = 1.6;
/// Their attention against the export's three kernels.
const TARGET_FUSED_ATTENTION: f64 = 2.0;
/// End to end against diffusers: median and least over every size and step count.
const TARGET_BUILT_DIFFUSERS_MEDIAN: f64 = 3.0;
const TARGET_BUILT_DIFFUSERS_LEAST: f64 = 2.5;

/// JPEG encoding (float to bytes, quality 95, 4:4:4) against Pillow's in the Python peer.
const TARGET_JPEG_RATIO: f64 = 1.5;

/// The `encode` stage at 1024² of flux-rs and of the Python ORT peer (both: float-to-u8 of the
/// VAE's output, then JPEG at quality 95 with 4:4:4 chroma; Pillow's is libjpeg-turbo), median
/// over the step counts measured on the tiny model.
fn jpeg_target(out: &mut String, results: &BenchResults) {
    let encode = |implementation: &str| -> Option<f64> {
        let times: Vec<f64> = runs_of(results, implementation, "tiny")
            .into_iter()
            .filter(|run| [run.width, run.height] == [1024, 1024])
            .filter_map(|run| run.median_of(stage::ENCODE))
            .collect();
        crate::stats::median(&times)
    };
    if let (Some(ours), Some(pillow)) = (
        encode(implementation::FLUX_RS),
        encode(implementation::PYTHON_ORT),
    ) {
        let _ = writeln!(
            out,
            "| JPEG at 1024² (float to u8, quality 95, 4:4:4), flux-rs vs Pillow in the Python peer (target ≤ \
             {TARGET_JPEG_RATIO}× Pillow's time) | {:.1} vs {:.1} ms, {:.2}× | {} |",
            ours * 1e3,
            pillow * 1e3,
            ours / pillow,
            met(ours / pillow <= TARGET_JPEG_RATIO)
        );
    }
}

/// Peak RSS of flux-rs on the built graphs against diffusers', per model and size (each one
/// process that loaded the model and ran that size).
fn memory_target(out: &mut String, results: &BenchResults) {
    let peak = |implementation: &str, model: &str, size: [u32; 2]| {
        results
            .pipeline
            .iter()
            .find(|e| {
                e.model == model
                    && e.document.implementation == implementation
                    && e.document
                        .runs
                        .first()
                        .is_some_and(|r| [r.width, r.height] == size)
            })
            .map(|e| e.document.peak_rss_bytes)
    };
    for model in &results.models {
        let pairs: Vec<(u64, u64)> = model
            .sizes
            .iter()
            .filter_map(|&size| {
                Some((
                    peak(implementation::FLUX_RS_BUILT, &model.name, size)?,
                    peak(implementation::DIFFUSERS, &model.name, size)?,
                ))
            })
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let over = pairs.iter().filter(|(ours, theirs)| ours > theirs).count();
        let worst = pairs
            .iter()
            .map(|&(ours, theirs)| ours as f64 / theirs as f64)
            .fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "| peak RSS of flux-rs on flux-builder's graphs ≤ diffusers' at every size, {} model | \
             over at {over} of {} sizes, at most {worst:.2}× diffusers' | {} |",
            model.name,
            pairs.len(),
            met(over == 0)
        );
    }
}

pub(super) fn built_targets(out: &mut String, results: &BenchResults) {
    jpeg_target(out, results);
    memory_target(out, results);
    for profile in &results.step_profiles {
        let Some(built) = &profile.onnxruntime_built else {
            continue;
        };
        if profile.model != "medium" || [profile.width, profile.height] != [1024, 576] {
            continue;
        }
        let step = profile.onnxruntime.step_ms / built.step_ms;
        let attention = profile.onnxruntime.attention_ms / built.attention_ms;
        let _ = writeln!(
            out,
            "| transformer step, flux-builder's graph vs the export, medium model at 1024×576 (target ≥ \
             {TARGET_FUSED_STEP}×) | {step:.2}× ({:.1} vs {:.1} ms) | {} |",
            built.step_ms,
            profile.onnxruntime.step_ms,
            met(step >= TARGET_FUSED_STEP)
        );
        let _ = writeln!(
            out,
            "| attention, fused `MultiHeadAttention` vs the export's three kernels, same step (target ≥ \
             {TARGET_FUSED_ATTENTION}×) | {attention:.2}× ({:.1} vs {:.1} ms) | {} |",
            built.attention_ms,
            profile.onnxruntime.attention_ms,
            met(attention >= TARGET_FUSED_ATTENTION)
        );
    }
    int8_step_target(out, results);
    for (implementation, graphs) in [
        (implementation::FLUX_RS_BUILT, "flux-builder's graphs"),
        (
            implementation::FLUX_RS_BUILT_INT8,
            "flux-builder's int8 graphs",
        ),
    ] {
        for model in &results.models {
            let found = ratios_of(
                results,
                &model.name,
                implementation,
                implementation::DIFFUSERS,
            );
            if let (Some(median), Some(least)) = (
                crate::stats::median(&found),
                found.iter().copied().reduce(f64::min),
            ) {
                let _ = writeln!(
                    out,
                    "| speed-up of flux-rs on {graphs} over diffusers (fp32), {} model (target median ≥ \
                     {TARGET_BUILT_DIFFUSERS_MEDIAN}×, least ≥ {TARGET_BUILT_DIFFUSERS_LEAST}×) | median \
                     {median:.2}×, least {least:.2}× over {} runs | {} |",
                    model.name,
                    found.len(),
                    met(median >= TARGET_BUILT_DIFFUSERS_MEDIAN
                        && least >= TARGET_BUILT_DIFFUSERS_LEAST)
                );
            }
        }
    }
}

/// The step at `--precision int8` against the export's, from flux-rs's own pipeline runs (per
/// step of the longest run; the fp32 row above is ONNX Runtime's profiler on one step).
pub(super) fn int8_step_target(out: &mut String, results: &BenchResults) {
    let size = [1024, 576];
    let step = |implementation| per_step(results, implementation, "medium", size);
    if let (Some(int8), Some(fp32), Some(export)) = (
        step(implementation::FLUX_RS_BUILT_INT8),
        step(implementation::FLUX_RS_BUILT),
        step(implementation::FLUX_RS),
    ) {
        let _ = writeln!(
            out,
            "| transformer step at `--precision int8` (integer GEMMs) vs the fp32 export, medium model at \
             1024×576, flux-rs per step (target ≥ {TARGET_FUSED_STEP}×) | {:.2}× ({:.0} vs {:.0} ms; \
             fp32 built graphs {:.0} ms) | {} |",
            export / int8,
            int8 * 1e3,
            export * 1e3,
            fp32 * 1e3,
            met(export / int8 >= TARGET_FUSED_STEP)
        );
    }
}

pub(super) fn built_table(out: &mut String, results: &BenchResults, model: &str) {
    let runs = runs_of(results, implementation::FLUX_RS_BUILT, model);
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "flux-rs on flux-builder's graphs of the same weights (built from the model's diffusers folder as \
         `flux serve --model DIR` builds it: fused `MultiHeadAttention`, `RotaryEmbedding`, \
         `SimplifiedLayerNormalization`, the VAE's attention fused), end to end in seconds (median); \
         ratio = other time / built-graph time.\n\n\
         `int8` is the same graphs under `--precision int8` (ratio = built fp32 / int8).\n\n\
         | size | steps | built graphs | per step | int8 | ratio | export | ratio | Python ORT | ratio | diffusers | ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in runs {
        let size = [run.width, run.height];
        let ours = run.median_of(stage::TOTAL);
        let int8 =
            total(results.find_run(implementation::FLUX_RS_BUILT_INT8, model, size, run.steps));
        let export = total(results.find_run(implementation::FLUX_RS, model, size, run.steps));
        let python = total(results.find_run(implementation::PYTHON_ORT, model, size, run.steps));
        let diffusers = total(results.find_run(implementation::DIFFUSERS, model, size, run.steps));
        let _ = writeln!(
            out,
            "| {}×{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.width,
            run.height,
            run.steps,
            secs(ours),
            secs(run.median_of(stage::PER_STEP)),
            secs(int8),
            fmt_ratio(ratio(ours, int8)),
            secs(export),
            fmt_ratio(ratio(export, ours)),
            secs(python),
            fmt_ratio(ratio(python, ours)),
            secs(diffusers),
            fmt_ratio(ratio(diffusers, ours)),
        );
    }
    let _ = writeln!(out);
}
