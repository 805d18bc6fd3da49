//! A checkpoint's own defaults for flux-rs: `flux-rs-model.json` beside `model_index.json`.
//!
//! diffusers stores nothing about the T5 length a model was trained with (`FluxPipeline` takes
//! `max_sequence_length` per call, 512 by default), yet a model trained with short prompts sees
//! hundreds of padding tokens it never saw at 512, and FLUX passes no attention mask. A folder may
//! therefore say `{"text_length": 32}`; an explicit `BuildOptions::text_length` still wins.
//! diffusers ignores the file.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{BuilderError, Result};

/// The file name, at the root of a diffusers folder or beside BFL files.
pub const FILE_NAME: &str = "flux-rs-model.json";

/// What a source folder declares (all optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceDefaults {
    pub text_length: Option<usize>,
}

/// Reads `source/flux-rs-model.json`; no file means no defaults. Unknown keys, wrong types and
/// a zero or absurd text length are errors that name the file, so a typo is not silently ignored.
pub fn read(source: &Path) -> Result<SourceDefaults> {
    let path = source.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SourceDefaults::default()),
        Err(e) => return Err(BuilderError::io(&path, e)),
    };
    let bad = |message: String| BuilderError::Config {
        path: path.clone(),
        message,
    };
    let json: Json = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let object = json
        .as_object()
        .ok_or_else(|| bad("expected a JSON object".into()))?;
    let mut defaults = SourceDefaults::default();
    for (key, value) in object {
        match key.as_str() {
            "text_length" => {
                let length = value
                    .as_u64()
                    .filter(|n| (1..=4096).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "text_length must be an integer from 1 to 4096, got {value}"
                        ))
                    })?;
                defaults.text_length = usize::try_from(length).ok();
            }
            // Free text for people reading the folder.
            "comment" => {}
            other => {
                return Err(bad(format!(
                    "unknown key {other:?} (known: text_length, comment)"
                )));
            }
        }
    }
    Ok(defaults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(content: Option<&str>) -> Result<SourceDefaults> {
        let dir = tempfile::tempdir().map_err(|e| BuilderError::io("tempdir", e))?;
        if let Some(content) = content {
            std::fs::write(dir.path().join(FILE_NAME), content)
                .map_err(|e| BuilderError::io("write", e))?;
        }
        read(dir.path())
    }

    #[test]
    fn no_file_means_no_defaults() -> Result<()> {
        assert_eq!(with_file(None)?, SourceDefaults::default());
        Ok(())
    }

    #[test]
    fn text_length_is_read() -> Result<()> {
        let defaults = with_file(Some(r#"{"text_length": 32, "comment": "trained at 32"}"#))?;
        assert_eq!(defaults.text_length, Some(32));
        Ok(())
    }

    #[test]
    fn mistakes_name_the_file() {
        for (content, needle) in [
            (r#"{"text_length": 0}"#, "from 1 to 4096"),
            (r#"{"text_length": "32"}"#, "from 1 to 4096"),
            (r#"{"text_lenght": 32}"#, "unknown key \"text_lenght\""),
            ("[32]", "expected a JSON object"),
            ("{", "invalid JSON"),
        ] {
            let message = with_file(Some(content))
                .map(|d| format!("{d:?}"))
                .unwrap_or_else(|e| e.to_string());
            assert!(message.contains(needle), "{content}: {message}");
            assert!(message.contains(FILE_NAME), "{content}: {message}");
        }
    }
}
