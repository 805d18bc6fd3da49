//! `--precision int8|int4`: the transformer's and T5's linears quantized (int8: the transformer's
//! as DynamicQuantizeMatMul over per-channel int8, T5's as 8-bit MatMulNBits blocks; int4: both as
//! 4-bit blocks; CLIP and the VAE stay fp32). The built folders load, every linear of the two
//! graphs is quantized with its kernel, the weights shrink, and each reference case replays close to diffusers' fp32
//! result (stated bounds below; the tiny model's random weights are a hard case for quantization:
//! no outliers are smoothed by training, every block uses its whole range).

use anyhow::{Context, Result, ensure};
use flux_builder::onnx::initializer_bytes;
use flux_builder::onnx::proto::ModelProto;
use flux_builder::{BuildOptions, Precision};
use prost::Message;

use crate::common::fixture;
use crate::layout::{cases_of, replay_stats};

/// Nodes of `op` and `Gemm` (an fp32 linear) in a graph.
fn op_counts(graph: &std::path::Path, op: &str) -> Result<(usize, usize)> {
    let model = ModelProto::decode(std::fs::read(graph)?.as_slice())?;
    let nodes = model.graph.context("graph")?.node;
    let count = |op: &str| nodes.iter().filter(|n| n.op_type == op).count();
    Ok((count(op), count("Gemm")))
}

#[test]
fn int8_and_int4_builds_quantize_every_large_linear_and_replay_close_to_diffusers() -> Result<()> {
    let source = fixture("tiny-flux-dev-diffusers");
    let dir = tempfile::tempdir()?;
    let build = |precision: Precision, name: &str| {
        let out = dir.path().join(name);
        flux_builder::build(
            &source,
            &BuildOptions {
                precision,
                text_length: Some(32),
                ..BuildOptions::default()
            },
            &out,
        )
        .map(|_| out)
    };
    let fp32 = build(Precision::F32, "fp32")?;
    let fp32_gemms = op_counts(&fp32.join("transformer.opt/fp32/model.onnx"), "Gemm")?.1;
    let fp32_t5_gemms = op_counts(&fp32.join("t5.opt/model.onnx"), "Gemm")?.1;
    // Bounds for the tiny random-weight model, with a margin over what was measured (int8:
    // pixels <= 2, PSNR 53.5-55.5 dB; int4: pixels 20-26, PSNR 36.6-37.3 dB); pixels are 0-255,
    // PSNR against diffusers' fp32 PNGs.
    for (precision, name, transformer_op, max_pixels, min_psnr) in [
        (Precision::Int8, "int8", "DynamicQuantizeMatMul", 4, 50.0),
        (Precision::Int4, "int4", "MatMulNBits", 40, 33.0),
    ] {
        let out = build(precision, name)?;
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("flux-rs.json"))?)?;
        assert_eq!(
            manifest["transformer"],
            format!("transformer.opt/{name}/model.onnx")
        );
        let transformer = out.join(format!("transformer.opt/{name}"));
        assert_eq!(
            op_counts(&transformer.join("model.onnx"), transformer_op)?,
            (fp32_gemms, 0),
            "{name}: every transformer linear is {transformer_op}"
        );
        assert_eq!(
            op_counts(&out.join("t5.opt/model.onnx"), "MatMulNBits")?,
            (fp32_t5_gemms, 0),
            "{name}: every T5 linear is MatMulNBits"
        );
        let clip = out.join("clip.opt/model.onnx");
        for op in ["MatMulNBits", "DynamicQuantizeMatMul"] {
            assert_eq!(op_counts(&clip, op)?.0, 0, "CLIP stays fp32");
        }
        let (small, full) = (
            initializer_bytes(&transformer.join("model.onnx"))?,
            initializer_bytes(&fp32.join("transformer.opt/fp32/model.onnx"))?,
        );
        println!("{name}: transformer weights {small} bytes vs fp32 {full}");
        ensure!(
            (small as f64) < full as f64 * if name == "int8" { 0.35 } else { 0.22 },
            "{name}: {small} bytes is not much less than fp32's {full}"
        );
        for case in cases_of("dev")? {
            let stats = replay_stats(&out, &case)?;
            println!(
                "{name} {}: final latents {:.3e}, pixels {}, PSNR {:.1} dB",
                case.file_name().unwrap_or_default().to_string_lossy(),
                stats.latents,
                stats.pixels,
                stats.psnr
            );
            ensure!(
                stats.pixels <= max_pixels && stats.psnr >= min_psnr,
                "{name} {}: pixels {} (bound {max_pixels}), PSNR {:.1} dB (bound {min_psnr})",
                case.display(),
                stats.pixels,
                stats.psnr
            );
        }
    }
    Ok(())
}

#[test]
fn int4_is_refused_for_cuda_before_anything_is_written() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("cuda-int4");
    let err = flux_builder::build(
        &fixture("tiny-flux-dev-diffusers"),
        &BuildOptions {
            precision: Precision::Int4,
            device: flux_builder::Device::Cuda,
            ..BuildOptions::default()
        },
        &out,
    )
    .expect_err("int4 on cuda");
    assert!(err.to_string().contains("CPU provider"), "{err}");
    assert!(!out.exists());
    Ok(())
}
