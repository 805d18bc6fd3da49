//! The tiny dev model compiled into the binary, and its extraction into the flux-rs cache folder.
//!
//! The bundled model is a diffusers folder (`fixtures/tiny-flux-dev-diffusers` plus the tiny ONNX
//! safety checker, see `build.rs`); flux-core builds its ONNX graphs through flux-builder on first
//! load (a tenth of a second, cached), so its VAE has fused attention.
//!
//! The embedded bytes are written out once, to
//! `<cache>/models/tiny-flux-dev-<content hash>/`. The folder is filled under a temporary name and
//! renamed into place, so a reader never sees a half-written model, and concurrent first runs
//! (several processes or threads) all end up using the one complete copy.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use std::{fs, io};

use crate::error::FacadeError;

include!(concat!(env!("OUT_DIR"), "/bundled_model.rs"));

/// The bundled model's id in model listings (`GET /api/v1/models`): its folder in the cache adds
/// a content hash, which says nothing to a reader.
pub const BUNDLED_MODEL_ID: &str = "tiny-flux-dev";

/// Whether this build carries the bundled model.
pub fn has_bundled_model() -> bool {
    !BUNDLED_FILES.is_empty()
}

/// The flux-rs cache folder: `FLUX_RS_CACHE_DIR`, else `$XDG_CACHE_HOME/flux-rs`, else
/// `~/.cache/flux-rs` (flux-core's rule, shared with its ONNX Runtime copy).
pub fn cache_dir() -> Result<PathBuf, FacadeError> {
    Ok(flux_core::runtime::cache_root()?)
}

/// The folder of the bundled tiny model, extracted into [`cache_dir`] on first use.
pub fn bundled_model_dir() -> Result<PathBuf, FacadeError> {
    extract_bundled_model(&cache_dir()?)
}

/// Extracts the bundled model under `cache_root/models/` (unless a complete copy is already there)
/// and returns its folder. Safe to call from several processes at once.
pub fn extract_bundled_model(cache_root: &Path) -> Result<PathBuf, FacadeError> {
    if !has_bundled_model() {
        return Err(FacadeError::NoBundledModel);
    }
    let models = cache_root.join("models");
    let target = models.join(format!("tiny-flux-dev-{BUNDLED_HASH}"));
    if is_complete(&target) {
        return Ok(target);
    }
    fs::create_dir_all(&models).map_err(|e| FacadeError::io("cannot create", &models, e))?;
    let staging = models.join(unique_name("staging"));
    let result = write_all_files(&staging).and_then(|()| publish(&staging, &target, &models));
    if staging.exists() {
        // Best effort: a leftover staging folder wastes space but is never read.
        let _ = fs::remove_dir_all(&staging);
    }
    result.map(|()| target)
}

fn write_all_files(staging: &Path) -> Result<(), FacadeError> {
    for (relative, bytes) in BUNDLED_FILES {
        let path = staging.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| FacadeError::io("cannot create", parent, e))?;
        }
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&path)?;
            io::Write::write_all(&mut file, bytes)?;
            file.sync_all()
        };
        write().map_err(|e| FacadeError::io("cannot write", &path, e))?;
    }
    Ok(())
}

/// Renames the filled staging folder into place. Losing the race to another process is success;
/// a damaged copy in the way (files missing or truncated) is moved aside and replaced.
fn publish(staging: &Path, target: &Path, models: &Path) -> Result<(), FacadeError> {
    for _ in 0..3 {
        match fs::rename(staging, target) {
            Ok(()) => return Ok(()),
            Err(_) if is_complete(target) => return Ok(()),
            Err(error) if target.exists() => {
                let aside = models.join(unique_name("damaged"));
                if fs::rename(target, &aside).is_ok() {
                    let _ = fs::remove_dir_all(&aside);
                } else if !target.exists() {
                    continue;
                } else {
                    return Err(FacadeError::io("cannot replace", target, error));
                }
            }
            Err(error) => return Err(FacadeError::io("cannot rename into", target, error)),
        }
    }
    if is_complete(target) {
        Ok(())
    } else {
        Err(FacadeError::io(
            "cannot publish",
            target,
            io::Error::other("the folder kept changing under concurrent extraction"),
        ))
    }
}

/// A copy is complete when every bundled file is there with its full length.
fn is_complete(dir: &Path) -> bool {
    BUNDLED_FILES.iter().all(|(relative, bytes)| {
        fs::metadata(dir.join(relative)).is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64)
    })
}

fn unique_name(purpose: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    format!(
        ".tiny-flux-dev-{BUNDLED_HASH}.{purpose}.{}.{thread}.{nanos}",
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_writes_every_file_once_and_reuses_it() -> anyhow::Result<()> {
        if !has_bundled_model() {
            anyhow::bail!(
                "this build has no bundled model: fixtures/tiny-flux-dev-diffusers is missing"
            );
        }
        let cache = tempfile::tempdir()?;
        let dir = extract_bundled_model(cache.path())?;
        for (relative, bytes) in BUNDLED_FILES {
            assert_eq!(&fs::read(dir.join(relative))?, bytes, "{relative}");
        }
        let modified = fs::metadata(dir.join(BUNDLED_FILES[0].0))?.modified()?;
        assert_eq!(extract_bundled_model(cache.path())?, dir);
        assert_eq!(
            fs::metadata(dir.join(BUNDLED_FILES[0].0))?.modified()?,
            modified
        );
        // Only the published folder remains: no staging leftovers.
        assert_eq!(fs::read_dir(cache.path().join("models"))?.count(), 1);
        Ok(())
    }

    #[test]
    fn concurrent_first_runs_agree_on_one_complete_copy() -> anyhow::Result<()> {
        if !has_bundled_model() {
            anyhow::bail!(
                "this build has no bundled model: fixtures/tiny-flux-dev-diffusers is missing"
            );
        }
        let cache = tempfile::tempdir()?;
        let root = cache.path().to_path_buf();
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || extract_bundled_model(&root))
            })
            .collect();
        let mut dirs = Vec::new();
        for handle in handles {
            let joined = handle
                .join()
                .map_err(|_| anyhow::anyhow!("extraction thread panicked"))?;
            dirs.push(joined?);
        }
        assert!(dirs.windows(2).all(|pair| pair[0] == pair[1]));
        assert!(is_complete(&dirs[0]));
        assert_eq!(fs::read_dir(root.join("models"))?.count(), 1);
        Ok(())
    }

    #[test]
    fn a_damaged_copy_is_replaced() -> anyhow::Result<()> {
        if !has_bundled_model() {
            anyhow::bail!(
                "this build has no bundled model: fixtures/tiny-flux-dev-diffusers is missing"
            );
        }
        let cache = tempfile::tempdir()?;
        let dir = extract_bundled_model(cache.path())?;
        let (relative, bytes) = BUNDLED_FILES[BUNDLED_FILES.len() - 1];
        fs::write(dir.join(relative), &bytes[..bytes.len() / 2])?;
        assert!(!is_complete(&dir));
        assert_eq!(extract_bundled_model(cache.path())?, dir);
        assert_eq!(fs::read(dir.join(relative))?, bytes);
        Ok(())
    }
}
