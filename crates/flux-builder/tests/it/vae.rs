//! The built VAE decoder against the committed one (same weights), on the same random latents.

use anyhow::Result;
use flux_builder::graphs::config::{Config, read_config};
use flux_builder::graphs::vae::{AttentionKind, build_vae, build_vae_with, vae_factors};
use flux_builder::{BuildOptions, Checkpoint};

use crate::common::{Feed, assert_close, diffusers, fixture, run, session, uniform};

#[test]
fn built_vae_matches_the_committed_graph() -> Result<()> {
    let dir = diffusers("dev", "vae");
    let (json, path) = read_config(&dir)?;
    let config = Config::new(&json, &path);
    let factors = vae_factors(&config)?;
    assert_eq!(
        (factors.scaling_factor, factors.shift_factor),
        (0.3611, 0.1159)
    );
    let ckpt = Checkpoint::open_component(&dir)?;
    let out = tempfile::tempdir()?;
    let report = build_vae(&ckpt, &config, &BuildOptions::default(), out.path())?;
    assert!(
        report.linked_tensors > 0 && report.converted_tensors == 0,
        "{report:?}"
    );
    let plain = out.path().join("plain");
    build_vae_with(
        &ckpt,
        &config,
        &BuildOptions::default(),
        AttentionKind::Plain,
        &plain,
    )?;

    let mut built = session(&out.path().join("model.onnx"))?;
    let mut unfused = session(&plain.join("model.onnx"))?;
    let mut committed = session(&fixture("tiny-flux-dev/vae.opt/model.onnx"))?;
    for (i, shape) in [[2usize, 16, 6, 10], [1, 16, 8, 8]].iter().enumerate() {
        // Latents of the size the pipeline feeds (unscaled z: about N(0.1, 2.8)).
        let latent = Feed::F32(uniform(shape, 7 + i as u64) * 4.0);
        let want = run(&mut committed, &[("latent", &latent)])?.remove(0);
        let got = run(&mut built, &[("latent", &latent)])?.remove(0);
        assert_eq!(got.shape(), [shape[0], 3, shape[2] * 8, shape[3] * 8]);
        assert_close(&format!("vae {shape:?} fused"), &got, &want, 1e-4);
        let got = run(&mut unfused, &[("latent", &latent)])?.remove(0);
        assert_close(&format!("vae {shape:?} plain"), &got, &want, 1e-4);
    }
    Ok(())
}

#[test]
fn vae_configs_that_contradict_the_weights_are_refused_with_the_tensor_named() -> Result<()> {
    let dir = diffusers("dev", "vae");
    let (json, path) = read_config(&dir)?;
    let ckpt = Checkpoint::open_component(&dir)?;
    let out = tempfile::tempdir()?;
    let build = |json: &serde_json::Value| {
        build_vae(
            &ckpt,
            &Config::new(json, &path),
            &BuildOptions::default(),
            out.path(),
        )
        .expect_err("refused")
        .to_string()
    };
    let mut widths = json.clone();
    widths["block_out_channels"] = serde_json::json!([16, 32, 32, 32]);
    let err = build(&widths);
    assert!(
        err.contains("decoder.up_blocks.2.resnets.0.conv1.weight")
            && err.contains("[32, 32, 3, 3]"),
        "{err}"
    );
    let mut layers = json.clone();
    layers["layers_per_block"] = 2.into();
    let err = build(&layers);
    assert!(
        err.contains("resnets.2") && err.contains("missing"),
        "{err}"
    );
    let mut other = json.clone();
    other["_class_name"] = "AutoencoderTiny".into();
    assert!(build(&other).contains("AutoencoderTiny"));
    Ok(())
}
