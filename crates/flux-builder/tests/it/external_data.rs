//! What ONNX Runtime 1.31 accepts as external-data locations: the reason `finish` hard-links
//! checkpoint files into the graph folder instead of pointing at them where they are.

use anyhow::Result;
use flux_builder::onnx::{Dim, Elem, GraphBuilder};
use flux_builder::weights::{Checkpoint, DType, f32_bytes, write_safetensors};
use ndarray::{ArrayD, IxDyn};

use crate::common::{Feed, run, session};

fn graph(
    ckpt: &Checkpoint,
    out: &std::path::Path,
    link: bool,
) -> Result<flux_builder::onnx::WeightsReport> {
    let mut g = GraphBuilder::new("ext");
    g.set_link_weights(link);
    let x = g.input("x", Elem::F32, &[Dim::Sym("B"), Dim::Fixed(3)]);
    let y = g.linear(&x, ckpt, "lin")?;
    g.output(&y, "y", Elem::F32, &[Dim::Sym("B"), Dim::Fixed(2)]);
    Ok(g.finish(out)?)
}

#[test]
fn hard_linked_safetensors_runs_and_outside_locations_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("model.safetensors");
    // A bf16 bias next to an f32 weight: one tensor links, the other is converted.
    let bias: Vec<u8> = [0.5f32, -1.0].iter().flat_map(|v| half_bf16(*v)).collect();
    write_safetensors(
        &src,
        &[
            (
                "lin.weight",
                DType::F32,
                &[2, 3],
                &f32_bytes(&[1., 2., 3., 4., 5., 6.]),
            ),
            ("lin.bias", DType::BF16, &[2], &bias),
        ],
    )?;
    let ckpt = Checkpoint::open_file(&src)?;
    let x = Feed::F32(ArrayD::from_shape_vec(
        IxDyn(&[2, 3]),
        vec![1., 0., 0., 0., 1., 1.],
    )?);
    let want = [1.5f32, 3.0, 5.5, 10.0];
    for link in [true, false] {
        let out = dir.path().join(format!("graph-{link}"));
        let report = graph(&ckpt, &out, link)?;
        assert_eq!(report.linked_tensors, usize::from(link));
        let mut s = session(&out.join("model.onnx"))?;
        let y = run(&mut s, &[("x", &x)])?.remove(0);
        assert_eq!(y.iter().copied().collect::<Vec<_>>(), want, "link {link}");
    }

    // The same graph pointing at the checkpoint by absolute path, by `..`, or through a symlink:
    // ORT 1.31.1 refuses all three at load.
    let linked = dir.path().join("graph-true");
    let model = std::fs::read(linked.join("model.onnx"))?;
    let text = String::from_utf8_lossy(&model).into_owned();
    assert!(text.contains("weights-0.safetensors"));
    std::os::unix::fs::symlink(&src, dir.path().join("sym.safetensors"))?;
    for (i, location) in [src.display().to_string(), "../model.safetensors".to_owned()]
        .iter()
        .enumerate()
    {
        let other = dir.path().join(format!("outside-{i}"));
        std::fs::create_dir_all(&other)?;
        let patched = replace_location(&model, "weights-0.safetensors", location);
        std::fs::write(other.join("model.onnx"), patched)?;
        std::fs::copy(
            linked.join(flux_builder::onnx::DATA_FILE),
            other.join(flux_builder::onnx::DATA_FILE),
        )?;
        let err = session(&other.join("model.onnx"))
            .err()
            .map(|e| format!("{e:#}"));
        let err = err.unwrap_or_default();
        assert!(err.contains("External data path"), "{location}: {err}");
    }
    let other = dir.path().join("outside-sym");
    std::fs::create_dir_all(&other)?;
    std::os::unix::fs::symlink(&src, other.join("weights-0.safetensors"))?;
    std::fs::write(other.join("model.onnx"), &model)?;
    std::fs::copy(
        linked.join(flux_builder::onnx::DATA_FILE),
        other.join(flux_builder::onnx::DATA_FILE),
    )?;
    let err = session(&other.join("model.onnx"))
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("escapes model directory"), "symlink: {err}");
    Ok(())
}

fn half_bf16(v: f32) -> [u8; 2] {
    // bf16 = the top half of the f32 bits (exact for these values).
    let bits = (v.to_bits() >> 16) as u16;
    bits.to_le_bytes()
}

/// Rewrites one length-prefixed protobuf string (the location) in an encoded model.
fn replace_location(model: &[u8], from: &str, to: &str) -> Vec<u8> {
    use prost::Message;
    let mut decoded = flux_builder::onnx::proto::ModelProto::decode(model).expect("decodes");
    for t in &mut decoded.graph.as_mut().expect("graph").initializer {
        for e in &mut t.external_data {
            if e.key == "location" && e.value == from {
                e.value = to.to_owned();
            }
        }
    }
    decoded.encode_to_vec()
}
