//! Remote backends: [`RemoteGenerator`] sends each request to one flux server through
//! flux-remote's client; [`FailoverGenerator`] tries several servers in order.
//!
//! Requests go out with `sync_mode: true`, so the images come back inline as `data:` URIs: one
//! round trip, and nothing is stored on the server for a caller that is about to hold the bytes
//! anyway. With a progress callback, the request goes through the queue API instead (submit, then
//! the job's status stream), so the callback hears every denoising step as the server finishes
//! it; a dropped call cancels the job on the server. A server without the queue API (404) is
//! asked on the sync route, and the callback then hears only the final step.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flux_remote::{ClientError, FluxClient};
use flux_types::{
    BoxFuture, ErrorCode, GeneratedImage, Generation, GenerationTimings, Generator, GeneratorError,
    ModelInfo, Progress, ProgressFn, ValidRequest, VariantSpec,
};

use crate::error::FacadeError;

/// How long a 503 from the server (or a refused connection) makes this generator report "not
/// ready" when the answer has no `Retry-After`, and at most in any case: long enough not to hammer
/// a server that is loading, draining or down, short enough that the next request soon asks again.
const NOT_READY_HOLD: Duration = Duration::from_secs(5);

/// Attempts per request on each server behind a failover, the first included.
const FAILOVER_ATTEMPTS_PER_SERVER: u32 = 2;

/// Cancels a submitted job on the server when the call that waits for it is dropped.
struct CancelOnDrop {
    client: FluxClient,
    request_id: Option<String>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(request_id) = self.request_id.take() else {
            return;
        };
        let client = self.client.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = client.cancel("dev", &request_id).await {
                    tracing::debug!(%error, "cannot cancel a dropped remote job");
                }
            });
        }
    }
}

/// A flux server as a [`Generator`].
#[derive(Debug)]
pub struct RemoteGenerator {
    client: FluxClient,
    /// Until when the last 503 (loading or draining) says the server is not ready. `is_ready`
    /// cannot make an HTTP call, and a server fronting this generator sends it nothing while it
    /// reports not ready, so the answer must expire by itself.
    not_ready_until: Mutex<Option<Instant>>,
}

impl RemoteGenerator {
    /// A generator for the server at `base_url` (`http(s)://host:port`), sending `api_key` as
    /// Bearer token when given. Nothing is contacted until the first request.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, FacadeError> {
        let builder = FluxClient::builder(base_url);
        let builder = match api_key {
            Some(key) => builder.api_key(key),
            None => builder,
        };
        Ok(Self::from_client(builder.build()?))
    }

    /// A generator for one of the servers behind a [`FailoverGenerator`]: the next server is the
    /// retry, so this one gets a single quick retry of a network blip and never waits out a busy
    /// or loading server's `Retry-After` (the default client would, for minutes, before the
    /// failover could move on).
    pub fn for_failover(base_url: &str, api_key: Option<String>) -> Result<Self, FacadeError> {
        let builder = FluxClient::builder(base_url)
            .max_attempts(FAILOVER_ATTEMPTS_PER_SERVER)
            .max_retry_after(Duration::ZERO);
        let builder = match api_key {
            Some(key) => builder.api_key(key),
            None => builder,
        };
        Ok(Self::from_client(builder.build()?))
    }

    /// Wraps a client configured by the caller (timeouts, retries).
    pub fn from_client(client: FluxClient) -> Self {
        Self {
            client,
            not_ready_until: Mutex::new(None),
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        self.client.base_url()
    }

    /// Submit, then follow the job's status stream to its result; each step reaches `progress`.
    /// The flag says whether any step was reported.
    async fn run_queued(
        &self,
        wire: &flux_types::GenerateRequest,
        progress: &ProgressFn,
    ) -> (Result<flux_types::GenerateResponse, ClientError>, bool) {
        let job = match self.client.submit("dev", wire).await {
            Ok(job) => job,
            // A server without the queue API.
            Err(ClientError::Api { status: 404, .. }) => {
                return (self.client.generate(wire).await, false);
            }
            Err(error) => return (Err(error), false),
        };
        let mut guard = CancelOnDrop {
            client: self.client.clone(),
            request_id: Some(job.request_id.clone()),
        };
        let mut reported = false;
        let result = self
            .client
            .wait("dev", &job.request_id, |status| {
                if let Some(step) = status.progress {
                    reported = true;
                    progress(Progress {
                        step: step.step,
                        total_steps: step.total_steps,
                    });
                }
            })
            .await;
        guard.request_id = None;
        (result, reported)
    }

    async fn run(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> Result<Generation, GeneratorError> {
        let started = Instant::now();
        let mut wire = request.into_request();
        wire.sync_mode = true;
        let (result, steps_reported) = match &progress {
            Some(progress) => self.run_queued(&wire, progress).await,
            None => (self.client.generate(&wire).await, false),
        };
        let not_ready_until = match &result {
            Err(ClientError::Api {
                status: 503,
                retry_after,
                ..
            }) => Some(Instant::now() + retry_after.unwrap_or(NOT_READY_HOLD).min(NOT_READY_HOLD)),
            // Nothing listens there (down, restarting): not ready either, for the same while.
            Err(ClientError::Transport(error)) if error.is_connect() => {
                Some(Instant::now() + NOT_READY_HOLD)
            }
            _ => None,
        };
        *self
            .not_ready_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = not_ready_until;
        let response = result.map_err(map_client_error)?;
        let mut images = Vec::with_capacity(response.images.len());
        for image in &response.images {
            let bytes = self
                .client
                .fetch_image(&image.url)
                .await
                .map_err(map_client_error)?;
            images.push(GeneratedImage {
                bytes,
                width: image.width,
                height: image.height,
                content_type: image.content_type.clone(),
            });
        }
        if let Some(progress) = progress.filter(|_| !steps_reported) {
            let steps = wire.num_inference_steps;
            progress(Progress {
                step: steps,
                total_steps: steps,
            });
        }
        let inference = Duration::try_from_secs_f64(response.timings.inference).unwrap_or_default();
        Ok(Generation {
            images,
            seed: response.seed,
            has_nsfw_concepts: response.has_nsfw_concepts,
            timings: GenerationTimings {
                inference,
                queued: started.elapsed().saturating_sub(inference),
            },
        })
    }
}

impl Generator for RemoteGenerator {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        // Dropping this future drops the HTTP call; the server then sees the connection close.
        Box::pin(self.run(request, progress))
    }

    fn is_ready(&self) -> bool {
        self.not_ready_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|until| Instant::now() >= until)
    }

    fn describe(&self) -> String {
        format!("remote flux server at {}", self.client.base_url())
    }

    /// The server's dev model (the route this generator calls), named by the server's URL; what
    /// the server runs it on is not known here.
    fn model(&self) -> Option<ModelInfo> {
        Some(remote_model(self.client.base_url().to_owned()))
    }
}

/// A remote backend's model: the dev route of `id`, with nothing else known.
fn remote_model(id: String) -> ModelInfo {
    ModelInfo {
        id,
        variant: VariantSpec::dev(),
        text_length: None,
        precision: None,
        device: None,
        safety_checker: None,
    }
}

/// Maps a client error to the generator error a caller (or a server fronting this generator)
/// acts on: 429 → `RateLimited` or `Overloaded` (retry later), 503 → `NotReady`/`ShuttingDown`, 400 →
/// `InvalidRequest` with the server's message, anything else → `Remote` with status and detail.
pub fn map_client_error(error: ClientError) -> GeneratorError {
    let detail = with_causes(&error);
    match error {
        ClientError::Api {
            status: 429,
            retry_after,
            body,
            ..
        } => match body.map(|b| b.error.code) {
            Some(ErrorCode::RateLimited) => GeneratorError::RateLimited { retry_after },
            _ => GeneratorError::Overloaded { retry_after },
        },
        ClientError::Api {
            status: 503, body, ..
        } => match body.map(|b| b.error.code) {
            Some(ErrorCode::ShuttingDown) => GeneratorError::ShuttingDown,
            _ => GeneratorError::NotReady,
        },
        ClientError::Api {
            status: 400,
            body: Some(body),
            ..
        } => GeneratorError::InvalidRequest {
            param: body.error.param,
            message: body.error.message,
        },
        ClientError::Api {
            status: 422,
            body: Some(body),
            ..
        } if body.error.code == ErrorCode::ExceedsMemoryLimit => {
            GeneratorError::ExceedsMemoryLimit {
                message: body.error.message,
            }
        }
        ClientError::Api { status, .. } => GeneratorError::Remote {
            status: Some(status),
            detail,
        },
        _ => GeneratorError::Remote {
            status: None,
            detail,
        },
    }
}

/// The error and its sources on one line: transport errors keep their cause ("connection
/// refused") only in the source chain.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Several flux servers behind one [`Generator`]: each request goes to the first server, and on
/// to the next when one is unreachable, overloaded, not ready, draining, or answers 502/503/504.
/// A bad request (400), a failed generation (500) or a cancellation ends the attempt at once:
/// another server would answer the same. Built from URLs (the `failover:` backend), each server
/// is asked as [`RemoteGenerator::for_failover`] says: no waiting on one busy server while the
/// next may be free; when every server is busy, the last one's error is returned.
pub struct FailoverGenerator {
    remotes: Vec<Arc<dyn Generator>>,
    descriptions: Vec<String>,
}

impl FailoverGenerator {
    /// Fronts `remotes`, tried in the order given.
    pub fn new(remotes: Vec<RemoteGenerator>) -> Self {
        Self::from_generators(
            remotes
                .into_iter()
                .map(|remote| Arc::new(remote) as Arc<dyn Generator>)
                .collect(),
        )
    }

    /// Fronts any generators, tried in the order given.
    pub fn from_generators(remotes: Vec<Arc<dyn Generator>>) -> Self {
        let descriptions = remotes.iter().map(|remote| remote.describe()).collect();
        Self {
            remotes,
            descriptions,
        }
    }

    async fn run(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> Result<Generation, GeneratorError> {
        let mut last_error = GeneratorError::Remote {
            status: None,
            detail: "failover has no servers to ask".to_owned(),
        };
        for (remote, description) in self.remotes.iter().zip(&self.descriptions) {
            match remote.generate(request.clone(), progress.clone()).await {
                Ok(generation) => return Ok(generation),
                Err(error) if worth_another_server(&error) => {
                    tracing::warn!(backend = %description, %error, "backend unavailable; trying the next");
                    last_error = error;
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error)
    }
}

fn worth_another_server(error: &GeneratorError) -> bool {
    match error {
        GeneratorError::Overloaded { .. }
        | GeneratorError::RateLimited { .. }
        | GeneratorError::NotReady
        | GeneratorError::ShuttingDown => true,
        GeneratorError::Remote { status, .. } => matches!(status, None | Some(502..=504)),
        _ => false,
    }
}

impl std::fmt::Debug for FailoverGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverGenerator")
            .field("remotes", &self.descriptions)
            .finish()
    }
}

impl Generator for FailoverGenerator {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        Box::pin(self.run(request, progress))
    }

    fn is_ready(&self) -> bool {
        self.remotes.iter().any(|remote| remote.is_ready())
    }

    fn describe(&self) -> String {
        format!("failover over [{}]", self.descriptions.join(", "))
    }

    /// The dev model of the servers behind it, named by their ids (`failover:URL,URL`).
    fn model(&self) -> Option<ModelInfo> {
        let ids: Vec<String> = self
            .remotes
            .iter()
            .map(|remote| {
                remote
                    .model()
                    .map_or_else(|| remote.describe(), |model| model.id)
            })
            .collect();
        Some(remote_model(format!("failover:{}", ids.join(","))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flux_types::{ApiError, ErrorBody};

    fn api(status: u16, code: Option<ErrorCode>, retry_after: Option<Duration>) -> ClientError {
        let body = code.map(|code| ErrorBody {
            error: ApiError {
                code,
                message: "server says no".to_owned(),
                param: Some("seed".to_owned()),
            },
            request_id: "req-1".to_owned(),
        });
        ClientError::Api {
            status,
            body,
            raw_body: String::new(),
            retry_after,
        }
    }

    #[test]
    fn each_error_class_maps_to_what_a_caller_acts_on() {
        let hint = Some(Duration::from_secs(3));
        assert_eq!(
            map_client_error(api(429, Some(ErrorCode::Overloaded), hint)),
            GeneratorError::Overloaded { retry_after: hint }
        );
        // Over the key's rate is not a full queue: the caller is told which it is.
        assert_eq!(
            map_client_error(api(429, Some(ErrorCode::RateLimited), hint)),
            GeneratorError::RateLimited { retry_after: hint }
        );
        assert_eq!(
            map_client_error(api(429, None, None)),
            GeneratorError::Overloaded { retry_after: None }
        );
        assert_eq!(
            map_client_error(api(503, Some(ErrorCode::NotReady), hint)),
            GeneratorError::NotReady
        );
        assert_eq!(
            map_client_error(api(503, Some(ErrorCode::ShuttingDown), None)),
            GeneratorError::ShuttingDown
        );
        assert_eq!(
            map_client_error(api(503, None, None)),
            GeneratorError::NotReady
        );
        assert_eq!(
            map_client_error(api(400, Some(ErrorCode::InvalidParameter), None)),
            GeneratorError::InvalidRequest {
                param: Some("seed".to_owned()),
                message: "server says no".to_owned()
            }
        );
        assert!(matches!(
            map_client_error(api(500, Some(ErrorCode::InferenceFailed), None)),
            GeneratorError::Remote { status: Some(500), detail } if detail.contains("server says no")
        ));
        assert!(matches!(
            map_client_error(ClientError::Timeout(Duration::from_secs(1))),
            GeneratorError::Remote { status: None, .. }
        ));
    }

    #[test]
    fn failover_moves_on_only_when_another_server_could_do_better() {
        assert!(worth_another_server(&GeneratorError::Overloaded {
            retry_after: None
        }));
        assert!(worth_another_server(&GeneratorError::RateLimited {
            retry_after: None
        }));
        assert!(worth_another_server(&GeneratorError::NotReady));
        assert!(worth_another_server(&GeneratorError::Remote {
            status: None,
            detail: String::new()
        }));
        assert!(worth_another_server(&GeneratorError::Remote {
            status: Some(502),
            detail: String::new()
        }));
        assert!(!worth_another_server(&GeneratorError::Remote {
            status: Some(500),
            detail: String::new()
        }));
        assert!(!worth_another_server(&GeneratorError::Cancelled));
        assert!(!worth_another_server(&GeneratorError::InvalidRequest {
            param: None,
            message: String::new()
        }));
    }
}
