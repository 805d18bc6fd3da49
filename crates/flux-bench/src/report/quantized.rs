//! The report's "8- and 4-bit weights" section: int8 and int4 builds against fp32 (size, memory,
//! step time, image quality), and what FLUX.1-dev needs at int4, projected from the measured bytes.

use std::fmt::Write as _;

use super::{BenchResults, met, mib};
use crate::quantized::{QuantizedEntry, QuantizedRun};
use crate::stats::median;

/// FLUX.1-dev's parameter counts (diffusers' `FluxTransformer2DModel`, T5 v1.1 XXL's encoder,
/// CLIP ViT-L/14's text model, the VAE's decoder), from the published checkpoints' tensors.
const FLUX_DEV_TRANSFORMER: f64 = 11.90e9;
const T5_XXL_ENCODER: f64 = 4.762e9;
/// T5's token embedding table (32,128 × 4,096): a Gather, stored as f32 under int4 too.
const T5_XXL_EMBEDDING: f64 = 32_128.0 * 4_096.0;
const CLIP_L_TEXT: f64 = 0.123e9;
const VAE_DECODER: f64 = 0.050e9;
/// Bytes of memory the int4 target allows (a 16 GB machine).
const TARGET_INT4_BYTES: f64 = 16e9;

fn run<'a>(entry: &'a QuantizedEntry, precision: &str) -> Option<&'a QuantizedRun> {
    entry.runs.iter().find(|r| r.precision == precision)
}

fn step_ms(run: &QuantizedRun) -> f64 {
    median(&run.step_seconds).unwrap_or(f64::NAN) * 1e3
}

/// What FLUX.1-dev with its encoders needs at int4, from the medium (else the largest) model's
/// int4 build: the weights at its measured bytes per parameter, and resident after load = those
/// weights + the runtime's fixed part (RSS after load minus the bytes of all four graphs).
struct Projection<'a> {
    entry: &'a QuantizedEntry,
    /// Measured int4 bytes per transformer parameter.
    per_param: f64,
    weights: f64,
    resident: f64,
    fixed: f64,
    /// RSS after load gained per weight byte from the int4 to the fp32 build (1 = no copies).
    growth: Option<f64>,
}

fn loaded(run: &QuantizedRun) -> f64 {
    (run.transformer_bytes + run.t5_bytes + run.other_bytes) as f64
}

fn int4_projection(results: &BenchResults) -> Option<Projection<'_>> {
    let entry = results
        .quantized
        .iter()
        .find(|e| e.model == "medium")
        .or_else(|| results.quantized.last())?;
    let (full, int4) = (run(entry, "fp32")?, run(entry, "int4")?);
    // Bytes per transformer parameter at int4, measured (fp32 stores 4 bytes per parameter).
    let per_param = int4.transformer_bytes as f64 / (full.transformer_bytes as f64 / 4.0);
    let weights = FLUX_DEV_TRANSFORMER * per_param
        + (T5_XXL_ENCODER - T5_XXL_EMBEDDING) * per_param
        + T5_XXL_EMBEDDING * 4.0
        + (CLIP_L_TEXT + VAE_DECODER) * 4.0;
    let fixed = (int4.rss_after_load_bytes as f64 - loaded(int4)).max(0.0);
    let growth = (loaded(full) > loaded(int4)).then(|| {
        (full.rss_after_load_bytes as f64 - int4.rss_after_load_bytes as f64)
            / (loaded(full) - loaded(int4))
    });
    Some(Projection {
        entry,
        per_param,
        weights,
        resident: weights + fixed,
        fixed,
        growth,
    })
}

fn mib_1(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1048576.0)
}

pub(super) fn quantized_targets(out: &mut String, results: &BenchResults) {
    let Some(p) = int4_projection(results) else {
        return;
    };
    let _ = writeln!(
        out,
        "| FLUX.1-dev at int4 with its encoders fits a 16 GB machine (projected from the {} model's int4 build) | \
         weights {:.1} GB, resident after load {:.1} GB | {} |",
        p.entry.model,
        p.weights / 1e9,
        p.resident / 1e9,
        met(p.resident < TARGET_INT4_BYTES)
    );
}

pub(super) fn quantized_section(out: &mut String, results: &BenchResults) {
    if results.quantized.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## 8- and 4-bit weights\n\n\
         `--precision int4` builds the transformer's and T5's linear layers as ONNX Runtime's \
         `MatMulNBits` over weights quantized in blocks of 32 along the input axis (a scale and a zero \
         point per block, `accuracy_level` 4: activations quantized to int8 per block, integer dot \
         products). `--precision int8` builds the transformer's as `DynamicQuantizeMatMul`: int8 weights \
         with one symmetric scale per output channel, activations quantized to uint8 per tensor at run \
         time, integer GEMMs (MLAS QGEMM, AVX-512 VNNI/AMX); T5's as 8-bit `MatMulNBits` blocks (its \
         activations have outliers one scale per tensor would flatten). CLIP and the VAE stay fp32. Each precision is built by flux-builder from the same \
         diffusers folder and runs in its own process over the same prompt × seed cases after one \
         warm-up; weights = bytes of the graph's initializers (what ONNX Runtime loads); step = median \
         denoising seconds per step over the cases; quality = each case's 8-bit image against fp32's \
         (PSNR, and the largest pixel difference over all cases).\n\n\
         | model | size, steps, cases | precision | transformer weights MiB | T5 weights MiB | load s | RSS after load MiB | peak RSS MiB | step ms | vs fp32 | PSNR mean / min dB | max diff |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for entry in &results.quantized {
        let reference = run(entry, "fp32").map(step_ms);
        for r in &entry.runs {
            let quality = entry.quality.iter().find(|q| q.precision == r.precision);
            let (psnr, max) = match quality {
                Some(q) => {
                    let mean = q.psnr_db.iter().sum::<f64>() / q.psnr_db.len().max(1) as f64;
                    let min = q.psnr_db.iter().copied().fold(f64::INFINITY, f64::min);
                    (format!("{mean:.1} / {min:.1}"), q.max_diff.to_string())
                }
                None => ("reference".to_owned(), "—".to_owned()),
            };
            let speed = reference.map_or("—".to_owned(), |full| {
                format!("{:.2}×", full / step_ms(r))
            });
            let _ = writeln!(
                out,
                "| {} | {}×{}, {}, {} | {} | {} | {} | {:.2} | {} | {} | {:.1} | {} | {} | {} |",
                entry.model,
                entry.width,
                entry.height,
                entry.steps,
                entry.cases,
                r.precision,
                mib_1(r.transformer_bytes),
                mib_1(r.t5_bytes),
                r.load_seconds,
                mib(r.rss_after_load_bytes),
                mib(r.peak_rss_bytes),
                step_ms(r),
                speed,
                psnr,
                max
            );
        }
    }
    let _ = writeln!(out);
    if let Some(p) = int4_projection(results) {
        let growth = p.growth.map_or_else(String::new, |g| {
            format!(
                " Between its int4 and fp32 builds, the resident memory after load grew {g:.2} bytes per byte of \
                 weights (1 would mean the weights are held once, as loaded)."
            )
        });
        let _ = writeln!(
            out,
            "FLUX.1-dev at int4, projected from the {} model's builds (the same layer types; block-wise \
             quantization costs the same bytes per weight at any width): its int4 transformer graph holds \
             {:.3} bytes per parameter (4 bits of code, and per 32 weights a 32-bit scale and a 4-bit zero \
             point: 0.64 bytes per linear weight, plus its few f32 norms and biases), so FLUX.1-dev's {:.1} \
             B-parameter transformer needs {:.1} GB and T5-XXL's encoder {:.1} GB ({:.2} B parameters at that \
             rate, its {:.0} M-entry embedding table in f32), CLIP-L and the VAE decoder {:.1} GB in fp32: {:.1} \
             GB of weights. Resident after load = those weights + the runtime's fixed part measured here (RSS \
             after load minus the bytes of the four graphs: {:.2} GB): {:.1} GB before the activations of a \
             request (target: a 16 GB machine).{growth}\n",
            p.entry.model,
            p.per_param,
            FLUX_DEV_TRANSFORMER / 1e9,
            FLUX_DEV_TRANSFORMER * p.per_param / 1e9,
            ((T5_XXL_ENCODER - T5_XXL_EMBEDDING) * p.per_param + T5_XXL_EMBEDDING * 4.0) / 1e9,
            (T5_XXL_ENCODER - T5_XXL_EMBEDDING) / 1e9,
            T5_XXL_EMBEDDING / 1e6,
            (CLIP_L_TEXT + VAE_DECODER) * 4.0 / 1e9,
            p.weights / 1e9,
            p.fixed / 1e9,
            p.resident / 1e9,
        );
    }
}
