//! A reference case replayed through built transformer and VAE graphs the way flux-core runs them
//! (Euler steps over the stored sigmas from the stored noise and text embeddings), compared with
//! diffusers' final latents and PNG pixels.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use ndarray::{ArrayD, IxDyn};
use ort::session::Session;

use crate::common::{Feed, run};
use crate::text_support::{max_abs_diff, read_f32, read_npy};

/// What a replay reproduced, as the largest differences from the reference.
pub struct Replay {
    pub final_latents: f32,
    pub pixels: u8,
    /// The replay's own final latents.
    pub latents: Vec<f32>,
}

fn pack(noise: &[f32], b: usize, h: usize, w: usize) -> Vec<f32> {
    let (h2, w2) = (h / 2, w / 2);
    let mut out = vec![0.0; noise.len()];
    for bi in 0..b {
        for c in 0..16 {
            for y in 0..h {
                for x in 0..w {
                    let token = (y / 2) * w2 + x / 2;
                    let ch = c * 4 + (y % 2) * 2 + x % 2;
                    out[(bi * h2 * w2 + token) * 64 + ch] = noise[((bi * 16 + c) * h + y) * w + x];
                }
            }
        }
    }
    out
}

fn unpack(packed: &[f32], b: usize, h: usize, w: usize) -> Vec<f32> {
    let (h2, w2) = (h / 2, w / 2);
    let mut out = vec![0.0; packed.len()];
    for bi in 0..b {
        for c in 0..16 {
            for y in 0..h {
                for x in 0..w {
                    let token = (y / 2) * w2 + x / 2;
                    let ch = c * 4 + (y % 2) * 2 + x % 2;
                    out[((bi * 16 + c) * h + y) * w + x] = packed[(bi * h2 * w2 + token) * 64 + ch];
                }
            }
        }
    }
    out
}

fn array(shape: &[usize], data: Vec<f32>) -> Result<ArrayD<f32>> {
    Ok(ArrayD::from_shape_vec(IxDyn(shape), data)?)
}

/// Replays `case_dir` (one prompt, `num_images` images) through the given sessions.
pub fn replay(
    case_dir: &Path,
    transformer: &mut Session,
    vae: &mut Session,
    dev: bool,
) -> Result<Replay> {
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case_dir.join("case.json"))?)?;
    let n = case["num_images"].as_u64().context("num_images")? as usize;
    let (h, w) = (
        case["height"].as_u64().context("height")? as usize / 8,
        case["width"].as_u64().context("width")? as usize / 8,
    );
    let guidance = case["guidance_scale"].as_f64().context("guidance_scale")? as f32;
    let pooled = read_f32(&case_dir.join("pooled.npy"))?;
    let (embed_shape, _) = read_npy(&case_dir.join("text_embeddings.npy"))?;
    let embeds = read_f32(&case_dir.join("text_embeddings.npy"))?;
    let sigmas = read_f32(&case_dir.join("sigmas.npy"))?;
    let (text, width) = (embed_shape[1], embed_shape[2]);
    let repeat = |v: &[f32]| {
        v.iter()
            .copied()
            .cycle()
            .take(v.len() * n)
            .collect::<Vec<f32>>()
    };
    let s = (h / 2) * (w / 2);
    let mut ids = Vec::with_capacity(s * 3);
    for y in 0..h / 2 {
        for x in 0..w / 2 {
            ids.extend([0.0, y as f32, x as f32]);
        }
    }
    let fixed = [
        (
            "encoder_hidden_states",
            Feed::F32(array(&[n, text, width], repeat(&embeds))?),
        ),
        (
            "pooled_projections",
            Feed::F32(array(&[n, pooled.len()], repeat(&pooled))?),
        ),
        ("img_ids", Feed::F32(array(&[s, 3], ids)?)),
        (
            "txt_ids",
            Feed::F32(array(&[text, 3], vec![0.0; text * 3])?),
        ),
        ("guidance", Feed::F32(array(&[n], vec![guidance; n])?)),
    ];
    let mut latents = pack(&read_f32(&case_dir.join("noise.npy"))?, n, h, w);
    for i in 0..sigmas.len() - 1 {
        let hidden = Feed::F32(array(&[n, s, 64], latents.clone())?);
        let timestep = Feed::F32(array(&[n], vec![sigmas[i]; n])?);
        let mut feeds: Vec<(&str, &Feed)> =
            vec![("hidden_states", &hidden), ("timestep", &timestep)];
        feeds.extend(
            fixed
                .iter()
                .filter(|(name, _)| dev || *name != "guidance")
                .map(|(k, v)| (*k, v)),
        );
        let velocity = run(transformer, &feeds)?.remove(0);
        let dt = sigmas[i + 1] - sigmas[i];
        for (l, v) in latents.iter_mut().zip(velocity.iter()) {
            *l += dt * v;
        }
    }
    let final_latents = max_abs_diff(&latents, &read_f32(&case_dir.join("final_latents.npy"))?)?;
    let z: Vec<f32> = unpack(&latents, n, h, w)
        .iter()
        .map(|v| v / 0.3611 + 0.1159)
        .collect();
    let images = run(vae, &[("latent", &Feed::F32(array(&[n, 16, h, w], z)?))])?.remove(0);
    let (height, width) = (h * 8, w * 8);
    ensure!(
        images.shape() == [n, 3, height, width],
        "VAE gave {:?}",
        images.shape()
    );
    let mut pixels = 0u8;
    for i in 0..n {
        let png = image::open(case_dir.join(format!("image_{i}.png")))?.to_rgb8();
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    let v = images[[i, c, y, x]];
                    let ours = ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
                    pixels = pixels.max(ours.abs_diff(png.get_pixel(x as u32, y as u32)[c]));
                }
            }
        }
    }
    Ok(Replay {
        final_latents,
        pixels,
        latents,
    })
}
