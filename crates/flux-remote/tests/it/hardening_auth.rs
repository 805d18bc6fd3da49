//! Inputs and authentication on a real loopback server: echoed names are cut, two
//! `Authorization` headers are refused, failed authentications are limited per address, short
//! keys are refused at start-up, without keys the rate limit is per address, and `Retry-After`
//! of `overloaded` counts down with the running generation.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::support::raw::*;
use crate::support::*;
use flux_remote::{RemoteError, Server, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const URL_PATH: &str = "/api/v1/flux/dev";

/// A reqwest client whose connections leave from `local` (another loopback address is another
/// client address).
fn http_from(local: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(local))
        .build()
        .unwrap()
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http
        .post(format!("{url}{URL_PATH}"))
        .header("content-type", "application/json")
        .body(SMALL);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn an_unknown_fields_long_name_is_cut_in_message_and_param() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), fake(), |_| {}).await;
    let name = "n".repeat(30_000);
    let body = format!(r#"{{"prompt": "a fox", "{name}": 1, "image_size": {{"{name}": 2}}}}"#);
    let answer = reqwest::Client::new()
        .post(format!("{}{URL_PATH}", server.url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let text = answer.text().await.unwrap();
    assert!(text.len() < 2_000, "a {} byte answer", text.len());
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["error"]["code"], "unknown_field");
    let param = json["error"]["param"].as_str().unwrap();
    assert!(
        param.chars().count() <= 65,
        "param is {} characters",
        param.len()
    );
    assert!(param.starts_with("nnnn"));
}

#[tokio::test]
async fn two_authorization_headers_are_400_even_when_one_is_right() {
    let dir = tempfile::tempdir().unwrap();
    let generator = fake();
    let server = start(dir.path(), generator.clone(), |_| {}).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = generation_head(
        Some(&format!("Bearer {KEY}")),
        "application/json",
        SMALL.len(),
    );
    stream
        .write_all(
            format!("{head}Authorization: Bearer other-0123456789abcdef\r\n\r\n{SMALL}").as_bytes(),
        )
        .await
        .unwrap();
    let answer = read_response(&mut stream, &mut Vec::new()).await.unwrap();
    assert_eq!(answer.status, 400, "{}", answer.head);
    let body = answer.json();
    assert_eq!(body["error"]["code"], "malformed_request");
    assert_eq!(body["error"]["param"], "Authorization");
    assert_eq!(generator.calls(), 0);
}

#[tokio::test]
async fn failed_authentications_are_limited_per_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), fake(), |_| {}).await;
    let guesser = http_from(Ipv4Addr::new(127, 0, 0, 1));
    let mut statuses = Vec::new();
    for guess in 0..12 {
        let key = format!("guess-{guess:016}");
        statuses.push(
            post(&guesser, &server.url(), Some(&key), &[])
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(&statuses[..10], &[401; 10]);
    assert_eq!(&statuses[10..], &[429; 2], "{statuses:?}");
    // While throttled, even the right key is refused: a guess that hits tells nothing.
    let throttled = post(&guesser, &server.url(), Some(KEY), &[]).await;
    assert_eq!(throttled.status(), 429);
    let retry_after: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = throttled.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another address is not affected.
    let neighbour = http_from(Ipv4Addr::new(127, 0, 0, 2));
    let served = post(&neighbour, &server.url(), Some(KEY), &[]).await;
    assert_eq!(served.status(), 200);
}

#[tokio::test]
async fn keys_shorter_than_16_characters_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let short = ServerConfig {
        api_keys: vec![KEY.to_owned(), "short-key-15chr".to_owned()],
        ..config(dir.path())
    };
    let error = short.validate().unwrap_err();
    assert!(matches!(error, RemoteError::Config(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("API key #2") && message.contains("16"),
        "{message}"
    );
    assert!(
        !message.contains("short-key-15chr"),
        "the key is never shown"
    );
    assert!(Server::bind(short, fake()).await.is_err());
    let exactly_16 = ServerConfig {
        api_keys: vec!["k".repeat(16)],
        ..config(dir.path())
    };
    exactly_16.validate().unwrap();
}

#[tokio::test]
async fn without_authentication_the_rate_limit_is_per_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let open = |config: &mut ServerConfig| {
        config.api_keys.clear();
        config.allow_unauthenticated = true;
        config.rate_limit = Some("1/h".parse().unwrap());
    };
    let server = start(dir.path(), fake(), open).await;
    let first = http_from(Ipv4Addr::new(127, 0, 0, 1));
    let second = http_from(Ipv4Addr::new(127, 0, 0, 3));
    assert_eq!(post(&first, &server.url(), None, &[]).await.status(), 200);
    assert_eq!(post(&first, &server.url(), None, &[]).await.status(), 429);
    assert_eq!(
        post(&second, &server.url(), None, &[]).await.status(),
        200,
        "another address shares no bucket"
    );
    // Untrusted, X-Forwarded-For changes nothing.
    let spoofed = [("x-forwarded-for", "198.51.100.77")];
    assert_eq!(
        post(&first, &server.url(), None, &spoofed).await.status(),
        429
    );

    // Behind a trusted proxy, the last X-Forwarded-For entry is the client.
    let dir = tempfile::tempdir().unwrap();
    let proxied = start(dir.path(), fake(), |config| {
        open(config);
        config.trust_forwarded_for = true;
    })
    .await;
    let proxy = http_from(Ipv4Addr::new(127, 0, 0, 1));
    let alice = [("x-forwarded-for", "203.0.113.9, 198.51.100.1")];
    let bob = [("x-forwarded-for", "198.51.100.2")];
    assert_eq!(
        post(&proxy, &proxied.url(), None, &alice).await.status(),
        200
    );
    assert_eq!(
        post(&proxy, &proxied.url(), None, &alice).await.status(),
        429
    );
    assert_eq!(post(&proxy, &proxied.url(), None, &bob).await.status(), 200);
}

async fn overloaded_retry_after(http: &reqwest::Client, url: &str) -> u64 {
    let answer = post(http, url, Some(KEY), &[]).await;
    assert_eq!(answer.status(), 429);
    let retry_after = answer.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    retry_after
}

#[tokio::test]
async fn overloaded_retry_after_is_when_the_running_generation_should_end() {
    let dir = tempfile::tempdir().unwrap();
    let generator = fake_with_delay(Duration::from_secs(3));
    let server = start(dir.path(), generator.clone(), |config| {
        config.queue_depth = 1;
    })
    .await;
    let http = reqwest::Client::new();
    // One generation makes the mean 3 s.
    assert_eq!(
        post(&http, &server.url(), Some(KEY), &[]).await.status(),
        200
    );
    let running = tokio::spawn({
        let (http, url) = (http.clone(), server.url());
        async move { post(&http, &url, Some(KEY), &[]).await.status() }
    });
    for _ in 0..200 {
        if generator.calls() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(overloaded_retry_after(&http, &server.url()).await, 3);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // About 0.7 s left: not the whole mean again.
    assert_eq!(overloaded_retry_after(&http, &server.url()).await, 1);
    assert_eq!(running.await.unwrap(), 200);
}
