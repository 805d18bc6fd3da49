//! Images in S3-compatible object storage through `object_store`: a put is create-only
//! (`PutMode::Create`, so a redelivered attempt never replaces another's object and the same
//! attempt written twice is one object), and a client gets a presigned GET URL, made by the API
//! node that answers, valid for the retention.

use std::time::Duration;

use bytes::Bytes;
use flux_types::BoxFuture;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions};

use crate::error::ClusterError;
use crate::images::ImageStore;

/// Presigned URLs live at most this long (SigV4's limit is 7 days).
const MAX_URL_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Images under a prefix of an S3 bucket.
#[derive(Debug)]
pub struct S3Images {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    url_lifetime: Duration,
}

fn images_error(what: &str, error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Images(format!("{what}: {error}"))
}

/// `s3://bucket/prefix` → (bucket, prefix without slashes at its ends).
fn parse_s3_url(url: &str) -> Result<(String, String), ClusterError> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| ClusterError::Images(format!("{url}: expected s3://bucket/prefix")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(ClusterError::Images(format!("{url}: no bucket")));
    }
    Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

impl S3Images {
    /// The store `s3://bucket/prefix` names, configured by the standard `AWS_*` variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for an
    /// S3-compatible server, `AWS_ALLOW_HTTP=true` for one without TLS). URLs stay valid for
    /// `url_lifetime` (at most 7 days).
    pub fn from_env(url: &str, url_lifetime: Duration) -> Result<Self, ClusterError> {
        let (bucket, prefix) = parse_s3_url(url)?;
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .build()
            .map_err(|error| images_error("configure S3", error))?;
        Ok(Self::with_store(store, bucket, prefix, url_lifetime))
    }

    /// The store on an explicit endpoint and credentials (tests, and servers configured by flags).
    pub fn on_endpoint(
        url: &str,
        endpoint: &str,
        region: &str,
        access_key: &str,
        secret_key: &str,
        url_lifetime: Duration,
    ) -> Result<Self, ClusterError> {
        let (bucket, prefix) = parse_s3_url(url)?;
        let store = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_endpoint(endpoint)
            .with_region(region)
            .with_access_key_id(access_key)
            .with_secret_access_key(secret_key)
            .with_allow_http(endpoint.starts_with("http://"))
            // Path-style addressing: S3-compatible servers on a host:port have no bucket subdomains.
            .with_virtual_hosted_style_request(false)
            .build()
            .map_err(|error| images_error("configure S3", error))?;
        Ok(Self::with_store(store, bucket, prefix, url_lifetime))
    }

    fn with_store(store: AmazonS3, bucket: String, prefix: String, url_lifetime: Duration) -> Self {
        S3Images {
            store,
            bucket,
            prefix,
            url_lifetime: url_lifetime.clamp(Duration::from_secs(1), MAX_URL_LIFETIME),
        }
    }

    fn path(&self, name: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".png") {
        "image/png"
    } else {
        "image/jpeg"
    }
}

impl ImageStore for S3Images {
    fn put_new<'a>(
        &'a self,
        name: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let options = PutOptions {
                mode: PutMode::Create,
                attributes: Attributes::from_iter([(Attribute::ContentType, content_type(name))]),
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&self.path(name), bytes.into(), options)
                .await
            {
                Ok(_) => Ok(()),
                // This attempt's object is there already (the same attempt written again).
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Ok(()),
                Err(error) => Err(images_error("put an image", error)),
            }
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, ClusterError>> {
        Box::pin(async move {
            match self.store.get(&self.path(name)).await {
                Ok(found) => found
                    .bytes()
                    .await
                    .map(Some)
                    .map_err(|error| images_error("read an image", error)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(images_error("read an image", error)),
            }
        })
    }

    fn url<'a>(
        &'a self,
        name: &'a str,
        _public_base_url: &'a str,
    ) -> BoxFuture<'a, Result<String, ClusterError>> {
        Box::pin(async move {
            self.store
                .signed_url(Method::GET, &self.path(name), self.url_lifetime)
                .await
                .map(|url| url.to_string())
                .map_err(|error| images_error("presign an image URL", error))
        })
    }

    fn remove_older_than(&self, age: Duration) -> BoxFuture<'_, Result<usize, ClusterError>> {
        Box::pin(async move {
            let Some(cutoff) = std::time::SystemTime::now().checked_sub(age) else {
                return Ok(0);
            };
            let cutoff_ms = cutoff
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
                });
            let prefix = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
            let mut listed = self.store.list(prefix.as_ref());
            let mut removed = 0;
            while let Some(object) = listed.next().await {
                let object = object.map_err(|error| images_error("list the images", error))?;
                if object.last_modified.timestamp_millis() >= cutoff_ms {
                    continue;
                }
                match self.store.delete(&object.location).await {
                    // Another API node's sweep may have been first.
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(error) => return Err(images_error("delete an old image", error)),
                }
            }
            Ok(removed)
        })
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_name_a_bucket_and_a_prefix() -> Result<(), ClusterError> {
        assert_eq!(
            parse_s3_url("s3://images/flux/")?,
            ("images".to_owned(), "flux".to_owned())
        );
        assert_eq!(
            parse_s3_url("s3://images")?,
            ("images".to_owned(), String::new())
        );
        assert!(parse_s3_url("s3:///x").is_err());
        assert!(parse_s3_url("https://images").is_err());
        Ok(())
    }
}
