//! The official FLUX.1-dev-onnx folder layout: which file holds which graph (or the manifest's
//! override), the transformer precision folders, and the scheduler config beside them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::DEFAULT_SAFETY_THRESHOLD;
use super::manifest::{MANIFEST_FILE, Manifest};
use crate::sampling::SchedulerConfig;
use crate::tokenizer;

/// Transformer precision folders tried in order when the manifest names none. fp8/fp4 exports
/// use TensorRT-only operators and cannot run on the CPU or CUDA providers.
const RUNNABLE_PRECISIONS: [&str; 3] = ["fp32", "bf16", "fp16"];
const TENSORRT_ONLY_PRECISIONS: [&str; 2] = ["fp8", "fp4"];

pub(crate) fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The files of a model folder, resolved from the layout and the manifest. A missing required
/// file is a problem (and `None` here); a missing safety checker is simply absent.
#[derive(Debug)]
pub(super) struct ModelFiles {
    pub(super) clip: Option<PathBuf>,
    pub(super) t5: Option<PathBuf>,
    pub(super) transformer: Option<PathBuf>,
    pub(super) vae: Option<PathBuf>,
    pub(super) safety_checker: Option<PathBuf>,
    pub(super) safety_threshold: f32,
    pub(super) clip_tokenizer: PathBuf,
    pub(super) t5_tokenizer: PathBuf,
    pub(super) scheduler_config: PathBuf,
}

impl ModelFiles {
    pub(super) fn resolve(root: &Path, manifest: &Manifest, problems: &mut Vec<String>) -> Self {
        let clip = graph_file(
            root,
            manifest.clip.as_deref(),
            "clip.opt/model.onnx",
            problems,
        );
        let t5 = graph_file(root, manifest.t5.as_deref(), "t5.opt/model.onnx", problems);
        let transformer = transformer_file(root, manifest.transformer.as_deref(), problems);
        let vae = graph_file(
            root,
            manifest.vae.as_deref(),
            "vae.opt/model.onnx",
            problems,
        );
        let safety_manifest = manifest.safety_checker.clone().unwrap_or_default();
        let safety_checker = if safety_manifest.enabled {
            match &safety_manifest.path {
                Some(relative) => graph_file(root, Some(relative), "", problems),
                None => Some(root.join("safety_checker/model.onnx")).filter(|path| path.is_file()),
            }
        } else {
            None
        };
        let safety_threshold = safety_manifest
            .threshold
            .unwrap_or(DEFAULT_SAFETY_THRESHOLD);
        if !(0.0..=1.0).contains(&safety_threshold) {
            problems.push(format!(
                "{MANIFEST_FILE}: safety_checker.threshold {safety_threshold} is not in [0, 1]"
            ));
        }

        let clip_tokenizer = root.join("tokenizer");
        for missing in tokenizer::missing_clip_files(&clip_tokenizer) {
            problems.push(format!("missing file {}", relative(root, &missing)));
        }
        let t5_tokenizer = root.join("tokenizer_2");
        if !t5_tokenizer.join("tokenizer.json").is_file() {
            problems.push("missing file tokenizer_2/tokenizer.json".to_owned());
        }
        Self {
            clip,
            t5,
            transformer,
            vae,
            safety_checker,
            safety_threshold,
            clip_tokenizer,
            t5_tokenizer,
            scheduler_config: root.join("scheduler/scheduler_config.json"),
        }
    }
}

/// A graph file: the manifest's path or the layout's default; a missing one becomes a problem.
fn graph_file(
    root: &Path,
    manifest_path: Option<&Path>,
    default: &str,
    problems: &mut Vec<String>,
) -> Option<PathBuf> {
    let path = root.join(manifest_path.unwrap_or(Path::new(default)));
    if path.is_file() {
        Some(path)
    } else {
        let origin = if manifest_path.is_some() {
            format!(" (named in {MANIFEST_FILE})")
        } else {
            String::new()
        };
        problems.push(format!("missing file {}{origin}", relative(root, &path)));
        None
    }
}

pub(super) fn transformer_file(
    root: &Path,
    manifest_path: Option<&Path>,
    problems: &mut Vec<String>,
) -> Option<PathBuf> {
    if let Some(path) = manifest_path {
        let named = root.join(path);
        if let Some(precision) = TENSORRT_ONLY_PRECISIONS.iter().find(|precision| {
            named
                .components()
                .any(|part| part.as_os_str() == **precision)
        }) {
            problems.push(format!(
                "{}: the {precision} transformer needs TensorRT operators; use an fp32, bf16 or fp16 export",
                relative(root, &named)
            ));
            return None;
        }
        return graph_file(root, Some(path), "", problems);
    }
    let base = root.join("transformer.opt");
    if let Some(found) = RUNNABLE_PRECISIONS
        .iter()
        .map(|precision| base.join(precision).join("model.onnx"))
        .chain(std::iter::once(base.join("model.onnx")))
        .find(|path| path.is_file())
    {
        return Some(found);
    }
    let tensorrt_only: Vec<&str> = TENSORRT_ONLY_PRECISIONS
        .iter()
        .copied()
        .filter(|precision| base.join(precision).join("model.onnx").is_file())
        .collect();
    if tensorrt_only.is_empty() {
        problems.push("missing file transformer.opt/{fp32,bf16,fp16}/model.onnx".to_owned());
    } else {
        problems.push(format!(
            "transformer.opt holds only {} exports, which need TensorRT operators; add an fp32, bf16 or fp16 export",
            tensorrt_only.join(" and ")
        ));
    }
    None
}

/// Reads and checks the scheduler config the pipeline will use (a schedule variant flux-rs does
/// not compute is a load problem like any other); returns it, when usable, and its explicit
/// `use_dynamic_shifting`.
pub(super) fn check_scheduler_config(
    root: &Path,
    path: &Path,
    problems: &mut Vec<String>,
) -> (Option<SchedulerConfig>, Option<bool>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(_) => {
            problems.push(format!("missing file {}", relative(root, path)));
            return (None, None);
        }
    };
    let config = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(config) => config,
        Err(error) => {
            problems.push(format!("{}: {error}", relative(root, path)));
            return (None, None);
        }
    };
    let scheduler = match SchedulerConfig::deserialize(&config) {
        Ok(scheduler) => match scheduler.validate() {
            Ok(()) => Some(scheduler),
            Err(message) => {
                problems.push(format!("{}: {message}", relative(root, path)));
                None
            }
        },
        Err(error) => {
            problems.push(format!("{}: {error}", relative(root, path)));
            None
        }
    };
    let dynamic_shifting = config
        .get("use_dynamic_shifting")
        .and_then(serde_json::Value::as_bool);
    (scheduler, dynamic_shifting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensorrt_only_transformers_are_refused_with_a_reason() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("transformer.opt/fp8"))?;
        std::fs::write(dir.path().join("transformer.opt/fp8/model.onnx"), b"")?;
        let mut problems = Vec::new();
        assert_eq!(transformer_file(dir.path(), None, &mut problems), None);
        assert!(problems[0].contains("TensorRT"), "{problems:?}");

        std::fs::create_dir_all(dir.path().join("transformer.opt/bf16"))?;
        std::fs::write(dir.path().join("transformer.opt/bf16/model.onnx"), b"")?;
        let mut problems = Vec::new();
        assert_eq!(
            transformer_file(dir.path(), None, &mut problems),
            Some(dir.path().join("transformer.opt/bf16/model.onnx"))
        );
        assert!(problems.is_empty());
        Ok(())
    }
}
