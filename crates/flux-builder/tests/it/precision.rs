//! 16-bit graphs (what `--precision fp16 --device cuda` writes). CUDA cannot run here, but ORT's
//! CPU provider loads them (type-checking every node) and runs them with its fp16 fallbacks, so
//! they are compared with the fp32 graphs at fp16 precision.

use anyhow::Result;
use flux_builder::{BuildOptions, Device, Precision};
use ndarray::{ArrayD, IxDyn};

use crate::common::{Feed, assert_close, fixture, run, session, uniform};

#[test]
fn fp16_graphs_for_cuda_are_well_typed_and_close_to_fp32() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = BuildOptions {
        precision: Precision::F16,
        device: Device::Cuda,
        text_length: Some(32),
        ..BuildOptions::default()
    };
    let out = dir.path().join("fp16");
    let report = flux_builder::build(&fixture("tiny-flux-dev-diffusers"), &opts, &out)?;
    // T5 stays fp32 (it overflows in fp16): its f32 weights are linked as they are.
    let t5 = &report
        .graphs
        .iter()
        .find(|(g, _)| *g == "t5")
        .expect("t5")
        .1;
    assert!(t5.linked_tensors > 0 && t5.converted_tensors == 0, "{t5:?}");
    let fp32 = dir.path().join("fp32");
    flux_builder::build(
        &fixture("tiny-flux-dev-diffusers"),
        &BuildOptions {
            text_length: Some(32),
            ..BuildOptions::default()
        },
        &fp32,
    )?;

    let s = 12;
    let mut ids = Vec::new();
    for y in 0..3 {
        for x in 0..4 {
            ids.extend([0.0f32, y as f32, x as f32]);
        }
    }
    let feeds = [
        ("hidden_states", Feed::F32(uniform(&[2, s, 64], 1) * 2.0)),
        (
            "encoder_hidden_states",
            Feed::F32(uniform(&[2, 32, 32], 2) * 2.0),
        ),
        ("pooled_projections", Feed::F32(uniform(&[2, 48], 3) * 2.0)),
        (
            "timestep",
            Feed::F32(ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.3, 0.9])?),
        ),
        (
            "img_ids",
            Feed::F32(ArrayD::from_shape_vec(IxDyn(&[s, 3]), ids)?),
        ),
        ("txt_ids", Feed::F32(ArrayD::zeros(IxDyn(&[32, 3])))),
        (
            "guidance",
            Feed::F32(ArrayD::from_shape_vec(IxDyn(&[2]), vec![3.5, 7.0])?),
        ),
    ];
    let feeds: Vec<(&str, &Feed)> = feeds.iter().map(|(n, f)| (*n, f)).collect();
    let half = run(
        &mut session(&out.join("transformer.opt/fp16/model.onnx"))?,
        &feeds,
    )?
    .remove(0);
    let full = run(
        &mut session(&fp32.join("transformer.opt/fp32/model.onnx"))?,
        &feeds,
    )?
    .remove(0);
    assert_close("transformer fp16 vs fp32", &half, &full, 1e-2);

    let latent = Feed::F32(uniform(&[1, 16, 8, 8], 4) * 4.0);
    let half = run(
        &mut session(&out.join("vae.opt/model.onnx"))?,
        &[("latent", &latent)],
    )?
    .remove(0);
    let full = run(
        &mut session(&fp32.join("vae.opt/model.onnx"))?,
        &[("latent", &latent)],
    )?
    .remove(0);
    assert_close("vae fp16 vs fp32", &half, &full, 1e-2);
    Ok(())
}
