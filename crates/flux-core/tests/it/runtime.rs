//! Runtime provisioning: the cached (or freshly fetched) library loads, initialisation is
//! idempotent, and a process that loaded the CPU build refuses to pretend it has CUDA.

use flux_core::{FluxError, ONNXRUNTIME_VERSION, RuntimeKind, ensure_runtime, init_runtime};

use crate::common;

/// In a process of its own, so its initialisation is the process's first (the concurrent first
/// use) and no other test's runtime decides what it sees.
#[test]
fn cpu_runtime_is_provisioned_loaded_once_and_never_upgraded_silently() -> anyhow::Result<()> {
    if !common::in_own_process(
        module_path!(),
        "cpu_runtime_is_provisioned_loaded_once_and_never_upgraded_silently",
    )? {
        return Ok(());
    }
    let library = ensure_runtime(RuntimeKind::Cpu)?;
    assert!(library.is_file(), "{} is not a file", library.display());
    let name = library
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    assert!(
        name.starts_with("libonnxruntime.so"),
        "unexpected library name {name}"
    );
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        assert!(
            name.ends_with(ONNXRUNTIME_VERSION),
            "cached runtime {name} is not the pinned version"
        );
    }

    // Concurrent first use from many threads must agree and not fail.
    let handles: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| init_runtime(RuntimeKind::Cpu)))
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("init thread panicked"))??;
    }
    init_runtime(RuntimeKind::Cpu)?;

    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        match init_runtime(RuntimeKind::Cuda) {
            Err(FluxError::ExecutionProvider { provider, .. }) => assert_eq!(provider, "CUDA"),
            other => panic!("CUDA after a CPU runtime must be refused, got {other:?}"),
        }
    }
    Ok(())
}

/// Runs one test of this binary in a child process with a controlled environment (the runtime is
/// process-wide and environment variables cannot be changed safely inside a test process).
fn run_child(
    test: &str,
    env: &[(&str, &std::path::Path)],
    remove: &[&str],
) -> anyhow::Result<std::process::Output> {
    let mut command = common::child_command(&common::test_name(module_path!(), test))?;
    for (name, value) in env {
        command.env(name, value);
    }
    for name in remove {
        command.env_remove(name);
    }
    Ok(command.output()?)
}

/// Run only as the child of the test below, which checks what it printed.
#[test]
fn child_reports_unavailable_runtime() {
    if !common::is_child(module_path!(), "child_reports_unavailable_runtime") {
        return;
    }
    match ensure_runtime(RuntimeKind::Cpu) {
        Err(error @ FluxError::RuntimeUnavailable { .. }) => println!("CHILD-ERROR: {error}"),
        other => println!("CHILD-UNEXPECTED: {other:?}"),
    }
}

#[test]
fn a_missing_runtime_that_cannot_be_fetched_is_one_clear_error() -> anyhow::Result<()> {
    let empty_cache = tempfile::tempdir()?;
    let no_tools = tempfile::tempdir()?;
    // No python on PATH and an empty cache: nothing can provision the runtime.
    let output = run_child(
        "child_reports_unavailable_runtime",
        &[
            ("FLUX_RS_CACHE_DIR", empty_cache.path()),
            ("PATH", no_tools.path()),
        ],
        &["ORT_DYLIB_PATH", "FLUX_RS_PYTHON"],
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("CHILD-"))
        .unwrap_or_default();
    assert!(line.starts_with("CHILD-ERROR:"), "child said: {stdout}");
    assert!(
        line.contains("cargo xtask setup") && line.contains("ORT_DYLIB_PATH"),
        "{line}"
    );
    assert!(line.contains("no Python interpreter"), "{line}");

    // A set but wrong ORT_DYLIB_PATH is an error too, not a reason to look elsewhere.
    let missing = empty_cache.path().join("libonnxruntime.so.missing");
    let output = run_child(
        "child_reports_unavailable_runtime",
        &[("ORT_DYLIB_PATH", &missing)],
        &[],
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("CHILD-"))
        .unwrap_or_default();
    assert!(
        line.starts_with("CHILD-ERROR:") && line.contains("ORT_DYLIB_PATH is set"),
        "child said: {stdout}"
    );
    Ok(())
}
