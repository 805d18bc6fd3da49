//! Webhooks (`?fal_webhook=URL` on a submit): the SSRF guard at submit, the signed body queued in
//! the outbox when the job ends, and the delivery loop: retries on a non-2xx answer or a
//! connection error, the first soon, then with jittered exponential backoff for a bounded time;
//! a 410 stops them; the same `webhook-id` on every attempt. A job's delivery id is derived from
//! its id, and queuing leaves a pending one alone, so a restart that queues again the webhook of
//! a job that ended just before a crash (`GenerationService::recover`) never makes a second one.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use flux_service::{
    JobRecord, JobResult, JobState, Outbox, ServiceError, Settle, WebhookDelivery, WebhookQueue,
};
use flux_types::{ErrorBody, ErrorCode};
use tokio::sync::Notify;

use crate::api_error::ApiErrorResponse;
use crate::webhook_sig::WebhookSecret;

/// Webhook settings of a server.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The signing key (`--webhook-secret-file`); without one, submits asking for a webhook are
    /// refused.
    pub secret: Option<WebhookSecret>,
    /// Allow loopback, private, link-local and metadata targets (tests, private deployments).
    pub allow_private: bool,
    /// Retries stop this long after the first attempt.
    pub retry_for: Duration,
    /// The first retry's delay; each next one doubles it (jittered), up to `MAX_RETRY_DELAY`.
    pub first_retry: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret: None,
            allow_private: false,
            retry_for: Duration::from_secs(2 * 60 * 60),
            first_retry: Duration::from_secs(5),
        }
    }
}

/// The longest wait between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(15 * 60);
/// One attempt's limit (connect + answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Deliveries from a queue kept elsewhere attempted at once by one API node.
const QUEUE_CONCURRENCY: usize = 16;

fn refused(message: impl Into<String>) -> ApiErrorResponse {
    ApiErrorResponse::with_param(ErrorCode::InvalidParameter, "fal_webhook", message)
}

/// Whether `ip` is somewhere a webhook must not reach by default.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
        }
    }
}

/// Checks a webhook URL: http(s), a host, and (unless allowed) no address that resolves to
/// loopback, private, link-local or metadata ranges.
pub(crate) async fn check_target(
    url: &str,
    config: &WebhookConfig,
) -> Result<reqwest::Url, ApiErrorResponse> {
    if config.secret.is_none() {
        return Err(refused(
            "this server has no webhook secret (--webhook-secret-file), so it sends no webhooks",
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| refused("fal_webhook must be an absolute http(s) URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() {
        return Err(refused(
            "fal_webhook must be an http(s) URL without credentials",
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| refused("fal_webhook has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(80);
    if config.allow_private {
        return Ok(parsed);
    }
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| refused("the fal_webhook host does not resolve"))?
            .map(|address| address.ip())
            .collect(),
    };
    if addresses.is_empty() || addresses.into_iter().any(is_private) {
        return Err(refused(
            "fal_webhook resolves to a loopback, private, link-local or metadata address; this \
             server does not send webhooks there",
        ));
    }
    Ok(parsed)
}

/// The webhook URL of a submit's query (`fal_webhook=`), percent-decoded.
pub(crate) fn webhook_param(query: Option<&str>) -> Option<String> {
    let query = query?;
    let url = reqwest::Url::parse(&format!("http://query.invalid/?{query}")).ok()?;
    url.query_pairs()
        .find(|(name, _)| name == "fal_webhook")
        .map(|(_, value)| value.into_owned())
}

/// The body POSTed when a job ends.
pub(crate) fn webhook_body(record: &JobRecord, overload_hint: Duration) -> Option<Bytes> {
    let JobState::Completed(result) = &record.state else {
        return None;
    };
    let id = serde_json::to_string(record.id.as_str()).ok()?;
    let error_json = |response: ApiErrorResponse| {
        serde_json::to_string(&ErrorBody {
            error: response.error().clone(),
            request_id: record.id.to_string(),
        })
        .ok()
    };
    let text = match result {
        JobResult::Succeeded(stored) => {
            let payload = std::str::from_utf8(&stored.body).ok()?;
            format!(r#"{{"request_id":{id},"status":"OK","payload":{payload},"error":null}}"#)
        }
        JobResult::Failed(failure) => {
            let error = error_json(ApiErrorResponse::from_job_failure_quiet(
                failure,
                overload_hint,
            ))?;
            format!(r#"{{"request_id":{id},"status":"ERROR","payload":null,"error":{error}}}"#)
        }
        JobResult::Cancelled => {
            let error = error_json(ApiErrorResponse::new(
                ErrorCode::Cancelled,
                "the job was cancelled; it has no result",
                None,
            ))?;
            format!(r#"{{"request_id":{id},"status":"ERROR","payload":null,"error":{error}}}"#)
        }
    };
    Some(Bytes::from(text))
}

/// Delivers what the outbox holds.
pub(crate) struct Deliverer {
    pub(crate) outbox: Arc<dyn Outbox>,
    pub(crate) config: WebhookConfig,
    pub(crate) wake: Notify,
    client: reqwest::Client,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

impl Deliverer {
    pub(crate) fn new(outbox: Arc<dyn Outbox>, config: WebhookConfig) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            // A redirect could lead anywhere, private addresses included.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Arc::new(Deliverer {
            outbox,
            config,
            wake: Notify::new(),
            client,
        })
    }

    /// Queues a delivery, unless one with its id is already pending (a restart queuing again a
    /// job's webhook whose queuing it did not see recorded), and wakes the loop.
    pub(crate) fn enqueue(&self, delivery: WebhookDelivery) -> Result<(), ServiceError> {
        match self.outbox.put_new(delivery) {
            Ok(_inserted) => {
                self.wake.notify_one();
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "cannot queue a webhook");
                Err(error)
            }
        }
    }

    /// Runs for ever: delivers what is due, then sleeps until the next is due or one is queued.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            let due = self.outbox.due(SystemTime::now()).unwrap_or_default();
            let attempts = due.into_iter().map(|delivery| self.attempt(delivery));
            futures::future::join_all(attempts).await;
            let wait = match self.outbox.next_due() {
                Ok(Some(at)) => at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_RETRY_DELAY),
                _ => MAX_RETRY_DELAY,
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn attempt(&self, mut delivery: WebhookDelivery) {
        match self.try_deliver(&mut delivery).await {
            Settle::Done => {
                if let Err(error) = self.outbox.remove(&delivery.id) {
                    tracing::error!(%error, "cannot remove a delivered webhook");
                }
            }
            Settle::RetryIn(delay) => {
                delivery.next_attempt_at = SystemTime::now() + delay;
                if let Err(error) = self.outbox.put(delivery) {
                    tracing::error!(%error, "cannot reschedule a webhook");
                }
            }
        }
    }

    /// Runs for ever over a queue kept elsewhere (a fleet's stream): each due delivery is
    /// attempted, at most [`QUEUE_CONCURRENCY`] at once, and settled with the queue.
    pub(crate) async fn run_queue(
        self: Arc<Self>,
        queue: Arc<dyn WebhookQueue>,
        overload_hint: Duration,
    ) {
        let slots = Arc::new(tokio::sync::Semaphore::new(QUEUE_CONCURRENCY));
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let item = match queue.next().await {
                Ok(item) => item,
                Err(error) => {
                    tracing::warn!(%error, "cannot take a queued webhook; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let (deliverer, queue) = (Arc::clone(&self), Arc::clone(&queue));
            tokio::spawn(async move {
                let outcome = match (
                    &item.record.webhook,
                    webhook_body(&item.record, overload_hint),
                ) {
                    (Some(url), Some(body)) => {
                        let mut delivery = WebhookDelivery {
                            id: WebhookDelivery::id_for(item.record.id.as_str()),
                            job: item.record.id.to_string(),
                            url: url.clone(),
                            body,
                            attempts: item.attempts,
                            created_at: item.queued_at,
                            next_attempt_at: SystemTime::now(),
                        };
                        deliverer.try_deliver(&mut delivery).await
                    }
                    // No webhook asked, or the job is not completed: nothing to deliver.
                    _ => Settle::Done,
                };
                queue.settle(item, outcome).await;
                drop(slot);
            });
        }
    }

    /// One attempt: `Done` when delivered, refused for good (410, a private target) or given up
    /// (past the retry window); otherwise when to try again. Counts the attempt in `delivery`.
    async fn try_deliver(&self, delivery: &mut WebhookDelivery) -> Settle {
        let Some(secret) = &self.config.secret else {
            return Settle::Done;
        };
        delivery.attempts += 1;
        // Checked again at each attempt: a name can resolve elsewhere later.
        let allowed = check_target(&delivery.url, &self.config).await.is_ok();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let answer = if allowed {
            self.client
                .post(&delivery.url)
                .header("content-type", "application/json")
                .header("webhook-id", &delivery.id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    secret.sign(&delivery.id, timestamp, &delivery.body),
                )
                .body(delivery.body.clone())
                .send()
                .await
                .map(|response| response.status().as_u16())
        } else {
            Ok(0)
        };
        let done = match &answer {
            Ok(status) if (200..300).contains(status) => true,
            Ok(410) => {
                tracing::info!(job = %delivery.job, "webhook receiver answered 410: not retried");
                true
            }
            _ => false,
        };
        let elapsed = SystemTime::now()
            .duration_since(delivery.created_at)
            .unwrap_or_default();
        if done || elapsed >= self.config.retry_for || !allowed {
            if !done {
                tracing::warn!(job = %delivery.job, attempts = delivery.attempts, "webhook given up");
            } else {
                tracing::info!(job = %delivery.job, attempts = delivery.attempts, "webhook delivered");
            }
            return Settle::Done;
        }
        let delay = self.retry_delay(delivery.attempts);
        tracing::info!(
            job = %delivery.job,
            attempts = delivery.attempts,
            answer = ?answer.as_ref().map_err(|error| error.to_string()),
            retry_in_ms = delay.as_millis() as u64,
            "webhook not accepted; retrying"
        );
        Settle::RetryIn(delay)
    }

    /// After `attempts` failed attempts: `first_retry` × 2^(attempts-1), capped, jittered into
    /// its upper half (so the first retry stays soon).
    fn retry_delay(&self, attempts: u32) -> Duration {
        let doubled = self
            .config
            .first_retry
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(MAX_RETRY_DELAY);
        doubled.mul_f64(rand::random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                is_private(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
                "{ip}"
            );
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(
                !is_private(ip.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))),
                "{ip}"
            );
        }
    }

    #[test]
    fn the_webhook_parameter_is_percent_decoded() {
        assert_eq!(
            webhook_param(Some(
                "a=1&fal_webhook=https%3A%2F%2Fexample.com%2Fhook%3Fx%3D1"
            )),
            Some("https://example.com/hook?x=1".to_owned())
        );
        assert_eq!(webhook_param(Some("a=1")), None);
        assert_eq!(webhook_param(None), None);
    }
}
