//! `cargo xtask setup`: provisions ONNX Runtime from the PyPI wheel into the flux-rs cache and
//! proves that it loads, so a fresh machine needs nothing else before the tests or the first run.
//!
//! A binary of this crate rather than code in xtask, so that xtask does not link ONNX Runtime's
//! bindings: `cargo xtask setup ARGS` runs `cargo run -p flux-bench --bin flux-setup -- ARGS`.

use std::process::ExitCode;

use anyhow::Context;
use flux_core::runtime::{ONNXRUNTIME_VERSION, RuntimeKind, ensure_runtime, init_runtime};

const USAGE: &str = "\
usage: cargo xtask setup [--cuda]

Fetches libonnxruntime {version} from the `onnxruntime` wheel on PyPI (with --cuda: the
`onnxruntime-gpu` wheel) into the flux-rs cache (FLUX_RS_CACHE_DIR, else $XDG_CACHE_HOME/flux-rs,
else ~/.cache/flux-rs) and loads it once. ORT_DYLIB_PATH, when set, is used instead.
";

fn main() -> ExitCode {
    // Printed here rather than returned from `main`, so a failure shows one readable line and not
    // a backtrace when RUST_BACKTRACE is set.
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let mut kind = RuntimeKind::Cpu;
    for arg in args {
        match arg.as_str() {
            "--cuda" => kind = RuntimeKind::Cuda,
            "-h" | "--help" => {
                print!("{}", USAGE.replace("{version}", ONNXRUNTIME_VERSION));
                return Ok(());
            }
            other => {
                anyhow::bail!("unknown option `{other}` for setup (see `cargo xtask setup --help`)")
            }
        }
    }
    let library = ensure_runtime(kind).with_context(|| {
        format!("provisioning the {kind} build of ONNX Runtime {ONNXRUNTIME_VERSION}")
    })?;
    init_runtime(kind).with_context(|| format!("loading {}", library.display()))?;
    println!(
        "ONNX Runtime {ONNXRUNTIME_VERSION} ({kind}) ready: {}",
        library.display()
    );
    Ok(())
}
