//! Generated images on local disk: random capability ids, atomic writes, strict name parsing,
//! retention.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::RemoteError;

/// Bytes of randomness in a file id (128 bits), written as lowercase hex.
const ID_BYTES: usize = 16;
const TEMP_PREFIX: &str = ".tmp-";
/// A temporary file younger than this (or than the retention, if longer) may still be being
/// written, however short the retention is; only older ones are crash leftovers to delete.
const TEMP_FILE_GRACE: Duration = Duration::from_secs(60 * 60);

/// Random bytes as lowercase hex, from the thread-local CSPRNG.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

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
    let mut file = std::fs::File::create(temp)?;
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

/// The image directory.
#[derive(Debug)]
pub(crate) struct FileStore {
    dir: PathBuf,
    retention: Duration,
    durability: FileDurability,
}

impl FileStore {
    pub(crate) fn open(
        dir: &Path,
        retention: Duration,
        durability: FileDurability,
    ) -> Result<Self, RemoteError> {
        std::fs::create_dir_all(dir).map_err(|source| RemoteError::FilesDir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(FileStore {
            dir: dir.to_owned(),
            retention,
            durability,
        })
    }

    /// Writes `bytes` under a fresh id and returns the file name. The bytes go to a temporary
    /// file that is renamed into place, so a URL never serves a partial file. With
    /// [`FileDurability::AfterResponse`] the flush to disk is started here and finishes in the
    /// background: the caller answers as soon as the file is readable.
    pub(crate) async fn store(&self, bytes: Vec<u8>, kind: FileKind) -> io::Result<String> {
        let name = format!("{}.{}", random_hex(ID_BYTES), kind.extension());
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}", random_hex(ID_BYTES)));
        let target = self.dir.join(&name);
        let dir = self.dir.clone();
        let durability = self.durability;
        // One blocking task for the whole write instead of one per `tokio::fs` call: each hop to
        // the blocking pool costs a thread wake-up, and this is on the response path.
        let written = tokio::task::spawn_blocking(move || {
            let result = write_then_rename(&bytes, &temp, &target, durability);
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result
        })
        .await
        .map_err(io::Error::other)??;
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
