//! `flux-rs.json`, the optional manifest of ours in a model folder: what the layout does not say,
//! or overrides of what it says.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::spec::Variant;
use crate::error::{FluxError, Result};

/// The manifest file name flux-rs looks for in a model folder.
pub const MANIFEST_FILE: &str = "flux-rs.json";

/// `flux-rs.json`: what a model folder's layout does not say, or overrides of what it says.
/// Paths are relative to the model folder. Every field is optional; unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Must agree with the transformer graph (dev has a `guidance` input).
    pub variant: Option<Variant>,
    pub clip: Option<PathBuf>,
    pub t5: Option<PathBuf>,
    /// e.g. `transformer.opt/bf16/model.onnx`; default: the first of fp32, bf16, fp16 present.
    pub transformer: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    /// T5 text length; must agree with every graph axis that fixes it (T5 input and output, the
    /// transformer's `encoder_hidden_states` and `txt_ids`).
    pub text_length: Option<usize>,
    pub vae_scaling_factor: Option<f32>,
    pub vae_shift_factor: Option<f32>,
    pub safety_checker: Option<SafetyCheckerManifest>,
}

/// The safety checker entry of [`Manifest`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyCheckerManifest {
    /// Default `safety_checker/model.onnx`.
    pub path: Option<PathBuf>,
    /// Threshold on the nsfw probability; default 0.85.
    pub threshold: Option<f32>,
    /// `false` ignores a safety checker present in the folder.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for SafetyCheckerManifest {
    fn default() -> Self {
        Self {
            path: None,
            threshold: None,
            enabled: true,
        }
    }
}

impl Manifest {
    /// Reads and parses a manifest file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| FluxError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|error| FluxError::Config {
            path: path.to_owned(),
            message: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_refuses_unknown_fields_and_parses_known_ones() -> anyhow::Result<()> {
        let manifest: Manifest = serde_json::from_str(
            r#"{"variant": "schnell", "transformer": "transformer.opt/bf16/model.onnx",
                "vae_scaling_factor": 0.5, "safety_checker": {"threshold": 0.5}}"#,
        )?;
        assert_eq!(manifest.variant, Some(Variant::Schnell));
        assert_eq!(
            manifest.safety_checker.as_ref().and_then(|s| s.threshold),
            Some(0.5)
        );
        assert!(manifest.safety_checker.as_ref().is_some_and(|s| s.enabled));
        let unknown = serde_json::from_str::<Manifest>(r#"{"varient": "dev"}"#);
        assert!(unknown.is_err_and(|e| e.to_string().contains("unknown field")));
        Ok(())
    }
}
