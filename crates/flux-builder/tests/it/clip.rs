//! The CLIP graph built from the diffusers fixtures against the committed ONNX graph (same
//! weights, exported from torch) and the references' stored pooled embeddings.

use anyhow::{Context, Result, ensure};
use flux_builder::graphs::clip::clip_graph;
use flux_builder::graphs::text::TextGraphOptions;
use flux_builder::onnx::Elem;
use flux_builder::{BuildOptions, Checkpoint};

use crate::text_support::{
    Output, case_dirs, fixtures, max_abs_diff, read_f32, read_i64, run_ids, session_from_file,
    session_from_memory,
};

const LENGTH: usize = 77;
/// ONNX Runtime against ONNX Runtime, the same weights, fused kernels on one side: float32
/// rounding only (observed: below 2e-6).
const TOLERANCE: f32 = 1e-5;

/// Token rows that exercise the pooling: the case prompts, plus rows with an EOS in the middle,
/// at the end and none at all (pooling then takes position 0, as torch's argmax does).
fn rows(model: &str) -> Result<Vec<Vec<i64>>> {
    let mut rows = Vec::new();
    for dir in case_dirs(model)? {
        rows.push(read_i64(&dir.join("clip_ids.npy"))?);
    }
    let mut state = 12345u64;
    for eos_at in [Some(5), Some(LENGTH - 1), None] {
        let mut row: Vec<i64> = (0..LENGTH)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 818) as i64
            })
            .collect();
        if let Some(at) = eos_at {
            row[at] = 819;
        }
        rows.push(row);
    }
    Ok(rows)
}

fn outputs_named<'a>(outputs: &'a [Output], name: &str) -> Result<&'a Output> {
    outputs
        .iter()
        .find(|o| o.0 == name)
        .with_context(|| format!("no output {name}"))
}

fn check(model: &str, built: &mut ort::session::Session, int32: bool) -> Result<()> {
    let committed_path = fixtures().join(format!("tiny-flux-{model}/clip.opt/model.onnx"));
    let mut committed = session_from_file(&committed_path)?;
    // Same interface: input and output names, element types and shapes.
    let describe = |s: &ort::session::Session| {
        let ins: Vec<String> = s
            .inputs()
            .iter()
            .map(|i| format!("{} {:?}", i.name(), i.dtype()))
            .collect();
        let outs: Vec<String> = s
            .outputs()
            .iter()
            .map(|o| format!("{} {:?}", o.name(), o.dtype()))
            .collect();
        (ins, outs)
    };
    ensure!(
        describe(built) == describe(&committed),
        "interface {:?} != committed {:?}",
        describe(built),
        describe(&committed)
    );

    let rows = rows(model)?;
    let ids: Vec<i64> = rows.concat();
    let got = run_ids(built, &ids, [rows.len(), LENGTH], int32)?;
    let want = run_ids(&mut committed, &ids, [rows.len(), LENGTH], int32)?;
    for name in ["text_embeddings", "pooled_embeddings"] {
        let (g, w) = (outputs_named(&got, name)?, outputs_named(&want, name)?);
        ensure!(g.1 == w.1, "{name}: shape {:?} != {:?}", g.1, w.1);
        let diff = max_abs_diff(&g.2, &w.2)?;
        eprintln!("clip {model} {name}: built vs committed graph max abs diff {diff:.2e}");
        ensure!(diff <= TOLERANCE, "{name}: {diff} > {TOLERANCE}");
    }
    // Against diffusers' own pooled output, stored with each reference case.
    let pooled = &outputs_named(&got, "pooled_embeddings")?.2;
    let width = pooled.len() / rows.len();
    for (i, dir) in case_dirs(model)?.iter().enumerate() {
        let reference = read_f32(&dir.join("pooled.npy"))?;
        let diff = max_abs_diff(&pooled[i * width..(i + 1) * width], &reference)?;
        eprintln!(
            "clip {model} {}: pooled vs diffusers {diff:.2e}",
            dir.display()
        );
        ensure!(
            diff <= TOLERANCE,
            "{}: pooled differs by {diff}",
            dir.display()
        );
    }
    Ok(())
}

fn component(model: &str) -> Result<(Checkpoint, serde_json::Value)> {
    let dir = fixtures().join(format!("tiny-flux-{model}-diffusers/text_encoder"));
    let ckpt = Checkpoint::open_component(&dir)?;
    let config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    Ok((ckpt, config))
}

/// The dev folder's interface: int32 ids, like the official export (graph encoded inline).
#[test]
fn clip_dev_int32_matches_committed_graph_and_references() -> Result<()> {
    let (ckpt, config) = component("dev")?;
    let graph = clip_graph(
        &ckpt,
        &config,
        TextGraphOptions {
            float: Elem::F32,
            ids: Elem::I32,
            weight_quant: None,
        },
    )?;
    let mut session = session_from_memory(&graph.encode_inline()?)?;
    check("dev", &mut session, true)
}

/// The public entry point (int64 ids, weights pointing into the safetensors file).
#[test]
fn clip_schnell_built_folder_matches_committed_graph_and_references() -> Result<()> {
    let (ckpt, config) = component("schnell")?;
    let out = tempfile::tempdir()?;
    let report = flux_builder::graphs::clip::build_clip(
        &ckpt,
        &config,
        &BuildOptions::default(),
        out.path(),
    )?;
    ensure!(
        report.converted_tensors == 0,
        "fp32 weights were copied: {report:?}"
    );
    let mut session = session_from_file(&out.path().join("model.onnx"))?;
    check("schnell", &mut session, false)
}

/// A config that contradicts the weights is refused with the tensor named.
#[test]
fn clip_config_contradicting_weights_is_refused() -> Result<()> {
    let (ckpt, mut config) = component("dev")?;
    config["intermediate_size"] = serde_json::json!(100);
    let err = clip_graph(&ckpt, &config, TextGraphOptions::default())
        .err()
        .context("built anyway")?;
    let text = err.to_string();
    ensure!(
        text.contains("mlp.fc1.weight") && text.contains("100"),
        "{text}"
    );
    config["intermediate_size"] = serde_json::json!(96);
    config["architectures"] = serde_json::json!(["BertModel"]);
    let err = clip_graph(&ckpt, &config, TextGraphOptions::default())
        .err()
        .context("built anyway")?;
    ensure!(err.to_string().contains("BertModel"), "{err}");
    Ok(())
}

/// FLUX.1's real CLIP config has the legacy `eos_token_id` 2, for which transformers pools at the
/// largest id (CLIP's EOS is its largest id): with the tiny vocabulary (EOS 819, also the largest)
/// the references' pooled outputs come out the same, and a row without an EOS pools at its largest id.
#[test]
fn clip_legacy_eos_token_id_pools_at_the_largest_id() -> Result<()> {
    let (ckpt, mut config) = component("dev")?;
    config["eos_token_id"] = serde_json::json!(2);
    let graph = clip_graph(&ckpt, &config, TextGraphOptions::default())?;
    let mut session = session_from_memory(&graph.encode_inline()?)?;
    let mut rows = Vec::new();
    for dir in case_dirs("dev")? {
        rows.push(read_i64(&dir.join("clip_ids.npy"))?);
    }
    let mut no_eos: Vec<i64> = (0..LENGTH as i64).map(|i| (i * 13) % 700).collect();
    no_eos[40] = 817;
    rows.push(no_eos);
    let got = run_ids(&mut session, &rows.concat(), [rows.len(), LENGTH], false)?;
    let pooled = &outputs_named(&got, "pooled_embeddings")?.2;
    let states = &outputs_named(&got, "text_embeddings")?.2;
    let d = pooled.len() / rows.len();
    for (i, dir) in case_dirs("dev")?.iter().enumerate() {
        let diff = max_abs_diff(
            &pooled[i * d..(i + 1) * d],
            &read_f32(&dir.join("pooled.npy"))?,
        )?;
        ensure!(diff <= TOLERANCE, "{}: {diff}", dir.display());
    }
    let last = rows.len() - 1;
    let at = (last * LENGTH + 40) * d;
    ensure!(
        pooled[last * d..] == states[at..at + d],
        "the row without EOS is not pooled at its largest id"
    );
    Ok(())
}

/// The fp16 CLIP graph (what `--precision fp16 --device cuda` writes) is well typed: ORT's CPU
/// provider loads it and runs it with its fp16 fallbacks, within fp16 rounding of diffusers'
/// pooled output (observed 1.4e-3 on values up to about 2).
#[test]
fn clip_fp16_graph_is_well_typed_and_close() -> Result<()> {
    let (ckpt, config) = component("dev")?;
    let graph = clip_graph(
        &ckpt,
        &config,
        TextGraphOptions {
            float: Elem::F16,
            ids: Elem::I64,
            weight_quant: None,
        },
    )?;
    let mut session = session_from_memory(&graph.encode_inline()?)?;
    for dir in case_dirs("dev")? {
        let out = run_ids(
            &mut session,
            &read_i64(&dir.join("clip_ids.npy"))?,
            [1, LENGTH],
            false,
        )?;
        let pooled = &outputs_named(&out, "pooled_embeddings")?.2;
        let diff = max_abs_diff(pooled, &read_f32(&dir.join("pooled.npy"))?)?;
        ensure!(diff <= 1e-2, "{}: fp16 pooled off by {diff}", dir.display());
    }
    Ok(())
}
