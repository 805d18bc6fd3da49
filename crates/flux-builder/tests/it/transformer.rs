//! The built FLUX transformer (dev and schnell) against the committed graphs (same weights).

use anyhow::Result;
use flux_builder::graphs::config::{Config, read_config};
use flux_builder::graphs::transformer::build_transformer;
use flux_builder::{BuildOptions, Checkpoint};
use ndarray::{ArrayD, IxDyn};

use crate::common::{Feed, assert_close, diffusers, fixture, run, session, uniform};

const TEXT: usize = 32;

fn img_ids(h2: usize, w2: usize) -> ArrayD<f32> {
    let mut ids = Vec::with_capacity(h2 * w2 * 3);
    for y in 0..h2 {
        for x in 0..w2 {
            ids.extend([0.0, y as f32, x as f32]);
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[h2 * w2, 3]), ids).expect("shape")
}

fn parity(variant: &str) -> Result<()> {
    let dir = diffusers(variant, "transformer");
    let (json, path) = read_config(&dir)?;
    let config = Config::new(&json, &path);
    let ckpt = Checkpoint::open_component(&dir)?;
    let out = tempfile::tempdir()?;
    build_transformer(&ckpt, &config, TEXT, &BuildOptions::default(), out.path())?;
    let mut built = session(&out.path().join("model.onnx"))?;
    let mut committed = session(&fixture(&format!(
        "tiny-flux-{variant}/transformer.opt/fp32/model.onnx"
    )))?;
    let dev = variant == "dev";
    // Odd sizes, a batch other than the traced one, large image ids (positions of a 1024² image).
    for (case, (b, h2, w2, id_offset)) in [
        (3usize, 5usize, 3usize, 0.0f32),
        (1, 4, 4, 0.0),
        (2, 2, 7, 60.0),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 100 * case as u64;
        let s = h2 * w2;
        let feeds = [
            ("hidden_states", Feed::F32(uniform(&[b, s, 64], seed) * 2.0)),
            (
                "encoder_hidden_states",
                Feed::F32(uniform(&[b, TEXT, 32], seed + 1) * 2.0),
            ),
            (
                "pooled_projections",
                Feed::F32(uniform(&[b, 48], seed + 2) * 2.0),
            ),
            (
                "timestep",
                Feed::F32(uniform(&[b], seed + 3).mapv(|v| v * 0.5 + 0.5)),
            ),
            ("img_ids", Feed::F32(img_ids(h2, w2) + id_offset)),
            ("txt_ids", Feed::F32(ArrayD::zeros(IxDyn(&[TEXT, 3])))),
            (
                "guidance",
                Feed::F32(uniform(&[b], seed + 4).mapv(|v| (v + 1.0) * 5.0)),
            ),
        ];
        let feeds: Vec<(&str, &Feed)> = feeds
            .iter()
            .filter(|(name, _)| dev || *name != "guidance")
            .map(|(n, f)| (*n, f))
            .collect();
        let want = run(&mut committed, &feeds)?.remove(0);
        let got = run(&mut built, &feeds)?.remove(0);
        assert_eq!(got.shape(), [b, s, 64]);
        assert_close(
            &format!("transformer {variant} b{b} {h2}x{w2}+{id_offset}"),
            &got,
            &want,
            1e-4,
        );
    }
    Ok(())
}

#[test]
fn built_dev_transformer_matches_the_committed_graph() -> Result<()> {
    parity("dev")
}

#[test]
fn built_schnell_transformer_matches_the_committed_graph() -> Result<()> {
    parity("schnell")
}

#[test]
fn configs_that_contradict_the_weights_or_name_another_model_are_refused() -> Result<()> {
    let dir = diffusers("dev", "transformer");
    let (json, path) = read_config(&dir)?;
    let ckpt = Checkpoint::open_component(&dir)?;
    let out = tempfile::tempdir()?;
    let build = |json: &serde_json::Value| {
        build_transformer(
            &ckpt,
            &Config::new(json, &path),
            TEXT,
            &BuildOptions::default(),
            out.path(),
        )
        .expect_err("refused")
        .to_string()
    };
    // Same width (4 x 8 = 2 x 16), other head size: the QK norm weights say 16.
    let mut heads = json.clone();
    heads["num_attention_heads"] = 4.into();
    heads["attention_head_dim"] = 8.into();
    heads["axes_dims_rope"] = serde_json::json!([2, 2, 4]);
    let err = build(&heads);
    assert!(
        err.contains("transformer_blocks.0.attn.norm_q.weight") && err.contains("[8]"),
        "{err}"
    );
    // One more double block than the checkpoint has.
    let mut layers = json.clone();
    layers["num_layers"] = 2.into();
    let err = build(&layers);
    assert!(
        err.contains("transformer_blocks.1.") && err.contains("missing"),
        "{err}"
    );
    // Another architecture.
    let mut other = json.clone();
    other["_class_name"] = "SD3Transformer2DModel".into();
    let err = build(&other);
    assert!(
        err.contains("SD3Transformer2DModel") && err.contains("config.json"),
        "{err}"
    );
    // guidance_embeds contradicting the weights.
    let mut schnell = json.clone();
    schnell["guidance_embeds"] = false.into();
    let err = build(&schnell);
    assert!(err.contains("guidance"), "{err}");
    Ok(())
}
