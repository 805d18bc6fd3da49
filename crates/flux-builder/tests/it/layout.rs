//! Whole builds: a diffusers folder becomes flux-rs's ONNX layout, and the built graphs replay
//! every diffusers reference case of the model (from the references' token ids and noise, as
//! `tools/tiny-flux/generate.py`'s ONNX replay does): final latents within 1e-4, pixels within
//! one level of 255. Plus the cache: one entry per key, reused, published atomically.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use flux_builder::{BuildOptions, SourceKind};
use ndarray::{ArrayD, Axis, IxDyn};

use crate::common::{Feed, fixture, run, session};
use crate::text_support::read_npy;

fn npy(path: &Path) -> Result<ArrayD<f32>> {
    let (shape, data) = read_npy(path)?;
    Ok(ArrayD::from_shape_vec(
        IxDyn(&shape),
        data.into_iter().map(|v| v as f32).collect(),
    )?)
}

fn ids(path: &Path) -> Result<ArrayD<i64>> {
    let (shape, data) = read_npy(path)?;
    let n = shape.iter().product::<usize>();
    Ok(ArrayD::from_shape_vec(
        IxDyn(&[1, n]),
        data.into_iter().map(|v| v as i64).collect(),
    )?)
}

/// [B,16,h,w] -> [B,(h/2)(w/2),64], diffusers' `_pack_latents`.
fn pack(x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let &[b, c, h, w] = x.shape() else {
        anyhow::bail!("rank")
    };
    let y = x
        .to_shape(IxDyn(&[b, c, h / 2, 2, w / 2, 2]))?
        .permuted_axes(IxDyn(&[0, 2, 4, 1, 3, 5]));
    Ok(y.as_standard_layout()
        .to_shape(IxDyn(&[b, (h / 2) * (w / 2), c * 4]))?
        .to_owned())
}

/// The inverse of [`pack`].
fn unpack(x: &ArrayD<f32>, h: usize, w: usize) -> Result<ArrayD<f32>> {
    let &[b, _, c4] = x.shape() else {
        anyhow::bail!("rank")
    };
    let y = x
        .to_shape(IxDyn(&[b, h / 2, w / 2, c4 / 4, 2, 2]))?
        .permuted_axes(IxDyn(&[0, 3, 1, 4, 2, 5]));
    Ok(y.as_standard_layout()
        .to_shape(IxDyn(&[b, c4 / 4, h, w]))?
        .to_owned())
}

fn img_ids(h2: usize, w2: usize) -> ArrayD<f32> {
    let mut v = Vec::with_capacity(h2 * w2 * 3);
    for y in 0..h2 {
        for x in 0..w2 {
            v.extend([0.0, y as f32, x as f32]);
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[h2 * w2, 3]), v).expect("shape")
}

/// Replays one reference case through a built folder; returns (latent diff, pixel diff).
pub fn replay(model: &Path, case: &Path) -> Result<(f32, i32)> {
    let stats = replay_stats(model, case)?;
    Ok((stats.latents, stats.pixels))
}

/// How far a replay's result is from diffusers' reference.
pub struct ReplayStats {
    /// Largest final-latent difference.
    pub latents: f32,
    /// Largest pixel difference (0–255).
    pub pixels: i32,
    /// PSNR of the 8-bit images against the reference PNGs, in dB (infinite when identical).
    pub psnr: f64,
}

/// [`replay`], with the images' PSNR.
pub fn replay_stats(model: &Path, case: &Path) -> Result<ReplayStats> {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.json"))?)?;
    let get = |k: &str| info[k].as_f64().with_context(|| format!("case.json {k}"));
    let (n, steps) = (
        get("num_images")? as usize,
        get("num_inference_steps")? as usize,
    );
    let (h8, w8) = (get("height")? as usize / 8, get("width")? as usize / 8);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("flux-rs.json"))?)?;
    let dev = manifest["variant"] == "dev";
    let text_length = manifest["text_length"].as_u64().context("text_length")? as usize;
    let mut clip = session(&model.join("clip.opt/model.onnx"))?;
    let mut t5 = session(&model.join("t5.opt/model.onnx"))?;
    let mut transformer =
        session(&model.join(manifest["transformer"].as_str().context("transformer")?))?;
    let mut vae = session(&model.join("vae.opt/model.onnx"))?;

    let clip_out = run(
        &mut clip,
        &[("input_ids", &Feed::I64(ids(&case.join("clip_ids.npy"))?))],
    )?;
    let pooled = clip_out.last().context("pooled")?.clone();
    let embeds = run(
        &mut t5,
        &[("input_ids", &Feed::I64(ids(&case.join("t5_ids.npy"))?))],
    )?
    .remove(0);
    let repeat = |a: &ArrayD<f32>| -> Result<ArrayD<f32>> {
        let views: Vec<_> = (0..n).map(|_| a.view()).collect();
        Ok(ndarray::concatenate(Axis(0), &views)?)
    };
    let sigmas = npy(&case.join("sigmas.npy"))?;
    let mut latents = pack(&npy(&case.join("noise.npy"))?)?;
    let mut feeds = vec![
        ("encoder_hidden_states", Feed::F32(repeat(&embeds)?)),
        ("pooled_projections", Feed::F32(repeat(&pooled)?)),
        ("img_ids", Feed::F32(img_ids(h8 / 2, w8 / 2))),
        (
            "txt_ids",
            Feed::F32(ArrayD::zeros(IxDyn(&[text_length, 3]))),
        ),
    ];
    if dev {
        let g = get("guidance_scale")? as f32;
        feeds.push(("guidance", Feed::F32(ArrayD::from_elem(IxDyn(&[n]), g))));
    }
    for i in 0..steps {
        let mut step: Vec<(&str, &Feed)> = feeds.iter().map(|(k, v)| (*k, v)).collect();
        let hidden = Feed::F32(latents.clone());
        let t = Feed::F32(ArrayD::from_elem(IxDyn(&[n]), sigmas[i]));
        step.push(("hidden_states", &hidden));
        step.push(("timestep", &t));
        let v = run(&mut transformer, &step)?.remove(0);
        let dt = sigmas[i + 1] - sigmas[i];
        latents = &latents + &(v * dt);
    }
    let want = npy(&case.join("final_latents.npy"))?;
    ensure!(
        latents.shape() == want.shape(),
        "latents {:?} vs reference {:?}",
        latents.shape(),
        want.shape()
    );
    let latent_diff = latents
        .iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scaling = manifest["vae_scaling_factor"].as_f64().context("scaling")? as f32;
    let shift = manifest["vae_shift_factor"].as_f64().context("shift")? as f32;
    let z = unpack(&latents, h8, w8)?.mapv(|v| v / scaling + shift);
    let decoded = run(&mut vae, &[("latent", &Feed::F32(z))])?.remove(0);
    ensure!(
        decoded.shape() == [n, 3, h8 * 8, w8 * 8],
        "decoded {:?}",
        decoded.shape()
    );
    let mut pixel_diff = 0;
    let (mut squared, mut count) = (0f64, 0usize);
    for i in 0..n {
        let png = image::open(case.join(format!("image_{i}.png")))?.to_rgb8();
        for (x, y, p) in png.enumerate_pixels() {
            for c in 0..3 {
                let v = decoded[[i, c, y as usize, x as usize]];
                let ours = ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as i32;
                let diff = ours - i32::from(p[c]);
                pixel_diff = pixel_diff.max(diff.abs());
                squared += f64::from(diff * diff);
                count += 1;
            }
        }
    }
    let mse = squared / count.max(1) as f64;
    Ok(ReplayStats {
        latents: latent_diff,
        pixels: pixel_diff,
        psnr: 10.0 * (255.0f64 * 255.0 / mse).log10(),
    })
}

pub fn cases_of(model: &str) -> Result<Vec<std::path::PathBuf>> {
    let root = fixture("reference/cases");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("index.json"))?)?;
    Ok(index["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .filter(|c| c["model"] == model)
        .filter_map(|c| c["name"].as_str().map(|n| root.join(n)))
        .collect())
}

fn tiny_options() -> BuildOptions {
    BuildOptions {
        text_length: Some(32),
        ..BuildOptions::default()
    }
}

#[test]
fn built_diffusers_folders_reproduce_every_reference_case() -> Result<()> {
    for variant in ["dev", "schnell"] {
        let source = fixture(&format!("tiny-flux-{variant}-diffusers"));
        assert_eq!(flux_builder::detect(&source)?, SourceKind::Diffusers);
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("model");
        let report = flux_builder::build(&source, &tiny_options(), &out)?;
        assert_eq!((report.variant, report.text_length), (variant, 32));
        for file in [
            "clip.opt/model.onnx",
            "t5.opt/model.onnx",
            "transformer.opt/fp32/model.onnx",
            "vae.opt/model.onnx",
            "tokenizer/vocab.json",
            "tokenizer_2/tokenizer.json",
            "scheduler/scheduler_config.json",
            "flux-rs.json",
        ] {
            ensure!(out.join(file).is_file(), "{variant}: {file} missing");
        }
        assert_eq!(flux_builder::detect(&out)?, SourceKind::OnnxLayout);
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("flux-rs.json"))?)?;
        assert_eq!(
            manifest,
            serde_json::json!({"variant": variant, "text_length": 32, "transformer": "transformer.opt/fp32/model.onnx",
                "vae_scaling_factor": 0.3611, "vae_shift_factor": 0.1159})
        );
        let cases = cases_of(variant)?;
        ensure!(!cases.is_empty(), "no {variant} cases");
        for case in cases {
            let (latents, pixels) = replay(&out, &case)?;
            println!(
                "{variant} {}: final latents {latents:.2e}, pixels {pixels}",
                case.display()
            );
            ensure!(
                latents <= 1e-4 && pixels <= 1,
                "{}: latents {latents}, pixels {pixels}",
                case.display()
            );
        }
    }
    Ok(())
}

#[test]
fn explicit_build_refuses_a_non_empty_folder_and_leaves_nothing_on_failure() -> Result<()> {
    let source = fixture("tiny-flux-schnell-diffusers");
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("taken");
    std::fs::create_dir(&out)?;
    std::fs::write(out.join("x"), "x")?;
    let err = flux_builder::build(&source, &tiny_options(), &out)
        .expect_err("taken")
        .to_string();
    assert!(err.contains("not empty"), "{err}");
    // A precision the CPU cannot run is refused before anything is written.
    let opts = BuildOptions {
        precision: flux_builder::Precision::F16,
        ..tiny_options()
    };
    let fresh = dir.path().join("fresh");
    let err = flux_builder::build(&source, &opts, &fresh)
        .expect_err("fp16 on cpu")
        .to_string();
    assert!(err.contains("fp16") && err.contains("cpu"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the taken folder remains: {left:?}");
    Ok(())
}

#[test]
fn bf16_checkpoint_is_converted_once_and_matches_its_reference() -> Result<()> {
    let source = fixture("tiny-flux-schnell-bf16-diffusers");
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("model");
    let report = flux_builder::build(&source, &tiny_options(), &out)?;
    for (graph, weights) in &report.graphs {
        // bf16 on disk, fp32 in the graph: nothing can point into the checkpoint.
        assert_eq!(weights.linked_tensors, 0, "{graph}: {weights:?}");
        assert!(weights.converted_tensors > 0, "{graph}: {weights:?}");
    }
    assert!(
        out.join("transformer.opt/fp32")
            .join(flux_builder::onnx::DATA_FILE)
            .is_file()
    );
    let (latents, pixels) = replay(
        &out,
        &fixture("reference/builder-cases/schnell_bf16_square"),
    )?;
    println!("schnell bf16: final latents {latents:.2e}, pixels {pixels}");
    ensure!(
        latents <= 1e-4 && pixels <= 1,
        "latents {latents}, pixels {pixels}"
    );
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[test]
fn bfl_files_with_diffusers_companions_build_and_match_the_reference() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("bfl");
    copy_tree(&fixture("tiny-flux-dev-bfl"), &source)?;
    let diffusers = fixture("tiny-flux-dev-diffusers");
    let err = flux_builder::detect(&source)
        .expect_err("no companions")
        .to_string();
    assert!(
        err.contains("text_encoder") && err.contains("tokenizer_2"),
        "{err}"
    );
    for folder in flux_builder::source::BFL_COMPANIONS {
        copy_tree(&diffusers.join(folder), &source.join(folder))?;
    }
    // The tiny model's widths are not FLUX.1's: its configs come along (the FLUX.1 repositories
    // hold transformer/config.json and vae/config.json beside the BFL files too).
    for folder in ["transformer", "vae"] {
        std::fs::create_dir_all(source.join(folder))?;
        std::fs::copy(
            diffusers.join(folder).join("config.json"),
            source.join(folder).join("config.json"),
        )?;
    }
    assert!(matches!(
        flux_builder::detect(&source)?,
        SourceKind::BflFiles { .. }
    ));
    let out = dir.path().join("model");
    let report = flux_builder::build(&source, &tiny_options(), &out)?;
    assert_eq!(report.variant, "dev");
    let (_, transformer) = report
        .graphs
        .iter()
        .find(|(g, _)| *g == "transformer")
        .context("transformer")?;
    // Fused qkv/linear1 are row views into flux1-dev.safetensors: linked, not copied; only the
    // reordered final modulation is converted.
    assert!(
        transformer.linked_tensors > 0 && transformer.converted_tensors <= 2,
        "{transformer:?}"
    );
    let (latents, pixels) = replay(&out, &fixture("reference/cases/dev_square_seed42"))?;
    println!("bfl dev_square_seed42: final latents {latents:.2e}, pixels {pixels}");
    ensure!(
        latents <= 1e-4 && pixels <= 1,
        "latents {latents}, pixels {pixels}"
    );
    Ok(())
}

#[test]
fn lora_builds_match_diffusers_load_lora_weights() -> Result<()> {
    let case = fixture("reference/builder-cases/dev_lora_square_seed42");
    for file in ["lora-peft.safetensors", "lora-kohya.safetensors"] {
        let dir = tempfile::tempdir()?;
        let lora = fixture("tiny-flux-dev-lora").join(file);
        let opts = BuildOptions {
            loras: vec![format!("{}:0.8", lora.display()).parse()?],
            ..tiny_options()
        };
        let out = dir.path().join("model");
        let report = flux_builder::build(&fixture("tiny-flux-dev-diffusers"), &opts, &out)?;
        assert!(report.lora_layers > 0, "{file}: nothing merged");
        let (latents, pixels) = replay(&out, &case)?;
        println!("{file}: final latents {latents:.2e}, pixels {pixels}");
        ensure!(
            latents <= 1e-4 && pixels <= 1,
            "{file}: latents {latents}, pixels {pixels}"
        );
    }
    // A LoRA for another model is refused with the tensor named, and nothing is left behind.
    let dir = tempfile::tempdir()?;
    let bogus = dir.path().join("other.safetensors");
    flux_builder::weights::write_safetensors(
        &bogus,
        &[(
            "transformer.down_blocks.0.attn.to_q.lora_A.weight",
            flux_builder::DType::F32,
            &[4, 8],
            &flux_builder::weights::f32_bytes(&[0.0; 32]),
        )],
    )?;
    let opts = BuildOptions {
        loras: vec![bogus.display().to_string().parse()?],
        ..tiny_options()
    };
    let out = dir.path().join("model");
    let err = flux_builder::build(&fixture("tiny-flux-dev-diffusers"), &opts, &out)
        .expect_err("foreign LoRA")
        .to_string();
    assert!(
        err.contains("other.safetensors") && err.contains("down_blocks.0"),
        "{err}"
    );
    assert!(!out.exists());
    Ok(())
}

#[test]
fn a_folder_s_own_text_length_is_used_unless_the_options_set_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("diffusers");
    copy_tree(&fixture("tiny-flux-dev-diffusers"), &source)?;
    std::fs::write(
        source.join(flux_builder::source_defaults::FILE_NAME),
        r#"{"text_length": 48, "comment": "trained with 48 T5 tokens"}"#,
    )?;
    let plain = BuildOptions::default();
    let report = flux_builder::build(&source, &plain, &dir.path().join("own"))?;
    assert_eq!(report.text_length, 48);
    let report = flux_builder::build(&source, &tiny_options(), &dir.path().join("explicit"))?;
    assert_eq!(report.text_length, 32, "an explicit text length wins");
    // The file is part of the cache key: changing it builds anew.
    let before = flux_builder::cache_key(&source, &plain)?;
    std::fs::write(
        source.join(flux_builder::source_defaults::FILE_NAME),
        r#"{"text_length": 64}"#,
    )?;
    assert_ne!(before, flux_builder::cache_key(&source, &plain)?);
    // A typo is an error that names the file, before any work.
    std::fs::write(
        source.join(flux_builder::source_defaults::FILE_NAME),
        r#"{"text_lenght": 64}"#,
    )?;
    let out = dir.path().join("typo");
    let err = flux_builder::build(&source, &plain, &out)
        .expect_err("typo")
        .to_string();
    assert!(
        err.contains("flux-rs-model.json") && err.contains("text_lenght"),
        "{err}"
    );
    assert!(!out.exists());
    Ok(())
}
