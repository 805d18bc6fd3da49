//! The JetStream layout of a fleet: names, settings, and the idempotent setup every process
//! (API node or worker) runs at start, so they can start in any order.
//!
//! Per model (`dev`, `schnell`): a work-queue stream `FLUX_JOBS_<MODEL>` on the subjects
//! `flux.jobs.<model>.<job id>` (one subject per job, so a reaper can ask whether a job's
//! message still exists) with one shared durable pull consumer `workers`. For all models: the
//! job records in the key-value bucket `flux-jobs` (key = job id), the models the workers serve
//! in `flux-models` (key = variant), and webhook deliveries in the work-queue stream
//! `FLUX_WEBHOOKS`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use crate::error::ClusterError;

/// The key-value bucket of job records.
pub const JOBS_BUCKET: &str = "flux-jobs";
/// The key-value bucket of served models (one entry per variant, written by workers).
pub const MODELS_BUCKET: &str = "flux-models";
/// The durable pull consumer every worker of a model shares.
pub const WORKERS_CONSUMER: &str = "workers";
/// The stream of webhook deliveries and its consumer (shared by API nodes).
pub const WEBHOOKS_STREAM: &str = "FLUX_WEBHOOKS";
pub const WEBHOOKS_CONSUMER: &str = "deliverers";

/// The work-queue stream of a model's jobs.
pub fn jobs_stream(model: &str) -> String {
    format!("FLUX_JOBS_{}", model.to_ascii_uppercase())
}

/// The subject of one job's message.
pub fn job_subject(model: &str, job: &str) -> String {
    format!("flux.jobs.{model}.{job}")
}

/// The subject of one webhook delivery's message.
pub fn webhook_subject(job: &str) -> String {
    format!("flux.webhooks.{job}")
}

/// The settings of a fleet's streams, consumers and buckets. Every process of a fleet must use
/// the same (the first to start creates them; later ones use what exists).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetSettings {
    /// A job whose worker neither acks nor reports progress for this long is redelivered.
    pub ack_wait: Duration,
    /// Attempts of a job at most (counted in its record); after the last, it ends failed.
    pub max_deliver: u32,
    /// Queued + running jobs at most per model: a submit beyond is refused (429).
    pub queue_depth: usize,
    /// How long completed job records are kept (the bucket's `max_age`).
    pub retention: Duration,
    /// Submits with the same job id within this window are one message (`Nats-Msg-Id`).
    pub duplicate_window: Duration,
    /// File storage (durable) or memory.
    pub memory_storage: bool,
    /// Copies of every stream and bucket on a JetStream cluster (1 on a single server; 3 on a
    /// three-node cluster survives the loss of one node).
    pub replicas: usize,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            ack_wait: Duration::from_secs(30),
            max_deliver: 3,
            queue_depth: 256,
            retention: Duration::from_secs(60 * 60),
            duplicate_window: Duration::from_secs(120),
            memory_storage: false,
            replicas: 1,
        }
    }
}

impl FleetSettings {
    pub(crate) fn storage(&self) -> stream::StorageType {
        if self.memory_storage {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        }
    }

    /// How long a running job's record may go without a heartbeat before the job counts as
    /// abandoned (its worker dead or stopped): two redelivery periods.
    pub fn lease(&self) -> Duration {
        self.ack_wait * 2
    }
}

/// The streams and buckets a process uses, created when absent.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub(crate) js: jetstream::Context,
    pub(crate) jobs: kv::Store,
    pub(crate) models: kv::Store,
    pub(crate) settings: FleetSettings,
}

impl Fleet {
    /// Sets up (or opens) the fleet's buckets and the webhook stream on `client`.
    pub async fn open(
        client: async_nats::Client,
        settings: FleetSettings,
    ) -> Result<Fleet, ClusterError> {
        let js = jetstream::new(client);
        crate::settings_check::check_settings(&js, &settings).await?;
        let jobs = open_bucket(
            &js,
            kv::Config {
                bucket: JOBS_BUCKET.to_owned(),
                description: "flux-rs job records (key = job id)".to_owned(),
                history: 1,
                max_age: settings.retention,
                storage: settings.storage(),
                num_replicas: settings.replicas,
                ..Default::default()
            },
        )
        .await?;
        let models = open_bucket(
            &js,
            kv::Config {
                bucket: MODELS_BUCKET.to_owned(),
                description: "flux-rs served models (key = variant)".to_owned(),
                history: 1,
                storage: settings.storage(),
                num_replicas: settings.replicas,
                ..Default::default()
            },
        )
        .await?;
        js.get_or_create_stream(stream::Config {
            name: WEBHOOKS_STREAM.to_owned(),
            subjects: vec!["flux.webhooks.*".to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: settings.storage(),
            duplicate_window: settings.duplicate_window,
            num_replicas: settings.replicas,
            ..Default::default()
        })
        .await
        .map_err(|error| ClusterError::nats("create the webhook stream", error))?;
        Ok(Fleet {
            js,
            jobs,
            models,
            settings,
        })
    }

    /// The NATS connection it uses.
    pub fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    /// The work-queue stream of `model`, created when absent, with its shared consumer.
    pub async fn model_queue(
        &self,
        model: &str,
    ) -> Result<(stream::Stream, consumer::Consumer<consumer::pull::Config>), ClusterError> {
        let stream = self
            .js
            .get_or_create_stream(stream::Config {
                name: jobs_stream(model),
                subjects: vec![format!("flux.jobs.{model}.*")],
                retention: stream::RetentionPolicy::WorkQueue,
                // The admission bound of the fleet: a publish beyond it is refused (error 10077).
                max_messages: i64::try_from(self.settings.queue_depth).unwrap_or(i64::MAX),
                discard: stream::DiscardPolicy::New,
                storage: self.settings.storage(),
                duplicate_window: self.settings.duplicate_window,
                num_replicas: self.settings.replicas,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|error| ClusterError::nats("create a job stream", error))?;
        let consumer = stream
            .get_or_create_consumer(
                WORKERS_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(WORKERS_CONSUMER.to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.settings.ack_wait,
                    // Every job of the queue may be running at once (one per worker), and idle
                    // workers' pulls must not be refused (the server defaults are 1000 and 512).
                    max_ack_pending: i64::try_from(self.settings.queue_depth).unwrap_or(i64::MAX),
                    max_waiting: 4096,
                    // Unbounded: deliveries are not attempts (a worker that finds the job running
                    // elsewhere puts it back without trying it), so the bound on attempts lives in
                    // the record, and a message is never left stranded by JetStream's own bound.
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|error| ClusterError::nats("create the workers' consumer", error))?;
        Ok((stream, consumer))
    }

    /// The webhook stream's shared consumer.
    pub(crate) async fn webhook_consumer(
        &self,
        ack_wait: Duration,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, ClusterError> {
        let stream = self
            .js
            .get_stream(WEBHOOKS_STREAM)
            .await
            .map_err(|error| ClusterError::nats("open the webhook stream", error))?;
        stream
            .get_or_create_consumer(
                WEBHOOKS_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(WEBHOOKS_CONSUMER.to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait,
                    // Retries are the deliverer's (nak with a delay); the bound is its own.
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|error| ClusterError::nats("create the webhook consumer", error))
    }
}

pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    match js.create_key_value(config.clone()).await {
        Ok(store) => Ok(store),
        // Another process created it meanwhile; otherwise the creation's own error says why.
        Err(created) => js
            .get_key_value(&config.bucket)
            .await
            .map_err(|_| ClusterError::nats("create a key-value bucket", created)),
    }
}
