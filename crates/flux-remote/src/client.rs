//! The typed client of the API: Bearer auth, connect and total timeouts, bounded retries with
//! exponential backoff and full jitter, and an `Idempotency-Key` per logical call.

use std::time::{Duration, Instant};

use base64::Engine as _;
use flux_types::{ErrorBody, ErrorCode, GenerateRequest, GenerateResponse};
use reqwest::header::{self, HeaderMap};
use reqwest::{StatusCode, Url};

use crate::error::RemoteError;
use crate::ids::random_hex;
use crate::routes::GENERATE_PATH;

/// How long an idle pooled connection is kept: below the server's default read timeout.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// Builds a [`FluxClient`]; every setting has a default written on its method.
#[derive(Debug, Clone)]
pub struct FluxClientBuilder {
    base_url: String,
    api_key: Option<String>,
    connect_timeout: Duration,
    total_timeout: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    max_retry_after: Duration,
    auto_idempotency_key: bool,
}

impl FluxClientBuilder {
    /// The Bearer key sent with generation requests. Default: none.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Time to open a TCP (and TLS) connection. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline for one logical call, every attempt, wait and body read included. Default 15 min;
    /// anything over 30 days counts as 30 days.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
        self
    }

    /// Attempts per logical call, the first included (1 = no retries). Default 4. A 409
    /// `idempotency_conflict` (this call's own earlier attempt is still generating) does not use
    /// one up: the client waits as the server's `Retry-After` says, until the total timeout.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Backoff before retry n is uniform in `[0, min(cap, base·2^(n-1))]` (full jitter).
    /// Defaults: base 500 ms, cap 30 s.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    /// A `Retry-After` longer than this is not waited for: the error is returned. Default 120 s.
    pub fn max_retry_after(mut self, limit: Duration) -> Self {
        self.max_retry_after = limit;
        self
    }

    /// Whether [`FluxClient::generate`] sends a fresh `Idempotency-Key` per call, which makes
    /// retrying a 500 or a dropped connection safe. Default `true`.
    pub fn auto_idempotency_key(mut self, enabled: bool) -> Self {
        self.auto_idempotency_key = enabled;
        self
    }

    pub fn build(self) -> Result<FluxClient, RemoteError> {
        let base_url = Url::parse(&self.base_url).map_err(|error| {
            RemoteError::Config(format!(
                "base URL {:?} is not a URL: {error}",
                self.base_url
            ))
        })?;
        if !matches!(base_url.scheme(), "http" | "https") {
            return Err(RemoteError::Config(format!(
                "base URL {:?} must be http:// or https://",
                self.base_url
            )));
        }
        if self.max_attempts == 0 {
            return Err(RemoteError::Config(
                "max_attempts must be at least 1".to_owned(),
            ));
        }
        if self.total_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(RemoteError::Config(
                "timeouts must be longer than 0 s".to_owned(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            // A flux server closes a keep-alive connection after `read_timeout` (default 60 s)
            // without a request; dropping ours sooner avoids reusing one just as it closes.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!("flux-remote/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(FluxClient {
            http,
            base: self.base_url.trim_end_matches('/').to_owned(),
            api_key: self.api_key,
            total_timeout: self.total_timeout,
            max_attempts: self.max_attempts,
            backoff_base: self.backoff_base,
            backoff_cap: self.backoff_cap,
            max_retry_after: self.max_retry_after,
            auto_idempotency_key: self.auto_idempotency_key,
        })
    }
}

/// A client of one flux server. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct FluxClient {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) api_key: Option<String>,
    pub(crate) total_timeout: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    max_retry_after: Duration,
    pub(crate) auto_idempotency_key: bool,
}

impl std::fmt::Debug for FluxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FluxClient")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("total_timeout", &self.total_timeout)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// How one attempt ended, when it did not succeed.
enum AttemptError {
    /// The call's total time ran out during it.
    OutOfTime,
    /// Decided by [`is_retryable`].
    Failed(RemoteError),
}

/// The longest total timeout honoured: keeps deadline arithmetic far from overflow.
const MAX_TOTAL_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 60 * 60);

impl FluxClient {
    /// A client with default settings (see [`FluxClientBuilder`]).
    pub fn new(base_url: &str, api_key: impl Into<String>) -> Result<Self, RemoteError> {
        Self::builder(base_url).api_key(api_key).build()
    }

    pub fn builder(base_url: &str) -> FluxClientBuilder {
        FluxClientBuilder {
            base_url: base_url.to_owned(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(15 * 60),
            max_attempts: 4,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            auto_idempotency_key: true,
        }
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Generates images, with a fresh `Idempotency-Key` unless the builder turned that off.
    pub async fn generate(
        &self,
        request: &GenerateRequest,
    ) -> Result<GenerateResponse, RemoteError> {
        let key = self.auto_idempotency_key.then(|| random_hex(16));
        self.generate_with_key(request, key.as_deref()).await
    }

    /// Generates images with the given `Idempotency-Key` (or none): retries then replay the
    /// first success instead of generating again.
    pub async fn generate_with_key(
        &self,
        request: &GenerateRequest,
        idempotency_key: Option<&str>,
    ) -> Result<GenerateResponse, RemoteError> {
        let body = request_body(request)?;
        let url = format!("{}{GENERATE_PATH}", self.base);
        let bytes = self
            .send_with_retries(
                idempotency_key.is_some(),
                MAX_SUCCESS_BODY_BYTES,
                |remaining| {
                    let mut builder = self
                        .http
                        .post(&url)
                        .timeout(remaining)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(body.clone());
                    if let Some(key) = &self.api_key {
                        builder = builder.bearer_auth(key);
                    }
                    if let Some(key) = idempotency_key {
                        builder = builder.header("idempotency-key", key);
                    }
                    builder
                },
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|error| {
            RemoteError::InvalidResponse(format!("the 200 body is not a GenerateResponse: {error}"))
        })
    }

    /// The bytes of an image URL from a response: `data:` URIs are decoded, other URLs fetched
    /// (with the same retries; no API key is sent, the URL is the capability).
    pub async fn fetch_image(&self, url: &str) -> Result<Vec<u8>, RemoteError> {
        if let Some(data) = url.strip_prefix("data:") {
            return decode_data_uri(data);
        }
        let parsed = Url::parse(url).map_err(|error| {
            RemoteError::InvalidResponse(format!("bad image URL {url:?}: {error}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(RemoteError::InvalidResponse(format!(
                "image URL {url:?} is neither http(s) nor data:"
            )));
        }
        self.send_with_retries(true, MAX_IMAGE_BYTES, |remaining| {
            self.http.get(parsed.clone()).timeout(remaining)
        })
        .await
    }

    /// Whether the server answers `GET /ready` with 200.
    pub async fn ready(&self) -> Result<bool, RemoteError> {
        let response = self
            .http
            .get(format!("{}/ready", self.base))
            .timeout(self.total_timeout)
            .send()
            .await?;
        Ok(response.status().is_success())
    }

    /// Sends a request built by `build(remaining_time)` and reads its body (at most `limit`
    /// bytes) until that succeeds, a non-retryable answer comes, the attempts are spent, or the
    /// deadline would pass. A body cut off half-way is a failed attempt like a failed send.
    pub(crate) async fn send_with_retries(
        &self,
        repeat_is_safe: bool,
        limit: usize,
        build: impl Fn(Duration) -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, RemoteError> {
        let budget = self.total_timeout.min(MAX_TOTAL_TIMEOUT);
        let deadline = Instant::now() + budget;
        let mut attempt = 1;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(RemoteError::Timeout(self.total_timeout));
            }
            let error = match attempt_once(build(remaining), limit).await {
                Ok(bytes) => return Ok(bytes),
                Err(AttemptError::OutOfTime) => {
                    return Err(RemoteError::Timeout(self.total_timeout));
                }
                Err(AttemptError::Failed(error)) => error,
            };
            if !is_retryable(&error, repeat_is_safe) {
                return Err(error);
            }
            // Waiting for this call's own earlier attempt is not a failure: it costs time, which
            // the deadline bounds, not an attempt.
            let own_attempt_running = is_idempotency_conflict(&error);
            if !own_attempt_running && attempt >= self.max_attempts {
                return Err(error);
            }
            let hint = match &error {
                RemoteError::Api { retry_after, .. } => *retry_after,
                _ => None,
            };
            let Some(wait) = self.wait_before_retry(hint, own_attempt_running, attempt) else {
                return Err(error);
            };
            if wait >= deadline.saturating_duration_since(Instant::now()) {
                return Err(error);
            }
            tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, %error, "retrying");
            tokio::time::sleep(wait).await;
            if !own_attempt_running {
                attempt += 1;
            }
        }
    }

    /// Full jitter: uniform in `[0, min(cap, base·2^(attempt-1))]`.
    fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << exponent)
            .min(self.backoff_cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=millis))
    }
}

/// One request and its body. Errors while reading the body count like errors while sending: a
/// dropped connection (retried when safe), or the end of the call's time.
async fn attempt_once(
    request: reqwest::RequestBuilder,
    limit: usize,
) -> Result<Vec<u8>, AttemptError> {
    let response = request.send().await.map_err(transport_failure)?;
    if !response.status().is_success() {
        return Err(AttemptError::Failed(api_error(response).await));
    }
    read_capped(response, limit)
        .await
        .map_err(|error| match error {
            RemoteError::Transport(error) => transport_failure(error),
            other => AttemptError::Failed(other),
        })
}

/// A transport error while sending or reading: the end of the call's time, or a failure.
fn transport_failure(error: reqwest::Error) -> AttemptError {
    // A connect timeout is also a timeout to reqwest, but it is a connection failure (retried),
    // not the end of the call's total time.
    if error.is_timeout() && !error.is_connect() {
        AttemptError::OutOfTime
    } else {
        AttemptError::Failed(RemoteError::Transport(error))
    }
}

impl FluxClient {
    /// How long to wait before the next attempt, given the answer's `Retry-After`; `None` when
    /// the hint is longer than the client waits for.
    fn wait_before_retry(
        &self,
        hint: Option<Duration>,
        own_attempt_running: bool,
        attempt: u32,
    ) -> Option<Duration> {
        Some(match hint {
            // An estimate of when this call's own running attempt ends: polling sooner is
            // pointless, waiting longer than for any hint is too, and never less than the
            // backoff base, so a client that waits for no hint (`max_retry_after` zero, as a
            // failover's) does not poll in a tight loop.
            Some(hint) if own_attempt_running => {
                hint.min(self.max_retry_after).max(self.backoff_base)
            }
            None if own_attempt_running => self.backoff(attempt).max(self.backoff_base),
            Some(hint) if hint > self.max_retry_after => return None,
            Some(hint) => hint,
            None => self.backoff(attempt),
        })
    }
}

fn is_idempotency_conflict(error: &RemoteError) -> bool {
    matches!(error, RemoteError::Api { status: 409, body: Some(body), .. }
        if body.error.code == ErrorCode::IdempotencyConflict)
}

/// 429, 502, 503, 504 and connection failures always; 500, a dropped connection and 409
/// `idempotency_conflict` (the earlier attempt of this very call is still running) only when
/// repeating the request is safe (it carries an `Idempotency-Key`, or is a GET).
fn is_retryable(error: &RemoteError, repeat_is_safe: bool) -> bool {
    match error {
        RemoteError::Api { status, .. } => match *status {
            429 | 502 | 503 | 504 => true,
            500 => repeat_is_safe,
            409 => repeat_is_safe && is_idempotency_conflict(error),
            _ => false,
        },
        RemoteError::Transport(error) => error.is_connect() || repeat_is_safe,
        _ => false,
    }
}

pub(crate) async fn api_error(response: reqwest::Response) -> RemoteError {
    let status = response.status();
    let retry_after = retry_after(status, response.headers());
    // An oversized error body is cut rather than refused: the status must survive.
    let mut response = response;
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_BODY_BYTES - bytes.len();
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() >= room {
                    break;
                }
            }
            Ok(None) => break,
            // Cut short: the status (and `Retry-After`) still say what happened, and decide
            // whether to retry.
            Err(error) => {
                tracing::debug!(%error, "the error body was cut short");
                break;
            }
        }
    }
    let raw_body = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str::<ErrorBody>(&raw_body).ok();
    RemoteError::Api {
        status: status.as_u16(),
        body,
        raw_body,
        retry_after,
    }
}

/// Largest 200 body of a generation accepted: four 2048×2048 PNGs inline as `data:` URIs fit.
const MAX_SUCCESS_BODY_BYTES: usize = 256 * 1024 * 1024;
/// Largest image file accepted from a file URL.
const MAX_IMAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body accepted; the API's are a few hundred bytes.
const MAX_ERROR_BODY_BYTES: usize = 1024 * 1024;

/// Reads a body of at most `limit` bytes, so a broken or hostile server cannot exhaust memory.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, RemoteError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(RemoteError::InvalidResponse(format!(
                "the answer (HTTP {}) is larger than {limit} bytes",
                response.status().as_u16()
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` in delta-seconds (the form this API sends) on 409, 429 and 503; dates are
/// ignored.
fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if !matches!(
        status,
        StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        return None;
    }
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The JSON body, without `null` members: the API refuses `null`, and an omitted optional
/// field (`seed`) means "use the default".
pub(crate) fn request_body(request: &GenerateRequest) -> Result<Vec<u8>, RemoteError> {
    let mut value = serde_json::to_value(request)
        .map_err(|error| RemoteError::Config(format!("cannot serialise the request: {error}")))?;
    if let serde_json::Value::Object(members) = &mut value {
        members.retain(|_, member| !member.is_null());
    }
    serde_json::to_vec(&value)
        .map_err(|error| RemoteError::Config(format!("cannot serialise the request: {error}")))
}

/// `<media type>;base64,<payload>` (what follows `data:`).
fn decode_data_uri(data: &str) -> Result<Vec<u8>, RemoteError> {
    let (meta, payload) = data
        .split_once(',')
        .ok_or_else(|| RemoteError::InvalidResponse("data: URI without a comma".to_owned()))?;
    if !meta.ends_with(";base64") {
        return Err(RemoteError::InvalidResponse(
            "data: URI is not base64-encoded".to_owned(),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|error| RemoteError::InvalidResponse(format!("data: URI payload: {error}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_its_own_running_attempt_never_spins() {
        // A failover's client waits for no Retry-After; its own attempt still generating (a 409
        // after a dropped connection) must be polled at the backoff base, not in a tight loop.
        let client = FluxClient::builder("http://127.0.0.1:1")
            .max_retry_after(Duration::ZERO)
            .backoff(Duration::from_millis(500), Duration::from_secs(30))
            .build()
            .unwrap();
        let hint = Some(Duration::from_secs(20));
        assert_eq!(
            client.wait_before_retry(hint, true, 1),
            Some(Duration::from_millis(500))
        );
        assert_eq!(client.wait_before_retry(hint, false, 1), None);
        let default = FluxClient::builder("http://127.0.0.1:1").build().unwrap();
        assert_eq!(default.wait_before_retry(hint, true, 1), hint);
        assert_eq!(default.wait_before_retry(hint, false, 1), hint);
    }

    #[test]
    fn data_uris_decode_and_bad_ones_are_refused() {
        assert_eq!(
            decode_data_uri("image/png;base64,AAEC").unwrap(),
            vec![0u8, 1, 2]
        );
        assert!(decode_data_uri("image/png,AAEC").is_err());
        assert!(decode_data_uri("image/png;base64").is_err());
        assert!(decode_data_uri("image/png;base64,@@@").is_err());
    }

    #[test]
    fn backoff_stays_within_the_jitter_ceiling() {
        let client = FluxClient::builder("http://127.0.0.1:1")
            .backoff(Duration::from_millis(100), Duration::from_millis(350))
            .build()
            .unwrap();
        for _ in 0..200 {
            assert!(client.backoff(1) <= Duration::from_millis(100));
            assert!(client.backoff(2) <= Duration::from_millis(200));
            assert!(client.backoff(3) <= Duration::from_millis(350));
            assert!(client.backoff(10) <= Duration::from_millis(350));
        }
    }

    #[test]
    fn retry_policy_follows_the_contract() {
        let api = |status: u16, code: Option<ErrorCode>| RemoteError::Api {
            status,
            body: code.map(|code| ErrorBody {
                error: flux_types::ApiError {
                    code,
                    message: String::new(),
                    param: None,
                },
                request_id: String::new(),
            }),
            raw_body: String::new(),
            retry_after: None,
        };
        for status in [429, 502, 503, 504] {
            assert!(is_retryable(&api(status, None), false), "{status}");
        }
        assert!(!is_retryable(&api(500, None), false));
        assert!(is_retryable(&api(500, None), true));
        for status in [400, 401, 404, 413, 415, 422] {
            assert!(!is_retryable(&api(status, None), true), "{status}");
        }
        assert!(is_retryable(
            &api(409, Some(ErrorCode::IdempotencyConflict)),
            true
        ));
        assert!(!is_retryable(
            &api(409, Some(ErrorCode::IdempotencyConflict)),
            false
        ));
    }
}
