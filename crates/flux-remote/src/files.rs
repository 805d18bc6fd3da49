//! Generated images on local disk: random capability ids, atomic writes, strict name parsing,
//! retention, a size quota, and the folder's health (recreated when deleted).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::error::RemoteError;
use crate::file_index::FileIndex;
pub(crate) use crate::ids::random_hex;

/// How long a health probe of the folder is trusted before `/ready` probes again.
const HEALTH_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Bytes of randomness in a file id (128 bits), written as lowercase hex.
const ID_BYTES: usize = 16;
const TEMP_PREFIX: &str = ".tmp-";
/// A temporary file younger than this (or than the retention, if longer) may still be being
/// written, however short the retention is; only older ones are crash leftovers to delete.
const TEMP_FILE_GRACE: Duration = Duration::from_secs(60 * 60);

/// The file kinds the store serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Jpeg,
    Png,
}

impl FileKind {
    pub(crate) fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type {
            "image/jpeg" => Some(FileKind::Jpeg),
            "image/png" => Some(FileKind::Png),
            _ => None,
        }
    }

    pub(crate) fn extension(self) -> &'static str {
        match self {
            FileKind::Jpeg => "jpg",
            FileKind::Png => "png",
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            FileKind::Jpeg => "image/jpeg",
            FileKind::Png => "image/png",
        }
    }
}

/// Accepts exactly `<32 lowercase hex>.<jpg|png>`; nothing else can name a file, so no path
/// (`..`, `/`, `\`, absolute, encoded) ever reaches the file system.
pub(crate) fn parse_file_name(name: &str) -> Option<FileKind> {
    let (id, extension) = name.split_once('.')?;
    let id_ok = id.len() == ID_BYTES * 2
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !id_ok {
        return None;
    }
    match extension {
        "jpg" => Some(FileKind::Jpeg),
        "png" => Some(FileKind::Png),
        _ => None,
    }
}

fn is_older_than(metadata: &std::fs::Metadata, max_age: Duration) -> bool {
    let Ok(modified) = metadata.modified() else {
        return true;
    };
    match SystemTime::now().duration_since(modified) {
        Ok(age) => age >= max_age,
        // Modified "in the future" (clock change): keep it.
        Err(_) => false,
    }
}

/// When a stored image is flushed to stable storage (fsync of the file and of the folder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileDurability {
    /// Written and renamed into place before the response, flushed right after it, off the
    /// response path. An image is readable through its URL as soon as the response is sent; a
    /// power cut (not a crash of the server) in the millisecond after can lose it, and the empty
    /// file such a cut can leave is never served and is swept.
    #[default]
    AfterResponse,
    /// Flushed before the response is sent, so every URL handed out survives a power cut. Costs
    /// one fsync per image on the response path (about 1-2 ms on local SSDs, more on network
    /// disks).
    BeforeResponse,
}

/// Writes `bytes` to `temp` and renames it to `target`. Returns the file still to be flushed
/// when `durability` leaves that for later.
fn write_then_rename(
    bytes: &[u8],
    temp: &Path,
    target: &Path,
    durability: FileDurability,
) -> io::Result<Option<std::fs::File>> {
    let mut file = create_recreating_dir(temp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    match durability {
        FileDurability::BeforeResponse => {
            file.sync_all()?;
            std::fs::rename(temp, target)?;
            if let Some(dir) = target.parent() {
                sync_dir(dir)?;
            }
            Ok(None)
        }
        FileDurability::AfterResponse => {
            std::fs::rename(temp, target)?;
            Ok(Some(file))
        }
    }
}

/// Makes a rename in `dir` durable (a no-op where folders cannot be opened as files).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Creates `temp` for writing; recreates the folder first when it was deleted under the server.
fn create_recreating_dir(temp: &Path) -> io::Result<std::fs::File> {
    match std::fs::File::create(temp) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = temp.parent() {
                std::fs::create_dir_all(dir)?;
                tracing::warn!(dir = %dir.display(), "the files folder was gone: recreated it");
            }
            std::fs::File::create(temp)
        }
        other => other,
    }
}

/// What the metrics report about the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StorageStats {
    pub healthy: bool,
    pub bytes: u64,
    pub quota: Option<u64>,
    pub evicted: u64,
    pub failures: u64,
}

/// The image directory.
#[derive(Debug)]
pub(crate) struct FileStore {
    dir: PathBuf,
    retention: Duration,
    durability: FileDurability,
    quota: Option<u64>,
    index: FileIndex,
    healthy: AtomicBool,
    /// When the folder was last found writable or not (a probe, or a real write).
    checked: Mutex<Option<Instant>>,
    evicted: AtomicU64,
    failures: AtomicU64,
}

impl FileStore {
    #[cfg(test)]
    pub(crate) fn open(
        dir: &Path,
        retention: Duration,
        durability: FileDurability,
    ) -> Result<Self, RemoteError> {
        Self::with_quota(dir, retention, durability, None)
    }

    /// Opens (creating) the folder and indexes the images already in it, so the quota counts
    /// them too.
    pub(crate) fn with_quota(
        dir: &Path,
        retention: Duration,
        durability: FileDurability,
        quota: Option<u64>,
    ) -> Result<Self, RemoteError> {
        let failed = |source| RemoteError::FilesDir {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(failed)?;
        let index = FileIndex::default();
        for entry in std::fs::read_dir(dir).map_err(failed)?.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if parse_file_name(name).is_none() {
                continue;
            }
            if let Ok(metadata) = entry.metadata()
                && metadata.is_file()
            {
                let written = metadata.modified().unwrap_or_else(|_| SystemTime::now());
                index.insert(name, written, metadata.len());
            }
        }
        Ok(FileStore {
            dir: dir.to_owned(),
            retention,
            durability,
            quota,
            index,
            healthy: AtomicBool::new(true),
            checked: Mutex::new(None),
            evicted: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    fn set_health(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::SeqCst);
        if was != healthy {
            if healthy {
                tracing::info!(dir = %self.dir.display(), "the files folder is writable again");
            } else {
                tracing::error!(dir = %self.dir.display(), "the files folder is not writable: stored-image requests get 503 storage_unavailable");
            }
        }
        *self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    /// Whether images can be written: the last write or probe, when recent, else a fresh probe
    /// (a small file written and removed; a deleted folder is recreated).
    pub(crate) async fn is_healthy(&self) -> bool {
        let recent = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < HEALTH_PROBE_EVERY);
        if recent {
            return self.healthy.load(Ordering::SeqCst);
        }
        let probe = self
            .dir
            .join(format!("{TEMP_PREFIX}probe-{}", random_hex(ID_BYTES)));
        let healthy = tokio::task::spawn_blocking(move || {
            let written = create_recreating_dir(&probe)
                .and_then(|mut file| std::io::Write::write_all(&mut file, b"probe"));
            let _ = std::fs::remove_file(&probe);
            written.is_ok()
        })
        .await
        .unwrap_or(false);
        self.set_health(healthy);
        healthy
    }

    pub(crate) fn stats(&self) -> StorageStats {
        StorageStats {
            healthy: self.healthy.load(Ordering::SeqCst),
            bytes: self.index.total(),
            quota: self.quota,
            evicted: self.evicted.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Writes `bytes` under a fresh id and returns the file name. The bytes go to a temporary
    /// file that is renamed into place, so a URL never serves a partial file. With
    /// [`FileDurability::AfterResponse`] the flush to disk is started here and finishes in the
    /// background: the caller answers as soon as the file is readable.
    pub(crate) async fn store(&self, bytes: Vec<u8>, kind: FileKind) -> io::Result<String> {
        let result = self.store_unchecked(bytes, kind).await;
        match &result {
            Ok(_) => self.set_health(true),
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.set_health(false);
            }
        }
        result
    }

    async fn store_unchecked(&self, bytes: Vec<u8>, kind: FileKind) -> io::Result<String> {
        let name = format!("{}.{}", random_hex(ID_BYTES), kind.extension());
        let size = bytes.len() as u64;
        if self.quota.is_some_and(|quota| size > quota) {
            return Err(io::Error::other(format!(
                "an image of {size} bytes is larger than the files quota"
            )));
        }
        // Reserved before the write, so concurrent writes cannot overshoot the quota together.
        let evicted = self.index.reserve(&name, size, self.quota);
        self.evicted
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        let evict_dir = self.dir.clone();
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}", random_hex(ID_BYTES)));
        let target = self.dir.join(&name);
        let dir = self.dir.clone();
        let durability = self.durability;
        // One blocking task for the whole write instead of one per `tokio::fs` call: each hop to
        // the blocking pool costs a thread wake-up, and this is on the response path.
        let written = tokio::task::spawn_blocking(move || {
            for victim in &evicted {
                // Already gone (expired, or the folder was deleted) is what eviction wants.
                let _ = std::fs::remove_file(evict_dir.join(victim));
            }
            if !evicted.is_empty() {
                tracing::info!(
                    images = evicted.len(),
                    "files quota reached: deleted the oldest images"
                );
            }
            let result = write_then_rename(&bytes, &temp, &target, durability);
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result
        })
        .await
        .map_err(io::Error::other)
        .and_then(|written| written)
        .inspect_err(|_| self.index.remove(&name))?;
        if let Some(file) = written {
            tokio::task::spawn_blocking(move || {
                if let Err(error) = file.sync_all().and_then(|()| sync_dir(&dir)) {
                    tracing::error!(%error, "cannot flush a stored image to disk");
                }
            });
        }
        Ok(name)
    }

    /// The bytes and kind of a stored, unexpired file; `None` for anything else. An expired file
    /// found here is deleted.
    pub(crate) async fn read(&self, name: &str) -> Option<(Vec<u8>, FileKind)> {
        let kind = parse_file_name(name)?;
        let path = self.dir.join(name);
        let metadata = tokio::fs::symlink_metadata(&path).await.ok()?;
        // An empty image is the leftover of a power cut between the rename and the flush.
        if !metadata.is_file() || metadata.len() == 0 {
            return None;
        }
        if self.is_expired(&metadata) {
            let _ = tokio::fs::remove_file(&path).await;
            self.index.remove(name);
            return None;
        }
        let bytes = tokio::fs::read(&path).await.ok()?;
        Some((bytes, kind))
    }

    fn is_expired(&self, metadata: &std::fs::Metadata) -> bool {
        is_older_than(metadata, self.retention)
    }

    /// Deletes expired images and temporary files left by a crash; returns how many went.
    pub(crate) async fn sweep(&self) -> usize {
        let mut removed = 0;
        // A folder deleted under the server comes back at the next sweep at the latest.
        let _ = tokio::fs::create_dir_all(&self.dir).await;
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return 0;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(metadata) = entry.metadata().await else {
                continue;
            };
            let max_age = if parse_file_name(name).is_some() {
                // Never a valid image: a power cut came between the rename and the flush.
                if metadata.len() == 0 {
                    Duration::ZERO
                } else {
                    self.retention
                }
            } else if name.starts_with(TEMP_PREFIX) {
                self.retention.max(TEMP_FILE_GRACE)
            } else {
                continue;
            };
            if metadata.is_file()
                && is_older_than(&metadata, max_age)
                && tokio::fs::remove_file(entry.path()).await.is_ok()
            {
                self.index.remove(name);
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - by).unwrap();
    }

    #[tokio::test]
    async fn the_sweep_spares_temporary_files_that_may_still_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(
            dir.path(),
            Duration::from_millis(50),
            FileDurability::default(),
        )
        .unwrap();
        let image = dir.path().join(format!("{}.png", random_hex(ID_BYTES)));
        let writing = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}", random_hex(ID_BYTES)));
        let crashed = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}", random_hex(ID_BYTES)));
        for path in [&image, &writing, &crashed] {
            std::fs::write(path, b"bytes").unwrap();
        }
        // Older than the retention: the image is expired, but a write can take that long.
        age(&image, Duration::from_secs(1));
        age(&writing, Duration::from_secs(1));
        // Left by a crash long ago.
        age(&crashed, TEMP_FILE_GRACE + Duration::from_secs(60));
        assert_eq!(store.sweep().await, 2);
        assert!(!image.exists());
        assert!(writing.exists(), "a temporary file in use was deleted");
        assert!(!crashed.exists());
    }

    #[tokio::test]
    async fn a_stored_image_is_readable_at_once_in_both_durability_modes() {
        for durability in [
            FileDurability::AfterResponse,
            FileDurability::BeforeResponse,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = FileStore::open(dir.path(), Duration::from_secs(60), durability).unwrap();
            let name = store
                .store(b"jpeg bytes".to_vec(), FileKind::Jpeg)
                .await
                .unwrap();
            assert_eq!(parse_file_name(&name), Some(FileKind::Jpeg));
            let (bytes, kind) = store.read(&name).await.unwrap();
            assert_eq!(
                (bytes.as_slice(), kind),
                (&b"jpeg bytes"[..], FileKind::Jpeg)
            );
            let leftovers: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .filter(|name| name.to_string_lossy().starts_with(TEMP_PREFIX))
                .collect();
            assert!(leftovers.is_empty(), "{durability:?} left {leftovers:?}");
        }
    }

    #[tokio::test]
    async fn an_empty_image_left_by_a_power_cut_is_not_served_and_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(
            dir.path(),
            Duration::from_secs(60),
            FileDurability::default(),
        )
        .unwrap();
        let empty = format!("{}.jpg", random_hex(ID_BYTES));
        std::fs::write(dir.path().join(&empty), b"").unwrap();
        let fresh = store
            .store(b"png bytes".to_vec(), FileKind::Png)
            .await
            .unwrap();
        assert!(store.read(&empty).await.is_none());
        assert_eq!(store.sweep().await, 1);
        assert!(!dir.path().join(&empty).exists());
        assert!(
            store.read(&fresh).await.is_some(),
            "a fresh image was swept"
        );
    }
}
