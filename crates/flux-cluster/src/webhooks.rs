//! The fleet's webhook deliveries: a worker publishes one message per completed job that asked
//! for a webhook to the durable `FLUX_WEBHOOKS` stream (deduplicated by the delivery id), and
//! API nodes take them from its shared consumer. A delivery not accepted is put back with the
//! retry delay (a nak with a delay), so retries survive any node's death and carry the same
//! `webhook-id`; it is acked once delivered or given up.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer};
use flux_service::{JobId, QueuedWebhook, ServiceError, Settle, WebhookQueue};
use flux_types::BoxFuture;
use futures::StreamExt;

use crate::api::FleetJobs;
use crate::error::ClusterError;
use crate::fleet::webhook_subject;
use crate::record::FleetRecord;
use crate::records::Records;

/// A delivery attempt must end well within this (attempts time out after 15 s).
const DELIVERY_ACK_WAIT: Duration = Duration::from_secs(60);
/// How long one pull waits for a delivery.
const FETCH_WAIT: Duration = Duration::from_secs(5);

/// The webhook stream's consumer, as an API node's deliverer takes from it.
pub struct FleetWebhooks {
    jobs: FleetJobs,
    consumer: consumer::Consumer<consumer::pull::Config>,
}

impl std::fmt::Debug for FleetWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetWebhooks").finish_non_exhaustive()
    }
}

impl FleetWebhooks {
    pub async fn open(jobs: FleetJobs) -> Result<FleetWebhooks, ClusterError> {
        let consumer = jobs.inner.fleet.webhook_consumer(DELIVERY_ACK_WAIT).await?;
        Ok(FleetWebhooks { jobs, consumer })
    }

    async fn take(&self) -> Result<QueuedWebhook, ServiceError> {
        loop {
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(1)
                .expires(FETCH_WAIT)
                .messages()
                .await
                .map_err(|error| ServiceError::Unavailable(error.to_string()))?;
            let Some(message) = batch.next().await else {
                continue;
            };
            let message = message.map_err(|error| ServiceError::Unavailable(error.to_string()))?;
            let Some(id) = message.subject.rsplit('.').next().and_then(JobId::parse) else {
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            };
            let record = self
                .jobs
                .inner
                .records
                .get(id.as_str())
                .await
                .map_err(|error| ServiceError::Unavailable(error.to_string()))?;
            let Some((record, _)) = record else {
                // The job expired before its webhook was delivered: nothing left to send.
                let _ = message.double_ack().await;
                continue;
            };
            let record = self.jobs.resolved(record).await;
            let (attempts, queued_at) = match message.info() {
                Ok(info) => (
                    u32::try_from(info.delivered.saturating_sub(1)).unwrap_or(u32::MAX),
                    SystemTime::from(info.published),
                ),
                Err(_) => (0, SystemTime::now()),
            };
            return Ok(QueuedWebhook {
                record: record.job,
                attempts,
                queued_at,
                token: Box::new(message),
            });
        }
    }
}

impl WebhookQueue for FleetWebhooks {
    fn next(&self) -> BoxFuture<'_, Result<QueuedWebhook, ServiceError>> {
        Box::pin(self.take())
    }

    fn settle(&self, item: QueuedWebhook, outcome: Settle) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Ok(message) = item.token.downcast::<jetstream::Message>() else {
                return;
            };
            let acked = match outcome {
                Settle::Done => message.double_ack().await,
                Settle::RetryIn(delay) => message.ack_with(AckKind::Nak(Some(delay))).await,
            };
            if let Err(error) = acked {
                // Redelivered after the ack wait: at least once, with the same webhook-id.
                tracing::warn!(%error, job = %item.record.id, "cannot settle a webhook delivery");
            }
        })
    }
}

/// Publishes a completed job's webhook delivery, when it still owes one, to the durable stream
/// (deduplicated by the delivery id, `msg_<job>`), then clears the record's owed mark. A crash in
/// between publishes again to the same id (within the duplicate window) or leaves the reaper to.
pub(crate) async fn queue_webhook(
    js: &jetstream::Context,
    records: &Records,
    record: &FleetRecord,
) {
    if !record.job.webhook_owed || record.job.webhook.is_none() {
        return;
    }
    let id = record.job.id.as_str();
    let delivery = flux_service::WebhookDelivery::id_for(id);
    let message = jetstream::message::PublishMessage::build()
        .payload(bytes::Bytes::from(id.to_owned()))
        .message_id(&delivery);
    let published = match js.send_publish(webhook_subject(id), message).await {
        Ok(ack) => ack.await.map(|_| ()),
        Err(error) => Err(error),
    };
    if let Err(error) = published {
        tracing::error!(%error, job = %id, "cannot queue a webhook; the reaper queues it again");
        return;
    }
    let cleared = records
        .update(id, |record| {
            if !record.job.webhook_owed {
                return false;
            }
            record.job.webhook_owed = false;
            true
        })
        .await;
    if let Err(error) = cleared {
        tracing::warn!(%error, job = %id, "cannot clear a queued webhook's mark; the reaper will");
    }
}
