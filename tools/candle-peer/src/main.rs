//! candle's FLUX transformer step, timed: the benchmark's Rust peer.
//!
//! `flux-candle-peer --weights FILE --config FILE --size WxH --text-tokens N --repeats R` loads
//! BFL-named weights (what `tools/bench/candle_weights.py` writes from a diffusers folder) into
//! `candle_transformers::models::flux::model::Flux` with the config's widths, runs one step
//! (batch 1, random inputs of the pipeline's shapes, f32, CPU) twice to warm up and `R` times
//! measured, and prints one JSON line: `{"step_ms": [...], "threads": N, "candle": "0.11"}`.
//! Threads: candle's CPU kernels use `RAYON_NUM_THREADS` (the benchmark sets it).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::WithForward;
use candle_transformers::models::flux::model::{Config, Flux};

const WARMUP_RUNS: usize = 2;

struct Args {
    weights: PathBuf,
    config: PathBuf,
    width: usize,
    height: usize,
    text_tokens: usize,
    repeats: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut weights, mut config, mut size, mut text_tokens, mut repeats) =
        (None, None, None, None, 3usize);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--weights" => weights = Some(PathBuf::from(value()?)),
            "--config" => config = Some(PathBuf::from(value()?)),
            "--size" => size = Some(value()?),
            "--text-tokens" => text_tokens = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--repeats" => repeats = value()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let size = size.ok_or("--size WxH is required")?;
    let (width, height) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .ok_or(format!("--size {size}: expected WIDTHxHEIGHT"))?;
    Ok(Args {
        weights: weights.ok_or("--weights is required")?,
        config: config.ok_or("--config is required")?,
        width,
        height,
        text_tokens: text_tokens.ok_or("--text-tokens is required")?,
        repeats,
    })
}

/// candle's config from the JSON `candle_weights.py` writes (BFL's field names).
fn config(path: &PathBuf) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}"))?;
    let int = |key: &str| {
        json[key]
            .as_u64()
            .map(|v| v as usize)
            .ok_or(format!("config: {key} missing"))
    };
    Ok(Config {
        in_channels: int("in_channels")?,
        vec_in_dim: int("vec_in_dim")?,
        context_in_dim: int("context_in_dim")?,
        hidden_size: int("hidden_size")?,
        mlp_ratio: json["mlp_ratio"]
            .as_f64()
            .ok_or("config: mlp_ratio missing")?,
        num_heads: int("num_heads")?,
        depth: int("depth")?,
        depth_single_blocks: int("depth_single_blocks")?,
        axes_dim: json["axes_dim"]
            .as_array()
            .ok_or("config: axes_dim missing")?
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as usize))
            .collect(),
        theta: int("theta")?,
        qkv_bias: json["qkv_bias"].as_bool().unwrap_or(true),
        guidance_embed: json["guidance_embed"].as_bool().unwrap_or(false),
    })
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let cfg = config(&args.config)?;
    let device = Device::Cpu;
    // SAFETY (of the mapping): the weights file is not modified while the peer runs.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&args.weights], DType::F32, &device)? };
    let model = Flux::new(&cfg, vb)?;
    let (h2, w2) = (args.height / 16, args.width / 16);
    let image_tokens = h2 * w2;
    let img = Tensor::randn(0f32, 1.0, (1, image_tokens, cfg.in_channels), &device)?;
    let mut ids = Vec::with_capacity(image_tokens * 3);
    for y in 0..h2 {
        for x in 0..w2 {
            ids.extend([0f32, y as f32, x as f32]);
        }
    }
    let img_ids = Tensor::from_vec(ids, (1, image_tokens, 3), &device)?;
    let txt = Tensor::randn(
        0f32,
        1.0,
        (1, args.text_tokens, cfg.context_in_dim),
        &device,
    )?;
    let txt_ids = Tensor::zeros((1, args.text_tokens, 3), DType::F32, &device)?;
    let y = Tensor::randn(0f32, 1.0, (1, cfg.vec_in_dim), &device)?;
    let t = Tensor::new(&[0.5f32], &device)?;
    let guidance = Tensor::new(&[3.5f32], &device)?;
    let guidance = cfg.guidance_embed.then_some(&guidance);
    let mut step_ms = Vec::new();
    for run in 0..WARMUP_RUNS + args.repeats {
        let started = Instant::now();
        let out = model.forward(&img, &img_ids, &txt, &txt_ids, &t, &y, guidance)?;
        // Make sure the whole step ran (candle's CPU ops are eager, but read one value anyway).
        let _ = out.flatten_all()?.get(0)?.to_scalar::<f32>()?;
        if run >= WARMUP_RUNS {
            step_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({"step_ms": step_ms, "threads": threads, "candle": "0.11.1",
            "image_tokens": image_tokens, "text_tokens": args.text_tokens})
    );
    Ok(())
}

fn main() {
    if let Err(error) = run() {
        eprintln!("flux-candle-peer: {error}");
        std::process::exit(1);
    }
}
