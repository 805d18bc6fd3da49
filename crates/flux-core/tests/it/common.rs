//! Helpers shared by the integration tests: fixture paths, a session config for small CPU runs,
//! reading the fixtures' JSON indexes and reference cases, and `.npy` loading.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use flux_core::config::SessionConfig;

/// The repository's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn dev_model() -> PathBuf {
    fixtures().join("tiny-flux-dev")
}

pub fn schnell_model() -> PathBuf {
    fixtures().join("tiny-flux-schnell")
}

/// Reads a JSON fixture, saying which file and how to regenerate it when that fails.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} (run tools/tiny-flux/generate.py)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `fixtures/reference/randn/index.json`: raw `torch.randn` draws, one file per seed and shape.
#[derive(Debug, serde::Deserialize)]
pub struct RandnIndex {
    pub entries: Vec<RandnEntry>,
}

#[derive(Debug, serde::Deserialize)]
pub struct RandnEntry {
    pub seed: u64,
    pub shape: Vec<usize>,
    /// Relative to [`randn_dir`].
    pub file: String,
}

pub fn randn_dir() -> PathBuf {
    fixtures().join("reference/randn")
}

pub fn randn_index() -> anyhow::Result<RandnIndex> {
    read_json(&randn_dir().join("index.json"))
}

/// One intra-op thread: the tiny graphs gain nothing from more, and test threads run in parallel.
pub fn test_config() -> SessionConfig {
    SessionConfig {
        intra_op_threads: Some(1),
        ..SessionConfig::default()
    }
}

/// `crates/flux-core/tests/data/<name>`: the small graphs `make_test_graphs.py` writes.
pub fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A writable copy of a fixture model, removed with this value.
pub struct ModelCopy {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Copies `model` into a fresh temporary folder, for a test that changes its files.
pub fn copy_of(model: &Path) -> anyhow::Result<ModelCopy> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model");
    copy_tree(model, &path)?;
    Ok(ModelCopy { _dir: dir, path })
}

/// Copies a directory tree (the fixtures are a few MB).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// One reference case of `fixtures/reference/cases`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Case {
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub dir: PathBuf,
    pub model: String,
    pub prompt: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub num_images: u32,
    pub num_inference_steps: u32,
    pub guidance_scale: f64,
    pub max_sequence_length: usize,
    /// (H/16)·(W/16), as the generator computed it.
    pub image_seq_len: usize,
}

impl Case {
    pub fn model_dir(&self) -> PathBuf {
        fixtures().join(format!("tiny-flux-{}", self.model))
    }

    pub fn npy<T, D>(&self, name: &str) -> anyhow::Result<ndarray::Array<T, D>>
    where
        T: ndarray_npy::ReadableElement,
        D: ndarray::Dimension,
    {
        let path = self.dir.join(format!("{name}.npy"));
        ndarray_npy::read_npy(&path).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
    }
}

/// Every case listed in the reference index.
pub fn cases() -> anyhow::Result<Vec<Case>> {
    let root = fixtures().join("reference/cases");
    let index: serde_json::Value = read_json(&root.join("index.json"))?;
    let names = index["cases"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("index.json has no cases"))?
        .iter()
        .filter_map(|case| case["name"].as_str().map(str::to_owned));
    let mut cases = Vec::new();
    for name in names {
        let dir = root.join(&name);
        let mut case: Case = read_json(&dir.join("case.json"))?;
        case.name = name;
        case.dir = dir;
        cases.push(case);
    }
    anyhow::ensure!(!cases.is_empty(), "no reference cases");
    Ok(cases)
}

/// Largest absolute difference between two arrays of the same shape.
pub fn max_abs_diff<D: ndarray::Dimension>(
    actual: &ndarray::Array<f32, D>,
    expected: &ndarray::Array<f32, D>,
) -> anyhow::Result<f32> {
    anyhow::ensure!(
        actual.shape() == expected.shape(),
        "shape {:?} != expected {:?}",
        actual.shape(),
        expected.shape()
    );
    Ok(actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        // `f32::max` would drop a NaN and report a perfect match; a NaN must fail every
        // tolerance check instead.
        .fold(0.0, |worst, difference| {
            if difference.is_nan() || difference > worst {
                difference
            } else {
                worst
            }
        }))
}

/// Marks a child process started by [`in_own_process`] or [`child_command`]; its value is the one
/// test the child runs.
pub const CHILD_ENV: &str = "FLUX_RS_TEST_CHILD";

/// `module::test`, the name libtest knows a test of this binary by, from the test's
/// `module_path!()` (`it::module`) and its function name.
pub fn test_name(module_path: &str, test: &str) -> String {
    let module = module_path
        .split_once("::")
        .map_or(module_path, |(_, rest)| rest);
    format!("{module}::{test}")
}

/// Whether this process is the child started to run exactly this test.
pub fn is_child(module_path: &str, test: &str) -> bool {
    std::env::var_os(CHILD_ENV).is_some_and(|value| value == test_name(module_path, test).as_str())
}

/// This test binary, set to run the one test `name` (`module::test`) alone and marked as its
/// child.
pub fn child_command(name: &str) -> anyhow::Result<std::process::Command> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args([name, "--exact", "--nocapture"])
        .env(CHILD_ENV, name);
    Ok(command)
}

/// For a test that needs a process of its own (process-wide state: ONNX Runtime's first
/// configuration, a global tracing subscriber). In the child it returns `Ok(true)`: the test does
/// its work there. In the test binary's own run it runs this test again in a child process, alone,
/// and returns `Ok(false)` only when exactly that one test ran there and passed, so the test can
/// never pass without its body having run.
pub fn in_own_process(module_path: &str, test: &str) -> anyhow::Result<bool> {
    if is_child(module_path, test) {
        return Ok(true);
    }
    let name = test_name(module_path, test);
    let output = child_command(&name)?.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success()
            && stdout.contains("running 1 test")
            && stdout.contains("test result: ok. 1 passed"),
        "{name} failed in its own process ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(false)
}
