//! The report's detailed sections: transformer step profiles, pipeline tables per model, memory,
//! the HTTP server and the memory-over-requests run.

use std::fmt::Write as _;

use super::*;

/// A step profile's rows: the export and the built graph in ONNX Runtime (when profiled), torch.
pub(super) fn runtime_rows(
    profile: &StepProfile,
) -> impl Iterator<Item = (&'static str, &StepSplit)> {
    [
        Some(("ONNX Runtime", &profile.onnxruntime)),
        profile
            .onnxruntime_built
            .as_ref()
            .map(|built| ("ONNX Runtime, flux-builder's graph", built)),
        Some(("torch (diffusers)", &profile.torch)),
    ]
    .into_iter()
    .flatten()
}

/// Where one transformer step goes, in ONNX Runtime and in torch: why diffusers is closer on the
/// larger model than on the tiny one.
pub(super) fn step_profiles(out: &mut String, results: &BenchResults) {
    if results.step_profiles.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "One transformer step (batch 1, random inputs of the pipeline's shapes) under each runtime's \
         profiler, split into attention (ONNX: `Softmax` and the `MatMul`s between two activations, QKᵀ \
         and PV; torch: `scaled_dot_product_attention`), linear layers (`MatMul`/`Gemm` against a \
         weight; `aten::linear`) and the rest; milliseconds, after two warm-up runs. Attention and linear \
         layers: their kernels' time under the profiler, per run over {} runs; step: median of as many runs \
         again with no profiler attached, so the profilers' own cost is in neither the step nor the rest.\n\n\
         | model | size | tokens (image + text) | runtime | step | attention | linear | rest |\n\
         |---|---|---:|---|---:|---:|---:|---:|",
        results.step_profiles[0].repeats
    );
    for profile in &results.step_profiles {
        for (runtime, split) in runtime_rows(profile) {
            let _ = writeln!(
                out,
                "| {} | {}×{} | {} + {} | {runtime} | {:.1} | {:.1} ({:.0} %) | {:.1} | {:.1} |",
                profile.model,
                profile.width,
                profile.height,
                profile.image_tokens,
                profile.text_tokens,
                split.step_ms,
                split.attention_ms,
                100.0 * split.attention_ms / split.step_ms,
                split.linear_ms,
                split.other_ms
            );
        }
    }
    for profile in &results.step_profiles {
        let (ort, torch) = (&profile.onnxruntime, &profile.torch);
        let ratio = |theirs: f64, ours: f64| {
            if ours > 0.0 {
                format!("{:.2}×", theirs / ours)
            } else {
                "—".to_owned()
            }
        };
        let _ = writeln!(
            out,
            "\n{} model at {}×{}: the step takes {:.1} ms in ONNX Runtime and {:.1} ms in torch, {} as \
             long; linear layers {}, attention {}, the rest {}.",
            profile.model,
            profile.width,
            profile.height,
            ort.step_ms,
            torch.step_ms,
            ratio(torch.step_ms, ort.step_ms),
            ratio(torch.linear_ms, ort.linear_ms),
            ratio(torch.attention_ms, ort.attention_ms),
            ratio(torch.other_ms, ort.other_ms),
        );
    }
    let range = |part: fn(&StepSplit) -> f64| {
        let ratios: Vec<f64> = results
            .step_profiles
            .iter()
            .filter(|p| part(&p.onnxruntime) > 0.0)
            .map(|p| part(&p.torch) / part(&p.onnxruntime))
            .collect();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if ratios.is_empty() {
            "—".to_owned()
        } else {
            format!("{low:.2}–{high:.2}×")
        }
    };
    let _ = writeln!(
        out,
        "\nAcross these profiles torch takes {} ONNX Runtime's time in the linear layers (MLAS GEMMs), \
         {} in attention (three unfused kernels against torch's fused one) and {} in the rest: the \
         element-wise operators of the exported graph (modulation, the tanh GELU spelled as \
         Pow/Mul/Add/Tanh, rotary embeddings, and the Concat/Transpose/Split between them), each one \
         pass over memory. Where the rest or attention weighs most (the tiny model, whose layers are \
         too narrow for GEMMs to matter), diffusers comes closest. Those are the export's graphs, which \
         the Python peer runs too; flux-builder's graphs of the same weights (the rows \"ONNX Runtime, \
         flux-builder's graph\", what a diffusers folder or BFL files are built into) fuse attention \
         into one `MultiHeadAttention` kernel and the rotary embeddings and RMS norms into one \
         operator each.",
        range(|split| split.linear_ms),
        range(|split| split.attention_ms),
        range(|split| split.other_ms),
    );
    let _ = writeln!(out);
}

pub(super) fn pipeline_tables(
    out: &mut String,
    results: &BenchResults,
    model: &str,
    parameters: Option<u64>,
) {
    let runs = flux_runs(results, model);
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Pipeline, {model} model{}\n",
        parameters.map_or_else(String::new, |p| format!(
            " ({:.1} M parameters)",
            p as f64 / 1e6
        ))
    );
    let _ = writeln!(
        out,
        "End to end in seconds (median). Ratio = peer time / flux-rs time (higher: flux-rs faster).\n\n\
         | size | tokens | steps | flux-rs | per step | overhead | Python ORT | ratio | its overhead | diffusers | ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in &runs {
        let size = [run.width, run.height];
        let python = results.find_run(implementation::PYTHON_ORT, model, size, run.steps);
        let diffusers = results.find_run(implementation::DIFFUSERS, model, size, run.steps);
        let ours = run.median_of(stage::TOTAL);
        let _ = writeln!(
            out,
            "| {}×{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.width,
            run.height,
            run.image_tokens,
            run.steps,
            secs(ours),
            secs(run.median_of(stage::PER_STEP)),
            run.overhead_percent()
                .map_or_else(|| "—".to_owned(), |o| format!("{o:.2} %")),
            secs(total(python)),
            fmt_ratio(ratio(total(python), ours)),
            python
                .and_then(RunResult::overhead_percent)
                .map_or_else(|| "—".to_owned(), |o| format!("{o:.2} %")),
            secs(total(diffusers)),
            fmt_ratio(ratio(total(diffusers), ours)),
        );
    }
    let _ = writeln!(out);
    super::built::built_table(out, results, model);
    for (name, label) in [
        (implementation::FLUX_RS, "flux-rs"),
        (implementation::PYTHON_ORT, "Python ORT peer"),
    ] {
        let runs: Vec<&RunResult> = if name == implementation::FLUX_RS {
            runs.clone()
        } else {
            runs.iter()
                .filter_map(|r| results.find_run(name, model, [r.width, r.height], r.steps))
                .collect()
        };
        if runs.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "Breakdown, {label}, milliseconds (median; `in ORT` = summed `session.run` time):\n\n\
             | size | steps | tokenize | CLIP | T5 | denoise | VAE decode | encode | total | in ORT | overhead |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in runs {
            let m = |key| run.median_of(key);
            let outside = run.median_outside_ort();
            let _ = writeln!(
                out,
                "| {}×{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.width,
                run.height,
                run.steps,
                millis(m(stage::TOKENIZE)),
                millis(m(stage::CLIP)),
                millis(m(stage::T5)),
                millis(m(stage::DENOISE)),
                millis(m(stage::VAE)),
                millis(m(stage::ENCODE)),
                millis(m(stage::TOTAL)),
                millis(m(stage::ORT_SESSION_TOTAL)),
                millis(outside),
            );
        }
        let _ = writeln!(out);
    }
}

pub(super) fn memory_table(out: &mut String, results: &BenchResults) {
    let _ = writeln!(
        out,
        "## Peak memory and model load\n\nPeak RSS (MiB, `VmHWM`) of one process that loaded the model and ran one size \
         (warm-up and all step counts); load = model load in that process (seconds; for the peers: sessions and \
         tokenizers, or `FluxPipeline.from_pretrained`, after the imports).\n\n\
         | model | size | flux-rs RSS | load | flux-rs, built graphs RSS | load | built int8 RSS | load | Python ORT RSS | load | diffusers RSS | load |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for model in &results.models {
        for size in &model.sizes {
            let find = |name: &str| {
                results.pipeline.iter().find(|e| {
                    e.model == model.name
                        && e.document.implementation == name
                        && e.document
                            .runs
                            .first()
                            .is_some_and(|r| [r.width, r.height] == *size)
                })
            };
            let cell = |name: &str| {
                find(name).map_or_else(
                    || "— | —".to_owned(),
                    |e| {
                        format!(
                            "{} | {}",
                            mib(e.document.peak_rss_bytes),
                            secs(Some(e.document.load_seconds))
                        )
                    },
                )
            };
            let _ = writeln!(
                out,
                "| {} | {}×{} | {} | {} | {} | {} | {} |",
                model.name,
                size[0],
                size[1],
                cell(implementation::FLUX_RS),
                cell(implementation::FLUX_RS_BUILT),
                cell(implementation::FLUX_RS_BUILT_INT8),
                cell(implementation::PYTHON_ORT),
                cell(implementation::DIFFUSERS)
            );
        }
    }
    let _ = writeln!(out);
}

pub(super) fn server_section(out: &mut String, results: &BenchResults) {
    let Some(server) = &results.server else {
        return;
    };
    let _ = writeln!(
        out,
        "## HTTP server versus direct calls\n\nThe {} model behind flux-facade's `LocalGenerator`, called directly \
         and through flux-remote's server on loopback (reqwest client, keep-alive, API key), \
         with identical requests ({}×{}, {} step, JPEG); client and server share the machine's cores with \
         the model.\n\n\
         | clients | requests | direct req/s | direct p50 / p99 ms | HTTP req/s | HTTP p50 / p99 ms |\n|---:|---:|---:|---:|---:|---:|",
        server.model, server.width, server.height, server.steps
    );
    for (label, stats) in [
        ("1, direct vs HTTP (files)", &server.http_sequential),
        (
            "1, direct vs HTTP (`sync_mode`)",
            &server.http_sync_mode_sequential,
        ),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {} | {:.1} | {:.2} / {:.2} | {:.1} | {:.2} / {:.2} |",
            stats.count,
            1000.0 / server.direct_sequential.mean_ms,
            server.direct_sequential.p50_ms,
            server.direct_sequential.p99_ms,
            1000.0 / stats.mean_ms,
            stats.p50_ms,
            stats.p99_ms
        );
    }
    for level in &server.concurrency {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.2} / {:.2} | {:.1} | {:.2} / {:.2} |",
            level.clients,
            level.requests,
            level.direct_throughput_rps,
            level.direct_latency.p50_ms,
            level.direct_latency.p99_ms,
            level.http_throughput_rps,
            level.http_latency.p50_ms,
            level.http_latency.p99_ms
        );
    }
    let _ = writeln!(
        out,
        "\nThe one-client rows alternate direct, HTTP with files and HTTP with `sync_mode` request by request. \
         Added latency of the HTTP path at p50, one client: **{:.2} ms** with the images stored as files (the \
         default: each image is written to a temporary file and renamed into place before the answer, and \
         flushed to disk right after it; `--durable-images` moves the fsync before the answer), **{:.2} ms** with \
         `sync_mode` (a `data:` URI, nothing stored). Median of the per-request differences (HTTP \
         request i minus the direct request just before it): {:.2} ms (files), {:.2} ms (`sync_mode`).\n",
        server.added_latency_p50_ms,
        server.added_latency_sync_mode_p50_ms,
        server.added_latency_paired_median_ms,
        server.added_latency_sync_mode_paired_median_ms
    );
    let _ = writeln!(
        out,
        "Overload: the admission queue is kept full by long generations (1024², 28 steps), then the server is \
         flooded; time from sending a request to having the whole 429 answer. The server runs on its own \
         runtime threads, as in `flux serve`; the clients, the server and the model share the machine's cores. \
         `normal`: the model's threads at the default priority; `idle`: `--compute-priority idle` (Linux \
         `SCHED_IDLE`), so the HTTP threads preempt inference at once. At normal priority the scheduler \
         lets a running inference thread finish its time slice (a few milliseconds on current Linux) \
         before a woken HTTP thread gets the core; with 32 clients keeping the HTTP threads busy, that \
         wait is the tail.\n\n\
         | clients | compute priority | attempts | 429 `overloaded` | with `Retry-After` | admitted | other | p50 ms | p99 ms | max ms |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for overload in &server.overload {
        let latency = |f: fn(&crate::results::LatencyStats) -> f64| {
            overload
                .rejection_latency
                .as_ref()
                .map_or_else(|| "—".to_owned(), |l| format!("{:.2}", f(l)))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            overload.clients,
            overload.compute_priority,
            overload.attempts,
            overload.rejected,
            overload.rejected_with_retry_after,
            overload.accepted,
            overload.other,
            latency(|l| l.p50_ms),
            latency(|l| l.p99_ms),
            latency(|l| l.max_ms)
        );
    }
    let _ = writeln!(out);
}

pub(super) fn queue_section(out: &mut String, results: &BenchResults) {
    let Some(queue) = &results.queue else {
        return;
    };
    let _ = writeln!(
        out,
        "## Queue API\n\nThe {} model behind flux-remote's server on loopback, {} jobs one at a time \
         ({}×{}, {} steps, JPEG files), after a warm-up. Submit → 202: from sending `POST \
         /api/v1/queue/flux/dev` to having the whole 202 answer, the queue idle (validation, admission, the \
         job record, the answer). Step → SSE event: from the generator's progress callback for a finished \
         denoising step to the client (flux-remote's `FluxClient::stream`) having that step's event; \
         each job waits at the generator until its stream is open, so every step's event is live. \
         In memory: `ServerConfig::data_dir` `None` (the library's default); `--data-dir`: the job \
         database `flux serve` uses by default (an accept is an fsync'd redb commit, a step's \
         progress a commit without fsync).\n\n\
         | measure | samples | p50 ms | p99 ms | mean ms | max ms |\n|---|---:|---:|---:|---:|---:|",
        queue.model, queue.jobs, queue.width, queue.height, queue.steps
    );
    let rows = [
        ("submit → 202, in memory", Some(&queue.submit_to_accepted)),
        ("step → SSE event, in memory", Some(&queue.step_to_event)),
        (
            "submit → 202, `--data-dir` (redb)",
            queue.submit_to_accepted_durable.as_ref(),
        ),
        (
            "step → SSE event, `--data-dir` (redb)",
            queue.step_to_event_durable.as_ref(),
        ),
    ];
    for (label, stats) in rows {
        let Some(stats) = stats else { continue };
        let _ = writeln!(
            out,
            "| {label} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            stats.count, stats.p50_ms, stats.p99_ms, stats.mean_ms, stats.max_ms
        );
    }
    let _ = writeln!(out);
}

pub(super) fn soak_section(out: &mut String, results: &BenchResults) {
    let Some(soak) = &results.soak else {
        return;
    };
    let _ = writeln!(
        out,
        "## Memory over {} sequential requests\n\n{} model, {}×{}, {} step, direct pipeline calls in one process \
         ({:.0} s, after {} warm-up requests).\n\n\
         | after load | after warm-up | end | peak | slope after warm-up |\n|---:|---:|---:|---:|---:|\n\
         | {} MiB | {} MiB | {} MiB | {} MiB | {:+.0} bytes/request |\n",
        soak.requests,
        soak.model,
        soak.width,
        soak.height,
        soak.steps,
        soak.seconds,
        soak.warmup_requests,
        mib(soak.rss_after_load_bytes),
        mib(soak.rss_after_warmup_bytes),
        mib(soak.rss_end_bytes),
        mib(soak.peak_rss_bytes),
        soak.slope_bytes_per_request
    );
    let samples: Vec<String> = soak
        .rss_samples
        .iter()
        .step_by((soak.rss_samples.len() / 10).max(1))
        .map(|(n, rss)| format!("{n}: {}", mib(*rss)))
        .collect();
    let _ = writeln!(
        out,
        "RSS along the run (requests: MiB): {}.\n",
        samples.join(", ")
    );
}
