//! The report's number formats, tables and plot on synthetic results.

use super::*;
use crate::results::{LatencyStats, PeakMemoryEntry, PeakMemoryResult, QueueResults};

#[test]
fn number_formats() {
    assert_eq!(secs(Some(12.345)), "12.3");
    assert_eq!(secs(Some(1.2345)), "1.23");
    assert_eq!(secs(Some(0.12345)), "0.123");
    assert_eq!(secs(None), "—");
    assert_eq!(millis(Some(0.2)), "200");
    assert_eq!(millis(Some(0.0123)), "12.3");
    assert_eq!(fmt_ratio(ratio(Some(3.0), Some(2.0))), "1.50×");
    assert_eq!(ratio(Some(3.0), Some(0.0)), None);
}

fn synthetic_results() -> BenchResults {
    use std::collections::BTreeMap;

    use crate::host::HostInfo;
    use crate::results::{
        GpuSection, ModelInfo, PipelineEntry, SCHEMA_VERSION, Settings, StepProfile, StepSplit,
        WorkerDocument,
    };

    let run = |tokens_side: u32, total: f64, ort: Option<f64>| {
        let mut sample = BTreeMap::from([
            (stage::TOTAL.to_owned(), total),
            (stage::DENOISE.to_owned(), total / 2.0),
        ]);
        if let Some(ort) = ort {
            sample.insert(stage::ORT_SESSION_TOTAL.to_owned(), ort);
        }
        RunResult {
            width: tokens_side * 16,
            height: tokens_side * 16,
            image_tokens: tokens_side * tokens_side,
            steps: 4,
            repeats: 1,
            median: sample.clone(),
            samples: vec![sample],
        }
    };
    let document = |name: &str, scale: f64, ort: bool| WorkerDocument {
        implementation: name.to_owned(),
        versions: BTreeMap::from([("v".to_owned(), "1".to_owned())]),
        threads: 2,
        load_seconds: 0.5,
        peak_rss_bytes: 300 << 20,
        runs: vec![
            run(16, scale, ort.then_some(scale * 0.99)),
            run(32, 4.0 * scale, ort.then_some(4.0 * scale * 0.95)),
        ],
    };
    BenchResults {
        schema_version: SCHEMA_VERSION,
        host: HostInfo {
            hostname: "h".to_owned(),
            cpu_model: "cpu".to_owned(),
            cores: 2,
            memory_bytes: None,
            kernel: "k".to_owned(),
            git_revision: "abc".to_owned(),
            git_dirty: false,
            date: "2026-01-01T00:00:00Z".to_owned(),
            onnxruntime_version: "1.31.1".to_owned(),
            rustc_version: "rustc".to_owned(),
            cpu_peak: Some(crate::host::CpuPeak {
                cores: 2,
                flops_per_cycle: 64,
                ghz: 2.0,
                gflops: 256.0,
                how: "test".to_owned(),
            }),
        },
        settings: Settings {
            quick: false,
            threads: 2,
            repeats: 1,
            peers: true,
            prompt: "p".to_owned(),
            seed: 1,
            guidance: 3.5,
            output_format: "jpeg".to_owned(),
        },
        models: vec![ModelInfo {
            name: "medium".to_owned(),
            path: "m".to_owned(),
            parameters: Some(78_000_000),
            sizes: vec![[256, 256], [512, 512]],
            steps: vec![4],
        }],
        pipeline: [
            (implementation::FLUX_RS, 1.0, true),
            (implementation::PYTHON_ORT, 1.2, true),
            (implementation::DIFFUSERS, 3.0, false),
            (implementation::FLUX_RS_BUILT, 0.8, true),
            (implementation::FLUX_RS_BUILT_INT8, 0.5, true),
        ]
        .into_iter()
        .map(|(name, scale, ort)| PipelineEntry {
            model: "medium".to_owned(),
            document: document(name, scale, ort),
        })
        .collect(),
        server: None,
        queue: Some(QueueResults {
            model: "tiny".to_owned(),
            width: 64,
            height: 64,
            steps: 4,
            jobs: 2,
            submit_to_accepted: LatencyStats::from_seconds(&[0.000_25, 0.000_27]).expect("samples"),
            step_to_event: LatencyStats::from_seconds(&[0.000_4]).expect("samples"),
            submit_to_accepted_durable: None,
            step_to_event_durable: None,
        }),
        soak: None,
        fleet: None,
        peak_memory: vec![PeakMemoryEntry {
            model: "tiny".to_owned(),
            path: "fixtures/tiny-flux-dev-diffusers".to_owned(),
            results: vec![
                PeakMemoryResult {
                    width: 2048,
                    height: 2048,
                    images: 4,
                    rss_after_load_bytes: 100 << 20,
                    peak_rss_bytes: 1400 << 20,
                    rss_after_bytes: 200 << 20,
                    estimated_peak_bytes: 2800 << 20,
                    seconds: 120.0,
                },
                PeakMemoryResult {
                    width: 512,
                    height: 512,
                    images: 1,
                    rss_after_load_bytes: 100 << 20,
                    peak_rss_bytes: 400 << 20,
                    rss_after_bytes: 120 << 20,
                    estimated_peak_bytes: 300 << 20,
                    seconds: 1.0,
                },
            ],
        }],
        step_profiles: vec![StepProfile {
            model: "medium".to_owned(),
            width: 512,
            height: 512,
            image_tokens: 1024,
            text_tokens: 128,
            threads: 2,
            repeats: 3,
            onnxruntime: StepSplit {
                step_ms: 300.0,
                attention_ms: 150.0,
                linear_ms: 100.0,
                other_ms: 50.0,
            },
            torch: StepSplit {
                step_ms: 400.0,
                attention_ms: 50.0,
                linear_ms: 250.0,
                other_ms: 100.0,
            },
            onnxruntime_built: Some(StepSplit {
                step_ms: 150.0,
                attention_ms: 50.0,
                linear_ms: 90.0,
                other_ms: 10.0,
            }),
            flops: Some(crate::results::StepFlops {
                linear: 9e9,
                attention: 5e9,
            }),
        }],
        quantized: vec![synthetic_quantized()],
        candle: vec![crate::candle::CandleStep {
            model: "medium".to_owned(),
            width: 256,
            height: 256,
            image_tokens: 256,
            text_tokens: 128,
            threads: 2,
            step_ms: vec![100.0, 120.0, 130.0],
            candle: "0.11.1".to_owned(),
        }],
        gpu: GpuSection {
            measured: false,
            note: "no GPU".to_owned(),
        },
        notes: vec!["a note".to_owned()],
        duration_seconds: 1.0,
    }
}

/// fp32 400 MiB of transformer weights at 100 ms a step; int4 a fifth of that at 80 ms.
fn synthetic_quantized() -> crate::quantized::QuantizedEntry {
    use crate::quantized::{Quality, QuantizedEntry, QuantizedRun};
    let run = |precision: &str, transformer: u64, step: f64| QuantizedRun {
        precision: precision.to_owned(),
        transformer_bytes: transformer << 20,
        t5_bytes: 100 << 20,
        other_bytes: 0,
        load_seconds: 0.5,
        rss_after_load_bytes: (transformer + 100) << 20,
        peak_rss_bytes: (transformer + 300) << 20,
        step_seconds: vec![step, step, step * 3.0],
    };
    QuantizedEntry {
        model: "medium".to_owned(),
        source: "/m".to_owned(),
        width: 512,
        height: 512,
        steps: 8,
        cases: 3,
        runs: vec![run("fp32", 400, 0.1), run("int4", 80, 0.08)],
        quality: vec![Quality {
            precision: "int4".to_owned(),
            psnr_db: vec![30.0, 34.0, 35.0],
            max_diff: 40,
        }],
    }
}

#[test]
fn renders_tables_targets_and_plot() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("flux-bench-report-test-{}", std::process::id()));
    let docs = dir.join("docs").join("benchmarks.md");
    let source = dir.join("bench-results").join("latest.json");
    render(&synthetic_results(), &source, &docs)?;
    let text = std::fs::read_to_string(&docs)?;
    // The 512² row: flux-rs 4 s, 5 % overhead; Python ORT 4.8 s (1.20×); diffusers 12 s (3.00×).
    assert!(
        text.contains(
            "| 512×512 | 1024 | 4 | 4.00 | — | 5.00 % | 4.80 | 1.20× | 5.00 % | 12.0 | 3.00× |"
        ),
        "{text}"
    );
    assert!(
        text.contains("worst 5.00 % over 2 runs | **not met** |"),
        "{text}"
    );
    assert!(
        text.contains("least 1.20× over 2 runs | **not met** |"),
        "{text}"
    );
    assert!(text.contains("least 3.00× over 2 runs | met |"), "{text}");
    assert!(text.contains("(../bench-results/latest.json)"), "{text}");
    assert!(text.contains("- a note"));
    assert!(
        text.contains("| tiny | 2048×2048 ×4 | 100 | 1400 | 200 | 2800 | 2.00 | 120.0 |"),
        "{text}"
    );
    assert!(
        text.contains("| tiny | 512×512 ×1 | 100 | 400 | 120 | 300 | 0.75 (under) | 1.0 |"),
        "{text}"
    );
    assert!(
        text.contains("| step → SSE event, in memory | 1 | 0.400 | 0.400 | 0.400 | 0.400 |"),
        "{text}"
    );
    assert!(
        text.contains(
            "| medium | 512×512 | 1024 + 128 | ONNX Runtime | 300.0 | 150.0 (50 %) | 100.0 | 50.0 |"
        ),
        "{text}"
    );
    assert!(
        text.contains("the step takes 300.0 ms in ONNX Runtime and 400.0 ms in torch, 1.33× as long; linear layers 2.50×, attention 0.33×, the rest 2.00×."),
        "{text}"
    );
    // The built graphs: 0.8 s at 256², against int8's 0.5 s, the export's 1 s, Python ORT's
    // 1.2 s and diffusers' 3 s; 3.75× over diffusers everywhere (target met), in its own table;
    // int8 6× over diffusers.
    assert!(
        text.contains(
            "| 256×256 | 4 | 0.800 | — | 0.500 | 1.60× | 1.00 | 1.25× | 1.20 | 1.50× | 3.00 | 3.75× |"
        ),
        "{text}"
    );
    assert!(
        text.contains("int8 graphs over diffusers (fp32), medium model (target median ≥ 3×, least ≥ 2.5×) | median 6.00×, least 6.00× over 2 runs | met |"),
        "{text}"
    );
    assert!(
        text.contains("median 3.75×, least 3.75× over 2 runs | met |"),
        "{text}"
    );
    // 9 GFLOP in 90 ms is 100 GFLOP/s, 39 % of a 256 GFLOP/s peak; 5 GFLOP in 50 ms likewise.
    assert!(
        text.contains("| medium | 512×512 | ONNX Runtime, flux-builder's graph | 100.0 | 39 % | 100.0 | 39 % |"),
        "{text}"
    );
    // The synthetic runs have no per-step stage: candle's median stands alone.
    assert!(
        text.contains("| medium | 256×256 | 256 + 128 | 120.0 | — | — | — | — |"),
        "{text}"
    );
    assert!(
        text.contains("over at 0 of 1 sizes, at most 1.00× diffusers' | met |"),
        "{text}"
    );
    assert!(
        text.contains("| ONNX Runtime, flux-builder's graph | 150.0 | 50.0 (33 %) | 90.0 | 10.0 |"),
        "{text}"
    );
    assert!(
        text.contains("| medium | 512×512, 8, 3 | int4 | 80.0 | 100.0 | 0.50 | 180 | 380 | 80.0 | 1.25× | 33.0 / 30.0 | 40 |"),
        "{text}"
    );
    assert!(
        text.contains("| medium | 512×512, 8, 3 | fp32 | 400.0 | 100.0 | 0.50 | 500 | 700 | 100.0 | 1.00× | reference | — |"),
        "{text}"
    );
    // int4 holds 0.8 bytes per parameter here: FLUX.1-dev's transformer 9.5 GB, T5 4.2 GB (its
    // embedding table in f32), CLIP + VAE 0.7 GB; no fixed part (RSS after load = the weights).
    assert!(
        text.contains("weights 14.4 GB, resident after load 14.4 GB | met |"),
        "{text}"
    );
    // The plot exists where a font could be found; otherwise the page says why not.
    let plot = docs.with_file_name(PLOT_FILE);
    if plot.exists() {
        let image = image::open(&plot)?;
        assert_eq!((image.width(), image.height()), (1000, 640));
    } else {
        assert!(text.contains("The plot was not drawn"), "{text}");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn the_onnx_runtime_line_says_whether_both_ran_the_same_release() {
    let mut results = synthetic_results();
    assert_eq!(onnxruntime_versions(&results), "1.31.1 (flux-rs)");
    let set_peer_version = |results: &mut BenchResults, version: &str| {
        for entry in &mut results.pipeline {
            if entry.document.implementation == implementation::PYTHON_ORT {
                entry
                    .document
                    .versions
                    .insert("onnxruntime".to_owned(), version.to_owned());
            }
        }
    };
    set_peer_version(&mut results, "1.31.1");
    assert_eq!(
        onnxruntime_versions(&results),
        "1.31.1 (flux-rs and the Python ORT peer)"
    );
    set_peer_version(&mut results, "1.30.0");
    assert_eq!(
        onnxruntime_versions(&results),
        "1.31.1 (flux-rs), 1.30.0 (Python ORT peer): **not the same release**"
    );
}

#[test]
fn relative_links_from_the_docs_folder() {
    let docs = Path::new("/repo/docs/benchmarks.md");
    assert_eq!(
        relative_to(Path::new("/repo/bench-results/latest.json"), docs),
        "../bench-results/latest.json"
    );
    assert_eq!(relative_to(Path::new("/repo/docs/x.json"), docs), "x.json");
}

#[test]
fn int8_step_target_reads_the_medium_landscape_runs() -> Result<()> {
    let mut results = synthetic_results();
    // Per-step seconds at 1024×576: export 2.0, built fp32 1.6, int8 1.0 → 2.00×, met.
    for (implementation, per_step) in [
        (implementation::FLUX_RS, 2.0),
        (implementation::FLUX_RS_BUILT, 1.6),
        (implementation::FLUX_RS_BUILT_INT8, 1.0),
    ] {
        let entry = results
            .pipeline
            .iter_mut()
            .find(|entry| entry.document.implementation == implementation)
            .expect("the synthetic results have every implementation");
        let mut run = entry.document.runs[0].clone();
        (run.width, run.height, run.image_tokens, run.steps) = (1024, 576, 64 * 36, 8);
        run.median.insert(stage::PER_STEP.to_owned(), per_step);
        entry.document.runs.push(run.clone());
        // A shorter run at the same size must not be the one read.
        run.steps = 2;
        run.median.insert(stage::PER_STEP.to_owned(), 9.0);
        entry.document.runs.push(run);
    }
    let mut out = String::new();
    built::int8_step_target(&mut out, &results);
    assert!(
        out.contains("| 2.00× (1000 vs 2000 ms; fp32 built graphs 1600 ms) | met |"),
        "{out}"
    );
    // Without the int8 runs there is no row (nothing measured, nothing claimed).
    results
        .pipeline
        .retain(|entry| entry.document.implementation != implementation::FLUX_RS_BUILT_INT8);
    let mut out = String::new();
    built::int8_step_target(&mut out, &results);
    assert!(out.is_empty(), "{out}");
    Ok(())
}
