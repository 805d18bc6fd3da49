//! The server process: bind (keys checked, state prepared), run the accept loop with the retention
//! sweep, drain on a shutdown signal, and the one signal listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flux_service::{JobService, ServedModels, WebhookQueue};
use flux_types::Generator;
use tokio::net::TcpListener;

use crate::app_state::AppState;
use crate::config::ServerConfig;
use crate::error::RemoteError;
use crate::listener::serve_connections;
use crate::server::router;

/// A bound, not yet running server. Bind first to learn the address (port 0), then `run`.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: AppState,
    retention: Duration,
}

impl Server {
    /// Validates `config`, binds its listen address and prepares the state, with `generator`
    /// on the dev routes. Refuses to start without API keys unless `allow_unauthenticated` is
    /// set, and warns loudly when it is.
    pub async fn bind(
        config: ServerConfig,
        generator: Arc<dyn Generator>,
    ) -> Result<Server, RemoteError> {
        Self::bind_models(config, ServedModels::dev(generator)).await
    }

    /// As [`Server::bind`], serving each of `models` on its variant's routes (see
    /// [`ServedModels::by_variant`]).
    pub async fn bind_models(
        config: ServerConfig,
        models: ServedModels,
    ) -> Result<Server, RemoteError> {
        Self::bind_with(config, |config, public_base_url| {
            AppState::with_models(config, models, public_base_url)
        })
        .await
    }

    /// Binds an API node whose jobs run elsewhere (a fleet's [`JobService`]); the job service is
    /// told the server's public base URL once it is known (image URLs are built on it).
    pub async fn bind_jobs(
        config: ServerConfig,
        jobs: Arc<dyn JobService>,
        webhooks: Option<Arc<dyn WebhookQueue>>,
    ) -> Result<Server, RemoteError> {
        Self::bind_with(config, |config, public_base_url| {
            jobs.set_public_base_url(&public_base_url);
            AppState::with_jobs(config, jobs, webhooks, public_base_url)
        })
        .await
    }

    async fn bind_with(
        config: ServerConfig,
        state: impl FnOnce(&ServerConfig, String) -> Result<AppState, RemoteError>,
    ) -> Result<Server, RemoteError> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| RemoteError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| RemoteError::Bind {
            addr: config.listen,
            source,
        })?;
        let public_base_url = config.public_base_url(local_addr)?;
        let state = state(&config, public_base_url.clone())?;
        if config.allow_unauthenticated {
            tracing::warn!(
                "AUTHENTICATION IS OFF: --allow-unauthenticated is set, requests without an API \
                 key are served{}",
                if config.api_keys.is_empty() {
                    ""
                } else {
                    " (configured keys are still checked when sent)"
                }
            );
        }
        tracing::info!(
            listen = %local_addr,
            public_url = %public_base_url,
            models = %state.inner.service.models().describe(),
            api_keys = config.api_keys.len(),
            queue_depth = config.queue_depth,
            rate_limit = %config.rate_limit.map(|r| r.to_string()).unwrap_or_else(|| "off".to_owned()),
            files_dir = %config.files_dir.display(),
            retention_s = config.retention.as_secs(),
            "flux server listening"
        );
        tracing::debug!(
            read_timeout_s = config.read_timeout.as_secs_f64(),
            request_timeout_s = config.request_timeout.as_secs_f64(),
            drain_timeout_s = config.drain_timeout.as_secs_f64(),
            files_quota = ?config.files_quota,
            trust_forwarded_for = config.trust_forwarded_for,
            "server limits"
        );
        Ok(Server {
            listener,
            state,
            retention: config.retention,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, RemoteError> {
        self.listener.local_addr().map_err(RemoteError::Serve)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains: stops accepting connections, answers 503
    /// `shutting_down` to new generation requests on open connections, lets every admitted
    /// generation finish and be answered, and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RemoteError> {
        let Server {
            listener,
            state,
            retention,
        } = self;
        let sweep_every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let sweeper_state = state.clone();
        let sweeper = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(sweep_every);
            loop {
                ticks.tick().await;
                sweeper_state.sweep().await;
            }
        });
        let deliverer = tokio::spawn(Arc::clone(&state.inner.webhooks).run());
        let draining_state = state.clone();
        let drain = async move {
            shutdown.await;
            draining_state.begin_shutdown();
            tracing::info!(
                in_queue = draining_state.in_queue(),
                "shutting down: no new connections; finishing admitted work"
            );
        };
        serve_connections(listener, router(state.clone()), state.clone(), drain).await;
        sweeper.abort();
        deliverer.abort();
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Binds `config.listen` and serves `generator` until `shutdown` resolves (see [`Server::run`]).
pub async fn serve(
    config: ServerConfig,
    generator: Arc<dyn Generator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RemoteError> {
    Server::bind(config, generator).await?.run(shutdown).await
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    match ShutdownSignals::new() {
        Ok(mut signals) => signals.next().await,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for shutdown signals");
            std::future::pending::<()>().await;
        }
    }
}

/// SIGINT (Ctrl-C) and, on Unix, SIGTERM, each listened for from creation on: a signal that
/// arrives between two [`ShutdownSignals::next`] calls is not lost, so a program can wait for a
/// first signal (drain) and then a second one (stop at once).
#[derive(Debug)]
pub struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Starts listening. Needs a Tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next SIGINT or SIGTERM.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received");
        } else {
            std::future::pending::<()>().await;
        }
    }
}
