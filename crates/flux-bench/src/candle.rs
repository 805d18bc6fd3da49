//! The Rust peer: candle's FLUX transformer (`candle-transformers`) on the same weights, in BFL
//! names, one step timed at each pipeline size with the same thread count. `tools/candle-peer` is
//! a crate outside the workspace (its own lock file), built here on first use into
//! `target/candle-peer`, so that the workspace's tests never compile candle;
//! `tools/bench/candle_weights.py` writes the weights from the model's diffusers folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::python::PythonEnv;

/// candle's step at one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandleStep {
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub image_tokens: u32,
    pub text_tokens: u32,
    pub threads: usize,
    /// Measured steps (after two warm-up runs), milliseconds.
    pub step_ms: Vec<f64>,
    /// The candle-transformers release.
    pub candle: String,
}

#[derive(Deserialize)]
struct PeerLine {
    step_ms: Vec<f64>,
    candle: String,
    image_tokens: u32,
    text_tokens: u32,
}

/// Builds the peer (release) and returns its executable.
fn build_peer(root: &Path) -> Result<PathBuf> {
    let manifest = root.join("tools").join("candle-peer").join("Cargo.toml");
    let target = root.join("target").join("candle-peer");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "bench: building the candle peer (tools/candle-peer, release; minutes the first time)"
    );
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "--locked",
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .context("running cargo build for tools/candle-peer")?;
    if !status.success() {
        bail!("building tools/candle-peer failed ({status})");
    }
    Ok(target.join("release").join("flux-candle-peer"))
}

/// Every size of one model: weights converted once, the peer built once, one process per size.
#[allow(clippy::too_many_arguments)]
pub fn run_all(
    python: &PythonEnv,
    root: &Path,
    model: &str,
    diffusers: &Path,
    text_tokens: usize,
    sizes: &[[u32; 2]],
    threads: usize,
    repeats: usize,
) -> Result<Vec<CandleStep>> {
    let weights = root.join(".cache").join("bench").join("candle").join(model);
    python.run_script(
        "candle_weights.py",
        &[
            "--diffusers".to_owned(),
            diffusers.to_string_lossy().into_owned(),
            "--out".to_owned(),
            weights.to_string_lossy().into_owned(),
        ],
    )?;
    let peer = build_peer(root)?;
    let mut steps = Vec::new();
    for &[width, height] in sizes {
        eprintln!("bench: {model} {width}x{height}: candle's transformer step");
        let output = Command::new(&peer)
            .arg("--weights")
            .arg(weights.join("flux1.safetensors"))
            .arg("--config")
            .arg(weights.join("config.json"))
            .args(["--size", &format!("{width}x{height}")])
            .args(["--text-tokens", &text_tokens.to_string()])
            .args(["--repeats", &repeats.to_string()])
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()
            .context("running the candle peer")?;
        if !output.status.success() {
            bail!(
                "the candle peer failed at {width}x{height} ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .context("the candle peer printed no result")?;
        let parsed: PeerLine = serde_json::from_str(line)?;
        steps.push(CandleStep {
            model: model.to_owned(),
            width,
            height,
            image_tokens: parsed.image_tokens,
            text_tokens: parsed.text_tokens,
            threads,
            step_ms: parsed.step_ms,
            candle: parsed.candle,
        });
    }
    Ok(steps)
}
