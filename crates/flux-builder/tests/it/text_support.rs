//! Helpers of the text-encoder, BFL and LoRA tests: fixture paths, ORT sessions, `.npy` reading.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use ort::environment::Environment;
use ort::session::Session;

/// The repository's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn environment() -> Result<&'static Environment> {
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        flux_core::init_runtime(flux_core::RuntimeKind::Cpu).map_err(|e| e.to_string())?;
        ort::init()
            .with_name("flux-builder-tests")
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("ONNX Runtime: {e}"))
}

fn builder() -> Result<ort::session::builder::SessionBuilder> {
    Session::builder(environment()?)?
        .with_intra_threads(1)
        .map_err(|e| anyhow::anyhow!("session options: {e}"))
}

/// A one-thread CPU session over a model in memory.
pub fn session_from_memory(bytes: &[u8]) -> Result<Session> {
    builder()?
        .commit_from_memory(bytes)
        .map_err(|e| anyhow::anyhow!("loading a built graph: {e}"))
}

/// A one-thread CPU session over a model file (external data resolved beside it).
pub fn session_from_file(path: &Path) -> Result<Session> {
    builder()?
        .commit_from_file(path)
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))
}

/// One graph output: name, shape, values.
pub type Output = (String, Vec<usize>, Vec<f32>);

/// Runs a graph on one int input and returns every output (name, shape, f32 data).
pub fn run_ids(
    session: &mut Session,
    ids: &[i64],
    shape: [usize; 2],
    int32: bool,
) -> Result<Vec<Output>> {
    let input = if int32 {
        let narrowed: Vec<i32> = ids
            .iter()
            .map(|&i| i32::try_from(i))
            .collect::<Result<_, _>>()?;
        ort::value::Tensor::from_array((shape, narrowed))?.into_dyn()
    } else {
        ort::value::Tensor::from_array((shape, ids.to_vec()))?.into_dyn()
    };
    let outputs = session.run(ort::inputs!["input_ids" => input])?;
    let mut result = Vec::new();
    for (name, value) in outputs.iter() {
        let array = value.try_extract_array::<f32>()?;
        result.push((
            name.to_string(),
            array.shape().to_vec(),
            array.iter().copied().collect(),
        ));
    }
    Ok(result)
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> Result<f32> {
    ensure!(
        a.len() == b.len(),
        "lengths {} and {} differ",
        a.len(),
        b.len()
    );
    Ok(a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max))
}

/// A `.npy` file (v1/v2, little-endian f4 or i8, C order) as (shape, values as f64).
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.starts_with(b"\x93NUMPY"),
        "{}: not a .npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len])?;
    ensure!(
        header.contains("'fortran_order': False"),
        "{}: Fortran order",
        path.display()
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .with_context(|| format!("{}: no shape", path.display()))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let data = &bytes[start + header_len..];
    let values = if header.contains("'<f4'") {
        data.chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect()
    } else if header.contains("'<i8'") {
        data.chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64)
            .collect()
    } else {
        bail!("{}: dtype in {header:?} not read here", path.display());
    };
    Ok((shape, values))
}

/// A `.npy` of float32 values.
pub fn read_f32(path: &Path) -> Result<Vec<f32>> {
    Ok(read_npy(path)?.1.into_iter().map(|v| v as f32).collect())
}

/// A `.npy` of int64 values.
pub fn read_i64(path: &Path) -> Result<Vec<i64>> {
    Ok(read_npy(path)?.1.into_iter().map(|v| v as i64).collect())
}

/// The reference cases of `reference/cases` for one model (`dev` or `schnell`).
pub fn case_dirs(model: &str) -> Result<Vec<PathBuf>> {
    let root = fixtures().join("reference/cases");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("index.json"))?)?;
    let mut dirs = Vec::new();
    for case in index["cases"].as_array().context("no cases")? {
        if case["model"] == model {
            dirs.push(root.join(case["name"].as_str().context("case without a name")?));
        }
    }
    ensure!(!dirs.is_empty(), "no {model} cases");
    Ok(dirs)
}
