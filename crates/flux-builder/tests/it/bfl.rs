//! BFL single files (the tiny dev model as `flux1-dev.safetensors` + `ae.safetensors`) convert to
//! exactly the tensors of the diffusers fixture, fused tensors as views into the file.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use flux_builder::bfl::{
    BflKind, bfl_kind, transformer_config, transformer_to_diffusers, vae_to_diffusers,
};
use flux_builder::weights::write_safetensors;
use flux_builder::{Checkpoint, DType};

use crate::text_support::fixtures;

fn bfl(file: &str) -> std::path::PathBuf {
    fixtures().join("tiny-flux-dev-bfl").join(file)
}

fn diffusers(component: &str) -> Result<Checkpoint> {
    Ok(Checkpoint::open_component(
        &fixtures().join("tiny-flux-dev-diffusers").join(component),
    )?)
}

/// Same names, shapes and values (bit for bit).
fn same_tensors(got: &Checkpoint, want: &Checkpoint) -> Result<()> {
    let (g, w): (Vec<&str>, Vec<&str>) = (got.names().collect(), want.names().collect());
    ensure!(
        g == w,
        "names differ: {:?}",
        g.iter()
            .filter(|n| !w.contains(n))
            .chain(w.iter().filter(|n| !g.contains(n)))
            .collect::<Vec<_>>()
    );
    for name in w {
        ensure!(
            got.shape(name)? == want.shape(name)?,
            "{name}: shape {:?} != {:?}",
            got.shape(name)?,
            want.shape(name)?
        );
        ensure!(
            got.read_f32(name)? == want.read_f32(name)?,
            "{name}: values differ"
        );
    }
    Ok(())
}

#[test]
fn bfl_files_are_detected_by_their_names() -> Result<()> {
    ensure!(
        bfl_kind(&Checkpoint::open_file(&bfl("flux1-dev.safetensors"))?)
            == Some(BflKind::Transformer)
    );
    ensure!(
        bfl_kind(&Checkpoint::open_file(&bfl("ae.safetensors"))?) == Some(BflKind::Autoencoder)
    );
    ensure!(bfl_kind(&diffusers("transformer")?).is_none());
    ensure!(bfl_kind(&diffusers("vae")?).is_none());
    Ok(())
}

#[test]
fn bfl_transformer_converts_to_the_diffusers_tensors_as_views() -> Result<()> {
    let path = bfl("flux1-dev.safetensors");
    let mut ckpt = Checkpoint::open_file(&path)?;
    transformer_to_diffusers(&mut ckpt)?;
    same_tensors(&ckpt, &diffusers("transformer")?)?;
    // The qkv and linear1 parts point into the BFL file (no copy); only the reordered final
    // modulation is held in memory.
    for name in [
        "transformer_blocks.0.attn.to_k.weight",
        "transformer_blocks.0.attn.add_v_proj.bias",
        "single_transformer_blocks.0.proj_mlp.weight",
    ] {
        ensure!(ckpt.owned(name).is_none(), "{name} was copied");
        let info = ckpt.info(name)?;
        ensure!(info.file == path, "{name} is in {}", info.file.display());
    }
    let owned: Vec<&str> = ckpt.names().filter(|n| ckpt.owned(n).is_some()).collect();
    ensure!(
        owned == ["norm_out.linear.bias", "norm_out.linear.weight"],
        "held in memory: {owned:?}"
    );

    // The config derived from the shapes agrees with the fixture's (axes given: not in the weights).
    let derived = transformer_config(&ckpt, Some([4, 6, 6]))?;
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("tiny-flux-dev-diffusers/transformer/config.json"),
    )?)?;
    for key in [
        "in_channels",
        "num_layers",
        "num_single_layers",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
        "pooled_projection_dim",
        "guidance_embeds",
        "axes_dims_rope",
        "patch_size",
    ] {
        ensure!(
            derived[key] == fixture[key],
            "{key}: derived {} != {}",
            derived[key],
            fixture[key]
        );
    }
    Ok(())
}

#[test]
fn bfl_autoencoder_converts_to_the_diffusers_tensors() -> Result<()> {
    let mut ckpt = Checkpoint::open_file(&bfl("ae.safetensors"))?;
    vae_to_diffusers(&mut ckpt)?;
    same_tensors(&ckpt, &diffusers("vae")?)?;
    let q = ckpt.info("decoder.mid_block.attentions.0.to_q.weight")?;
    ensure!(
        q.shape.len() == 2
            && ckpt
                .owned("decoder.mid_block.attentions.0.to_q.weight")
                .is_none()
    );
    Ok(())
}

/// Writes a copy of the BFL transformer with names changed by `edit` (None drops the tensor).
fn edited_copy(dir: &Path, edit: impl Fn(&str) -> Option<String>) -> Result<std::path::PathBuf> {
    let source = Checkpoint::open_file(&bfl("flux1-dev.safetensors"))?;
    let mut tensors = Vec::new();
    for name in source.names() {
        if let Some(new) = edit(name) {
            let data = flux_builder::weights::f32_bytes(&source.read_f32(name)?);
            tensors.push((new, source.shape(name)?, data));
        }
    }
    let refs: Vec<(&str, DType, &[usize], &[u8])> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), DType::F32, s.as_slice(), d.as_slice()))
        .collect();
    let path = dir.join("flux1-dev.safetensors");
    write_safetensors(&path, &refs)?;
    Ok(path)
}

#[test]
fn bfl_file_missing_a_block_or_a_tensor_is_refused_with_the_tensor_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Block 0 missing (the file's only double block renumbered 1).
    let path = edited_copy(dir.path(), |n| {
        Some(n.replace("double_blocks.0.", "double_blocks.1."))
    })?;
    let err = transformer_to_diffusers(&mut Checkpoint::open_file(&path)?)
        .err()
        .context("converted anyway")?;
    ensure!(err.to_string().contains("double_blocks.0."), "{err}");
    // One tensor of a single block missing.
    let path = edited_copy(dir.path(), |n| {
        (n != "single_blocks.0.linear2.weight").then(|| n.to_owned())
    })?;
    let err = transformer_to_diffusers(&mut Checkpoint::open_file(&path)?)
        .err()
        .context("converted anyway")?;
    ensure!(
        err.to_string().contains("single_blocks.0.linear2.weight"),
        "{err}"
    );
    // A tensor of another architecture.
    let path = edited_copy(dir.path(), |n| {
        Some(n.replace("final_layer.linear.bias", "final_layer.extra.bias"))
    })?;
    let err = transformer_to_diffusers(&mut Checkpoint::open_file(&path)?)
        .err()
        .context("converted anyway")?;
    ensure!(err.to_string().contains("final_layer."), "{err}");
    // A fused qkv whose rows do not split in three.
    let source = Checkpoint::open_file(&bfl("flux1-dev.safetensors"))?;
    let mut ckpt = source.clone();
    let qkv = "double_blocks.0.img_attn.qkv.weight";
    let mut shape = ckpt.shape(qkv)?;
    shape[0] -= 1;
    let data = ckpt.read_f32(qkv)?;
    ckpt.insert_owned(qkv, shape.clone(), data[..shape[0] * shape[1]].to_vec());
    let err = transformer_to_diffusers(&mut ckpt)
        .err()
        .context("converted anyway")?;
    ensure!(err.to_string().contains(qkv), "{err}");
    Ok(())
}

/// Built from the BFL files (with the diffusers configs: `axes_dims_rope` and the VAE's group count
/// are not in the weights), the transformer and VAE graphs give exactly the outputs of the graphs
/// built from the diffusers folder, and the dev reference case replays through them.
#[test]
fn bfl_built_graphs_match_the_diffusers_built_graphs() -> Result<()> {
    use flux_builder::graphs::config::{Config, read_config};
    use flux_builder::graphs::{transformer::build_transformer, vae::build_vae};
    let dir = tempfile::tempdir()?;
    let opts = flux_builder::BuildOptions::default();
    let config_of =
        |component: &str| read_config(&fixtures().join("tiny-flux-dev-diffusers").join(component));
    let (tjson, tpath) = config_of("transformer")?;
    let (vjson, vpath) = config_of("vae")?;
    let (tconfig, vconfig) = (Config::new(&tjson, &tpath), Config::new(&vjson, &vpath));

    let mut sessions = Vec::new();
    for (name, transformer, vae) in [
        (
            "bfl",
            {
                let mut c = Checkpoint::open_file(&bfl("flux1-dev.safetensors"))?;
                transformer_to_diffusers(&mut c)?;
                c
            },
            {
                let mut c = Checkpoint::open_file(&bfl("ae.safetensors"))?;
                vae_to_diffusers(&mut c)?;
                c
            },
        ),
        ("diffusers", diffusers("transformer")?, diffusers("vae")?),
    ] {
        let (t_out, v_out) = (
            dir.path().join(name).join("transformer"),
            dir.path().join(name).join("vae"),
        );
        let report = build_transformer(&transformer, &tconfig, 32, &opts, &t_out)?;
        if name == "bfl" {
            // Zero-copy from the BFL file except the reordered final modulation (2 tensors).
            ensure!(
                report.converted_tensors == 2 && !report.linked_files.is_empty(),
                "{report:?}"
            );
        }
        build_vae(&vae, &vconfig, &opts, &v_out)?;
        sessions.push((
            crate::text_support::session_from_file(&t_out.join("model.onnx"))?,
            crate::text_support::session_from_file(&v_out.join("model.onnx"))?,
        ));
    }
    let case = fixtures().join("reference/cases/dev_square_seed42");
    let mut results = Vec::new();
    for (transformer, vae) in sessions.iter_mut() {
        let replay = crate::replay::replay(&case, transformer, vae, true)?;
        eprintln!(
            "bfl/diffusers dev_square_seed42: final latents {:.2e}, pixels {}",
            replay.final_latents, replay.pixels
        );
        ensure!(replay.final_latents <= 1e-4 && replay.pixels <= 1);
        results.push(replay.latents);
    }
    ensure!(
        results[0] == results[1],
        "BFL and diffusers builds differ: {results:?}"
    );
    Ok(())
}

/// schnell's BFL file has no guidance embedder; its autoencoder is the dev model's
/// (`tiny-flux-dev-bfl/ae.safetensors` converts to the schnell VAE's tensors too).
#[test]
fn bfl_schnell_transformer_converts_without_guidance() -> Result<()> {
    let path = fixtures().join("tiny-flux-schnell-bfl/flux1-schnell.safetensors");
    let mut ckpt = Checkpoint::open_file(&path)?;
    ensure!(bfl_kind(&ckpt) == Some(BflKind::Transformer));
    ensure!(!ckpt.names().any(|n| n.starts_with("guidance_in.")));
    transformer_to_diffusers(&mut ckpt)?;
    let schnell = |c: &str| {
        Checkpoint::open_component(&fixtures().join("tiny-flux-schnell-diffusers").join(c))
    };
    same_tensors(&ckpt, &schnell("transformer")?)?;
    ensure!(transformer_config(&ckpt, None)?["guidance_embeds"] == false);
    let mut ae = Checkpoint::open_file(&bfl("ae.safetensors"))?;
    vae_to_diffusers(&mut ae)?;
    same_tensors(&ae, &schnell("vae")?)
}
