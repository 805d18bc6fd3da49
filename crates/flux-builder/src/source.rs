//! What a `--model` folder is: a diffusers FLUX folder, BFL single files, or already an ONNX
//! folder in flux-rs's layout. Anything else gets one error that lists what was looked for.

use std::path::{Path, PathBuf};

use crate::error::{BuilderError, Result};

/// BFL transformer file names, in the order they are looked for.
pub const BFL_TRANSFORMERS: [&str; 2] = ["flux1-dev.safetensors", "flux1-schnell.safetensors"];
/// The BFL autoencoder file name.
pub const BFL_AE: &str = "ae.safetensors";
/// Folders a BFL source takes from a diffusers FLUX folder (copied beside the two files).
pub const BFL_COMPANIONS: [&str; 5] = [
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
];

/// The kinds of model folder `--model` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// `model_index.json` of a `FluxPipeline` and its component folders.
    Diffusers,
    /// `flux1-dev.safetensors` or `flux1-schnell.safetensors` and `ae.safetensors` (BFL tensor
    /// names), with `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/` and
    /// `scheduler/` from the diffusers repository of the same model beside them.
    BflFiles { transformer: PathBuf, ae: PathBuf },
    /// ONNX graphs in flux-rs's layout (`transformer.opt/`, `clip.opt/`, ...): loaded as is.
    OnnxLayout,
}

fn is_onnx_layout(dir: &Path) -> bool {
    dir.join("transformer.opt").is_dir()
        || dir.join("clip.opt/model.onnx").is_file()
        || dir.join("vae.opt/model.onnx").is_file()
}

/// Detects what `dir` holds.
pub fn detect(dir: &Path) -> Result<SourceKind> {
    if !dir.is_dir() {
        return Err(BuilderError::UnknownSource {
            path: dir.to_owned(),
            looked_for: "a folder (this path is not one)".into(),
        });
    }
    if is_onnx_layout(dir) {
        return Ok(SourceKind::OnnxLayout);
    }
    let index = dir.join("model_index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| BuilderError::io(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| BuilderError::Config {
                path: index.clone(),
                message: format!("not JSON: {e}"),
            })?;
        let class = json
            .get("_class_name")
            .and_then(|c| c.as_str())
            .unwrap_or("");
        if class != "FluxPipeline" {
            return Err(BuilderError::Config {
                path: index,
                message: format!(
                    "_class_name {class:?}: flux-builder builds FluxPipeline folders (FLUX.1-dev, FLUX.1-schnell and their fine-tunes)"
                ),
            });
        }
        return Ok(SourceKind::Diffusers);
    }
    let transformer = BFL_TRANSFORMERS
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file());
    let ae = dir.join(BFL_AE);
    if let Some(transformer) = transformer {
        if !ae.is_file() {
            return Err(BuilderError::UnknownSource {
                path: dir.to_owned(),
                looked_for: format!(
                    "{} is here but {BFL_AE} (the BFL autoencoder) is not",
                    transformer.display()
                ),
            });
        }
        let missing: Vec<&str> = BFL_COMPANIONS
            .iter()
            .copied()
            .filter(|c| !dir.join(c).is_dir())
            .collect();
        if !missing.is_empty() {
            return Err(BuilderError::UnknownSource {
                path: dir.to_owned(),
                looked_for: format!(
                    "BFL files need the text encoders, tokenizers and scheduler of the diffusers repository beside them; missing folders: {} (copy them from black-forest-labs/FLUX.1-dev or FLUX.1-schnell)",
                    missing.join(", ")
                ),
            });
        }
        return Ok(SourceKind::BflFiles { transformer, ae });
    }
    Err(BuilderError::UnknownSource {
        path: dir.to_owned(),
        looked_for: format!(
            "looked for a diffusers folder (model_index.json), BFL single files ({} or {}, with {BFL_AE}), and an ONNX folder in flux-rs's layout (transformer.opt/, clip.opt/model.onnx, vae.opt/model.onnx); found none",
            BFL_TRANSFORMERS[0], BFL_TRANSFORMERS[1]
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_kind_and_lists_what_it_looked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let err = detect(d).expect_err("empty").to_string();
        assert!(
            err.contains("model_index.json")
                && err.contains("flux1-dev.safetensors")
                && err.contains("transformer.opt"),
            "{err}"
        );

        std::fs::write(
            d.join("model_index.json"),
            r#"{"_class_name": "StableDiffusionPipeline"}"#,
        )
        .expect("write");
        let err = detect(d).expect_err("not flux").to_string();
        assert!(err.contains("StableDiffusionPipeline"), "{err}");
        std::fs::write(
            d.join("model_index.json"),
            r#"{"_class_name": "FluxPipeline"}"#,
        )
        .expect("write");
        assert_eq!(detect(d).expect("diffusers"), SourceKind::Diffusers);

        let bfl = tempfile::tempdir().expect("tempdir");
        let b = bfl.path();
        std::fs::write(b.join("flux1-schnell.safetensors"), b"").expect("write");
        assert!(
            detect(b)
                .expect_err("no ae")
                .to_string()
                .contains("ae.safetensors")
        );
        std::fs::write(b.join("ae.safetensors"), b"").expect("write");
        let err = detect(b).expect_err("no companions").to_string();
        assert!(
            err.contains("text_encoder_2") && err.contains("scheduler"),
            "{err}"
        );
        for c in BFL_COMPANIONS {
            std::fs::create_dir(b.join(c)).expect("mkdir");
        }
        assert!(matches!(
            detect(b).expect("bfl"),
            SourceKind::BflFiles { .. }
        ));

        let onnx = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(onnx.path().join("transformer.opt")).expect("mkdir");
        assert_eq!(detect(onnx.path()).expect("onnx"), SourceKind::OnnxLayout);
        assert!(detect(&d.join("nope")).is_err());
    }
}
