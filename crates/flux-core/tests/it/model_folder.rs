//! Model-folder loading: the official layout loads as is (variant, text length, precision from
//! the graphs), and a broken folder is refused with every problem listed.

use crate::common;

use flux_core::FluxError;
use flux_core::model::{FluxModel, Variant};
use flux_core::tensors::FloatType;

#[test]
fn dev_and_schnell_fixtures_load_with_what_their_graphs_say() -> anyhow::Result<()> {
    let dev = FluxModel::load(&common::dev_model(), &common::test_config())?;
    let description = dev.description();
    assert_eq!(description.variant, Variant::Dev);
    assert_eq!(
        description.text_length, 32,
        "text length comes from the T5 graph's input shape"
    );
    assert_eq!(description.transformer_precision, FloatType::F32);
    assert!(
        description
            .transformer_path
            .ends_with("transformer.opt/fp32/model.onnx")
    );
    assert!(description.safety_checker_path.is_some());
    assert!((description.vae_scaling_factor - 0.3611).abs() < 1e-7);
    assert!((description.vae_shift_factor - 0.1159).abs() < 1e-7);

    let schnell = FluxModel::load(&common::schnell_model(), &common::test_config())?;
    assert_eq!(schnell.description().variant, Variant::Schnell);
    assert_eq!(schnell.description().safety_checker_path, None);
    Ok(())
}

#[test]
fn a_broken_folder_reports_every_problem_at_once() -> anyhow::Result<()> {
    let copy = common::copy_of(&common::dev_model())?;
    let model = &copy.path;
    std::fs::remove_file(model.join("tokenizer_2/tokenizer.json"))?;
    std::fs::copy(
        common::test_data("vae_wrong_input_name.onnx"),
        model.join("vae.opt/model.onnx"),
    )?;
    std::fs::copy(
        common::test_data("t5_wrong_rank.onnx"),
        model.join("t5.opt/model.onnx"),
    )?;

    let problems = match FluxModel::load(model, &common::test_config()) {
        Err(FluxError::InvalidModel { problems, .. }) => problems,
        other => anyhow::bail!("expected InvalidModel, got {other:?}"),
    };
    let has = |needle: &str| problems.iter().any(|problem| problem.contains(needle));
    assert!(
        has("missing file tokenizer_2/tokenizer.json"),
        "{problems:#?}"
    );
    assert!(
        has("vae.opt/model.onnx: missing input `latent`"),
        "{problems:#?}"
    );
    assert!(
        has("vae.opt/model.onnx: unexpected input `latents`"),
        "{problems:#?}"
    );
    assert!(
        has("t5.opt/model.onnx: input `input_ids` has rank 1"),
        "{problems:#?}"
    );
    Ok(())
}

#[test]
fn a_manifest_that_contradicts_the_graphs_is_refused() -> anyhow::Result<()> {
    let copy = common::copy_of(&common::schnell_model())?;
    let model = &copy.path;
    std::fs::write(
        model.join("flux-rs.json"),
        r#"{"variant": "dev", "text_length": 64}"#,
    )?;
    let problems = match FluxModel::load(model, &common::test_config()) {
        Err(FluxError::InvalidModel { problems, .. }) => problems,
        other => anyhow::bail!("expected InvalidModel, got {other:?}"),
    };
    assert!(
        problems.iter().any(|p| p.contains("variant is dev")),
        "{problems:#?}"
    );
    // Both graphs fix the length (32): a transformer fixed to another length than the text
    // encoder's would fail every request, so it is checked too, not only T5.
    for place in [
        "t5.opt/model.onnx `input_ids` takes 32 tokens",
        "transformer.opt/fp32/model.onnx `encoder_hidden_states` takes 32 tokens",
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(place) && p.contains("text_length is 64")),
            "{place}: {problems:#?}"
        );
    }

    std::fs::write(model.join("flux-rs.json"), r#"{"colour": "blue"}"#)?;
    let problems = match FluxModel::load(model, &common::test_config()) {
        Err(FluxError::InvalidModel { problems, .. }) => problems,
        other => anyhow::bail!("expected InvalidModel, got {other:?}"),
    };
    assert!(
        problems.iter().any(|p| p.contains("unknown field")),
        "{problems:#?}"
    );
    Ok(())
}

#[test]
fn a_schedule_flux_rs_does_not_compute_is_a_load_problem() -> anyhow::Result<()> {
    let copy = common::copy_of(&common::dev_model())?;
    let model = &copy.path;
    let config_path = model.join("scheduler/scheduler_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
    config["use_karras_sigmas"] = serde_json::Value::Bool(true);
    std::fs::write(&config_path, serde_json::to_string(&config)?)?;
    // Found with the model's other problems, by the model load itself (before the pipeline, and
    // before anything is generated).
    std::fs::remove_file(model.join("tokenizer_2/tokenizer.json"))?;
    let problems = match FluxModel::load(model, &common::test_config()) {
        Err(FluxError::InvalidModel { problems, .. }) => problems,
        other => anyhow::bail!("expected InvalidModel, got {other:?}"),
    };
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("scheduler/scheduler_config.json: ") && p.contains("karras")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("tokenizer_2/tokenizer.json")),
        "{problems:#?}"
    );
    Ok(())
}

#[test]
fn graphs_with_external_data_load_from_their_folder() -> anyhow::Result<()> {
    // The dev safety checker re-saved with its weights in `model.onnx_data` (see
    // tests/data/make_test_graphs.py): ONNX Runtime must find them beside the graph file.
    let copy = common::copy_of(&common::dev_model())?;
    let model = &copy.path;
    let external = common::test_data("safety_external");
    std::fs::copy(
        external.join("model.onnx"),
        model.join("safety_checker/model.onnx"),
    )?;
    std::fs::copy(
        external.join("model.onnx_data"),
        model.join("safety_checker/model.onnx_data"),
    )?;

    let images: Vec<image::RgbImage> = (0..3_u8)
        .map(|seed| {
            image::RgbImage::from_fn(64, 48, |x, y| {
                image::Rgb([(x * 4) as u8, (y * 5) as u8, seed.wrapping_mul(80)])
            })
        })
        .collect();
    let mut inline =
        flux_core::pipeline::FluxPipeline::load(&common::dev_model(), &common::test_config())?;
    let mut external = flux_core::pipeline::FluxPipeline::load(model, &common::test_config())?;
    let expected = inline.nsfw_probabilities(&images)?;
    let actual = external.nsfw_probabilities(&images)?;
    assert!(expected.is_some());
    assert_eq!(actual, expected);

    // Without its data file the graph cannot load, and the error says which graph.
    std::fs::remove_file(model.join("safety_checker/model.onnx_data"))?;
    match FluxModel::load(model, &common::test_config()) {
        Err(FluxError::InvalidModel { problems, .. }) => {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("safety_checker/model.onnx")),
                "{problems:#?}"
            );
        }
        other => anyhow::bail!("expected InvalidModel, got {other:?}"),
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
#[test]
fn asking_for_cuda_without_the_feature_is_an_error_not_a_cpu_fallback() {
    let config = flux_core::config::SessionConfig {
        execution_provider: flux_core::config::ExecutionProvider::Cuda { device_id: 0 },
        ..common::test_config()
    };
    match FluxModel::load(&common::dev_model(), &config) {
        Err(FluxError::ExecutionProvider { provider, reason }) => {
            assert_eq!(provider, "CUDA");
            assert!(reason.contains("`cuda` feature"), "{reason}");
        }
        other => panic!("expected an ExecutionProvider error, got {other:?}"),
    }
}
