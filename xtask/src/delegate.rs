//! The commands that live in `crates/flux-bench` (`bench`, `setup`): run its binaries through
//! cargo with the same arguments, so `cargo xtask bench ...` and `cargo xtask setup ...` keep every
//! flag and output path while xtask links neither ONNX Runtime's bindings nor plotters.

use anyhow::{Context, bail};

use crate::project_root;

/// Runs `cargo run -p flux-bench --bin BIN [--release] -- ARGS` in this workspace and fails with
/// its exit status. The benchmark runs optimised (`release`): it measures release code.
pub fn run(bin: &str, release: bool, args: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(&cargo);
    command.args(["run", "--quiet"]);
    if release {
        command.arg("--release");
    }
    command
        .args(["-p", "flux-bench", "--bin", bin, "--manifest-path"])
        .arg(project_root().join("Cargo.toml"))
        .arg("--")
        .args(args);
    let status = command
        .status()
        .with_context(|| format!("running cargo run -p flux-bench --bin {bin}"))?;
    if !status.success() {
        bail!("{bin} failed ({status})");
    }
    Ok(())
}
