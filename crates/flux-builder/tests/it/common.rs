//! Shared helpers: the ONNX Runtime environment, sessions, seeded inputs, paths.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ndarray::{ArrayD, IxDyn};
use ort::session::Session;
use ort::value::TensorRef;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A committed fixture file.
pub fn fixture(rel: &str) -> PathBuf {
    repo().join("fixtures").join(rel)
}

/// A diffusers-format tiny model component (same weights as the committed ONNX graphs).
pub fn diffusers(variant: &str, component: &str) -> PathBuf {
    fixture(&format!("tiny-flux-{variant}-diffusers/{component}"))
}

/// A CPU session on one thread (the process's one ORT environment lives in `text_support`).
pub fn session(path: &Path) -> Result<Session> {
    crate::text_support::session_from_file(path)
}

/// An input of a session run (ids come as int32 or int64, as in the committed folders).
#[allow(dead_code)]
pub enum Feed {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
}

/// Runs a session and returns every output as f32.
pub fn run(session: &mut Session, feeds: &[(&str, &Feed)]) -> Result<Vec<ArrayD<f32>>> {
    let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::new();
    for (name, feed) in feeds {
        let value: ort::session::SessionInputValue<'_> = match feed {
            Feed::F32(a) => TensorRef::from_array_view(a.view())?.into(),
            Feed::I64(a) => TensorRef::from_array_view(a.view())?.into(),
            Feed::I32(a) => TensorRef::from_array_view(a.view())?.into(),
        };
        inputs.push(((*name).to_owned(), value));
    }
    let outputs = session.run(inputs)?;
    let mut result = Vec::new();
    for (_, value) in outputs.iter() {
        result.push(value.try_extract_array::<f32>()?.to_owned());
    }
    Ok(result)
}

/// Seeded values in [-1, 1) (a 64-bit LCG: no dependency, same numbers on every machine).
pub fn uniform(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape matches")
}

/// max |a - b| and max |b|.
pub fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> (f32, f32) {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let diff = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let mag = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    (diff, mag)
}

/// Fails when the difference exceeds `tol` relative to the reference's magnitude (at least 1).
pub fn assert_close(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>, tol: f32) {
    let (diff, mag) = max_diff(got, want);
    println!("{what}: max abs diff {diff:.3e} (largest value {mag:.3})");
    assert!(
        diff <= tol * mag.max(1.0) && diff.is_finite(),
        "{what}: max abs diff {diff} > {tol} x max(1, {mag})"
    );
}
