//! `cargo xtask`: schema export and check, ONNX Runtime setup, benchmarks, CI chores.
//!
//! Each subcommand lives in its own module with a `run(args) -> anyhow::Result<()>` entry point;
//! `main` only dispatches. Arguments are parsed by hand to keep this crate's build small.
//!
//! xtask itself links only flux-types: `schema --check` must build fast. The commands that need
//! ONNX Runtime or the plotting library (`setup`, `bench`) run binaries of `crates/flux-bench`
//! through cargo ([`delegate`]); `.ci/run` checks that xtask links neither.

mod delegate;
mod schema;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  schema [--check]   write docs/schema/*.json and docs/openapi.json from flux-types;
                     with --check, fail if the committed files differ from the generated ones
  setup [--cuda]     provision ONNX Runtime from the onnxruntime PyPI wheel into the cache
                     and load it once (ORT_DYLIB_PATH overrides)
  bench [--quick]    measure the pipeline, server and memory against the Python peers;
                     writes bench-results/ and docs/benchmarks.md (`bench --help` for options)
  help               print this text
";

fn main() -> ExitCode {
    // Printed here rather than returned from `main`, so a failed check shows one readable line
    // and not a backtrace when RUST_BACKTRACE is set.
    match dispatch() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "schema" => schema::run(&rest),
        "bench" => delegate::run("flux-bench", true, &rest),
        "setup" => delegate::run("flux-setup", false, &rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn project_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), std::path::Path::to_path_buf)
}
