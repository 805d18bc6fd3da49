//! `cargo xtask`: schema export and check, ONNX Runtime setup, benchmarks, CI chores.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
