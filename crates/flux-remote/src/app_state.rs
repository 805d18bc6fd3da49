//! [`AppState`]: what the handlers share, and how it is built, over generators in this process
//! ([`AppState::with_models`]: a `GenerationService`, its stores, recovery and webhooks) or over a
//! deployment's jobs elsewhere ([`AppState::with_jobs`]: a fleet's `JobService`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flux_service::{GenerationService, JobService, ServedModels, ServiceConfig, WebhookQueue};
use flux_types::Generator;

use crate::auth::ApiKeys;
use crate::auth_throttle::AuthThrottle;
use crate::config::ServerConfig;
use crate::error::RemoteError;
use crate::files::FileStore;
use crate::idempotency::IdempotencyStore;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiterByKey;
use crate::results::FileResults;
use crate::stores::Stores;
use crate::webhooks::{Deliverer, webhook_body};

/// The files folder of the server's images (created when absent), with its quota.
fn open_files(config: &ServerConfig) -> Result<Arc<FileStore>, RemoteError> {
    Ok(Arc::new(FileStore::with_quota(
        &config.files_dir,
        config.retention,
        config.file_durability,
        config.files_quota,
    )?))
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) keys: ApiKeys,
    pub(crate) auth_throttle: AuthThrottle,
    pub(crate) trust_forwarded_for: bool,
    pub(crate) rate_limiter: Option<RateLimiterByKey>,
    pub(crate) service: Arc<dyn JobService>,
    pub(crate) queue_depth: usize,
    pub(crate) files: Arc<FileStore>,
    pub(crate) idempotency: Arc<IdempotencyStore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) public_base_url: String,
    pub(crate) request_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) draining: AtomicBool,
    pub(crate) webhooks: Arc<Deliverer>,
    pub(crate) playground: bool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("models", &self.inner.service.models().describe())
            .field("keys", &self.inner.keys)
            .field("queue_depth", &self.inner.queue_depth)
            .field("public_base_url", &self.inner.public_base_url)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state from a validated configuration, with `generator` on the dev routes.
    /// `public_base_url` is the base of image URLs (see [`ServerConfig::public_base_url`]).
    /// Creates the files directory.
    pub fn new(
        config: &ServerConfig,
        generator: Arc<dyn Generator>,
        public_base_url: String,
    ) -> Result<Self, RemoteError> {
        Self::with_models(config, ServedModels::dev(generator), public_base_url)
    }

    /// As [`AppState::new`], serving each of `models` on its variant's routes.
    pub fn with_models(
        config: &ServerConfig,
        models: ServedModels,
        public_base_url: String,
    ) -> Result<Self, RemoteError> {
        config.validate()?;
        let files = open_files(config)?;
        let metrics = Arc::new(Metrics::default());
        let public_base_url = public_base_url.trim_end_matches('/').to_owned();
        let results = Arc::new(FileResults {
            files: Arc::clone(&files),
            metrics: Arc::clone(&metrics),
            public_base_url: public_base_url.clone(),
        });
        let stores = Stores::open(config)?;
        let service = GenerationService::with_models(
            models,
            results,
            stores.jobs,
            ServiceConfig {
                capacity: config.queue_depth,
                retention: config.retention,
            },
        );
        let webhooks = Deliverer::new(stores.outbox, config.webhooks.clone());
        {
            let webhooks = Arc::clone(&webhooks);
            let metrics = Arc::clone(&metrics);
            // Err leaves the job's webhook owed: a restart queues it again, with the same id.
            service.set_completion_listener(Arc::new(move |record| {
                if let Some(url) = &record.webhook
                    && let Some(body) = webhook_body(record, metrics.mean_generation())
                {
                    webhooks.enqueue(flux_service::WebhookDelivery::new(
                        record.id.to_string(),
                        url.clone(),
                        body,
                    ))?;
                }
                Ok(())
            }));
        }
        if let Some(dir) = &config.data_dir {
            // After the completion listener, so that a recovered job's end queues its webhook, and
            // so does that of a job whose end was committed just before the old process died.
            let recovered = service
                .recover(Some(config.request_timeout))
                .map_err(|error| RemoteError::DataDir {
                    path: dir.clone(),
                    message: error.to_string(),
                })?;
            if recovered > 0 {
                tracing::info!(recovered, data_dir = %dir.display(), "jobs accepted before a restart queued again");
            }
        }
        let idempotency = match stores.idempotency {
            Some(log) => IdempotencyStore::durable(config.retention, log),
            None => IdempotencyStore::new(config.retention),
        };
        Ok(Self::assemble(
            config,
            Arc::new(service),
            files,
            idempotency,
            metrics,
            public_base_url,
            webhooks,
        ))
    }

    /// The state of an API node whose jobs live elsewhere (a fleet's [`JobService`]): images are
    /// served from `config.files_dir` (the fleet's shared image folder), and nothing is recovered
    /// at start (the fleet keeps its jobs).
    pub fn with_jobs(
        config: &ServerConfig,
        jobs: Arc<dyn JobService>,
        webhooks: Option<Arc<dyn WebhookQueue>>,
        public_base_url: String,
    ) -> Result<Self, RemoteError> {
        config.validate()?;
        let files = open_files(config)?;
        let metrics = Arc::new(Metrics::default());
        let public_base_url = public_base_url.trim_end_matches('/').to_owned();
        let deliverer = Deliverer::new(
            Arc::new(flux_service::MemoryOutbox::default()),
            config.webhooks.clone(),
        );
        if let Some(queue) = webhooks {
            // The fleet's deliveries: each API node takes its share from the durable stream.
            let deliverer = Arc::clone(&deliverer);
            let metrics = Arc::clone(&metrics);
            tokio::spawn(
                async move { deliverer.run_queue(queue, metrics.mean_generation()).await },
            );
        }
        let webhooks = deliverer;
        Ok(Self::assemble(
            config,
            jobs,
            files,
            IdempotencyStore::new(config.retention),
            metrics,
            public_base_url,
            webhooks,
        ))
    }

    fn assemble(
        config: &ServerConfig,
        service: Arc<dyn JobService>,
        files: Arc<FileStore>,
        idempotency: Arc<IdempotencyStore>,
        metrics: Arc<Metrics>,
        public_base_url: String,
        webhooks: Arc<Deliverer>,
    ) -> AppState {
        AppState {
            inner: Arc::new(Shared {
                keys: ApiKeys::new(&config.api_keys, config.allow_unauthenticated),
                auth_throttle: AuthThrottle::default(),
                trust_forwarded_for: config.trust_forwarded_for,
                rate_limiter: config.rate_limit.map(RateLimiterByKey::new),
                service,
                queue_depth: config.queue_depth,
                files,
                idempotency,
                metrics,
                public_base_url,
                request_timeout: config.request_timeout,
                read_timeout: config.read_timeout,
                drain_timeout: config.drain_timeout,
                max_body_bytes: config.max_body_bytes,
                draining: AtomicBool::new(false),
                webhooks,
                playground: config.playground,
            }),
        }
    }

    /// Stops admitting generations: new ones are answered 503 `shutting_down`.
    pub fn begin_shutdown(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Generations admitted now (queued and running).
    pub fn in_queue(&self) -> usize {
        self.inner.service.in_flight()
    }

    /// Waits until every admitted generation has finished, including those that outlived their
    /// client because they carried an `Idempotency-Key`.
    pub async fn wait_idle(&self) {
        self.inner.service.wait_idle().await;
    }

    /// One retention pass: expired images, idempotency records and idle rate-limit buckets.
    pub async fn sweep(&self) {
        let files = self.inner.files.sweep().await;
        let records = self.inner.idempotency.sweep() + self.inner.service.sweep();
        if let Some(limiter) = &self.inner.rate_limiter {
            limiter.forget_idle();
        }
        self.inner.auth_throttle.forget_idle();
        if files + records > 0 {
            tracing::info!(files, records, "retention sweep removed expired entries");
        }
    }

    /// The mean generation time: about how long a generation that starts now takes.
    pub(crate) fn overload_hint(&self) -> Duration {
        self.inner.metrics.mean_generation()
    }

    /// About when the generation queue frees its next place.
    pub(crate) fn next_place_hint(&self) -> Duration {
        self.inner
            .service
            .next_place_in(self.inner.metrics.mean_generation())
    }

    pub(crate) fn read_timeout(&self) -> Duration {
        self.inner.read_timeout
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        self.inner.drain_timeout
    }

    /// Counts an answer the HTTP layer gave to a request it could not parse.
    pub(crate) fn record_unparsed(&self, status: u16) {
        self.inner
            .metrics
            .record_request(crate::http_errors::UNPARSED_ROUTE, status);
    }
}
