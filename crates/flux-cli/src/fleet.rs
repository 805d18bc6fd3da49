//! What `flux serve --queue` and `flux worker` share: the fleet's NATS address, its JetStream
//! settings (every process of a fleet must give the same), and where images go.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flux_cluster::{Fleet, FleetSettings, FolderImages, ImageStore, S3Images};

use crate::BadInput;

/// The fleet's flags.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// The fleet's NATS server (JetStream on), e.g. nats://10.0.0.5:4222. With it, `flux serve`
    /// is a stateless API node: jobs go to `flux worker` processes.
    #[arg(long, env = "FLUX_QUEUE", value_name = "nats://HOST:PORT")]
    pub queue: Option<String>,

    /// Where images go: a folder every API node and worker shares (default: the files folder), or
    /// s3://bucket/prefix (S3-compatible storage configured by the AWS_* variables, incl.
    /// AWS_ENDPOINT_URL; image URLs are then presigned GETs valid for the retention), or nats://
    /// (the fleet's own JetStream object store, served by the API nodes; for small fleets).
    #[arg(
        long,
        env = "FLUX_IMAGE_STORE",
        value_name = "DIR|s3://BUCKET/PREFIX|nats://"
    )]
    pub image_store: Option<String>,

    /// A job whose worker neither finishes nor reports for this long is redelivered: e.g. 30s.
    #[arg(
        long,
        env = "FLUX_ACK_WAIT",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub ack_wait: String,

    /// Copies of each stream and bucket on a JetStream cluster: 1 for a single nats-server, 3 for
    /// a three-node cluster.
    #[arg(long, env = "FLUX_REPLICAS", value_name = "N", default_value_t = 1)]
    pub replicas: usize,

    /// Attempts of a job at most (each one a worker that took it and stopped or failed).
    #[arg(long, env = "FLUX_MAX_ATTEMPTS", value_name = "N", default_value_t = 3)]
    pub max_attempts: u32,
}

impl FleetArgs {
    /// The settings of the fleet's streams and buckets.
    pub fn settings(
        &self,
        queue_depth: usize,
        retention: Duration,
    ) -> anyhow::Result<FleetSettings> {
        if self.max_attempts == 0 {
            return Err(BadInput("--max-attempts must be at least 1".to_owned()).into());
        }
        Ok(FleetSettings {
            ack_wait: crate::serve::parse_duration("--ack-wait", &self.ack_wait)?,
            max_deliver: self.max_attempts,
            replicas: self.replicas.max(1),
            queue_depth,
            retention,
            ..FleetSettings::default()
        })
    }

    /// Whether images go to the fleet's own JetStream object store (`--image-store nats://`),
    /// opened on the fleet's connection once it is made.
    pub fn wants_nats_images(&self) -> bool {
        self.image_store
            .as_deref()
            .is_some_and(|spec| spec.starts_with("nats://"))
    }

    /// The images of the fleet's object store on `client`.
    pub async fn nats_images(
        client: async_nats::Client,
        settings: &FleetSettings,
    ) -> anyhow::Result<Arc<dyn ImageStore>> {
        let images = flux_cluster::NatsImages::open(client, settings.retention, settings.replicas)
            .await
            .context("cannot open the fleet's images bucket")?;
        Ok(Arc::new(images))
    }

    /// The image store (other than `nats://`), the folder `default` when no `--image-store` is given; presigned URLs
    /// of an S3 store are valid for `retention`.
    pub fn images(
        &self,
        default: PathBuf,
        retention: Duration,
    ) -> anyhow::Result<Arc<dyn ImageStore>> {
        let dir = match self.image_store.as_deref() {
            None | Some("nats://") => default,
            Some(spec) if spec.starts_with("s3://") => {
                let images = S3Images::from_env(spec, retention)
                    .map_err(|error| BadInput(format!("--image-store {spec}: {error}")))?;
                return Ok(Arc::new(images));
            }
            Some(spec) if spec.contains("://") && !spec.starts_with("file://") => {
                return Err(BadInput(format!(
                    "--image-store {spec}: expected a folder, file://DIR, s3://bucket/prefix or \
                     nats:// (the fleet's JetStream object store)"
                ))
                .into());
            }
            Some(spec) => PathBuf::from(spec.strip_prefix("file://").unwrap_or(spec)),
        };
        let images = FolderImages::new(&dir)
            .with_context(|| format!("cannot use {} as the image store", dir.display()))?;
        Ok(Arc::new(images))
    }
}

/// Connects to the fleet's NATS server (retrying while it is down: processes of a fleet start
/// in any order) and opens its streams and buckets.
pub async fn connect(
    url: &str,
    settings: FleetSettings,
) -> anyhow::Result<(async_nats::Client, Fleet)> {
    if !url.starts_with("nats://") {
        return Err(BadInput(format!("--queue {url}: expected nats://HOST:PORT")).into());
    }
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .name("flux-rs")
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    let fleet = match Fleet::open(client.clone(), settings).await {
        Ok(fleet) => fleet,
        // Flags that disagree with the fleet's: a usage error, exit 2.
        Err(error @ flux_cluster::ClusterError::Settings(_)) => {
            return Err(BadInput(error.to_string()).into());
        }
        Err(error) => {
            return Err(anyhow::Error::from(error)
                .context(format!("cannot set up the fleet's streams on {url}")));
        }
    };
    Ok((client, fleet))
}
