//! BFL single files (`flux1-dev.safetensors` / `flux1-schnell.safetensors`, `ae.safetensors`) as
//! diffusers-named checkpoints, so that the transformer and VAE graphs read them unchanged.
//!
//! The mapping is the inverse of what diffusers' `convert_flux_transformer_checkpoint_to_diffusers`
//! and `convert_ldm_vae_checkpoint` undo (tools/tiny-flux/README.md lists it). Fused tensors
//! (`qkv`, the single blocks' `linear1`) become row-range views into the file: nothing is copied,
//! the graph's initializers point into the BFL file itself. Two things are not views: the final
//! modulation, whose two halves BFL stores in the other order (shift, scale), is reordered into
//! memory (one `[2D, D]` matrix), and the VAE's 1x1-convolution attention weights keep their bytes
//! but are seen as `[C, C]` matrices.

use std::collections::BTreeSet;

use serde_json::{Value as Json, json};

use crate::error::{BuilderError, Result};
use crate::weights::{Checkpoint, TensorInfo};

/// What a BFL-named safetensors file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BflKind {
    /// `flux1-dev.safetensors` / `flux1-schnell.safetensors`.
    Transformer,
    /// `ae.safetensors`.
    Autoencoder,
}

/// Prefixes some single-file exports put before every name (ComfyUI, the original LDM code).
const TRANSFORMER_PREFIXES: [&str; 2] = ["model.diffusion_model.", ""];
const VAE_PREFIXES: [&str; 3] = ["first_stage_model.", "vae.", ""];

/// Tells a BFL transformer or autoencoder by its tensor names (`None`: neither).
pub fn bfl_kind(ckpt: &Checkpoint) -> Option<BflKind> {
    let has = |prefixes: &[&str], name: &str| {
        prefixes
            .iter()
            .any(|p| ckpt.contains(&format!("{p}{name}")))
    };
    if has(&TRANSFORMER_PREFIXES, "double_blocks.0.img_attn.qkv.weight") {
        Some(BflKind::Transformer)
    } else if has(&VAE_PREFIXES, "decoder.mid.attn_1.q.weight") {
        Some(BflKind::Autoencoder)
    } else {
        None
    }
}

fn strip_prefix(ckpt: &mut Checkpoint, prefixes: &[&str]) -> Result<()> {
    let Some(prefix) = prefixes
        .iter()
        .find(|p| !p.is_empty() && ckpt.names().any(|n| n.starts_with(*p)))
    else {
        return Ok(());
    };
    let names: Vec<String> = ckpt
        .names()
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    for name in names {
        ckpt.rename(&name, &name[prefix.len()..])?;
    }
    Ok(())
}

/// The number of blocks `prefix.N.` for N = 0..max (a gap is reported later as a missing tensor).
fn block_count(ckpt: &Checkpoint, prefix: &str) -> usize {
    ckpt.names()
        .filter_map(|n| {
            n.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |n| n + 1)
}

/// Splits the rows of a fused tensor into `parts` (name, rows), as views where it lies in a file.
fn split_rows(ckpt: &mut Checkpoint, fused: &str, parts: &[(String, usize)]) -> Result<()> {
    let info = ckpt.info(fused)?;
    let rows: usize = parts.iter().map(|p| p.1).sum();
    if info.shape.first() != Some(&rows) || info.shape.len() > 2 {
        return Err(BuilderError::BadTensor {
            path: info.file.clone(),
            tensor: fused.to_owned(),
            message: format!(
                "shape {:?} cannot be split into rows {:?}",
                info.shape,
                parts.iter().map(|p| p.1).collect::<Vec<_>>()
            ),
        });
    }
    let cols: usize = info.shape[1..].iter().product();
    let mut start = 0;
    let owned = ckpt.owned(fused);
    for (name, n) in parts {
        let mut shape = info.shape.clone();
        shape[0] = *n;
        match &owned {
            Some(data) => {
                ckpt.insert_owned(name, shape, data[start * cols..(start + n) * cols].to_vec())
            }
            None => {
                let row_bytes = (cols * info.dtype.size()) as u64;
                ckpt.insert_view(
                    name,
                    TensorInfo {
                        name: name.clone(),
                        dtype: info.dtype,
                        shape,
                        file: info.file.clone(),
                        offset: info.offset + start as u64 * row_bytes,
                        len: *n as u64 * row_bytes,
                    },
                );
            }
        }
        start += n;
    }
    ckpt.remove(fused);
    Ok(())
}

/// Converts a BFL transformer checkpoint in place to diffusers `FluxTransformer2DModel` names.
/// Every BFL tensor must be consumed and every block complete: a leftover or a missing tensor is
/// an error naming it.
pub fn transformer_to_diffusers(ckpt: &mut Checkpoint) -> Result<()> {
    strip_prefix(ckpt, &TRANSFORMER_PREFIXES)?;
    let inner = *ckpt.shape("img_in.weight")?.first().unwrap_or(&0);
    let mut made = BTreeSet::new();
    let rename = |ckpt: &mut Checkpoint,
                  made: &mut BTreeSet<String>,
                  from: String,
                  to: String|
     -> Result<()> {
        ckpt.rename(&from, &to)?;
        made.insert(to);
        Ok(())
    };
    let guidance = ckpt.contains("guidance_in.in_layer.weight");
    for (bfl, dif) in [
        ("time_in", Some("timestep_embedder")),
        ("vector_in", Some("text_embedder")),
        ("guidance_in", guidance.then_some("guidance_embedder")),
    ] {
        let Some(dif) = dif else { continue };
        for (layer, lin) in [("in_layer", "linear_1"), ("out_layer", "linear_2")] {
            for p in ["weight", "bias"] {
                rename(
                    ckpt,
                    &mut made,
                    format!("{bfl}.{layer}.{p}"),
                    format!("time_text_embed.{dif}.{lin}.{p}"),
                )?;
            }
        }
    }
    for p in ["weight", "bias"] {
        rename(
            ckpt,
            &mut made,
            format!("txt_in.{p}"),
            format!("context_embedder.{p}"),
        )?;
        rename(
            ckpt,
            &mut made,
            format!("img_in.{p}"),
            format!("x_embedder.{p}"),
        )?;
        rename(
            ckpt,
            &mut made,
            format!("final_layer.linear.{p}"),
            format!("proj_out.{p}"),
        )?;
        // BFL: (shift, scale); diffusers' AdaLayerNormContinuous: (scale, shift).
        let from = format!("final_layer.adaLN_modulation.1.{p}");
        let info = ckpt.info(&from)?;
        let data = ckpt.read_f32(&from)?;
        let half = data.len() / 2;
        let swapped = [&data[half..], &data[..half]].concat();
        ckpt.remove(&from);
        let to = format!("norm_out.linear.{p}");
        ckpt.insert_owned(&to, info.shape, swapped);
        made.insert(to);
    }
    for i in 0..block_count(ckpt, "double_blocks.") {
        let (b, d) = (
            format!("double_blocks.{i}."),
            format!("transformer_blocks.{i}."),
        );
        for p in ["weight", "bias"] {
            for (from, to) in [
                ("img_mod.lin", "norm1.linear"),
                ("txt_mod.lin", "norm1_context.linear"),
                ("img_mlp.0", "ff.net.0.proj"),
                ("img_mlp.2", "ff.net.2"),
                ("txt_mlp.0", "ff_context.net.0.proj"),
                ("txt_mlp.2", "ff_context.net.2"),
                ("img_attn.proj", "attn.to_out.0"),
                ("txt_attn.proj", "attn.to_add_out"),
            ] {
                rename(
                    ckpt,
                    &mut made,
                    format!("{b}{from}.{p}"),
                    format!("{d}{to}.{p}"),
                )?;
            }
            for (fused, parts) in [
                ("img_attn.qkv", ["attn.to_q", "attn.to_k", "attn.to_v"]),
                (
                    "txt_attn.qkv",
                    ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                ),
            ] {
                let parts: Vec<(String, usize)> = parts
                    .iter()
                    .map(|n| (format!("{d}{n}.{p}"), inner))
                    .collect();
                split_rows(ckpt, &format!("{b}{fused}.{p}"), &parts)?;
                made.extend(parts.into_iter().map(|p| p.0));
            }
        }
        for (from, to) in [
            ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
            ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
            ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
            ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
        ] {
            rename(ckpt, &mut made, format!("{b}{from}"), format!("{d}{to}"))?;
        }
    }
    for i in 0..block_count(ckpt, "single_blocks.") {
        let (b, d) = (
            format!("single_blocks.{i}."),
            format!("single_transformer_blocks.{i}."),
        );
        for p in ["weight", "bias"] {
            rename(
                ckpt,
                &mut made,
                format!("{b}modulation.lin.{p}"),
                format!("{d}norm.linear.{p}"),
            )?;
            rename(
                ckpt,
                &mut made,
                format!("{b}linear2.{p}"),
                format!("{d}proj_out.{p}"),
            )?;
            let fused = format!("{b}linear1.{p}");
            let rows = *ckpt.shape(&fused)?.first().unwrap_or(&0);
            let mlp = rows.saturating_sub(3 * inner);
            let parts: Vec<(String, usize)> = [
                ("attn.to_q", inner),
                ("attn.to_k", inner),
                ("attn.to_v", inner),
                ("proj_mlp", mlp),
            ]
            .iter()
            .map(|(n, r)| (format!("{d}{n}.{p}"), *r))
            .collect();
            split_rows(ckpt, &fused, &parts)?;
            made.extend(parts.into_iter().map(|p| p.0));
        }
        rename(
            ckpt,
            &mut made,
            format!("{b}norm.query_norm.scale"),
            format!("{d}attn.norm_q.weight"),
        )?;
        rename(
            ckpt,
            &mut made,
            format!("{b}norm.key_norm.scale"),
            format!("{d}attn.norm_k.weight"),
        )?;
    }
    refuse_leftovers(ckpt, &made, "a BFL FLUX transformer")
}

fn refuse_leftovers(ckpt: &Checkpoint, made: &BTreeSet<String>, what: &str) -> Result<()> {
    if let Some(left) = ckpt.names().find(|n| !made.contains(*n)) {
        let file = ckpt.info(left).map(|i| i.file).unwrap_or_default();
        return Err(BuilderError::BadTensor {
            path: file,
            tensor: left.to_owned(),
            message: format!("not a tensor of {what} (another architecture?)"),
        });
    }
    Ok(())
}

/// The diffusers name of one `ae.safetensors` name, given the number of resolution levels.
fn vae_name(name: &str, levels: usize) -> String {
    let mut k = name.replace("encoder.norm_out.", "encoder.conv_norm_out.");
    k = k.replace("decoder.norm_out.", "decoder.conv_norm_out.");
    if k.contains(".mid.attn_1.") {
        k = k
            .replace(".mid.attn_1.", ".mid_block.attentions.0.")
            .replace(".norm.", ".group_norm.")
            .replace(".q.", ".to_q.")
            .replace(".k.", ".to_k.")
            .replace(".v.", ".to_v.")
            .replace(".proj_out.", ".to_out.0.");
    }
    k = k.replace(".mid.block_1.", ".mid_block.resnets.0.");
    k = k.replace(".mid.block_2.", ".mid_block.resnets.1.");
    for i in 0..levels {
        k = k.replace(
            &format!("encoder.down.{i}.block."),
            &format!("encoder.down_blocks.{i}.resnets."),
        );
        k = k.replace(
            &format!("encoder.down.{i}.downsample."),
            &format!("encoder.down_blocks.{i}.downsamplers.0."),
        );
        let j = levels - 1 - i;
        k = k.replace(
            &format!("decoder.up.{j}.block."),
            &format!("decoder.up_blocks.{i}.resnets."),
        );
        k = k.replace(
            &format!("decoder.up.{j}.upsample."),
            &format!("decoder.up_blocks.{i}.upsamplers.0."),
        );
    }
    k.replace(".nin_shortcut.", ".conv_shortcut.")
}

/// Converts an `ae.safetensors` checkpoint in place to diffusers `AutoencoderKL` names.
pub fn vae_to_diffusers(ckpt: &mut Checkpoint) -> Result<()> {
    strip_prefix(ckpt, &VAE_PREFIXES)?;
    let levels = block_count(ckpt, "decoder.up.");
    if levels == 0 {
        ckpt.info("decoder.up.0.block.0.conv1.weight")?;
    }
    let names: Vec<String> = ckpt.names().map(str::to_owned).collect();
    for name in names {
        let to = vae_name(&name, levels);
        let mut info = ckpt.info(&name)?;
        // The attention projections are 1x1 convolutions in the LDM layout: the same bytes seen as
        // the [C, C] matrices of diffusers' linear layers.
        if to.contains(".attentions.0.") && info.shape.len() == 4 && info.shape[2..] == [1, 1] {
            if ckpt.owned(&name).is_some() {
                let data = ckpt.read_f32(&name)?;
                ckpt.remove(&name);
                ckpt.insert_owned(&to, info.shape[..2].to_vec(), data);
            } else {
                ckpt.remove(&name);
                info.shape.truncate(2);
                info.name = to.clone();
                ckpt.insert_view(&to, info);
            }
        } else if to != name {
            ckpt.rename(&name, &to)?;
        }
    }
    Ok(())
}

/// A diffusers `FluxTransformer2DModel` config derived from the (converted) weights' shapes, for a
/// BFL file that comes without one. `axes_dims_rope` is not in the weights: FLUX.1's (16, 56, 56)
/// unless given.
pub fn transformer_config(ckpt: &Checkpoint, axes_dims_rope: Option<[usize; 3]>) -> Result<Json> {
    let [inner, in_channels] = matrix(ckpt, "x_embedder.weight")?;
    let [_, joint] = matrix(ckpt, "context_embedder.weight")?;
    let [_, pooled] = matrix(ckpt, "time_text_embed.text_embedder.linear_1.weight")?;
    let head_dim = *ckpt
        .shape("transformer_blocks.0.attn.norm_q.weight")?
        .first()
        .unwrap_or(&1);
    let [out, _] = matrix(ckpt, "proj_out.weight")?;
    Ok(json!({
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": if out == in_channels { Json::Null } else { json!(out) },
        "num_layers": block_count(ckpt, "transformer_blocks."),
        "num_single_layers": block_count(ckpt, "single_transformer_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner / head_dim.max(1),
        "joint_attention_dim": joint,
        "pooled_projection_dim": pooled,
        "guidance_embeds": ckpt.contains("time_text_embed.guidance_embedder.linear_1.weight"),
        "axes_dims_rope": axes_dims_rope.unwrap_or([16, 56, 56]),
    }))
}

/// FLUX.1's autoencoder config (`ae.safetensors` is the same model for dev and schnell), for BFL
/// files that come without a `vae/config.json`.
pub fn flux1_vae_config() -> Json {
    json!({
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 16,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": false,
        "use_post_quant_conv": false,
        "force_upcast": true,
    })
}

fn matrix(ckpt: &Checkpoint, name: &str) -> Result<[usize; 2]> {
    match ckpt.shape(name)?.as_slice() {
        [a, b] => Ok([*a, *b]),
        other => Err(BuilderError::BadTensor {
            path: ckpt.info(name)?.file,
            tensor: name.to_owned(),
            message: format!("expected a matrix, got shape {other:?}"),
        }),
    }
}
