//! The schnell model stored in bf16 (`tiny-flux-schnell-bf16-diffusers`), built for the CPU (every
//! weight converted to f32 once), against its own diffusers reference `schnell_bf16_square`
//! (diffusers computing in float32 from the same bf16 weights).

use anyhow::Result;
use anyhow::ensure;
use flux_builder::graphs::clip::clip_graph;
use flux_builder::graphs::config::{Config, read_config};
use flux_builder::graphs::t5::t5_graph;
use flux_builder::graphs::text::TextGraphOptions;
use flux_builder::{BuildOptions, Checkpoint};

use crate::text_support::{
    fixtures, max_abs_diff, read_f32, read_i64, run_ids, session_from_file, session_from_memory,
};

#[test]
fn bf16_schnell_folder_reproduces_its_reference() -> Result<()> {
    let root = fixtures().join("tiny-flux-schnell-bf16-diffusers");
    let case = fixtures().join("reference/builder-cases/schnell_bf16_square");
    let text = TextGraphOptions::default();
    // Text encoders: the reference's ids give its stored embeddings.
    let component = |name: &str| -> Result<(Checkpoint, serde_json::Value)> {
        let dir = root.join(name);
        Ok((Checkpoint::open_component(&dir)?, read_config(&dir)?.0))
    };
    let (clip, clip_config) = component("text_encoder")?;
    let mut session =
        session_from_memory(&clip_graph(&clip, &clip_config, text)?.encode_inline()?)?;
    let out = run_ids(
        &mut session,
        &read_i64(&case.join("clip_ids.npy"))?,
        [1, 77],
        false,
    )?;
    let pooled = &out
        .iter()
        .find(|o| o.0 == "pooled_embeddings")
        .ok_or_else(|| anyhow::anyhow!("no pooled"))?
        .2;
    let pooled_diff = max_abs_diff(pooled, &read_f32(&case.join("pooled.npy"))?)?;
    let (t5, t5_config) = component("text_encoder_2")?;
    let mut session = session_from_memory(&t5_graph(&t5, &t5_config, 32, text)?.encode_inline()?)?;
    let out = run_ids(
        &mut session,
        &read_i64(&case.join("t5_ids.npy"))?,
        [1, 32],
        false,
    )?;
    let t5_diff = max_abs_diff(&out[0].2, &read_f32(&case.join("text_embeddings.npy"))?)?;
    eprintln!("bf16 schnell: pooled {pooled_diff:.2e}, T5 {t5_diff:.2e}");
    ensure!(
        pooled_diff <= 1e-5 && t5_diff <= 1e-5,
        "{pooled_diff} / {t5_diff}"
    );

    // Transformer and VAE, written to disk (bf16 -> f32 conversion into model.onnx.data).
    let dir = tempfile::tempdir()?;
    let opts = BuildOptions::default();
    let mut sessions = Vec::new();
    for name in ["transformer", "vae"] {
        let source = root.join(name);
        let (json, path) = read_config(&source)?;
        let config = Config::new(&json, &path);
        let ckpt = Checkpoint::open_component(&source)?;
        let out = dir.path().join(name);
        let report = if name == "transformer" {
            flux_builder::graphs::transformer::build_transformer(&ckpt, &config, 32, &opts, &out)?
        } else {
            flux_builder::graphs::vae::build_vae(&ckpt, &config, &opts, &out)?
        };
        ensure!(
            report.linked_tensors == 0 && report.converted_tensors > 0,
            "{name}: {report:?}"
        );
        sessions.push(session_from_file(&out.join("model.onnx"))?);
    }
    let (first, second) = sessions.split_at_mut(1);
    let replay = crate::replay::replay(&case, &mut first[0], &mut second[0], false)?;
    eprintln!(
        "bf16 schnell case: final latents {:.2e}, pixels {}",
        replay.final_latents, replay.pixels
    );
    ensure!(replay.final_latents <= 1e-4 && replay.pixels <= 1);
    Ok(())
}
