//! Built models in the flux-rs cache: a key over everything that determines the graphs, atomic
//! publication, and a lock so that two processes never build the same entry at once.
//!
//! An entry is `<cache_root>/models/<key>/`. It is built in `<cache_root>/models/.<key>.tmp-*`,
//! every file and folder fsynced, then renamed into place: a folder at the entry's path is always
//! complete, and a killed build leaves only a temp folder that no run uses (the next build of the
//! same key removes it under the lock).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::error::{BuilderError, Result};
use crate::layout::build_into;
use crate::options::BuildOptions;
use crate::source::{SourceKind, detect};
use crate::weights::Checkpoint;

/// Bumped whenever the builder writes different graphs for the same input (part of every key),
/// so that an upgrade never serves graphs an older builder wrote. 2: `--precision int8` stores
/// the transformer for DynamicQuantizeMatMul (format 1 entries held 8-bit MatMulNBits blocks).
pub const BUILDER_FORMAT: u32 = 2;

/// A fresh, empty temp folder beside `dest` (same filesystem, so the final rename is atomic).
pub(crate) fn temp_beside(dest: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| BuilderError::io(parent, e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&tmp).map_err(|e| BuilderError::io(&tmp, e))?;
    Ok(tmp)
}

fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| BuilderError::io(dir, e))? {
        let path = entry.map_err(|e| BuilderError::io(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| BuilderError::io(&path, e))?;
        }
    }
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| BuilderError::io(dir, e))
}

/// fsyncs `tmp` and renames it to `dest` (which must not exist), then fsyncs the parent.
pub(crate) fn publish(tmp: &Path, dest: &Path) -> Result<()> {
    sync_tree(tmp)?;
    std::fs::rename(tmp, dest).map_err(|e| BuilderError::io(dest, e))?;
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(|e| BuilderError::io(parent, e))?;
    }
    Ok(())
}

fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let mut file = File::open(path).map_err(|e| BuilderError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| BuilderError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Hashes the configs, tokenizer files and indexes under `dir` (`*.json`, `*.txt`, `*.model`;
/// sorted, names relative to `root`); weights are keyed by their headers instead.
fn hash_small_tree(hasher: &mut Sha256, root: &Path, dir: &Path) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| BuilderError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            hash_small_tree(hasher, root, &path)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "json" || e == "txt" || e == "model")
        {
            hasher.update(
                path.strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .as_bytes(),
            );
            hash_file(hasher, &path)?;
        }
    }
    Ok(())
}

/// The small files of a source that the build reads or copies.
fn hash_folders(hasher: &mut Sha256, source: &Path) -> Result<()> {
    for file in ["model_index.json", crate::source_defaults::FILE_NAME] {
        let path = source.join(file);
        if path.is_file() {
            hasher.update(file.as_bytes());
            hash_file(hasher, &path)?;
        }
    }
    for folder in [
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "transformer",
        "vae",
        "scheduler",
    ] {
        let dir = source.join(folder);
        if dir.is_dir() {
            hash_small_tree(hasher, source, &dir)?;
        }
    }
    Ok(())
}

/// Hashes what identifies a checkpoint file cheaply: its header (not its data) and, because two
/// fine-tunes of one architecture have identical headers, its resolved path, size and mtime.
fn hash_checkpoint(hasher: &mut Sha256, ckpt: &Checkpoint) -> Result<()> {
    for meta in ckpt.files() {
        let resolved =
            std::fs::canonicalize(&meta.path).map_err(|e| BuilderError::io(&meta.path, e))?;
        let stat = std::fs::metadata(&resolved).map_err(|e| BuilderError::io(&resolved, e))?;
        let mtime = stat
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hasher.update(resolved.to_string_lossy().as_bytes());
        hasher.update(meta.size.to_le_bytes());
        hasher.update(mtime.to_le_bytes());
        hasher.update(meta.header_sha256);
    }
    Ok(())
}

/// The cache key of building `source` with `opts`: SHA-256 over the builder's format and
/// version, precision, device and text length, every config/tokenizer/scheduler file, every
/// weight file's header (plus path, size, mtime), and each LoRA file's content and scale.
pub fn cache_key(source: &Path, opts: &BuildOptions) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "flux-builder {} format {BUILDER_FORMAT}\nprecision {}\ndevice {}\ntext_length {:?}\n",
        env!("CARGO_PKG_VERSION"),
        opts.precision,
        opts.device,
        opts.text_length
    ));
    match detect(source)? {
        SourceKind::Diffusers => {
            hash_folders(&mut hasher, source)?;
            for component in ["text_encoder", "text_encoder_2", "transformer", "vae"] {
                hasher.update(component.as_bytes());
                hash_checkpoint(
                    &mut hasher,
                    &Checkpoint::open_component(&source.join(component))?,
                )?;
            }
        }
        SourceKind::BflFiles { transformer, ae } => {
            hash_folders(&mut hasher, source)?;
            for file in [&transformer, &ae] {
                hash_checkpoint(&mut hasher, &Checkpoint::open_file(file)?)?;
            }
            for component in ["text_encoder", "text_encoder_2"] {
                hash_checkpoint(
                    &mut hasher,
                    &Checkpoint::open_component(&source.join(component))?,
                )?;
            }
        }
        SourceKind::OnnxLayout => {
            return Err(BuilderError::UnknownSource {
                path: source.to_owned(),
                looked_for: "a folder to build (this one is already in the ONNX layout)".into(),
            });
        }
    }
    for lora in &opts.loras {
        hasher.update(format!("lora scale {}\n", lora.scale));
        hash_file(&mut hasher, &lora.path)?;
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

/// The model folder to load for `source`: the source itself when it is already an ONNX layout,
/// else the cache entry of its build, built and published first if it does not exist yet.
pub fn build_cached(source: &Path, opts: &BuildOptions, cache_root: &Path) -> Result<PathBuf> {
    if detect(source)? == SourceKind::OnnxLayout {
        return Ok(source.to_owned());
    }
    let key = cache_key(source, opts)?;
    let models = cache_root.join("models");
    std::fs::create_dir_all(&models).map_err(|e| BuilderError::io(&models, e))?;
    let entry = models.join(&key);
    if entry.is_dir() {
        return Ok(entry);
    }
    let lock_path = models.join(format!(".{key}.lock"));
    let lock = File::create(&lock_path).map_err(|e| BuilderError::io(&lock_path, e))?;
    // Blocks while another process builds this entry; released when `lock` is dropped (also
    // when this process dies, so a killed build never leaves the entry locked).
    lock.lock().map_err(|e| BuilderError::io(&lock_path, e))?;
    if entry.is_dir() {
        return Ok(entry);
    }
    remove_stale_temps(&models, &key);
    let tmp = temp_beside(&entry)?;
    tracing::info!(source = %source.display(), entry = %entry.display(), "building the model's ONNX graphs into the cache");
    let result = build_into(source, opts, &tmp).and_then(|_| publish(&tmp, &entry));
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(error);
    }
    Ok(entry)
}

/// Temp folders of earlier builds of `key` that were killed (only called under the key's lock).
fn remove_stale_temps(models: &Path, key: &str) {
    let prefix = format!(".{key}.tmp-");
    if let Ok(entries) = std::fs::read_dir(models) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
