//! Where a fleet's images go: behind [`ImageStore`], a folder every process shares (one machine,
//! or a network file system), served by the API nodes' file route, or S3-compatible storage
//! (`images_s3`), whose URLs are presigned GETs.
//!
//! Names are derived from the job, the attempt and the image's index, and a write never replaces
//! an existing file: a redelivered attempt never overwrites another attempt's images, and the same
//! attempt written twice is the same file.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use flux_types::BoxFuture;
use sha2::{Digest, Sha256};

use crate::error::ClusterError;

/// The scheme of an image reference inside a stored result body, resolved by the API node that
/// answers (to a file URL, a presigned URL, or a `data:` URI).
pub const IMAGE_REF_SCHEME: &str = "flux-image:";

/// The file name of image `index` of `job`'s attempt `attempt`: 32 hex digits and the extension,
/// the file route's only accepted form.
pub fn image_name(job: &str, attempt: u32, index: usize, extension: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(job.as_bytes());
    digest.update(attempt.to_be_bytes());
    digest.update((index as u64).to_be_bytes());
    let hash = digest.finalize();
    let hex: String = hash[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{hex}.{extension}")
}

/// A fleet's image store.
pub trait ImageStore: Send + Sync + 'static {
    /// Writes `bytes` as `name` unless `name` exists (then nothing happens: names are per attempt).
    fn put_new<'a>(
        &'a self,
        name: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;
    /// The image's bytes; `None` when there is none.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, ClusterError>>;
    /// The URL a client fetches the image from (`public_base_url` is the API's).
    fn url<'a>(
        &'a self,
        name: &'a str,
        public_base_url: &'a str,
    ) -> BoxFuture<'a, Result<String, ClusterError>>;
    /// Whether API nodes serve its images on their file route from the store itself (the
    /// JetStream object store); a folder is served from the API node's files folder, S3 by S3.
    fn served_by_api_nodes(&self) -> bool {
        false
    }
    /// Deletes the images written longer than `age` ago; how many. For stores that keep images
    /// for ever unless told: S3. A folder is swept by the API nodes' files sweep, and the
    /// JetStream object store expires them itself, so by default nothing is done here.
    fn remove_older_than(&self, age: Duration) -> BoxFuture<'_, Result<usize, ClusterError>> {
        let _ = age;
        Box::pin(async { Ok(0) })
    }
    /// What it is, for logs.
    fn describe(&self) -> String;
}

/// Images in a shared folder, served by the API nodes at `/files/{name}` (their `--files-dir`).
#[derive(Debug, Clone)]
pub struct FolderImages {
    dir: PathBuf,
}

impl FolderImages {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, ClusterError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|error| ClusterError::Images(format!("create {}: {error}", dir.display())))?;
        Ok(FolderImages { dir })
    }
}

impl ImageStore for FolderImages {
    fn put_new<'a>(
        &'a self,
        name: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        let dir = self.dir.clone();
        let name = name.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || write_new(&dir, &name, &bytes))
                .await
                .map_err(|error| ClusterError::Images(error.to_string()))?
                .map_err(|error| ClusterError::Images(error.to_string()))
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, ClusterError>> {
        let path = self.dir.join(name);
        Box::pin(async move {
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(ClusterError::Images(format!(
                    "read {}: {error}",
                    path.display()
                ))),
            }
        })
    }

    fn url<'a>(
        &'a self,
        name: &'a str,
        public_base_url: &'a str,
    ) -> BoxFuture<'a, Result<String, ClusterError>> {
        let url = format!(
            "{}/api/v1/files/{name}",
            public_base_url.trim_end_matches('/')
        );
        Box::pin(async move { Ok(url) })
    }

    fn describe(&self) -> String {
        format!("folder {}", self.dir.display())
    }
}

/// Writes to a temporary file, flushes it, then links it into place: the link fails when the
/// name exists, so a complete file is never replaced and a reader never sees a partial one.
fn write_new(dir: &std::path::Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let target = dir.join(name);
    if target.exists() {
        return Ok(());
    }
    let temp = dir.join(format!(".tmp-{}", rand::random::<u64>()));
    let written = (|| {
        let mut file = std::fs::File::create_new(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        match std::fs::hard_link(&temp, &target) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    })();
    let _ = std::fs::remove_file(&temp);
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_attempt_and_in_the_file_routes_form() {
        let first = image_name("0123456789abcdef0123456789abcdef", 1, 0, "jpg");
        assert_eq!(first.len(), 36);
        assert!(first.ends_with(".jpg"));
        assert_ne!(
            first,
            image_name("0123456789abcdef0123456789abcdef", 2, 0, "jpg")
        );
        assert_ne!(
            first,
            image_name("0123456789abcdef0123456789abcdef", 1, 1, "jpg")
        );
        assert_eq!(
            first,
            image_name("0123456789abcdef0123456789abcdef", 1, 0, "jpg")
        );
    }

    #[tokio::test]
    async fn a_second_write_of_a_name_changes_nothing() -> Result<(), ClusterError> {
        let dir = tempfile::tempdir().map_err(|error| ClusterError::Images(error.to_string()))?;
        let images = FolderImages::new(dir.path())?;
        images
            .put_new("a.jpg", Bytes::from_static(b"first"))
            .await?;
        images
            .put_new("a.jpg", Bytes::from_static(b"second"))
            .await?;
        assert_eq!(
            images.get("a.jpg").await?,
            Some(Bytes::from_static(b"first"))
        );
        assert_eq!(images.get("b.jpg").await?, None);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .map_err(|error| ClusterError::Images(error.to_string()))?
            .collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        Ok(())
    }
}
