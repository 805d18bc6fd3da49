//! Images in the JetStream object store (`--image-store nats://`): no extra service for a small
//! deployment, served to clients by the API nodes' file route. By its own docs the object store
//! is "not a distributed storage system" (128 KiB chunks on the stream leader): S3 is the store
//! for a large fleet. It has no create-only put, so a write looks first and skips a name that
//! exists: names are per attempt, and the same attempt writes the same bytes.

use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use flux_types::BoxFuture;
use tokio::io::AsyncReadExt as _;

use crate::error::ClusterError;
use crate::images::ImageStore;

/// The object-store bucket of a fleet's images.
pub const IMAGES_BUCKET: &str = "flux-images";

/// Images in the fleet's JetStream object store.
pub struct NatsImages {
    store: object_store::ObjectStore,
}

impl std::fmt::Debug for NatsImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsImages")
            .field("bucket", &IMAGES_BUCKET)
            .finish()
    }
}

impl NatsImages {
    /// Opens (or creates) the images bucket on `client`'s server with `replicas` copies; objects
    /// expire after `retention`.
    pub async fn open(
        client: async_nats::Client,
        retention: Duration,
        replicas: usize,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client);
        if let Ok(store) = js.get_object_store(IMAGES_BUCKET).await {
            return Ok(NatsImages { store });
        }
        let created = js
            .create_object_store(object_store::Config {
                bucket: IMAGES_BUCKET.to_owned(),
                description: Some("flux-rs generated images".to_owned()),
                max_age: retention,
                num_replicas: replicas,
                ..Default::default()
            })
            .await;
        let store = match created {
            Ok(store) => store,
            // Another process created it meanwhile.
            Err(_) => js
                .get_object_store(IMAGES_BUCKET)
                .await
                .map_err(|error| ClusterError::nats("open the images bucket", error))?,
        };
        Ok(NatsImages { store })
    }
}

impl ImageStore for NatsImages {
    fn put_new<'a>(
        &'a self,
        name: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            if self.store.info(name).await.is_ok() {
                return Ok(());
            }
            let mut reader: &[u8] = &bytes;
            self.store
                .put(name, &mut reader)
                .await
                .map(|_| ())
                .map_err(|error| ClusterError::nats("put an image", error))
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, ClusterError>> {
        Box::pin(async move {
            let mut object = match self.store.get(name).await {
                Ok(object) => object,
                Err(error) if error.kind() == object_store::GetErrorKind::NotFound => {
                    return Ok(None);
                }
                Err(error) => return Err(ClusterError::nats("read an image", error)),
            };
            let mut bytes = Vec::new();
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|error| ClusterError::nats("read an image", error))?;
            Ok(Some(Bytes::from(bytes)))
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

    fn served_by_api_nodes(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("the JetStream object store {IMAGES_BUCKET}")
    }
}
