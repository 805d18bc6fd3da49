//! Loads every committed fixture file listed in `fixtures/index.json` (made by
//! `tools/tiny-flux/generate.py`) in the format the pipeline reads it, and checks that the model
//! folders, the reference cases and the randn references agree with each other in shape.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use ndarray::ArrayD;
use ndarray_npy::read_npy;
use serde::Deserialize;

/// Newest ONNX IR version that ONNX Runtime 1.31 reads.
const MAX_IR_VERSION: u64 = 13;
const CLIP_LENGTH: usize = 77;
const T5_LENGTH: usize = 32;
const T5_PAD_ID: i64 = 0;
const T5_EOS_ID: i64 = 1;

fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    read_npy(path).with_context(|| format!("reading {} as float32 .npy", path.display()))
}

fn read_i64(path: &Path) -> Result<ArrayD<i64>> {
    read_npy(path).with_context(|| format!("reading {} as int64 .npy", path.display()))
}

#[derive(Debug, Deserialize)]
struct FileIndex {
    files: Vec<FileEntry>,
}

#[derive(Debug, Deserialize)]
struct FileEntry {
    path: String,
    bytes: u64,
}

/// Reads the leading `ir_version` field of an ONNX `ModelProto` (protobuf field 1, a varint, which
/// the serializer writes first) and checks the tensor names the pipeline binds by are present.
fn check_onnx(path: &Path, required_names: &[&str]) -> Result<u64> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() > 64,
        "{}: too small for an ONNX model",
        path.display()
    );
    ensure!(
        bytes[0] == 0x08,
        "{}: does not start with the ModelProto ir_version field",
        path.display()
    );
    let mut ir_version = 0u64;
    let mut shift = 0;
    for &byte in &bytes[1..] {
        ir_version |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        ensure!(
            shift < 64,
            "{}: malformed ir_version varint",
            path.display()
        );
    }
    ensure!(
        (3..=MAX_IR_VERSION).contains(&ir_version),
        "{}: IR version {ir_version} outside 3..={MAX_IR_VERSION}",
        path.display()
    );
    for name in required_names {
        ensure!(
            bytes.windows(name.len()).any(|w| w == name.as_bytes()),
            "{}: tensor name {name:?} not found",
            path.display()
        );
    }
    Ok(ir_version)
}

/// Checks a safetensors file's framing: an 8-byte little-endian header length, a JSON header
/// inside the file, and tensor data that ends exactly at the end of the file.
fn check_safetensors(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() >= 8,
        "{}: shorter than a safetensors header",
        path.display()
    );
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[..8]);
    let header_len = usize::try_from(u64::from_le_bytes(len))?;
    ensure!(
        8 + header_len <= bytes.len(),
        "{}: header runs past the end of the file",
        path.display()
    );
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len])
        .with_context(|| format!("{}: header is not JSON", path.display()))?;
    let mut end = 0u64;
    for (name, tensor) in header.as_object().into_iter().flatten() {
        if name != "__metadata__" {
            end = end.max(tensor["data_offsets"][1].as_u64().unwrap_or(u64::MAX));
        }
    }
    ensure!(
        8 + header_len as u64 + end == bytes.len() as u64,
        "{}: tensor data does not end at the end of the file",
        path.display()
    );
    Ok(())
}

/// Every file in `fixtures/index.json` exists with its recorded size and loads in its format;
/// every file on disk is indexed (so the index cannot silently go stale).
#[test]
fn every_indexed_fixture_file_loads() -> Result<()> {
    let root = common::fixtures();
    let index: FileIndex = common::read_json(&root.join("index.json"))?;
    ensure!(
        index.files.len() > 100,
        "index lists only {} files",
        index.files.len()
    );
    let mut indexed = BTreeSet::new();
    for entry in &index.files {
        let path = root.join(&entry.path);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("indexed fixture {} is missing", entry.path))?
            .len();
        ensure!(
            size == entry.bytes,
            "{}: {size} bytes, index says {}",
            entry.path,
            entry.bytes
        );
        ensure!(size > 0, "{}: empty", entry.path);
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match extension {
            "npy" => {
                let loaded = read_f32(&path)
                    .map(|a| a.len())
                    .or_else(|_| read_i64(&path).map(|a| a.len()))
                    .with_context(|| format!("{}: neither float32 nor int64 .npy", entry.path))?;
                ensure!(loaded > 0, "{}: empty array", entry.path);
            }
            "json" => {
                let _: serde_json::Value = common::read_json(&path)?;
            }
            "png" => {
                let image =
                    image::open(&path).with_context(|| format!("decoding {}", entry.path))?;
                ensure!(
                    image.color() == image::ColorType::Rgb8,
                    "{}: not RGB8",
                    entry.path
                );
            }
            "onnx" => {
                check_onnx(&path, &[])?;
            }
            // The builder's inputs (diffusers folders, BFL files, LoRAs): the header must parse.
            "safetensors" => {
                check_safetensors(&path)?;
            }
            "txt" | "model" => {}
            other => bail!("{}: unexpected fixture file type {other:?}", entry.path),
        }
        indexed.insert(entry.path.clone());
    }
    for file in walk(&root)? {
        let relative = file
            .strip_prefix(&root)?
            .to_string_lossy()
            .replace('\\', "/");
        if relative != "index.json" {
            ensure!(
                indexed.contains(&relative),
                "{relative} is not in fixtures/index.json (rerun the generator)"
            );
        }
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

#[derive(Debug, Deserialize)]
struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    class_name: String,
    use_dynamic_shifting: bool,
    shift: f64,
    base_shift: f64,
    max_shift: f64,
    base_image_seq_len: u64,
    max_image_seq_len: u64,
}

/// Both tiny model folders hold the FLUX.1-dev-onnx layout with the tensor names flux-core binds.
#[test]
fn model_folders_have_the_official_layout() -> Result<()> {
    for (folder, dev) in [("tiny-flux-dev", true), ("tiny-flux-schnell", false)] {
        let root = common::fixtures().join(folder);
        check_onnx(
            &root.join("clip.opt/model.onnx"),
            &["input_ids", "text_embeddings", "pooled_embeddings"],
        )?;
        check_onnx(
            &root.join("t5.opt/model.onnx"),
            &["input_ids", "text_embeddings"],
        )?;
        let mut transformer_names = vec![
            "hidden_states",
            "encoder_hidden_states",
            "pooled_projections",
            "timestep",
            "img_ids",
            "txt_ids",
            "latent",
        ];
        if dev {
            transformer_names.push("guidance");
        }
        check_onnx(
            &root.join("transformer.opt/fp32/model.onnx"),
            &transformer_names,
        )?;
        check_onnx(&root.join("vae.opt/model.onnx"), &["latent", "images"])?;
        if dev {
            check_onnx(
                &root.join("safety_checker/model.onnx"),
                &["pixel_values", "logits"],
            )?;
        }
        for file in [
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "tokenizer/tokenizer_config.json",
            "tokenizer/special_tokens_map.json",
            "tokenizer_2/tokenizer.json",
            "tokenizer_2/spiece.model",
            "tokenizer_2/tokenizer_config.json",
            "tokenizer_2/special_tokens_map.json",
        ] {
            ensure!(root.join(file).is_file(), "{folder}/{file} missing");
        }
        ensure!(
            !root.join("tokenizer/tokenizer.json").exists(),
            "{folder}: CLIP must come as vocab.json + merges.txt only, like FLUX.1-dev"
        );
        let vocab: serde_json::Map<String, serde_json::Value> =
            common::read_json(&root.join("tokenizer/vocab.json"))?;
        let eos = vocab
            .get("<|endoftext|>")
            .and_then(serde_json::Value::as_u64);
        let bos = vocab
            .get("<|startoftext|>")
            .and_then(serde_json::Value::as_u64);
        ensure!(
            eos == Some(vocab.len() as u64 - 1) && bos == Some(vocab.len() as u64 - 2),
            "{folder}: CLIP specials must be the last two ids (got bos {bos:?}, eos {eos:?})"
        );
        let scheduler: SchedulerConfig =
            common::read_json(&root.join("scheduler/scheduler_config.json"))?;
        ensure!(scheduler.class_name == "FlowMatchEulerDiscreteScheduler");
        ensure!(scheduler.use_dynamic_shifting == dev);
        ensure!(scheduler.shift == if dev { 3.0 } else { 1.0 });
        ensure!((scheduler.base_shift, scheduler.max_shift) == (0.5, 1.15));
        ensure!((scheduler.base_image_seq_len, scheduler.max_image_seq_len) == (256, 4096));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct CaseIndex {
    cases: Vec<CaseEntry>,
}

#[derive(Debug, Deserialize)]
struct CaseEntry {
    name: String,
    model: String,
    files: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Case {
    model: String,
    prompt: String,
    seed: u64,
    width: usize,
    height: usize,
    num_images: usize,
    num_inference_steps: usize,
    guidance_scale: f64,
    max_sequence_length: usize,
}

/// Every reference case has all its tensors with shapes that follow from its description.
#[test]
fn reference_cases_are_complete_and_consistent() -> Result<()> {
    let cases_dir = common::fixtures().join("reference/cases");
    let index: CaseIndex = common::read_json(&cases_dir.join("index.json"))?;
    ensure!(index.cases.len() >= 6, "too few cases");
    let mut seen_models = BTreeSet::new();
    let mut seeds = BTreeSet::new();
    for entry in &index.cases {
        let dir = cases_dir.join(&entry.name);
        let case: Case = common::read_json(&dir.join("case.json"))?;
        ensure!(case.model == entry.model, "{}: model mismatch", entry.name);
        ensure!(!case.prompt.is_empty() && case.guidance_scale >= 0.0);
        ensure!(case.max_sequence_length == T5_LENGTH);
        seen_models.insert(case.model.clone());
        seeds.insert(case.seed);
        let dev = case.model == "dev";
        let n = case.num_images;
        let (h8, w8) = (case.height / 8, case.width / 8);
        let tokens = (h8 / 2) * (w8 / 2);
        let mut expected_files = vec![
            "case.json".to_string(),
            "clip_ids.npy".into(),
            "t5_ids.npy".into(),
            "pooled.npy".into(),
            "text_embeddings.npy".into(),
            "noise.npy".into(),
            "sigmas.npy".into(),
            "final_latents.npy".into(),
        ];
        expected_files.extend((0..n).map(|i| format!("image_{i}.png")));
        if dev {
            expected_files.push("nsfw_probs.npy".into());
        }
        let listed: BTreeSet<_> = entry.files.iter().cloned().collect();
        ensure!(
            listed == expected_files.iter().cloned().collect(),
            "{}: files {listed:?}",
            entry.name
        );

        let clip_ids = read_i64(&dir.join("clip_ids.npy"))?;
        ensure!(
            clip_ids.shape() == [CLIP_LENGTH],
            "{}: clip_ids",
            entry.name
        );
        let t5_ids = read_i64(&dir.join("t5_ids.npy"))?;
        ensure!(t5_ids.shape() == [T5_LENGTH], "{}: t5_ids", entry.name);
        let t5: Vec<i64> = t5_ids.iter().copied().collect();
        let eos_at = t5
            .iter()
            .position(|&id| id == T5_EOS_ID)
            .with_context(|| format!("{}: no T5 EOS", entry.name))?;
        ensure!(
            t5[eos_at + 1..].iter().all(|&id| id == T5_PAD_ID),
            "{}: T5 ids after EOS must be padding",
            entry.name
        );
        let pooled = read_f32(&dir.join("pooled.npy"))?;
        ensure!(
            pooled.ndim() == 2 && pooled.shape()[0] == 1,
            "{}: pooled",
            entry.name
        );
        let embeddings = read_f32(&dir.join("text_embeddings.npy"))?;
        ensure!(
            embeddings.ndim() == 3 && embeddings.shape()[..2] == [1, T5_LENGTH],
            "{}: text_embeddings {:?}",
            entry.name,
            embeddings.shape()
        );
        let noise = read_f32(&dir.join("noise.npy"))?;
        ensure!(
            noise.shape() == [n, 16, h8, w8],
            "{}: noise {:?}",
            entry.name,
            noise.shape()
        );
        let sigmas = read_f32(&dir.join("sigmas.npy"))?;
        let sigmas: Vec<f32> = sigmas.iter().copied().collect();
        ensure!(sigmas.len() == case.num_inference_steps + 1);
        ensure!(
            sigmas[0] == 1.0 && sigmas[case.num_inference_steps] == 0.0,
            "{}: sigmas {sigmas:?}",
            entry.name
        );
        ensure!(
            sigmas.windows(2).all(|w| w[0] > w[1]),
            "{}: sigmas not decreasing",
            entry.name
        );
        let latents = read_f32(&dir.join("final_latents.npy"))?;
        ensure!(
            latents.shape() == [n, tokens, 64],
            "{}: final_latents {:?}",
            entry.name,
            latents.shape()
        );
        ensure!(
            latents.iter().all(|v| v.is_finite()),
            "{}: non-finite latents",
            entry.name
        );
        for i in 0..n {
            let image = image::open(dir.join(format!("image_{i}.png")))?.to_rgb8();
            ensure!(
                (image.width() as usize, image.height() as usize) == (case.width, case.height),
                "{}: image_{i} is {}x{}",
                entry.name,
                image.width(),
                image.height()
            );
        }
        if dev {
            let probs = read_f32(&dir.join("nsfw_probs.npy"))?;
            ensure!(probs.shape() == [n], "{}: nsfw_probs", entry.name);
            ensure!(probs.iter().all(|p| (0.0..=1.0).contains(p)));
        }
    }
    ensure!(
        seen_models.contains("dev") && seen_models.contains("schnell"),
        "need dev and schnell cases"
    );
    ensure!(seeds.len() >= 2, "need at least two seeds");
    Ok(())
}

/// Each randn reference holds an array of the shape its index entry names.
#[test]
fn randn_references_match_their_index() -> Result<()> {
    let dir = common::fixtures().join("reference/randn");
    let index: common::RandnIndex = common::read_json(&dir.join("index.json"))?;
    let seeds: BTreeSet<u64> = index.entries.iter().map(|e| e.seed).collect();
    for seed in [0, 1, 42, 1 << 31, 4_294_967_295] {
        ensure!(seeds.contains(&seed), "seed {seed} missing");
    }
    for entry in &index.entries {
        let array = read_f32(&dir.join(&entry.file))?;
        ensure!(
            array.shape() == entry.shape.as_slice(),
            "{}: shape {:?}",
            entry.file,
            array.shape()
        );
    }
    Ok(())
}

/// The T5 `tokenizer.json` (written by Python `tokenizers`) loads in the Rust `tokenizers` crate and
/// gives the ids of the references once truncated and padded to the text length as diffusers does.
#[test]
fn t5_tokenizer_json_reproduces_reference_ids() -> Result<()> {
    let cases_dir = common::fixtures().join("reference/cases");
    let index: CaseIndex = common::read_json(&cases_dir.join("index.json"))?;
    for entry in &index.cases {
        let case: Case = common::read_json(&cases_dir.join(&entry.name).join("case.json"))?;
        let path = common::fixtures()
            .join(format!("tiny-flux-{}", case.model))
            .join("tokenizer_2/tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))?;
        let encoding = tokenizer
            .encode(case.prompt.as_str(), true)
            .map_err(|e| anyhow::anyhow!("encoding {:?}: {e}", case.prompt))?;
        let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
        if ids.len() > T5_LENGTH {
            ids.truncate(T5_LENGTH - 1);
            ids.push(T5_EOS_ID);
        }
        ids.resize(T5_LENGTH, T5_PAD_ID);
        let expected: Vec<i64> = read_i64(&cases_dir.join(&entry.name).join("t5_ids.npy"))?
            .iter()
            .copied()
            .collect();
        ensure!(
            ids == expected,
            "{}: Rust tokenizers gives {ids:?}, reference {expected:?}",
            entry.name
        );
    }
    Ok(())
}
