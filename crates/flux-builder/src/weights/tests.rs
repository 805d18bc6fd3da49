//! Unit tests of `weights`: good files, and every malformed input reported with file and tensor.

use super::*;

fn raw_file(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(&path, bytes).expect("write");
    path
}

fn message(result: Result<Checkpoint>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_f32_f16_bf16_and_offsets_are_absolute() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.safetensors");
    let f16: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = [0.25f32, 3.0, -1.0]
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    write_safetensors(
        &path,
        &[
            ("a", DType::F32, &[2, 2], &f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
            ("b", DType::F16, &[2], &f16),
            ("c", DType::BF16, &[3, 1], &bf16),
        ],
    )
    .expect("write");
    let ckpt = Checkpoint::open_file(&path).expect("open");
    assert_eq!(ckpt.names().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(ckpt.read_f32("a").expect("a"), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(ckpt.read_f32("b").expect("b"), [1.5, -2.0]);
    assert_eq!(ckpt.read_f32("c").expect("c"), [0.25, 3.0, -1.0]);
    let info = ckpt.info("b").expect("info");
    assert_eq!(
        (info.dtype, info.shape.clone(), info.len),
        (DType::F16, vec![2], 4)
    );
    // The offset is absolute: reading the file there gives the tensor's bytes.
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(&bytes[info.offset as usize..][..4], &f16[..]);
    assert_eq!(ckpt.files().len(), 1);
}

#[test]
fn missing_tensor_names_tensor_and_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.safetensors");
    write_safetensors(&path, &[("a", DType::F32, &[1], &f32_bytes(&[1.0]))]).expect("write");
    let ckpt = Checkpoint::open_file(&path).expect("open");
    let err = ckpt.info("nope").expect_err("missing").to_string();
    assert!(
        err.contains("nope") && err.contains("w.safetensors"),
        "{err}"
    );
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short.safetensors");
    std::fs::write(&short, [1u8, 2, 3]).expect("write");
    let err = message(Checkpoint::open_file(&short));
    assert!(
        err.contains("short.safetensors") && err.contains("truncated"),
        "{err}"
    );

    // Header length larger than the file.
    let cut = dir.path().join("cut.safetensors");
    let mut bytes = 100u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\":");
    std::fs::write(&cut, bytes).expect("write");
    let err = message(Checkpoint::open_file(&cut));
    assert!(
        err.contains("cut.safetensors") && err.contains("truncated"),
        "{err}"
    );

    // A good file cut inside its data: the last tensor's offsets point past the end.
    let full = dir.path().join("full.safetensors");
    write_safetensors(
        &full,
        &[
            ("a", DType::F32, &[2], &f32_bytes(&[1.0, 2.0])),
            ("b", DType::F32, &[2], &f32_bytes(&[3.0, 4.0])),
        ],
    )
    .expect("write");
    let mut bytes = std::fs::read(&full).expect("read");
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&full, bytes).expect("write");
    let err = message(Checkpoint::open_file(&full));
    assert!(
        err.contains("full.safetensors") && err.contains("tensor b"),
        "{err}"
    );
}

#[test]
fn lying_headers_are_refused_with_the_tensor_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let cases = [
        // end before begin
        (
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
            "lie outside",
        ),
        // past the end of the data
        (
            r#"{"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#,
            "lie outside",
        ),
        // shape x dtype != byte count
        (
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
            "needs 12 bytes",
        ),
        // overlap
        (
            r#"{"v":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            "overlaps",
        ),
        // unknown dtype
        (
            r#"{"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,2]}}"#,
            "unknown dtype",
        ),
        // no offsets
        (r#"{"w":{"dtype":"F32","shape":[4]}}"#, "data_offsets"),
        // a shape whose byte count overflows u64
        (
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
            "too many",
        ),
    ];
    for (i, (header, want)) in cases.iter().enumerate() {
        let path = raw_file(dir.path(), &format!("bad{i}.safetensors"), header, &data);
        let err = message(Checkpoint::open_file(&path));
        assert!(
            err.contains(&format!("bad{i}.safetensors"))
                && err.contains("tensor w")
                && err.contains(want),
            "case {i}: {err}"
        );
    }
    let path = raw_file(dir.path(), "notjson.safetensors", "{not json", &data);
    assert!(message(Checkpoint::open_file(&path)).contains("not JSON"));
    let path = raw_file(dir.path(), "array.safetensors", "[1,2]", &data);
    assert!(message(Checkpoint::open_file(&path)).contains("not a JSON object"));
}

#[test]
fn other_dtypes_open_but_are_refused_when_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = raw_file(
        dir.path(),
        "ids.safetensors",
        r#"{"__metadata__":{"format":"pt"},"position_ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#,
        &[0u8; 16],
    );
    let ckpt = Checkpoint::open_file(&path).expect("opens");
    let err = ckpt
        .read_f32("position_ids")
        .expect_err("refused")
        .to_string();
    assert!(err.contains("position_ids") && err.contains("I64"), "{err}");
}

#[test]
fn sharded_component_and_missing_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_safetensors(
        &d.join("model-00001-of-00002.safetensors"),
        &[("a", DType::F32, &[1], &f32_bytes(&[1.0]))],
    )
    .expect("write");
    write_safetensors(
        &d.join("model-00002-of-00002.safetensors"),
        &[("b", DType::F32, &[1], &f32_bytes(&[2.0]))],
    )
    .expect("write");
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).expect("write");
    let ckpt = Checkpoint::open_component(d).expect("open");
    assert_eq!(ckpt.read_f32("b").expect("b"), [2.0]);
    assert_eq!(ckpt.files().len(), 2);

    // The index places a tensor in a shard that does not hold it.
    let index = serde_json::json!({"weight_map": {
        "a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).expect("write");
    let err = message(Checkpoint::open_component(d));
    assert!(
        err.contains("tensor a") && err.contains("model-00002-of-00002"),
        "{err}"
    );

    // A shard is missing.
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).expect("rm");
    let index = serde_json::json!({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).expect("write");
    let err = message(Checkpoint::open_component(d));
    assert!(
        err.contains("missing shard")
            && err.contains("model-00002-of-00002.safetensors")
            && err.contains("tensor b"),
        "{err}"
    );

    // No weights at all.
    let empty = tempfile::tempdir().expect("tempdir");
    let err = message(Checkpoint::open_component(empty.path()));
    assert!(
        err.contains("diffusion_pytorch_model.safetensors") && err.contains("model.safetensors"),
        "{err}"
    );
}

#[test]
fn duplicate_tensor_across_files_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    write_safetensors(&a, &[("w", DType::F32, &[1], &f32_bytes(&[1.0]))]).expect("write");
    write_safetensors(&b, &[("w", DType::F32, &[1], &f32_bytes(&[2.0]))]).expect("write");
    let mut ckpt = Checkpoint::open_file(&a).expect("open");
    let err = ckpt.add_file(&b).expect_err("duplicate").to_string();
    assert!(
        err.contains("tensor w") && err.contains("a.safetensors"),
        "{err}"
    );
}

#[test]
fn overrides_rename_views_and_shape_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.safetensors");
    write_safetensors(
        &path,
        &[(
            "qkv",
            DType::F32,
            &[3, 2],
            &f32_bytes(&[1., 2., 3., 4., 5., 6.]),
        )],
    )
    .expect("write");
    let mut ckpt = Checkpoint::open_file(&path).expect("open");
    let fused = ckpt.info("qkv").expect("info");
    ckpt.insert_view(
        "k",
        TensorInfo {
            name: "k".into(),
            dtype: DType::F32,
            shape: vec![1, 2],
            file: fused.file.clone(),
            offset: fused.offset + 8,
            len: 8,
        },
    );
    assert_eq!(ckpt.read_f32("k").expect("k"), [3.0, 4.0]);
    ckpt.insert_owned("q", vec![2], vec![9.0, 8.0]);
    assert_eq!(ckpt.read_f32("q").expect("q"), [9.0, 8.0]);
    assert!(ckpt.owned("q").is_some() && ckpt.owned("k").is_none());
    ckpt.rename("qkv", "fused").expect("rename");
    assert!(!ckpt.contains("qkv") && ckpt.contains("fused"));
    assert!(ckpt.rename("qkv", "x").is_err());
    ckpt.expect_shape("fused", &[3, 2]).expect("shape ok");
    let err = ckpt
        .expect_shape("fused", &[2, 3])
        .expect_err("mismatch")
        .to_string();
    assert!(err.contains("fused") && err.contains("[2, 3]"), "{err}");
}
