//! Webhooks against a real server and a real receiver on loopback: Standard Webhooks signatures
//! (checked by the receiver with `verify_webhook`; a wrong secret is rejected), retries with one
//! `webhook-id` (fails three times, then accepts: four attempts), a 410 stops retries, failed and
//! cancelled jobs report `ERROR`, and the SSRF guard.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use flux_remote::{QUEUE_PATH, Server, WebhookConfig, WebhookSecret, verify_webhook};
use flux_types::GeneratorError;
use serde_json::Value;

#[derive(Debug, Clone)]
struct Attempt {
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver that answers `answers[i]` to the i-th attempt (the last one after that).
#[derive(Debug, Clone)]
struct Receiver {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    answers: Arc<Vec<StatusCode>>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut attempts = receiver.attempts.lock().unwrap();
    attempts.push(Attempt { headers, body });
    let index = (attempts.len() - 1).min(receiver.answers.len() - 1);
    receiver.answers[index]
}

async fn start_receiver(answers: Vec<StatusCode>) -> (Receiver, String) {
    let receiver = Receiver {
        attempts: Arc::default(),
        answers: Arc::new(answers),
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, format!("http://{addr}/hook"))
}

fn secret_text() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"a webhook signing key for tests")
    )
}

async fn start_server(
    generator: Arc<FakeGenerator>,
    allow_private: bool,
    secret: bool,
) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.webhooks = WebhookConfig {
        secret: secret.then(|| WebhookSecret::parse(&secret_text()).unwrap()),
        allow_private,
        first_retry: Duration::from_millis(50),
        ..WebhookConfig::default()
    };
    let server = Server::bind(config, generator).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    (addr, dir)
}

async fn submit(addr: SocketAddr, webhook: &str, body: &str) -> reqwest::Response {
    let encoded: String = reqwest::Url::parse_with_params("http://x/", [("fal_webhook", webhook)])
        .unwrap()
        .query()
        .unwrap()
        .to_owned();
    reqwest::Client::new()
        .post(format!("http://{addr}{QUEUE_PATH}/dev?{encoded}"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn until_attempts(receiver: &Receiver, count: usize) -> Vec<Attempt> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempts = receiver.attempts.lock().unwrap().clone();
        if attempts.len() >= count {
            return attempts;
        }
        assert!(
            Instant::now() < deadline,
            "only {} attempts",
            attempts.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(attempt: &'a Attempt, name: &str) -> &'a str {
    attempt.headers[name].to_str().unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_webhook_is_signed_retried_with_one_id_and_delivered_on_the_fourth_attempt() {
    let (receiver, url) = start_receiver(vec![
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::BAD_GATEWAY,
        StatusCode::OK,
    ])
    .await;
    let (addr, _dir) = start_server(fake(), true, true).await;
    let accepted = submit(addr, &url, SMALL).await;
    assert_eq!(accepted.status(), 202);
    let job: Value = accepted.json().await.unwrap();
    let attempts = until_attempts(&receiver, 4).await;
    // Delivered: no fifth attempt.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let attempts_after = receiver.attempts.lock().unwrap().len();
    assert_eq!(attempts_after, 4);
    let id = header(&attempts[0], "webhook-id");
    assert!(id.starts_with("msg_"), "{id}");
    for attempt in &attempts {
        assert_eq!(header(attempt, "webhook-id"), id, "one id on every retry");
        assert_eq!(header(attempt, "content-type"), "application/json");
        let timestamp = header(attempt, "webhook-timestamp");
        let signature = header(attempt, "webhook-signature");
        assert!(signature.starts_with("v1,"), "{signature}");
        verify_webhook(
            &secret_text(),
            id,
            timestamp,
            signature,
            &attempt.body,
            now_secs(),
        )
        .unwrap();
        let wrong = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(b"not the server's key")
        );
        assert!(
            verify_webhook(&wrong, id, timestamp, signature, &attempt.body, now_secs()).is_err()
        );
        // A tampered body does not verify either.
        assert!(
            verify_webhook(&secret_text(), id, timestamp, signature, b"{}", now_secs()).is_err()
        );
    }
    let body: Value = serde_json::from_slice(&attempts[3].body).unwrap();
    assert_eq!(body["request_id"], job["request_id"]);
    assert_eq!(body["status"], "OK");
    assert!(body["error"].is_null());
    assert_eq!(body["payload"]["images"].as_array().unwrap().len(), 1);
    // The payload is the result route's body.
    let result: Value = reqwest::Client::new()
        .get(
            job["response_url"]
                .as_str()
                .unwrap()
                .replace(PUBLIC_URL, &format!("http://{addr}")),
        )
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["payload"], result);
}

#[tokio::test]
async fn a_410_stops_retries_and_a_failed_job_reports_error() {
    let (receiver, url) = start_receiver(vec![StatusCode::GONE]).await;
    let generator = fake();
    generator.fail_with(Some(GeneratorError::Inference {
        detail: "secret detail".to_owned(),
    }));
    let (addr, _dir) = start_server(generator, true, true).await;
    assert_eq!(submit(addr, &url, SMALL).await.status(), 202);
    let attempts = until_attempts(&receiver, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.attempts.lock().unwrap().len(), 1, "410: no retry");
    let body: Value = serde_json::from_slice(&attempts[0].body).unwrap();
    assert_eq!(body["status"], "ERROR");
    assert!(body["payload"].is_null());
    assert_eq!(body["error"]["error"]["code"], "inference_failed");
    assert!(!body.to_string().contains("secret detail"));
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed_and_webhooks_need_a_secret() {
    let (addr, _dir) = start_server(fake(), false, true).await;
    for target in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/hook",
        "http://localhost:9/hook",
        "ftp://example.com/hook",
        "not a url",
    ] {
        let refused = submit(addr, target, SMALL).await;
        assert_eq!(refused.status(), 400, "{target}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_parameter", "{target}");
        assert_eq!(body["error"]["param"], "fal_webhook", "{target}");
    }
    let (no_secret, _dir2) = start_server(fake(), true, false).await;
    let refused = submit(no_secret, "http://127.0.0.1:9/hook", SMALL).await;
    assert_eq!(refused.status(), 400);
}

#[tokio::test]
async fn a_cancelled_job_reports_error_cancelled() {
    let (receiver, url) = start_receiver(vec![StatusCode::OK]).await;
    let (addr, _dir) = start_server(fake_with_delay(Duration::from_secs(5)), true, true).await;
    let job: Value = submit(addr, &url, SMALL).await.json().await.unwrap();
    let cancel_url = job["cancel_url"]
        .as_str()
        .unwrap()
        .replace(PUBLIC_URL, &format!("http://{addr}"));
    let cancelled = reqwest::Client::new()
        .put(cancel_url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 202);
    let attempts = until_attempts(&receiver, 1).await;
    let body: Value = serde_json::from_slice(&attempts[0].body).unwrap();
    assert_eq!(body["status"], "ERROR");
    assert_eq!(body["error"]["error"]["code"], "cancelled");
    assert_eq!(body["request_id"], job["request_id"]);
}
