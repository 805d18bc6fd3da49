//! ONNX Runtime provisioning: finds (or fetches once, from PyPI) the `libonnxruntime` shared
//! library and initialises `ort` with it, once per process.
//!
//! Discovery order:
//! 1. `ORT_DYLIB_PATH`, when set: used as is, for every [`RuntimeKind`].
//! 2. The project cache: `$FLUX_RS_CACHE_DIR`, else `$XDG_CACHE_HOME/flux-rs`, else
//!    `~/.cache/flux-rs`, holding `onnxruntime/<version>/{cpu,cuda}/libonnxruntime.so.*`.
//! 3. On first need, `python -m pip download onnxruntime==<version>` (`onnxruntime-gpu` for CUDA)
//!    into a staging folder of the cache, the libraries extracted from the wheel, and the folder
//!    renamed into place. A file lock serialises fetches across processes and the rename makes a
//!    half-extracted runtime impossible to observe.
//!
//! Nothing is downloaded from anywhere but the Python package index pip is configured with.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ort::environment::Environment;

pub use crate::config::RuntimeKind;
use crate::config::SessionConfig;
use crate::error::{FluxError, Result};
use crate::threads::{ComputePriority, PoolThreads, ThreadPool};

/// The ONNX Runtime release this crate is built and tested against (`ort` 2.0.0-rc.15 speaks its
/// C API). The only place the version is written.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// What to tell a user whose runtime cannot be provisioned.
const SETUP_HINT: &str = "Run `cargo xtask setup` (needs python3 with pip and access to PyPI), or set \
     ORT_DYLIB_PATH to a libonnxruntime shared library of version 1.31";

/// Serialises provisioning inside this process (the file lock covers other processes).
static PROVISIONING: Mutex<()> = Mutex::new(());

struct Initialised {
    kind: RuntimeKind,
    library: PathBuf,
    from_env_override: bool,
    /// Made by the first session configuration, which also decides the shared pool.
    environment: Option<(Environment, Option<SharedPool>)>,
}

/// The settings ONNX Runtime's process-wide intra-op pool was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SharedPool {
    intra_op_threads: Option<usize>,
    priority: ComputePriority,
}

/// The environment a pipeline's sessions are created in, and whether they run on its shared
/// pool (otherwise each session makes its own).
#[derive(Debug, Clone)]
pub(crate) struct SessionEnvironment {
    pub(crate) environment: Environment,
    pub(crate) shared_pool: bool,
}

static INITIALISED: Mutex<Option<Initialised>> = Mutex::new(None);

/// Returns the path of a `libonnxruntime` shared library of [`ONNXRUNTIME_VERSION`] for `kind`,
/// fetching it into the project cache on first need (see the module docs for the order).
pub fn ensure_runtime(kind: RuntimeKind) -> Result<PathBuf> {
    if let Some(path) = env_override()? {
        return Ok(path);
    }
    let version_dir = cache_root()?.join("onnxruntime").join(ONNXRUNTIME_VERSION);
    let target = version_dir.join(kind.cache_subdir());
    if let Some(library) = find_library(&target) {
        return Ok(library);
    }

    let _in_process = PROVISIONING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    fs::create_dir_all(&version_dir).map_err(|source| unavailable_io(&version_dir, source))?;
    let lock_path = version_dir.join(format!(".{}.lock", kind.cache_subdir()));
    let lock_file =
        File::create(&lock_path).map_err(|source| unavailable_io(&lock_path, source))?;
    lock_file
        .lock()
        .map_err(|source| unavailable_io(&lock_path, source))?;

    // Another process may have finished while this one waited for the lock.
    if let Some(library) = find_library(&target) {
        return Ok(library);
    }
    fetch_into(kind, &version_dir, &target)?;
    find_library(&target).ok_or_else(|| FluxError::RuntimeUnavailable {
        reason: format!(
            "the {} wheel was extracted to {} but holds no libonnxruntime.so",
            kind.pypi_package(),
            target.display()
        ),
        hint: SETUP_HINT.to_owned(),
    })
}

/// Loads ONNX Runtime for `kind` into this process. Idempotent and thread-safe. A process holds
/// one runtime library: after a CPU runtime was loaded, asking for CUDA is an error (the GPU build
/// serves both, so initialise with [`RuntimeKind::Cuda`] first when a process needs both). The
/// `ort` environment itself is made when the first pipeline loads, with its thread settings.
pub fn init_runtime(kind: RuntimeKind) -> Result<()> {
    let mut state = INITIALISED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loaded(&mut state, kind).map(|_| ())
}

/// The runtime state, loading the library for `kind` on first use.
fn loaded(state: &mut Option<Initialised>, kind: RuntimeKind) -> Result<&mut Initialised> {
    if let Some(initialised) = state.as_ref() {
        let compatible =
            initialised.kind == kind || kind == RuntimeKind::Cpu || initialised.from_env_override;
        if !compatible {
            return Err(FluxError::ExecutionProvider {
                provider: kind.to_string(),
                reason: format!(
                    "this process already loaded the {} runtime from {}; the {} runtime must be \
                     initialised before any CPU-only use",
                    initialised.kind,
                    initialised.library.display(),
                    kind
                ),
            });
        }
    } else {
        let from_env_override = env_override()?.is_some();
        let library = ensure_runtime(kind)?;
        load_library(&library)?;
        tracing::info!(library = %library.display(), %kind, "ONNX Runtime loaded");
        *state = Some(Initialised {
            kind,
            library,
            from_env_override,
            environment: None,
        });
    }
    state.as_mut().ok_or_else(|| {
        FluxError::Engine("the runtime state vanished while it was being set".to_owned())
    })
}

fn load_library(library: &Path) -> Result<ort::environment::EnvironmentBuilder> {
    // `ort` loads the library once per process; later calls only hand out a builder.
    ort::init_from(library).map_err(|error| FluxError::RuntimeUnavailable {
        reason: format!("cannot load {}: {error}", library.display()),
        hint: SETUP_HINT.to_owned(),
    })
}

/// The process-wide `ort` environment for sessions made with `config`, initialising the runtime
/// on first use. The first configuration decides whether the environment has a shared pool and
/// its settings (ONNX Runtime allows one environment per process); a configuration that wants the
/// shared pool with other settings gets per-session pools.
pub(crate) fn session_environment(config: &SessionConfig) -> Result<SessionEnvironment> {
    config.compute_priority.check_supported()?;
    let wanted = match config.thread_pool {
        ThreadPool::Shared => Some(SharedPool {
            intra_op_threads: config.intra_op_threads,
            priority: config.compute_priority,
        }),
        ThreadPool::PerSession => None,
    };
    let mut state = INITIALISED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let initialised = loaded(&mut state, config.runtime_kind())?;
    if initialised.environment.is_none() {
        let environment = build_environment(&initialised.library, wanted)?;
        initialised.environment = Some((environment, wanted));
    }
    let Some((environment, pool)) = initialised.environment.as_ref() else {
        return Err(FluxError::Engine(
            "the ONNX Runtime environment vanished while it was being made".to_owned(),
        ));
    };
    let shared_pool = wanted.is_some() && wanted == *pool;
    if wanted.is_some() && !shared_pool {
        tracing::warn!(
            process_pool = ?pool,
            wanted = ?wanted,
            "this process's shared ONNX Runtime pool was made with other settings; these sessions get pools of their own"
        );
    }
    Ok(SessionEnvironment {
        environment: environment.clone(),
        shared_pool,
    })
}

fn build_environment(library: &Path, pool: Option<SharedPool>) -> Result<Environment> {
    let ort_error = |source| FluxError::Ort {
        stage: "runtime init",
        source,
    };
    let mut builder = load_library(library)?.with_name("flux-rs");
    if let Some(pool) = pool {
        let options = ort::environment::GlobalThreadPoolOptions::default()
            // 0: ONNX Runtime's default, one thread per physical core.
            .with_intra_threads(pool.intra_op_threads.unwrap_or(0))
            // Sessions run their graphs sequentially: an inter-op pool would only hold idle
            // threads (with 1, ONNX Runtime makes none).
            .and_then(|options| options.with_inter_threads(1))
            .and_then(|options| {
                options.with_thread_manager(PoolThreads {
                    priority: pool.priority,
                })
            })
            .map_err(ort_error)?;
        builder = builder.with_global_thread_pool(options);
    }
    let environment = builder.build().map_err(ort_error)?;
    crate::cpu_arena::register_shared_cpu_arena(&environment).map_err(ort_error)?;
    Ok(environment)
}

/// `ORT_DYLIB_PATH`, checked: a set but wrong path is an error, not a reason to look elsewhere.
fn env_override() -> Result<Option<PathBuf>> {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(value) if !value.is_empty() => {
            let path = PathBuf::from(value);
            if path.is_file() {
                Ok(Some(path))
            } else {
                Err(FluxError::RuntimeUnavailable {
                    reason: format!(
                        "ORT_DYLIB_PATH is set to {}, which is not a file",
                        path.display()
                    ),
                    hint: SETUP_HINT.to_owned(),
                })
            }
        }
        _ => Ok(None),
    }
}

/// The project cache root (`FLUX_RS_CACHE_DIR`, `$XDG_CACHE_HOME/flux-rs`, `~/.cache/flux-rs`).
pub fn cache_root() -> Result<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(dir) = non_empty("FLUX_RS_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("flux-rs"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(PathBuf::from(home).join(".cache").join("flux-rs"));
    }
    Err(FluxError::RuntimeUnavailable {
        reason: "no cache directory: none of FLUX_RS_CACHE_DIR, XDG_CACHE_HOME, HOME is set"
            .to_owned(),
        hint: SETUP_HINT.to_owned(),
    })
}

/// The main library in a provisioned folder: `libonnxruntime.so.<version>` preferred, else any
/// `libonnxruntime.so*` (but never a provider library).
fn find_library(dir: &Path) -> Option<PathBuf> {
    let exact = dir.join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"));
    if exact.is_file() {
        return Some(exact);
    }
    let mut candidates: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libonnxruntime.so"))
        })
        .collect();
    candidates.sort();
    candidates.pop()
}

fn fetch_into(kind: RuntimeKind, version_dir: &Path, target: &Path) -> Result<()> {
    let python = find_python().ok_or_else(|| FluxError::RuntimeUnavailable {
        reason: format!(
            "ONNX Runtime {ONNXRUNTIME_VERSION} ({kind}) is not in the cache ({}) and no Python \
             interpreter was found to fetch it (tried FLUX_RS_PYTHON, python3, python)",
            target.display()
        ),
        hint: SETUP_HINT.to_owned(),
    })?;

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let staging = version_dir.join(format!(
        ".staging-{}-{}-{nanos}",
        kind.cache_subdir(),
        std::process::id()
    ));
    let result = fetch_into_staging(kind, &python, &staging, target);
    // The staging folder is scratch either way; a leftover one is harmless but wasteful.
    let _ = fs::remove_dir_all(&staging);
    result
}

fn fetch_into_staging(
    kind: RuntimeKind,
    python: &OsString,
    staging: &Path,
    target: &Path,
) -> Result<()> {
    let wheel_dir = staging.join("wheel");
    let lib_dir = staging.join("lib");
    fs::create_dir_all(&wheel_dir).map_err(|source| unavailable_io(&wheel_dir, source))?;
    fs::create_dir_all(&lib_dir).map_err(|source| unavailable_io(&lib_dir, source))?;

    let requirement = format!("{}=={ONNXRUNTIME_VERSION}", kind.pypi_package());
    tracing::info!(%requirement, "fetching ONNX Runtime with pip (first use)");
    let download = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--dest",
        ])
        .arg(&wheel_dir)
        .arg(&requirement)
        .output()
        .map_err(|error| FluxError::RuntimeUnavailable {
            reason: format!("cannot run {}: {error}", Path::new(python).display()),
            hint: SETUP_HINT.to_owned(),
        })?;
    if !download.status.success() {
        return Err(FluxError::RuntimeUnavailable {
            reason: format!(
                "`pip download {requirement}` failed ({}): {}",
                download.status,
                tail(&String::from_utf8_lossy(&download.stderr), 800)
            ),
            hint: SETUP_HINT.to_owned(),
        });
    }

    // A wheel is a zip; Python's zipfile avoids a zip dependency in Rust for a one-off step.
    const EXTRACT: &str = r#"
import os, sys, zipfile
wheel_dir, out_dir = sys.argv[1], sys.argv[2]
wheels = [f for f in os.listdir(wheel_dir) if f.endswith(".whl")]
if len(wheels) != 1:
    sys.exit("expected one wheel in %s, found %r" % (wheel_dir, wheels))
count = 0
with zipfile.ZipFile(os.path.join(wheel_dir, wheels[0])) as wheel:
    for info in wheel.infolist():
        name = info.filename
        base = name.rsplit("/", 1)[-1]
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and ".so" in base:
            with wheel.open(info) as src, open(os.path.join(out_dir, base), "wb") as dst:
                dst.write(src.read())
            os.chmod(os.path.join(out_dir, base), 0o755)
            count += 1
if count == 0:
    sys.exit("no onnxruntime/capi/libonnxruntime*.so* in " + wheels[0])
"#;
    let extract = Command::new(python)
        .args(["-c", EXTRACT])
        .arg(&wheel_dir)
        .arg(&lib_dir)
        .output()
        .map_err(|error| FluxError::RuntimeUnavailable {
            reason: format!("cannot run {}: {error}", Path::new(python).display()),
            hint: SETUP_HINT.to_owned(),
        })?;
    if !extract.status.success() {
        return Err(FluxError::RuntimeUnavailable {
            reason: format!(
                "extracting the {} wheel failed: {}",
                kind.pypi_package(),
                tail(&String::from_utf8_lossy(&extract.stderr), 800)
            ),
            hint: SETUP_HINT.to_owned(),
        });
    }

    match fs::rename(&lib_dir, target) {
        Ok(()) => Ok(()),
        // Someone else's complete copy is already in place: theirs wins.
        Err(_) if find_library(target).is_some() => Ok(()),
        Err(source) => Err(unavailable_io(target, source)),
    }
}

fn find_python() -> Option<OsString> {
    let explicit = std::env::var_os("FLUX_RS_PYTHON").filter(|value| !value.is_empty());
    let candidates = explicit
        .into_iter()
        .chain(["python3".into(), "python".into()]);
    for candidate in candidates {
        let works = Command::new(&candidate)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|output| output.status.success());
        if works {
            return Some(candidate);
        }
    }
    None
}

fn unavailable_io(path: &Path, source: std::io::Error) -> FluxError {
    FluxError::RuntimeUnavailable {
        reason: format!(
            "cannot provision ONNX Runtime at {}: {source}",
            path.display()
        ),
        hint: SETUP_HINT.to_owned(),
    }
}

fn tail(text: &str, max_chars: usize) -> String {
    let trimmed = text.trim();
    let count = trimmed.chars().count();
    if count <= max_chars {
        trimmed.to_owned()
    } else {
        trimmed.chars().skip(count - max_chars).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_lookup_prefers_the_pinned_version_and_ignores_providers() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("libonnxruntime_providers_shared.so"), b"")?;
        assert_eq!(find_library(dir.path()), None);
        fs::write(dir.path().join("libonnxruntime.so.1.30.0"), b"")?;
        assert_eq!(
            find_library(dir.path()),
            Some(dir.path().join("libonnxruntime.so.1.30.0"))
        );
        fs::write(
            dir.path()
                .join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}")),
            b"",
        )?;
        assert_eq!(
            find_library(dir.path()),
            Some(
                dir.path()
                    .join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"))
            )
        );
        Ok(())
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("  abcdef  ", 3), "def");
        assert_eq!(tail("abc", 10), "abc");
    }
}
