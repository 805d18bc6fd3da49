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

/// The image directory.
#[derive(Debug)]
pub(crate) struct FileStore {
    dir: PathBuf,
    retention: Duration,
}

impl FileStore {
    pub(crate) fn open(dir: &Path, retention: Duration) -> Result<Self, RemoteError> {
        std::fs::create_dir_all(dir).map_err(|source| RemoteError::FilesDir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(FileStore {
            dir: dir.to_owned(),
            retention,
        })
    }

    /// Writes `bytes` under a fresh id and returns the file name. The bytes go to a temporary
    /// file that is renamed into place, so a URL never serves a partial file.
    pub(crate) async fn store(&self, bytes: &[u8], kind: FileKind) -> io::Result<String> {
        let name = format!("{}.{}", random_hex(ID_BYTES), kind.extension());
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}", random_hex(ID_BYTES)));
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&temp, self.dir.join(&name)).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result.map(|()| name)
    }

    /// The bytes and kind of a stored, unexpired file; `None` for anything else. An expired file
    /// found here is deleted.
    pub(crate) async fn read(&self, name: &str) -> Option<(Vec<u8>, FileKind)> {
        let kind = parse_file_name(name)?;
        let path = self.dir.join(name);
        let metadata = tokio::fs::symlink_metadata(&path).await.ok()?;
        if !metadata.is_file() {
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
            let max_age = if parse_file_name(name).is_some() {
                self.retention
            } else if name.starts_with(TEMP_PREFIX) {
                self.retention.max(TEMP_FILE_GRACE)
            } else {
                continue;
            };
            let Ok(metadata) = entry.metadata().await else {
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
        let store = FileStore::open(dir.path(), Duration::from_millis(50)).unwrap();
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
}
