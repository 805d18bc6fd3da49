//! LoRA merge at build time: `W' = W + scale · (alpha / rank) · up · down` for every Linear a LoRA
//! file adapts, into a diffusers-named FLUX transformer checkpoint.
//!
//! Two naming schemes are read:
//! - diffusers/PEFT: `transformer.<module>.lora_A.weight` (down, `[r, in]`) and `.lora_B.weight`
//!   (up, `[out, r]`), an optional `<module>.alpha` (else alpha = rank, i.e. a factor 1);
//! - kohya (sd-scripts): `lora_unet_<bfl_module>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
//!   with BFL module names (`double_blocks_0_img_attn_qkv`...); a fused module's up matrix is split
//!   by rows onto the diffusers modules (q, k, v (, mlp)), its down matrix shared, as diffusers'
//!   own kohya conversion does. A missing `.alpha` means alpha = rank (diffusers' default too);
//! - PEFT suffixes on BFL module names (`diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`,
//!   as ComfyUI and ai-toolkit write them): mapped like the kohya names.
//!
//! A tensor that fits nothing in the model (another model's LoRA, a text-encoder LoRA, a shape that
//! differs) is an error naming the LoRA file and the tensor: a LoRA is never half applied.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{BuilderError, Result};
use crate::options::LoraSpec;
use crate::weights::Checkpoint;

/// One low-rank update of one module.
struct Update {
    /// The LoRA tensor names (for errors).
    down_name: String,
    down: Vec<f32>,
    down_shape: Vec<usize>,
    up: Vec<f32>,
    up_shape: Vec<usize>,
    alpha: Option<f32>,
    /// The diffusers modules the up rows go to, in order (each takes its own row count).
    targets: Vec<String>,
}

fn lora_error(path: &Path, tensor: &str, message: impl Into<String>) -> BuilderError {
    BuilderError::Lora {
        path: path.to_owned(),
        tensor: tensor.to_owned(),
        message: message.into(),
    }
}

/// First components of BFL module names (no diffusers module starts with these).
const BFL_ROOTS: [&str; 8] = [
    "double_blocks.",
    "single_blocks.",
    "img_in",
    "txt_in",
    "final_layer.",
    "time_in.",
    "vector_in.",
    "guidance_in.",
];

/// The diffusers modules of one kohya (BFL-named) module.
fn kohya_targets(module: &str) -> Option<Vec<String>> {
    let double = |rest: &str, i: &str| -> Option<Vec<String>> {
        let d = format!("transformer_blocks.{i}.");
        let one = |m: &str| Some(vec![format!("{d}{m}")]);
        match rest {
            "img_attn_qkv" => Some(
                ["to_q", "to_k", "to_v"]
                    .iter()
                    .map(|m| format!("{d}attn.{m}"))
                    .collect(),
            ),
            "txt_attn_qkv" => Some(
                ["add_q_proj", "add_k_proj", "add_v_proj"]
                    .iter()
                    .map(|m| format!("{d}attn.{m}"))
                    .collect(),
            ),
            "img_attn_proj" => one("attn.to_out.0"),
            "txt_attn_proj" => one("attn.to_add_out"),
            "img_mlp_0" => one("ff.net.0.proj"),
            "img_mlp_2" => one("ff.net.2"),
            "txt_mlp_0" => one("ff_context.net.0.proj"),
            "txt_mlp_2" => one("ff_context.net.2"),
            "img_mod_lin" => one("norm1.linear"),
            "txt_mod_lin" => one("norm1_context.linear"),
            _ => None,
        }
    };
    let single = |rest: &str, i: &str| -> Option<Vec<String>> {
        let d = format!("single_transformer_blocks.{i}.");
        match rest {
            "linear1" => Some(
                ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
                    .iter()
                    .map(|m| format!("{d}{m}"))
                    .collect(),
            ),
            "linear2" => Some(vec![format!("{d}proj_out")]),
            "modulation_lin" => Some(vec![format!("{d}norm.linear")]),
            _ => None,
        }
    };
    let block = |rest: &str| -> Option<(String, String)> {
        let (i, tail) = rest.split_once('_')?;
        i.parse::<usize>().ok()?;
        Some((i.to_owned(), tail.to_owned()))
    };
    if let Some(rest) = module.strip_prefix("double_blocks_") {
        let (i, tail) = block(rest)?;
        return double(&tail, &i);
    }
    if let Some(rest) = module.strip_prefix("single_blocks_") {
        let (i, tail) = block(rest)?;
        return single(&tail, &i);
    }
    let simple = match module {
        "img_in" => "x_embedder",
        "txt_in" => "context_embedder",
        "final_layer_linear" => "proj_out",
        "time_in_in_layer" => "time_text_embed.timestep_embedder.linear_1",
        "time_in_out_layer" => "time_text_embed.timestep_embedder.linear_2",
        "vector_in_in_layer" => "time_text_embed.text_embedder.linear_1",
        "vector_in_out_layer" => "time_text_embed.text_embedder.linear_2",
        "guidance_in_in_layer" => "time_text_embed.guidance_embedder.linear_1",
        "guidance_in_out_layer" => "time_text_embed.guidance_embedder.linear_2",
        _ => return None,
    };
    Some(vec![simple.to_owned()])
}

/// Reads the updates of one LoRA file, in either naming scheme.
fn read_updates(path: &Path) -> Result<Vec<Update>> {
    let lora = Checkpoint::open_file(path)?;
    // module key -> (down, up, alpha) tensor names
    let mut modules: BTreeMap<String, [Option<String>; 3]> = BTreeMap::new();
    let mut kohya = None;
    for name in lora.names() {
        let (module, slot, is_kohya) = if let Some(m) = name.strip_suffix(".lora_A.weight") {
            (m, 0, false)
        } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
            (m, 1, false)
        } else if let Some(m) = name.strip_suffix(".lora_down.weight") {
            (m, 0, true)
        } else if let Some(m) = name.strip_suffix(".lora_up.weight") {
            (m, 1, true)
        } else if let Some(m) = name.strip_suffix(".alpha") {
            (m, 2, m.starts_with("lora_"))
        } else {
            return Err(lora_error(
                path,
                name,
                "not a LoRA tensor (lora_A/lora_B, lora_down/lora_up or alpha)",
            ));
        };
        if slot < 2 && *kohya.get_or_insert(is_kohya) != is_kohya {
            return Err(lora_error(
                path,
                name,
                "mixes diffusers/PEFT and kohya names",
            ));
        }
        modules.entry(module.to_owned()).or_default()[slot] = Some(name.to_owned());
    }
    if modules.is_empty() {
        return Err(lora_error(path, "", "holds no LoRA tensors"));
    }
    let mut updates = Vec::new();
    for (module, [down, up, alpha]) in modules {
        let (Some(down_name), Some(up_name)) = (down, up) else {
            return Err(lora_error(
                path,
                &module,
                "has no down/up (lora_A/lora_B) pair",
            ));
        };
        let targets = if kohya == Some(true) {
            let bfl = module.strip_prefix("lora_unet_").ok_or_else(|| {
                lora_error(
                    path,
                    &down_name,
                    "adapts a text encoder; the builder merges transformer LoRAs only",
                )
            })?;
            kohya_targets(bfl)
                .ok_or_else(|| lora_error(path, &down_name, "names no FLUX transformer module"))?
        } else {
            let stripped = ["transformer.", "diffusion_model.", "base_model.model."]
                .iter()
                .find_map(|p| module.strip_prefix(p))
                .unwrap_or(&module);
            if stripped.starts_with("text_encoder") {
                return Err(lora_error(
                    path,
                    &down_name,
                    "adapts a text encoder; the builder merges transformer LoRAs only",
                ));
            }
            if BFL_ROOTS.iter().any(|r| stripped.starts_with(r)) {
                // PEFT suffixes on BFL module names (ComfyUI / ai-toolkit exports): the kohya
                // mapping, which spells the same modules with underscores.
                kohya_targets(&stripped.replace('.', "_")).ok_or_else(|| {
                    lora_error(path, &down_name, "names no FLUX transformer module")
                })?
            } else {
                vec![stripped.to_owned()]
            }
        };
        let alpha = match alpha {
            Some(name) => {
                let value = lora.read_f32(&name)?;
                match value.as_slice() {
                    [a] if a.is_finite() => Some(*a),
                    _ => {
                        return Err(lora_error(
                            path,
                            &name,
                            format!(
                                "alpha must be one finite number, got {} values",
                                value.len()
                            ),
                        ));
                    }
                }
            }
            None => None,
        };
        updates.push(Update {
            down: lora.read_f32(&down_name)?,
            down_shape: lora.shape(&down_name)?,
            up: lora.read_f32(&up_name)?,
            up_shape: lora.shape(&up_name)?,
            down_name,
            alpha,
            targets,
        });
    }
    Ok(updates)
}

/// Merges every LoRA of `loras` into the diffusers-named transformer checkpoint `ckpt` (the merged
/// weights are held in memory as f32). Every LoRA is checked against the model before anything is
/// merged, so a refused LoRA leaves `ckpt` as it was. Returns the number of weights changed.
pub fn apply_loras(ckpt: &mut Checkpoint, loras: &[LoraSpec]) -> Result<usize> {
    let mut plans = Vec::new();
    for spec in loras {
        for update in read_updates(&spec.path)? {
            let weights = plan(ckpt, spec, &update)?;
            plans.push((spec, update, weights));
        }
    }
    let mut changed = 0;
    for (spec, update, weights) in plans {
        changed += merge(ckpt, spec, &update, weights)?;
    }
    Ok(changed)
}

/// The target weights (name, shape) of one update, checked against the model.
fn plan(ckpt: &Checkpoint, spec: &LoraSpec, u: &Update) -> Result<Vec<(String, Vec<usize>)>> {
    let path = spec.path.as_path();
    let (rank, inputs) = match u.down_shape.as_slice() {
        [r, i] => (*r, *i),
        other => {
            return Err(lora_error(
                path,
                &u.down_name,
                format!("down matrix must be 2-D, got {other:?}"),
            ));
        }
    };
    let up_rows = match u.up_shape.as_slice() {
        [o, r] if *r == rank => *o,
        other => {
            return Err(lora_error(
                path,
                &u.down_name,
                format!("up matrix {other:?} does not match rank {rank}"),
            ));
        }
    };
    // The target weights, whose row counts split the up matrix.
    let mut weights = Vec::with_capacity(u.targets.len());
    for target in &u.targets {
        let name = format!("{target}.weight");
        if !ckpt.contains(&name) {
            return Err(lora_error(
                path,
                &u.down_name,
                format!("targets {name}, which the model does not have"),
            ));
        }
        let shape = ckpt.shape(&name)?;
        if shape.len() != 2 || shape[1] != inputs {
            return Err(lora_error(
                path,
                &u.down_name,
                format!("has {inputs} inputs, the model's {name} has shape {shape:?}"),
            ));
        }
        weights.push((name, shape));
    }
    let total: usize = weights.iter().map(|w| w.1[0]).sum();
    if total != up_rows {
        return Err(lora_error(
            path,
            &u.down_name,
            format!(
                "up matrix has {up_rows} rows, the model's {} have {total}",
                u.targets.join(" + ")
            ),
        ));
    }
    Ok(weights)
}

fn merge(
    ckpt: &mut Checkpoint,
    spec: &LoraSpec,
    u: &Update,
    weights: Vec<(String, Vec<usize>)>,
) -> Result<usize> {
    let rank = u.down_shape[0];
    let factor = spec.scale * u.alpha.map_or(1.0, |a| a / rank as f32);
    let mut row0 = 0;
    for (name, shape) in weights {
        let mut w = ckpt.read_f32(&name)?;
        let (rows, cols) = (shape[0], shape[1]);
        for r in 0..rows {
            let up = &u.up[(row0 + r) * rank..(row0 + r + 1) * rank];
            let out = &mut w[r * cols..(r + 1) * cols];
            for (k, &coef) in up.iter().enumerate() {
                let coef = coef * factor;
                let down = &u.down[k * cols..(k + 1) * cols];
                for (o, &d) in out.iter_mut().zip(down) {
                    *o += coef * d;
                }
            }
        }
        ckpt.insert_owned(&name, shape, w);
        row0 += rows;
    }
    Ok(u.targets.len())
}
