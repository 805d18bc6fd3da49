//! LoRA merge: the PEFT and kohya forms of the tiny rank-4 LoRA merge into the dev transformer to
//! the weights diffusers' own `fuse_lora` gives, and LoRAs that do not fit are refused by name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use flux_builder::lora::apply_loras;
use flux_builder::weights::{f32_bytes, write_safetensors};
use flux_builder::{Checkpoint, DType, LoraSpec};

use crate::text_support::{fixtures, max_abs_diff};

/// diffusers' `fuse_lora(lora_scale)` in torch against ours: float32 rounding of `W + s·B·A`
/// summed in another order (observed: below 1e-7).
const TOLERANCE: f32 = 1e-6;

fn lora_file(name: &str) -> PathBuf {
    fixtures().join("tiny-flux-dev-lora").join(name)
}

fn scale() -> Result<f32> {
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("reference/builder-cases/index.json"),
    )?)?;
    let case = index["cases"]
        .as_array()
        .and_then(|c| c.iter().find(|c| !c["lora"].is_null()))
        .context("no LoRA case")?;
    Ok(case["lora"]["scale"].as_f64().context("no scale")? as f32)
}

fn transformer() -> Result<Checkpoint> {
    Ok(Checkpoint::open_component(
        &fixtures().join("tiny-flux-dev-diffusers/transformer"),
    )?)
}

fn merged(file: &Path, scale: f32) -> Result<Checkpoint> {
    let mut ckpt = transformer()?;
    let changed = apply_loras(
        &mut ckpt,
        &[LoraSpec {
            path: file.to_owned(),
            scale,
        }],
    )?;
    ensure!(changed == 12, "{changed} weights changed");
    Ok(ckpt)
}

#[test]
fn peft_and_kohya_loras_merge_to_diffusers_fused_weights() -> Result<()> {
    let s = scale()?;
    let reference = Checkpoint::open_file(&lora_file("fused-reference.safetensors"))?;
    let base = transformer()?;
    for file in ["lora-peft.safetensors", "lora-kohya.safetensors"] {
        let ckpt = merged(&lora_file(file), s)?;
        for name in base.names() {
            let got = ckpt.read_f32(name)?;
            if reference.contains(name) {
                let diff = max_abs_diff(&got, &reference.read_f32(name)?)?;
                let change = max_abs_diff(&got, &base.read_f32(name)?)?;
                eprintln!(
                    "lora {file} {name}: vs diffusers fuse_lora {diff:.2e} (change {change:.2})"
                );
                ensure!(
                    diff <= TOLERANCE && change > 0.01,
                    "{name}: {diff} (change {change})"
                );
            } else {
                ensure!(
                    got == base.read_f32(name)?,
                    "{name} changed but the LoRA does not adapt it"
                );
            }
        }
    }
    Ok(())
}

/// A tensor to write: name, shape, values.
type Tensor = (String, Vec<usize>, Vec<f32>);

fn write(dir: &Path, name: &str, tensors: &[Tensor]) -> Result<PathBuf> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| f32_bytes(&t.2)).collect();
    let refs: Vec<(&str, DType, &[usize], &[u8])> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| (t.0.as_str(), DType::F32, t.1.as_slice(), b.as_slice()))
        .collect();
    let path = dir.join(name);
    write_safetensors(&path, &refs)?;
    Ok(path)
}

fn tensors_of(path: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<Tensor>> {
    let ckpt = Checkpoint::open_file(path)?;
    let mut out = Vec::new();
    for name in ckpt.names().filter(|n| keep(n)) {
        out.push((name.to_owned(), ckpt.shape(name)?, ckpt.read_f32(name)?));
    }
    Ok(out)
}

/// A kohya file without `.alpha` tensors merges with alpha = rank, as diffusers' conversion does:
/// here the up matrices hold 2·B (the file's alpha is 2 of rank 4), so the update doubles.
#[test]
fn kohya_lora_without_alpha_uses_alpha_equal_to_rank() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tensors = tensors_of(&lora_file("lora-kohya.safetensors"), |n| {
        !n.ends_with(".alpha")
    })?;
    let path = write(dir.path(), "no-alpha.safetensors", &tensors)?;
    let base = transformer()?;
    let half = merged(&lora_file("lora-kohya.safetensors"), 1.0)?;
    let full = merged(&path, 1.0)?;
    let name = "transformer_blocks.0.attn.to_k.weight";
    let (b, h, f) = (
        base.read_f32(name)?,
        half.read_f32(name)?,
        full.read_f32(name)?,
    );
    let worst = b
        .iter()
        .zip(&h)
        .zip(&f)
        .map(|((b, h), f)| ((f - b) - 2.0 * (h - b)).abs())
        .fold(0.0f32, f32::max);
    ensure!(
        worst <= 1e-6,
        "without alpha the update is not rank/alpha = 2 times larger: {worst}"
    );
    Ok(())
}

#[test]
fn lora_that_does_not_fit_the_model_is_refused_with_the_tensor_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let peft = lora_file("lora-peft.safetensors");
    let mut base = transformer()?;
    let try_merge = |path: &Path| -> Result<String> {
        let mut ckpt = transformer()?;
        let err = apply_loras(
            &mut ckpt,
            &[LoraSpec {
                path: path.to_owned(),
                scale: 1.0,
            }],
        )
        .err()
        .context("merged anyway")?;
        Ok(err.to_string())
    };
    // Another model's LoRA: a block the tiny transformer does not have.
    let other = tensors_of(&peft, |_| true)?
        .into_iter()
        .map(|(n, s, d)| {
            (
                n.replace("transformer_blocks.0.", "transformer_blocks.7."),
                s,
                d,
            )
        })
        .collect::<Vec<_>>();
    let text = try_merge(&write(dir.path(), "other.safetensors", &other)?)?;
    ensure!(
        text.contains("other.safetensors") && text.contains("transformer_blocks.7."),
        "{text}"
    );
    // Another width (an SDXL-sized down matrix on a FLUX module).
    let mut wide = tensors_of(&peft, |_| true)?;
    for t in wide
        .iter_mut()
        .filter(|t| t.0.ends_with("attn.to_out.0.lora_A.weight"))
    {
        t.1 = vec![4, 40];
        t.2 = vec![0.1; 160];
    }
    let text = try_merge(&write(dir.path(), "wide.safetensors", &wide)?)?;
    ensure!(
        text.contains("attn.to_out.0.lora_A.weight") && text.contains("40"),
        "{text}"
    );
    // A text-encoder LoRA and a stray tensor.
    let te = vec![
        (
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".to_owned(),
            vec![4, 48],
            vec![0.0; 192],
        ),
        (
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".to_owned(),
            vec![96, 4],
            vec![0.0; 384],
        ),
    ];
    let text = try_merge(&write(dir.path(), "te.safetensors", &te)?)?;
    ensure!(
        text.contains("lora_te1_") && text.contains("text encoder"),
        "{text}"
    );
    let stray = vec![(
        "transformer.proj_out.weight".to_owned(),
        vec![64, 32],
        vec![0.0; 2048],
    )];
    let text = try_merge(&write(dir.path(), "stray.safetensors", &stray)?)?;
    ensure!(text.contains("transformer.proj_out.weight"), "{text}");
    // Nothing was merged into a checkpoint that a refused LoRA touched first.
    let before = base.read_f32("transformer_blocks.0.attn.to_q.weight")?;
    let _ = apply_loras(
        &mut base,
        &[LoraSpec {
            path: dir.path().join("other.safetensors"),
            scale: 1.0,
        }],
    );
    ensure!(
        base.read_f32("transformer_blocks.0.attn.to_q.weight")? == before,
        "a refused LoRA was half applied"
    );
    Ok(())
}

fn build(dir: &Path, component: &str, ckpt: &Checkpoint) -> Result<ort::session::Session> {
    use flux_builder::graphs::config::{Config, read_config};
    let source = fixtures().join("tiny-flux-dev-diffusers").join(component);
    let (json, path) = read_config(&source)?;
    let config = Config::new(&json, &path);
    let out = dir.join(component);
    let opts = flux_builder::BuildOptions::default();
    match component {
        "transformer" => {
            flux_builder::graphs::transformer::build_transformer(ckpt, &config, 32, &opts, &out)?
        }
        _ => flux_builder::graphs::vae::build_vae(ckpt, &config, &opts, &out)?,
    };
    crate::text_support::session_from_file(&out.join("model.onnx"))
}

/// The LoRA case (`reference/builder-cases/dev_lora_square_seed42`, diffusers' `load_lora_weights`
/// at scale 0.8, unfused) replayed through the transformer built with each LoRA file merged:
/// final latents within 1e-4 (the generator's own ONNX replay bound), pixels within 1 of 255.
#[test]
fn lora_built_transformer_reproduces_the_diffusers_lora_case() -> Result<()> {
    let case = fixtures().join("reference/builder-cases/dev_lora_square_seed42");
    let dir = tempfile::tempdir()?;
    let vae = Checkpoint::open_component(&fixtures().join("tiny-flux-dev-diffusers/vae"))?;
    let mut vae = build(dir.path(), "vae", &vae)?;
    for file in ["lora-peft.safetensors", "lora-kohya.safetensors"] {
        let ckpt = merged(&lora_file(file), scale()?)?;
        let mut transformer = build(dir.path(), "transformer", &ckpt)?;
        let replay = crate::replay::replay(&case, &mut transformer, &mut vae, true)?;
        eprintln!(
            "lora case with {file}: final latents {:.2e}, pixels {}",
            replay.final_latents, replay.pixels
        );
        ensure!(
            replay.final_latents <= 1e-4 && replay.pixels <= 1,
            "{file}: {} / {}",
            replay.final_latents,
            replay.pixels
        );
    }
    // Without the LoRA the same replay is far off (the test can fail).
    let mut plain = build(dir.path(), "transformer", &transformer()?)?;
    let replay = crate::replay::replay(&case, &mut plain, &mut vae, true)?;
    ensure!(
        replay.final_latents > 0.1,
        "the LoRA case does not depend on the LoRA"
    );
    Ok(())
}

/// The same LoRA with PEFT suffixes on BFL module names (as ComfyUI and ai-toolkit write FLUX
/// LoRAs: `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`, `.alpha`) merges exactly
/// like the kohya file it was renamed from.
#[test]
fn peft_suffixes_on_bfl_names_merge_like_kohya() -> Result<()> {
    const MODULES: [(&str, &str); 8] = [
        (
            "double_blocks_0_img_attn_qkv",
            "double_blocks.0.img_attn.qkv",
        ),
        (
            "double_blocks_0_img_attn_proj",
            "double_blocks.0.img_attn.proj",
        ),
        (
            "double_blocks_0_txt_attn_qkv",
            "double_blocks.0.txt_attn.qkv",
        ),
        ("double_blocks_0_img_mlp_0", "double_blocks.0.img_mlp.0"),
        ("double_blocks_0_txt_mlp_2", "double_blocks.0.txt_mlp.2"),
        ("double_blocks_0_img_mod_lin", "double_blocks.0.img_mod.lin"),
        ("single_blocks_0_linear2", "single_blocks.0.linear2"),
        (
            "single_blocks_0_modulation_lin",
            "single_blocks.0.modulation.lin",
        ),
    ];
    let dir = tempfile::tempdir()?;
    let kohya = lora_file("lora-kohya.safetensors");
    let mut renamed = Vec::new();
    for (name, shape, data) in tensors_of(&kohya, |_| true)? {
        let module = name.strip_prefix("lora_unet_").context("kohya name")?;
        let (kohya_module, bfl) = MODULES
            .iter()
            .find(|(k, _)| module.starts_with(&format!("{k}.")))
            .with_context(|| format!("unmapped {name}"))?;
        let suffix = &module[kohya_module.len()..];
        let suffix = suffix
            .replace(".lora_down.", ".lora_A.")
            .replace(".lora_up.", ".lora_B.");
        renamed.push((format!("diffusion_model.{bfl}{suffix}"), shape, data));
    }
    let path = write(dir.path(), "comfy.safetensors", &renamed)?;
    let (a, b) = (merged(&kohya, 0.8)?, merged(&path, 0.8)?);
    for name in a.names() {
        ensure!(a.read_f32(name)? == b.read_f32(name)?, "{name} differs");
    }
    Ok(())
}
