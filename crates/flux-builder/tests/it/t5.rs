//! The T5 graph built from the diffusers fixtures (two shards) against the committed ONNX graph
//! and the references' stored T5 embeddings.

use anyhow::{Context, Result, ensure};
use flux_builder::graphs::t5::{T5Config, relative_position_bucket, t5_graph};
use flux_builder::graphs::text::TextGraphOptions;
use flux_builder::onnx::Elem;
use flux_builder::{BuildOptions, Checkpoint};

use crate::text_support::{
    case_dirs, fixtures, max_abs_diff, read_f32, read_i64, run_ids, session_from_file,
    session_from_memory,
};

const LENGTH: usize = 32;
/// ONNX Runtime against ONNX Runtime on the same weights, fused kernels on one side (observed:
/// below 2e-6).
const TOLERANCE: f32 = 1e-5;

fn component(model: &str) -> Result<(Checkpoint, serde_json::Value)> {
    let dir = fixtures().join(format!("tiny-flux-{model}-diffusers/text_encoder_2"));
    let ckpt = Checkpoint::open_component(&dir)?;
    let config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    Ok((ckpt, config))
}

fn check(model: &str, built: &mut ort::session::Session, int32: bool) -> Result<()> {
    let mut committed =
        session_from_file(&fixtures().join(format!("tiny-flux-{model}/t5.opt/model.onnx")))?;
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
    let dirs = case_dirs(model)?;
    let mut rows = Vec::new();
    for dir in &dirs {
        rows.push(read_i64(&dir.join("t5_ids.npy"))?);
    }
    // A row of arbitrary ids without padding, so every position carries its own token.
    rows.push((0..LENGTH as i64).map(|i| (i * 37 + 11) % 478).collect());
    let ids = rows.concat();
    let got = run_ids(built, &ids, [rows.len(), LENGTH], int32)?;
    let want = run_ids(&mut committed, &ids, [rows.len(), LENGTH], int32)?;
    let (g, w) = (
        &got.first().context("no output")?,
        &want.first().context("no output")?,
    );
    ensure!(
        g.0 == "text_embeddings" && g.1 == w.1,
        "output {} {:?} vs {:?}",
        g.0,
        g.1,
        w.1
    );
    let diff = max_abs_diff(&g.2, &w.2)?;
    eprintln!("t5 {model}: built vs committed graph max abs diff {diff:.2e}");
    ensure!(diff <= TOLERANCE, "{diff} > {TOLERANCE}");
    let per_row = g.2.len() / rows.len();
    for (i, dir) in dirs.iter().enumerate() {
        let reference = read_f32(&dir.join("text_embeddings.npy"))?;
        let diff = max_abs_diff(&g.2[i * per_row..(i + 1) * per_row], &reference)?;
        eprintln!("t5 {model} {}: vs diffusers {diff:.2e}", dir.display());
        ensure!(
            diff <= TOLERANCE,
            "{}: T5 embeddings differ by {diff}",
            dir.display()
        );
    }
    Ok(())
}

#[test]
fn t5_dev_int32_matches_committed_graph_and_references() -> Result<()> {
    let (ckpt, config) = component("dev")?;
    let graph = t5_graph(
        &ckpt,
        &config,
        LENGTH,
        TextGraphOptions {
            float: Elem::F32,
            ids: Elem::I32,
            weight_quant: None,
        },
    )?;
    let mut session = session_from_memory(&graph.encode_inline()?)?;
    check("dev", &mut session, true)
}

#[test]
fn t5_schnell_built_folder_matches_committed_graph_and_references() -> Result<()> {
    let (ckpt, config) = component("schnell")?;
    let out = tempfile::tempdir()?;
    let report = flux_builder::graphs::t5::build_t5(
        &ckpt,
        &config,
        LENGTH,
        &BuildOptions::default(),
        out.path(),
    )?;
    // Both shards linked, nothing copied (the position bias is an inline constant).
    ensure!(
        report.converted_tensors == 0 && report.linked_files.len() == 2,
        "{report:?}"
    );
    let mut session = session_from_file(&out.path().join("model.onnx"))?;
    check("schnell", &mut session, false)
}

/// transformers' buckets for an encoder with 32 buckets and max distance 128, for every relative
/// position in -600..=600, as runs `(first relative position, bucket)` (printed by
/// `T5Attention._relative_position_bucket(torch.arange(-600, 601), True, 32, 128)`).
#[test]
fn t5_relative_position_buckets_match_transformers() {
    const RUNS: [(i64, usize); 31] = [
        (-600, 15),
        (-90, 14),
        (-63, 13),
        (-45, 12),
        (-31, 11),
        (-22, 10),
        (-15, 9),
        (-11, 8),
        (-7, 7),
        (-6, 6),
        (-5, 5),
        (-4, 4),
        (-3, 3),
        (-2, 2),
        (-1, 1),
        (0, 0),
        (1, 17),
        (2, 18),
        (3, 19),
        (4, 20),
        (5, 21),
        (6, 22),
        (7, 23),
        (8, 24),
        (12, 25),
        (16, 26),
        (23, 27),
        (32, 28),
        (46, 29),
        (64, 30),
        (91, 31),
    ];
    for (i, &(first, bucket)) in RUNS.iter().enumerate() {
        let end = RUNS.get(i + 1).map_or(601, |next| next.0);
        for relative in first..end {
            assert_eq!(
                relative_position_bucket(relative, 32, 128),
                bucket,
                "relative position {relative}"
            );
        }
    }
}

/// A missing shard and a config that contradicts the weights are errors naming the file/tensor.
#[test]
fn t5_bad_inputs_are_named() -> Result<()> {
    let (ckpt, mut config) = component("dev")?;
    config["d_ff"] = serde_json::json!(65);
    let err = t5_graph(&ckpt, &config, LENGTH, TextGraphOptions::default())
        .err()
        .context("built anyway")?;
    ensure!(
        err.to_string().contains("DenseReluDense.w") && err.to_string().contains("65"),
        "{err}"
    );
    config["d_ff"] = serde_json::json!(64);
    config["feed_forward_proj"] = serde_json::json!("gated-swish");
    let err = T5Config::from_json(&config, &ckpt)
        .err()
        .context("accepted swish")?;
    ensure!(err.to_string().contains("gated-swish"), "{err}");
    Ok(())
}
