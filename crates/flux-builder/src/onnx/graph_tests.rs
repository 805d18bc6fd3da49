//! Unit tests of `GraphBuilder::finish` (weights linked, converted, transposed).

use super::*;
use crate::weights::{DType, write_safetensors};

fn entry<'a>(t: &'a proto::TensorProto, key: &str) -> &'a str {
    t.external_data
        .iter()
        .find(|e| e.key == key)
        .map_or("", |e| e.value.as_str())
}

#[test]
fn finish_links_matching_dtype_and_converts_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("w.safetensors");
    let bf16: Vec<u8> = [1.0f32, -2.0]
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    write_safetensors(
        &src,
        &[
            (
                "lin.weight",
                DType::F32,
                &[2, 3],
                &weights::f32_bytes(&[1., 2., 3., 4., 5., 6.]),
            ),
            ("lin.bias", DType::BF16, &[2], &bf16),
        ],
    )
    .expect("write");
    let ckpt = Checkpoint::open_file(&src).expect("open");
    let mut g = GraphBuilder::new("t");
    let x = g.input("x", Elem::F32, &[Dim::Sym("B"), Dim::Fixed(3)]);
    let y = g.linear(&x, &ckpt, "lin").expect("linear");
    let t = g
        .weight_transposed(&ckpt, "lin.weight")
        .expect("transposed");
    let z = g.matmul(&x, &t);
    g.output(&y, "y", Elem::F32, &[Dim::Sym("B"), Dim::Fixed(2)]);
    g.output(&z, "z", Elem::F32, &[Dim::Sym("B"), Dim::Fixed(2)]);
    let out = dir.path().join("graph");
    let report = g.finish(&out).expect("finish");
    assert_eq!(report.linked_tensors, 1);
    assert_eq!(report.converted_tensors, 2);
    assert_eq!(report.linked_files, ["weights-0.safetensors"]);

    let bytes = std::fs::read(out.join("model.onnx")).expect("model");
    let model = proto::ModelProto::decode(bytes.as_slice()).expect("decode");
    let graph = model.graph.expect("graph");
    let init = |name: &str| {
        graph
            .initializer
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no initializer {name}"))
    };
    let w = init("lin.weight");
    let info = ckpt.info("lin.weight").expect("info");
    assert_eq!(entry(w, "location"), "weights-0.safetensors");
    assert_eq!(entry(w, "offset"), info.offset.to_string());
    assert_eq!(w.dims, [2, 3]);
    let data = std::fs::read(out.join(DATA_FILE)).expect("data");
    let read = |t: &proto::TensorProto| -> Vec<f32> {
        let off: usize = entry(t, "offset").parse().expect("offset");
        let len: usize = entry(t, "length").parse().expect("length");
        assert_eq!(entry(t, "location"), DATA_FILE);
        assert_eq!(off % DATA_ALIGN as usize, 0);
        data[off..off + len]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    assert_eq!(read(init("lin.bias")), [1.0, -2.0]);
    let wt = init("lin.weight^T");
    assert_eq!(wt.dims, [3, 2]);
    assert_eq!(read(wt), [1., 4., 2., 5., 3., 6.]);
    // Outputs were renamed through Identity nodes; the model declares both opsets.
    assert_eq!(
        graph
            .output
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["y", "z"]
    );
    assert_eq!(model.opset_import.len(), 2);
    assert_eq!(model.ir_version, proto::IR_VERSION);
}

#[test]
fn without_links_everything_is_converted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("w.safetensors");
    write_safetensors(
        &src,
        &[("w", DType::F32, &[2], &weights::f32_bytes(&[7., 8.]))],
    )
    .expect("write");
    let ckpt = Checkpoint::open_file(&src).expect("open");
    let mut g = GraphBuilder::new("t");
    g.set_link_weights(false);
    let w = g.weight(&ckpt, "w").expect("w");
    let again = g.weight(&ckpt, "w").expect("w");
    assert_eq!(
        w, again,
        "a weight is one initializer however often it is used"
    );
    g.output(&w, "y", Elem::F32, &[Dim::Fixed(2)]);
    let report = g.finish(&dir.path().join("g")).expect("finish");
    assert_eq!((report.linked_tensors, report.converted_tensors), (0, 1));
    assert!(!dir.path().join("g/weights-0.safetensors").exists());
}
