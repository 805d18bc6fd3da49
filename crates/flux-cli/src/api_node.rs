//! `flux serve --queue nats://…`: a stateless API node. The HTTP API is the same as a
//! one-machine server's; its jobs are records and messages in the fleet's NATS JetStream, run by
//! `flux worker` processes, and its images come from the fleet's shared image store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flux_cluster::{FleetJobs, FleetWebhooks, ImageStore, Reaper, ReaperConfig};
use flux_remote::{Server, ServerConfig, ShutdownSignals};

use crate::BadInput;
use crate::fleet::{FleetArgs, connect};
use crate::serve::print_line;

/// Serves the API over the fleet at `queue` until SIGINT/SIGTERM.
pub fn run(
    mut config: ServerConfig,
    fleet_args: &FleetArgs,
    queue: &str,
    has_model: bool,
) -> anyhow::Result<()> {
    if has_model {
        return Err(BadInput(
            "an API node (--queue) runs no model: give --model to `flux worker` instead".to_owned(),
        )
        .into());
    }
    let settings = fleet_args.settings(config.queue_depth, config.retention)?;
    // The API's file route serves the fleet's shared folder.
    if let Some(dir) = fleet_args.image_store.as_deref()
        && !dir.starts_with("s3://")
        && !dir.starts_with("nats://")
    {
        config.files_dir = dir.strip_prefix("file://").unwrap_or(dir).into();
    }
    let images = fleet_args.images(config.files_dir.clone(), config.retention)?;
    let runtime = crate::runtime()?;
    let wants_nats_images = fleet_args.wants_nats_images();
    let result = runtime.block_on(async move {
        let mut signals = ShutdownSignals::new().context("cannot listen for SIGINT and SIGTERM")?;
        let (client, fleet_handle) = connect(queue, settings).await?;
        let images = if wants_nats_images {
            FleetArgs::nats_images(client.clone(), &settings).await?
        } else {
            images
        };
        let fleet = fleet_handle;
        let sweeping = tokio::spawn(sweep_images(Arc::clone(&images), settings.retention));
        let jobs = FleetJobs::open(client, fleet.clone(), images, String::new())
            .await
            .context("cannot open the fleet's job records")?;
        // A node without the webhook secret cannot sign: it leaves the fleet's deliveries to the
        // nodes that have it (a node that took them would have to drop them).
        let webhooks: Option<Arc<dyn flux_remote::WebhookQueue>> =
            if config.webhooks.secret.is_some() {
                let queue = FleetWebhooks::open(jobs.clone())
                    .await
                    .context("cannot open the fleet's webhook stream")?;
                Some(Arc::new(queue))
            } else {
                tracing::warn!("no --webhook-secret-file: this API node delivers no webhooks");
                None
            };
        let server = Server::bind_jobs(config, Arc::new(jobs), webhooks).await?;
        let address = server.local_addr()?;
        print_line(&format!("flux server listening on http://{address}"))?;
        tracing::info!(queue, "API node of the fleet");
        // Every API node runs a reaper: each change it makes is a compare-and-set, so several at
        // once finish a stranded job once.
        let reaper = Reaper::new(fleet, ReaperConfig::for_settings(&settings));
        let (stop_reaper, reaper_stopped) = tokio::sync::oneshot::channel::<()>();
        let reaping = tokio::spawn(reaper.run(async move {
            let _ = reaper_stopped.await;
        }));
        print_line("flux server ready")?;
        let served = server.run(async move { signals.next().await }).await;
        let _ = stop_reaper.send(());
        let _ = reaping.await;
        sweeping.abort();
        served.map_err(anyhow::Error::from)
    });
    runtime.shutdown_background();
    result
}

/// Deletes the images older than the retention from a store that keeps them until told (S3),
/// every quarter of the retention (at most a minute apart). Every API node does it: two deleting
/// one object at once both succeed.
async fn sweep_images(images: Arc<dyn ImageStore>, retention: Duration) {
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match images.remove_older_than(retention).await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(removed, store = %images.describe(), "images past the retention removed");
            }
            Err(error) => tracing::warn!(%error, "cannot remove old images; trying again later"),
        }
    }
}
