//! `build`: a whole model folder in flux-rs's ONNX layout from a diffusers folder or BFL files:
//! `clip.opt/`, `t5.opt/`, `transformer.opt/<precision>/`, `vae.opt/`, the tokenizers and the
//! scheduler config copied, and a `flux-rs.json` manifest (variant, text length, VAE factors).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value as Json, json};

use crate::error::{BuilderError, Result};
use crate::graphs::config::{Config, read_config};
use crate::graphs::{clip, t5, transformer, vae};
use crate::onnx::{Elem, WeightsReport};
use crate::options::{BuildOptions, Component, Precision};
use crate::source::{SourceKind, detect};
use crate::weights::Checkpoint;
use crate::{bfl, cache, lora, source_defaults};

/// T5 text length of FLUX.1-dev's pipeline (and of its ONNX export).
pub const DEV_TEXT_LENGTH: usize = 512;
/// T5 text length of FLUX.1-schnell's pipeline.
pub const SCHNELL_TEXT_LENGTH: usize = 256;
/// The folders copied unchanged from the source.
const COPIED: [&str; 3] = ["tokenizer", "tokenizer_2", "scheduler"];

/// What a build wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildReport {
    pub out: PathBuf,
    /// `dev` or `schnell`.
    pub variant: &'static str,
    pub text_length: usize,
    /// Per graph (`clip`, `t5`, `transformer`, `vae`): how its weights were stored.
    pub graphs: Vec<(&'static str, WeightsReport)>,
    /// LoRA tensors merged into the transformer.
    pub lora_layers: usize,
    pub seconds: f64,
}

/// Where a precision's transformer goes (flux-core looks for fp32, bf16, fp16 when no manifest
/// names it; the manifest written here always does).
fn precision_dir(precision: Precision, float: Elem) -> &'static str {
    match (precision, float) {
        (Precision::Int8, _) => "int8",
        (Precision::Int4, _) => "int4",
        (_, Elem::F16) => "fp16",
        (_, Elem::BF16) => "bf16",
        _ => "fp32",
    }
}

/// The transformer and VAE of a source (diffusers-named), each with its config and the path
/// that config errors name.
struct Parts {
    transformer: (Checkpoint, Json, PathBuf),
    vae: (Checkpoint, Json, PathBuf),
}

fn diffusers_parts(source: &Path) -> Result<Parts> {
    let component = |name: &str| -> Result<(Checkpoint, Json, PathBuf)> {
        let dir = source.join(name);
        let (json, path) = read_config(&dir)?;
        Ok((Checkpoint::open_component(&dir)?, json, path))
    };
    Ok(Parts {
        transformer: component("transformer")?,
        vae: component("vae")?,
    })
}

/// A component config: the source's `<folder>/config.json` when there is one (the FLUX.1 repos
/// have both formats side by side), else `fallback` (derived from the weights or FLUX.1's own).
fn config_or(
    source: &Path,
    folder: &str,
    fallback: impl FnOnce() -> Result<Json>,
    file: &Path,
) -> Result<(Json, PathBuf)> {
    let dir = source.join(folder);
    if dir.join("config.json").is_file() {
        read_config(&dir)
    } else {
        Ok((fallback()?, file.to_owned()))
    }
}

fn bfl_parts(source: &Path, transformer: &Path, ae: &Path) -> Result<Parts> {
    let mut t = Checkpoint::open_file(transformer)?;
    bfl::transformer_to_diffusers(&mut t)?;
    let (t_json, t_path) = config_or(
        source,
        "transformer",
        || bfl::transformer_config(&t, None),
        transformer,
    )?;
    let mut v = Checkpoint::open_file(ae)?;
    bfl::vae_to_diffusers(&mut v)?;
    let (v_json, v_path) = config_or(source, "vae", || Ok(bfl::flux1_vae_config()), ae)?;
    Ok(Parts {
        transformer: (t, t_json, t_path),
        vae: (v, v_json, v_path),
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| BuilderError::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| BuilderError::io(from, e))? {
        let entry = entry.map_err(|e| BuilderError::io(from, e))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            // fs::copy follows symlinks (a Hugging Face cache folder is symlinks into blobs/).
            std::fs::copy(&path, &target).map_err(|e| BuilderError::io(&path, e))?;
        }
    }
    Ok(())
}

/// An f32 as the f64 with the same shortest decimal form (0.3611, not 0.3610999882221222), so
/// that the manifest reads like the config it came from and parses back to the same f32.
fn short_f64(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// Writes every graph and file of the layout into `out` (which must exist and be empty).
pub(crate) fn build_into(source: &Path, opts: &BuildOptions, out: &Path) -> Result<BuildReport> {
    let start = Instant::now();
    let kind = detect(source)?;
    let mut parts = match &kind {
        SourceKind::Diffusers => diffusers_parts(source)?,
        SourceKind::BflFiles { transformer, ae } => bfl_parts(source, transformer, ae)?,
        SourceKind::OnnxLayout => {
            return Err(BuilderError::UnknownSource {
                path: source.to_owned(),
                looked_for: "a diffusers folder or BFL files to build; this folder is already in the ONNX layout and loads as it is".into(),
            });
        }
    };
    let (t_json, t_path) = (&parts.transformer.1, parts.transformer.2.clone());
    let dims = transformer::TransformerDims::from_config(&Config::new(t_json, &t_path))?;
    let variant = if dims.guidance { "dev" } else { "schnell" };
    let text_length = opts
        .text_length
        .or(source_defaults::read(source)?.text_length)
        .unwrap_or(if dims.guidance {
            DEV_TEXT_LENGTH
        } else {
            SCHNELL_TEXT_LENGTH
        });
    // Every component's precision first, so that a refusal comes before any work.
    let floats = [
        Component::Clip,
        Component::T5,
        Component::Transformer,
        Component::Vae,
    ]
    .map(|c| opts.precision.resolve(opts.device, c));
    if let Some(Err(e)) = floats.into_iter().find(Result::is_err) {
        return Err(e);
    }
    let transformer_float = opts
        .precision
        .resolve(opts.device, Component::Transformer)?;
    let lora_layers = lora::apply_loras(&mut parts.transformer.0, &opts.loras)?;

    let mut graphs = Vec::new();
    let clip_dir = source.join("text_encoder");
    let (clip_json, _) = read_config(&clip_dir)?;
    let clip_ckpt = Checkpoint::open_component(&clip_dir)?;
    graphs.push((
        "clip",
        clip::build_clip(&clip_ckpt, &clip_json, opts, &out.join("clip.opt"))?,
    ));
    drop(clip_ckpt);
    let t5_dir = source.join("text_encoder_2");
    let (t5_json, _) = read_config(&t5_dir)?;
    let t5_ckpt = Checkpoint::open_component(&t5_dir)?;
    graphs.push((
        "t5",
        t5::build_t5(&t5_ckpt, &t5_json, text_length, opts, &out.join("t5.opt"))?,
    ));
    drop(t5_ckpt);
    let transformer_rel = format!(
        "transformer.opt/{}/model.onnx",
        precision_dir(opts.precision, transformer_float)
    );
    let transformer_dir = out
        .join(&transformer_rel)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let (ckpt, json, path) = &parts.transformer;
    graphs.push((
        "transformer",
        transformer::build_transformer(
            ckpt,
            &Config::new(json, path),
            text_length,
            opts,
            &transformer_dir,
        )?,
    ));
    let (ckpt, json, path) = &parts.vae;
    let vae_config = Config::new(json, path);
    let factors = vae::vae_factors(&vae_config)?;
    graphs.push((
        "vae",
        vae::build_vae(ckpt, &vae_config, opts, &out.join("vae.opt"))?,
    ));

    for folder in COPIED {
        let from = source.join(folder);
        if !from.is_dir() {
            return Err(BuilderError::UnknownSource {
                path: source.to_owned(),
                looked_for: format!("{folder}/ (copied into the built model) is missing"),
            });
        }
        copy_dir(&from, &out.join(folder))?;
    }
    let manifest = json!({
        "variant": variant,
        "text_length": text_length,
        "transformer": transformer_rel,
        "vae_scaling_factor": short_f64(factors.scaling_factor),
        "vae_shift_factor": short_f64(factors.shift_factor),
    });
    let manifest_path = out.join("flux-rs.json");
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    std::fs::write(&manifest_path, text).map_err(|e| BuilderError::io(&manifest_path, e))?;
    Ok(BuildReport {
        out: out.to_owned(),
        variant,
        text_length,
        graphs,
        lora_layers,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Builds the ONNX layout of `source` into `out`, a folder that must not exist yet or be empty.
/// The folder appears complete or not at all (built beside it, then renamed into place).
pub fn build(source: &Path, opts: &BuildOptions, out: &Path) -> Result<BuildReport> {
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map_err(|e| BuilderError::io(out, e))?
            .next()
            .is_none();
        if !empty {
            return Err(BuilderError::io(
                out,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the output folder exists and is not empty",
                ),
            ));
        }
        std::fs::remove_dir(out).map_err(|e| BuilderError::io(out, e))?;
    }
    let tmp = cache::temp_beside(out)?;
    let result = build_into(source, opts, &tmp).and_then(|mut report| {
        cache::publish(&tmp, out)?;
        report.out = out.to_owned();
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
