//! Runtime provisioning: the cached (or freshly fetched) library loads, initialisation is
//! idempotent, and a process that loaded the CPU build refuses to pretend it has CUDA.

use flux_core::{FluxError, ONNXRUNTIME_VERSION, RuntimeKind, ensure_runtime, init_runtime};

#[test]
fn cpu_runtime_is_provisioned_loaded_once_and_never_upgraded_silently() -> anyhow::Result<()> {
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
