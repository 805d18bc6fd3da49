//! `cargo xtask setup`: provisions ONNX Runtime from the PyPI wheel into the flux-rs cache and
//! proves that it loads, so a fresh machine needs nothing else before the tests or the first run.

use anyhow::Context;
use flux_core::runtime::{ONNXRUNTIME_VERSION, RuntimeKind, ensure_runtime, init_runtime};

const USAGE: &str = "\
usage: cargo xtask setup [--cuda]

Fetches libonnxruntime {version} from the `onnxruntime` wheel on PyPI (with --cuda: the
`onnxruntime-gpu` wheel) into the flux-rs cache (FLUX_RS_CACHE_DIR, else $XDG_CACHE_HOME/flux-rs,
else ~/.cache/flux-rs) and loads it once. ORT_DYLIB_PATH, when set, is used instead.
";

pub fn run(args: &[String]) -> anyhow::Result<()> {
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
