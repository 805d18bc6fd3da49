//! The Rust peer's table and target: candle's FLUX transformer step against flux-rs's per-step
//! time on the same weights (flux-builder's graphs, and the export), size by size.

use std::fmt::Write as _;

use super::*;
use crate::candle::CandleStep;

/// flux-rs (built graphs) against candle's step.
const TARGET_CANDLE: f64 = 1.5;

fn candle_ms(step: &CandleStep) -> Option<f64> {
    crate::stats::median(&step.step_ms)
}

/// (candle / flux-rs built) per measured size of one model.
fn ratios(results: &BenchResults, model: &str) -> Vec<f64> {
    results
        .candle
        .iter()
        .filter(|s| s.model == model)
        .filter_map(|s| {
            let ours = per_step(
                results,
                implementation::FLUX_RS_BUILT,
                model,
                [s.width, s.height],
            )?;
            Some(candle_ms(s)? / (ours * 1e3))
        })
        .collect()
}

pub(super) fn candle_targets(out: &mut String, results: &BenchResults) {
    for model in &results.models {
        let found = ratios(results, &model.name);
        if let (Some(median), Some(least)) = (
            crate::stats::median(&found),
            found.iter().copied().reduce(f64::min),
        ) {
            let _ = writeln!(
                out,
                "| transformer step, flux-rs (flux-builder's graphs) vs candle's FLUX, {} model (target ≥ \
                 {TARGET_CANDLE}×) | median {median:.2}×, least {least:.2}× over {} sizes | {} |",
                model.name,
                found.len(),
                met(least >= TARGET_CANDLE)
            );
        }
    }
}

pub(super) fn candle_section(out: &mut String, results: &BenchResults) {
    let Some(first) = results.candle.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "## A Rust peer: candle\n\n\
         candle's FLUX transformer (`candle_transformers::models::flux::model::Flux`, candle {}) on the same \
         weights in BFL names (`tools/bench/candle_weights.py`), f32 on the CPU with {} threads \
         (`RAYON_NUM_THREADS`), one step at batch 1 with random inputs, median of the measured runs after two \
         warm-ups (`tools/candle-peer`); flux-rs: denoising seconds per step in the pipeline runs above \
         (ratio = candle / flux-rs). candle computes attention as a matmul, a softmax and a matmul over the \
         whole score matrix, and its linear layers with the `gemm` crate.\n\n\
         | model | size | tokens (image + text) | candle ms | flux-rs, built graphs ms | ratio | flux-rs, export ms | ratio |\n\
         |---|---|---:|---:|---:|---:|---:|---:|",
        first.candle, first.threads
    );
    for step in &results.candle {
        let size = [step.width, step.height];
        let theirs = candle_ms(step);
        let built =
            per_step(results, implementation::FLUX_RS_BUILT, &step.model, size).map(|s| s * 1e3);
        let export = per_step(results, implementation::FLUX_RS, &step.model, size).map(|s| s * 1e3);
        let ms = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"));
        let _ = writeln!(
            out,
            "| {} | {}×{} | {} + {} | {} | {} | {} | {} | {} |",
            step.model,
            step.width,
            step.height,
            step.image_tokens,
            step.text_tokens,
            ms(theirs),
            ms(built),
            fmt_ratio(ratio(theirs, built)),
            ms(export),
            fmt_ratio(ratio(theirs, export)),
        );
    }
    let _ = writeln!(out);
}
