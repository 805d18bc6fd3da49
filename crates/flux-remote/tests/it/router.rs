//! In-process tests of the router (`tower::ServiceExt::oneshot`): every status and code of the
//! contract's error table, validation, auth and headers.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use flux_remote::{RateLimit, router};
use flux_types::GeneratorError;
use serde_json::Value;
use tower::ServiceExt;

/// Checks an error answer: status, code, param, and that `X-Request-Id` equals the body's
/// `request_id`. Returns the body.
async fn expect_error(
    response: Response<Body>,
    status: StatusCode,
    code: &str,
    param: Option<&str>,
) -> Value {
    assert_eq!(response.status(), status);
    let header_id = response
        .headers()
        .get("x-request-id")
        .expect("X-Request-Id on every answer")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "error bodies are JSON"
    );
    let body = json_body(response).await;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["request_id"], header_id.as_str());
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    match param {
        Some(param) => assert_eq!(body["error"]["param"], param, "{body}"),
        None => assert!(body["error"].get("param").is_none(), "{body}"),
    }
    body
}

fn app(generator: Arc<FakeGenerator>) -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let state = state(&config(dir.path()), generator);
    (router(state), dir)
}

#[tokio::test]
async fn success_has_images_seed_headers_and_serves_the_files() {
    let generator = fake();
    let (app, dir) = app(generator.clone());
    let body = r#"{"prompt": "a red fox", "num_images": 2, "image_size": {"width": 128, "height": 64}, "output_format": "png"}"#;
    let response = app.clone().oneshot(generate_request(body)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(headers["x-ratelimit-limit"], "1000");
    assert_eq!(headers["x-ratelimit-remaining"], "999");
    assert!(headers.contains_key("x-ratelimit-reset"));
    assert!(!headers.contains_key("idempotent-replayed"));
    let json = json_body(response).await;
    let seed = json["seed"].as_u64().expect("a drawn seed is returned");
    assert!(seed <= 4_294_967_295);
    assert_eq!(json["has_nsfw_concepts"], serde_json::json!([false, false]));
    assert!(json["timings"]["inference"].as_f64().unwrap() >= 0.0);
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let expected = encode_image(128, 64, flux_types::OutputFormat::Png);
    for image in images {
        assert_eq!(image["width"], 128);
        assert_eq!(image["height"], 64);
        assert_eq!(image["content_type"], "image/png");
        let url = image["url"].as_str().unwrap();
        let path = url
            .strip_prefix(PUBLIC_URL)
            .expect("URLs are built from the public URL");
        let name = path.strip_prefix("/api/v1/files/").unwrap();
        assert_eq!(name.len(), 32 + 4, "128-bit hex id + .png: {name}");
        let file = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(file.status(), StatusCode::OK);
        assert_eq!(file.headers()["content-type"], "image/png");
        assert!(file.headers().contains_key("x-request-id"));
        assert_eq!(body_bytes(file).await, expected);
    }
    assert_ne!(images[0]["url"], images[1]["url"]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    assert_eq!(generator.calls(), 1);
}

#[tokio::test]
async fn given_seed_is_returned_and_sync_mode_stores_nothing() {
    let (app, dir) = app(fake());
    let body = r#"{"prompt": "x", "seed": 4294967295, "sync_mode": true, "image_size": "square"}"#;
    let response = app.oneshot(generate_request(body)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let json = json_body(response).await;
    assert_eq!(json["seed"], 4_294_967_295u64);
    let url = json["images"][0]["url"].as_str().unwrap();
    let payload = url
        .strip_prefix("data:image/jpeg;base64,")
        .expect("sync_mode gives a data: URI");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .unwrap();
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (512, 512));
    assert_eq!(json["images"][0]["content_type"], "image/jpeg");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing stored"
    );
}

#[tokio::test]
async fn validation_errors_name_code_and_param() {
    let generator = fake();
    let (app, _dir) = app(generator.clone());
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        (r#"{}"#, "invalid_parameter", Some("prompt")),
        (r#"{"prompt": "   "}"#, "invalid_parameter", Some("prompt")),
        (r#"{"prompt": 5}"#, "invalid_parameter", Some("prompt")),
        (
            r#"{"prompt": "x", "num_images": 5}"#,
            "invalid_parameter",
            Some("num_images"),
        ),
        (
            r#"{"prompt": "x", "num_images": 0}"#,
            "invalid_parameter",
            Some("num_images"),
        ),
        (
            r#"{"prompt": "x", "num_images": "2"}"#,
            "invalid_parameter",
            Some("num_images"),
        ),
        (
            r#"{"prompt": "x", "num_images": 2.5}"#,
            "invalid_parameter",
            Some("num_images"),
        ),
        (
            r#"{"prompt": "x", "image_size": "huge"}"#,
            "invalid_parameter",
            Some("image_size"),
        ),
        (
            r#"{"prompt": "x", "guidance_scale": 21}"#,
            "invalid_parameter",
            Some("guidance_scale"),
        ),
        (
            r#"{"prompt": "x", "guidance_scale": 0.5}"#,
            "invalid_parameter",
            Some("guidance_scale"),
        ),
        (
            r#"{"prompt": "x", "num_inference_steps": 51}"#,
            "invalid_parameter",
            Some("num_inference_steps"),
        ),
        (
            r#"{"prompt": "x", "seed": 4294967296}"#,
            "invalid_parameter",
            Some("seed"),
        ),
        (
            r#"{"prompt": "x", "seed": -1}"#,
            "invalid_parameter",
            Some("seed"),
        ),
        (
            r#"{"prompt": "x", "output_format": "gif"}"#,
            "invalid_parameter",
            Some("output_format"),
        ),
        (
            r#"{"prompt": "x", "sync_mode": "yes"}"#,
            "invalid_parameter",
            Some("sync_mode"),
        ),
        (
            r#"{"prompt": "x", "enable_safety_checker": 1}"#,
            "invalid_parameter",
            Some("enable_safety_checker"),
        ),
        (
            r#"{"prompt": "x", "negative_prompt": "blurry"}"#,
            "unknown_field",
            Some("negative_prompt"),
        ),
    ];
    for (body, code, param) in cases {
        let response = app.clone().oneshot(generate_request(body)).await.unwrap();
        let json = expect_error(response, StatusCode::BAD_REQUEST, code, *param).await;
        if let Some(param) = param {
            let message = json["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(param),
                "message names the field: {message}"
            );
        }
    }
    let long_prompt = format!(r#"{{"prompt": "{}"}}"#, "é".repeat(1001));
    let response = app
        .clone()
        .oneshot(generate_request(&long_prompt))
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        Some("prompt"),
    )
    .await;
    let limit_prompt = format!(
        r#"{{"prompt": "{}", "image_size": {{"width": 64, "height": 64}}}}"#,
        "é".repeat(1000)
    );
    let response = app
        .clone()
        .oneshot(generate_request(&limit_prompt))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "1000 characters are allowed"
    );
    let bad_size = r#"{"prompt": "x", "image_size": {"width": 100, "height": 64}}"#;
    let response = app
        .clone()
        .oneshot(generate_request(bad_size))
        .await
        .unwrap();
    let json = json_body(response).await;
    assert_eq!(json["error"]["code"], "invalid_parameter");
    assert!(
        json["error"]["param"]
            .as_str()
            .unwrap()
            .starts_with("image_size")
    );
    assert_eq!(
        generator.calls(),
        1,
        "only the valid request reached the generator"
    );
}

#[tokio::test]
async fn authentication_missing_wrong_and_right_keys() {
    let (app, _dir) = app(fake());
    let without = Request::post(flux_remote::GENERATE_PATH)
        .header("content-type", "application/json")
        .body(Body::from(SMALL))
        .unwrap();
    let response = app.clone().oneshot(without).await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert!(!response.headers().contains_key("x-ratelimit-limit"));
    expect_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;

    for authorization in [
        "Bearer wrong-key".to_owned(),
        format!("Bearer {KEY}x"),
        format!("Basic {KEY}"),
        "Bearer".to_owned(),
        KEY.to_owned(),
    ] {
        let request = Request::post(flux_remote::GENERATE_PATH)
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .body(Body::from(SMALL))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let json = expect_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
        assert!(!json.to_string().contains(KEY), "keys never echo back");
    }
    for key in [KEY, OTHER_KEY] {
        let request = Request::post(flux_remote::GENERATE_PATH)
            .header("authorization", format!("bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(SMALL))
            .unwrap();
        assert_eq!(
            app.clone().oneshot(request).await.unwrap().status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn unauthenticated_mode_serves_without_a_key_but_still_refuses_wrong_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.api_keys.clear();
    assert!(
        config.validate().is_err(),
        "no keys and no opt-out: refuse to start"
    );
    config.allow_unauthenticated = true;
    let app = router(state(&config, fake()));
    let request = Request::post(flux_remote::GENERATE_PATH)
        .header("content-type", "application/json")
        .body(Body::from(SMALL))
        .unwrap();
    assert_eq!(
        app.clone().oneshot(request).await.unwrap().status(),
        StatusCode::OK
    );
    let response = app.oneshot(generate_request(SMALL)).await.unwrap();
    expect_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
}

#[tokio::test]
async fn unknown_routes_are_json_404_and_wrong_methods_405() {
    let (app, _dir) = app(fake());
    for path in [
        "/nothing-here",
        "/api/v1/flux/schnell",
        "/api/v2/flux/dev",
        "/api/v1/files",
    ] {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        expect_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    }
    let response = app
        .clone()
        .oneshot(
            Request::get(flux_remote::GENERATE_PATH)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    expect_error(response, StatusCode::METHOD_NOT_ALLOWED, "not_found", None).await;
    let response = app
        .oneshot(Request::delete("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    expect_error(response, StatusCode::METHOD_NOT_ALLOWED, "not_found", None).await;
}

#[tokio::test]
async fn body_limit_413_and_content_type_415() {
    let generator = fake();
    let (app, _dir) = app(generator.clone());
    let big = format!(r#"{{"prompt": "x", "pad": "{}"}}"#, "a".repeat(64 * 1024));
    let response = app.clone().oneshot(generate_request(&big)).await.unwrap();
    expect_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;

    // Without Content-Length (streamed), the limit still holds.
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..70).map(|_| Ok("a".repeat(1024))).collect();
    let streamed = post_json("")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let response = app.clone().oneshot(streamed).await.unwrap();
    expect_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;

    // Exactly at the limit is accepted by the size check (and then judged as JSON).
    let padding = 64 * 1024 - r#"{"prompt": ""}"#.len();
    let at_limit = format!(r#"{{"prompt": "{}"}}"#, " ".repeat(padding));
    assert_eq!(at_limit.len(), 64 * 1024);
    let response = app
        .clone()
        .oneshot(generate_request(&at_limit))
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        Some("prompt"),
    )
    .await;

    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = Request::post(flux_remote::GENERATE_PATH)
            .header("authorization", format!("Bearer {KEY}"));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::from(SMALL)).unwrap())
            .await
            .unwrap();
        expect_error(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        )
        .await;
    }
    let with_charset = Request::post(flux_remote::GENERATE_PATH)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(Body::from(SMALL))
        .unwrap();
    assert_eq!(
        app.oneshot(with_charset).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(generator.calls(), 1);
}

#[tokio::test]
async fn rate_limit_429_with_retry_after_and_headers_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.rate_limit = Some("2/min".parse::<RateLimit>().unwrap());
    let generator = fake();
    let app = router(state(&config, generator.clone()));
    for remaining in ["1", "0"] {
        let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-ratelimit-limit"], "2");
        assert_eq!(response.headers()["x-ratelimit-remaining"], remaining);
    }
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    let headers = response.headers().clone();
    expect_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        None,
    )
    .await;
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // One token per 30 s: the wait is at most 30 s and at least 29 (rounded up).
    assert!(
        (29..=30).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_eq!(headers["x-ratelimit-limit"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let reset: u64 = headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset >= retry_after && reset <= 60, "reset {reset}");
    // Another key has its own bucket.
    let other = Request::post(flux_remote::GENERATE_PATH)
        .header("authorization", format!("Bearer {OTHER_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(SMALL))
        .unwrap();
    assert_eq!(app.oneshot(other).await.unwrap().status(), StatusCode::OK);
    assert_eq!(generator.calls(), 3);
}

#[tokio::test]
async fn full_queue_is_429_overloaded_at_once_and_backend_overload_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.queue_depth = 1;
    // The first generation takes 2 s; the refusal must not wait for it (1 s leaves room for a
    // loaded CI host, and the first must still be running when the refusal is in).
    let generator = fake_with_delay(Duration::from_secs(2));
    let app = router(state(&config, generator.clone()));
    let first = tokio::spawn(app.clone().oneshot(generate_request(SMALL)));
    wait_for_calls(&generator, 1).await;
    let started = std::time::Instant::now();
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1) && !first.is_finished(),
        "refused at once, not after the running generation: {:?}",
        started.elapsed()
    );
    assert!(
        response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(response.headers().contains_key("x-ratelimit-remaining"));
    expect_error(response, StatusCode::TOO_MANY_REQUESTS, "overloaded", None).await;
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(
        generator.calls(),
        1,
        "nothing was queued for the refused request"
    );

    *generator.delay.lock().unwrap() = Duration::ZERO;
    generator.fail_with(Some(GeneratorError::Overloaded {
        retry_after: Some(Duration::from_millis(2500)),
    }));
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    assert_eq!(response.headers()["retry-after"], "3");
    expect_error(response, StatusCode::TOO_MANY_REQUESTS, "overloaded", None).await;

    // An upstream over its rate limit (for this server's key) is capacity not there for now.
    generator.fail_with(Some(GeneratorError::RateLimited {
        retry_after: Some(Duration::from_secs(7)),
    }));
    let response = app.oneshot(generate_request(SMALL)).await.unwrap();
    assert_eq!(response.headers()["retry-after"], "7");
    expect_error(response, StatusCode::TOO_MANY_REQUESTS, "overloaded", None).await;
}

async fn wait_for_calls(generator: &FakeGenerator, calls: usize) {
    for _ in 0..500 {
        if generator.calls() >= calls {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the generator was not called {calls} times within 5 s");
}

#[tokio::test]
async fn inference_failure_is_500_without_internals_and_the_server_keeps_serving() {
    let generator = fake();
    let (app, _dir) = app(generator.clone());
    generator.fail_with(Some(GeneratorError::Inference {
        detail: "SECRET: CUDA out of memory at /opt/models/flux".to_owned(),
    }));
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    let json = expect_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "inference_failed",
        None,
    )
    .await;
    assert!(!json.to_string().contains("SECRET"), "{json}");
    assert!(!json.to_string().contains("/opt/models"), "{json}");
    generator.fail_with(None);
    let response = app.oneshot(generate_request(SMALL)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn backend_refusals_map_to_their_codes() {
    let generator = fake();
    let (app, _dir) = app(generator.clone());
    generator.fail_with(Some(GeneratorError::InvalidRequest {
        param: Some("image_size".to_owned()),
        message: "image_size 2048x2048 is larger than this model allows".to_owned(),
    }));
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    expect_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        Some("image_size"),
    )
    .await;
    generator.fail_with(Some(GeneratorError::ShuttingDown));
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    expect_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        None,
    )
    .await;
    generator.fail_with(Some(GeneratorError::NotReady));
    let response = app.oneshot(generate_request(SMALL)).await.unwrap();
    expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "not_ready", None).await;
}

#[tokio::test]
async fn not_ready_and_shutting_down_are_503() {
    let generator = fake();
    let dir = tempfile::tempdir().unwrap();
    let state = state(&config(dir.path()), generator.clone());
    let app = router(state.clone());
    generator.not_ready.store(true, Ordering::SeqCst);
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    assert!(response.headers().contains_key("retry-after"));
    expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "not_ready", None).await;
    let response = app
        .clone()
        .oneshot(Request::get("/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "not_ready", None).await;
    generator.not_ready.store(false, Ordering::SeqCst);
    let response = app
        .clone()
        .oneshot(Request::get("/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    state.begin_shutdown();
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    expect_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        None,
    )
    .await;
    let response = app
        .oneshot(Request::get("/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        None,
    )
    .await;
    assert_eq!(generator.calls(), 0);
}

fn with_key(body: &str, key: &str) -> Request<Body> {
    post_json(body)
        .header("idempotency-key", key)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn idempotency_replay_conflict_and_mismatch() {
    let generator = fake_with_delay(Duration::from_millis(300));
    let (app, _dir) = app(generator.clone());
    let first = tokio::spawn(app.clone().oneshot(with_key(SMALL, "order-1")));
    wait_for_calls(&generator, 1).await;
    let response = app
        .clone()
        .oneshot(with_key(SMALL, "order-1"))
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::CONFLICT,
        "idempotency_conflict",
        Some("Idempotency-Key"),
    )
    .await;
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first_body = body_bytes(first).await;

    let replay = app
        .clone()
        .oneshot(with_key(SMALL, "order-1"))
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert!(replay.headers().contains_key("x-request-id"));
    assert_eq!(body_bytes(replay).await, first_body);
    assert_eq!(generator.calls(), 1, "the replay did not generate");

    let other_body = r#"{"prompt": "something else", "image_size": {"width": 64, "height": 64}}"#;
    let response = app
        .clone()
        .oneshot(with_key(other_body, "order-1"))
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_mismatch",
        Some("Idempotency-Key"),
    )
    .await;

    // Keys are per API key: the other key's "order-1" is a new request.
    let request = Request::post(flux_remote::GENERATE_PATH)
        .header("authorization", format!("Bearer {OTHER_KEY}"))
        .header("content-type", "application/json")
        .header("idempotency-key", "order-1")
        .body(Body::from(SMALL))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("idempotent-replayed"));
    assert_eq!(generator.calls(), 2);
}

#[tokio::test]
async fn a_failed_first_attempt_is_not_stored() {
    let generator = fake();
    let (app, _dir) = app(generator.clone());
    generator.fail_with(Some(GeneratorError::Inference {
        detail: "boom".to_owned(),
    }));
    let response = app
        .clone()
        .oneshot(with_key(SMALL, "retry-me"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    generator.fail_with(None);
    let response = app.oneshot(with_key(SMALL, "retry-me")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("idempotent-replayed"));
    assert_eq!(generator.calls(), 2, "the retry generated anew");
}

#[tokio::test]
async fn malformed_idempotency_keys_are_400() {
    let (app, _dir) = app(fake());
    let long = "k".repeat(256);
    for key in ["", "has space", "tab\there", long.as_str()] {
        let request = post_json(SMALL)
            .header(
                "idempotency-key",
                axum::http::HeaderValue::from_str(key).unwrap(),
            )
            .body(Body::from(SMALL))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        expect_error(
            response,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some("Idempotency-Key"),
        )
        .await;
    }
    let non_ascii = post_json(SMALL)
        .header(
            "idempotency-key",
            axum::http::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        )
        .body(Body::from(SMALL))
        .unwrap();
    let response = app.clone().oneshot(non_ascii).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let longest = "k".repeat(255);
    let response = app.oneshot(with_key(SMALL, &longest)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn request_ids_are_honoured_when_well_formed_and_unique_otherwise() {
    let (app, _dir) = app(fake());
    let request = Request::get("/health")
        .header("x-request-id", "client-abc_123")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-abc_123");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let request = Request::get("/nowhere")
            .header("x-request-id", "bad id with spaces")
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 32);
        assert!(seen.insert(id));
    }
}

#[tokio::test]
async fn operations_endpoints() {
    let (app, _dir) = app(fake());
    let response = app
        .clone()
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_body(response).await["status"], "ok");
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .clone()
        .oneshot(generate_request(r#"{"prompt": ""}"#))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body_bytes(response).await).unwrap();
    for line in [
        r#"flux_http_requests_total{route="/api/v1/flux/dev",status="200"} 1"#,
        r#"flux_http_requests_total{route="/api/v1/flux/dev",status="400"} 1"#,
        r#"flux_http_requests_total{route="/health",status="200"} 1"#,
        "flux_queue_depth 0",
        "flux_queue_capacity 4",
        "flux_generation_seconds_count 1",
        r#"flux_generation_seconds_bucket{le="+Inf"} 1"#,
        "flux_images_generated_total 1",
        "# TYPE flux_generation_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let response = app
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let committed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.json"
    ))
    .unwrap();
    let served = body_bytes(response).await;
    assert!(
        served == committed,
        "/openapi.json differs from the committed docs/openapi.json"
    );
}

#[tokio::test]
async fn file_route_refuses_malformed_names_and_traversal() {
    let generator = fake();
    let root = tempfile::tempdir().unwrap();
    let files_dir = root.path().join("files");
    std::fs::write(root.path().join("secret.txt"), "TOP SECRET").unwrap();
    let state = state(&config(&files_dir), generator);
    let app = router(state);
    std::fs::write(files_dir.join("notes.txt"), "private").unwrap();
    let id = "0123456789abcdef0123456789abcdef";
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        root.path().join("secret.txt"),
        files_dir.join(format!("{id}.png")),
    )
    .unwrap();
    let absolute = root.path().join("secret.txt");
    let absolute_encoded = absolute.to_str().unwrap().replace('/', "%2F");
    let paths = [
        format!("/api/v1/files/{id}.png"),
        "/api/v1/files/..%2Fsecret.txt".to_owned(),
        "/api/v1/files/..%2F..%2F..%2Fetc%2Fpasswd".to_owned(),
        "/api/v1/files/%2E%2E%2Fsecret.txt".to_owned(),
        "/api/v1/files/..%5Csecret.txt".to_owned(),
        format!("/api/v1/files/{absolute_encoded}"),
        "/api/v1/files/../secret.txt".to_owned(),
        "/api/v1/files/notes.txt".to_owned(),
        "/api/v1/files/".to_owned(),
        "/api/v1/files/0123.png".to_owned(),
        format!("/api/v1/files/{}.png", id.to_uppercase()),
        format!("/api/v1/files/{id}.gif"),
        format!("/api/v1/files/{id}.jpeg"),
        format!("/api/v1/files/{id}.png.bak"),
        format!("/api/v1/files/{id}"),
        format!("/api/v1/files/{id}0.png"),
        format!("/api/v1/files/{id}%00.png"),
        format!("/api/v1/files/.tmp-{id}"),
        "/api/v1/files/%FF%FE.png".to_owned(),
    ];
    for path in &paths {
        let response = app
            .clone()
            .oneshot(Request::get(path.as_str()).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body = body_bytes(response).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("SECRET") && !text.contains("private"),
            "{path}: {text}"
        );
        assert!(text.contains("not_found"), "{path}: {text}");
    }
}

#[tokio::test]
async fn expired_files_are_404_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // Long enough that a loaded CI host still fetches the image before it expires.
    config.retention = Duration::from_millis(1500);
    let state = state(&config, fake());
    let app = router(state.clone());
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    let json = json_body(response).await;
    let url = json["images"][0]["url"].as_str().unwrap();
    let path = url.strip_prefix(PUBLIC_URL).unwrap().to_owned();
    let fetch = || Request::get(path.as_str()).body(Body::empty()).unwrap();
    assert_eq!(
        app.clone().oneshot(fetch()).await.unwrap().status(),
        StatusCode::OK
    );
    // A second image that only the sweep removes.
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let response = app.oneshot(fetch()).await.unwrap();
    expect_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    state.sweep().await;
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "sweep removed it"
    );
}

#[tokio::test]
async fn request_timeout_is_500_and_cancels_work_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.request_timeout = Duration::from_millis(200);
    let generator = fake_with_delay(Duration::from_secs(5));
    let state = state(&config, generator.clone());
    let app = router(state.clone());
    let started = std::time::Instant::now();
    let response = app.oneshot(generate_request(SMALL)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    expect_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "inference_failed",
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        state.in_queue(),
        0,
        "the cancelled generation gave its slot back"
    );
    assert_eq!(generator.running.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn with_a_key_a_timed_out_generation_finishes_and_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.request_timeout = Duration::from_millis(200);
    // 1.5 s of generation against a 200 ms timeout: the second call must find it still running.
    let generator = fake_with_delay(Duration::from_millis(1500));
    let app = router(state(&config, generator.clone()));
    let response = app
        .clone()
        .oneshot(with_key(SMALL, "slow-1"))
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "inference_failed",
        None,
    )
    .await;
    let response = app
        .clone()
        .oneshot(with_key(SMALL, "slow-1"))
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::CONFLICT,
        "idempotency_conflict",
        Some("Idempotency-Key"),
    )
    .await;
    let mut replayed = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let response = app
            .clone()
            .oneshot(with_key(SMALL, "slow-1"))
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            replayed = Some(response);
            break;
        }
    }
    let response = replayed.expect("the generation finished and was stored within 6 s");
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    assert_eq!(generator.calls(), 1, "no second generation");
}

/// A backend with its own queue: each call waits 300 ms for the engine, then reports 50 ms of
/// actual generation.
fn queueing_backend() -> Arc<FakeGenerator> {
    Arc::new(
        FakeGenerator::new()
            .with_images(encode_image)
            .with_delay(Duration::from_millis(300))
            .reporting(flux_types::GenerationTimings {
                inference: Duration::from_millis(50),
                queued: Duration::from_millis(250),
            })
            .named("queueing backend"),
    )
}

#[tokio::test]
async fn the_generation_histogram_counts_generation_not_queueing() {
    let dir = tempfile::tempdir().unwrap();
    let state = flux_remote::AppState::new(
        &config(dir.path()),
        queueing_backend(),
        PUBLIC_URL.to_owned(),
    )
    .unwrap();
    let app = router(state);
    let response = app.clone().oneshot(generate_request(SMALL)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let json = json_body(response).await;
    assert_eq!(json["timings"]["inference"], 0.05);
    let response = app
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(body_bytes(response).await).unwrap();
    assert!(
        text.lines()
            .any(|l| l == r#"flux_generation_seconds_bucket{le="0.1"} 1"#),
        "the 300 ms wait inside the backend was counted as generation:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "flux_generation_seconds_sum 0.05"),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_place_or_with_a_key_gets_its_answer_stored() {
    let dir = tempfile::tempdir().unwrap();
    let generator = fake_with_delay(Duration::from_millis(1000));
    let state = state(&config(dir.path()), generator.clone());
    let app = router(state.clone());

    // Without a key: dropping the request (a disconnect) cancels the work and frees the place.
    let call = tokio::spawn(app.clone().oneshot(generate_request(SMALL)));
    wait_for_calls(&generator, 1).await;
    assert_eq!(state.in_queue(), 1);
    call.abort();
    let _ = call.await;
    for _ in 0..100 {
        if state.in_queue() == 0 && generator.running.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        state.in_queue(),
        0,
        "a cancelled request kept its queue place"
    );
    assert_eq!(generator.running.load(Ordering::SeqCst), 0);

    // With a key: the generation outlives the client, keeps its place until done, and is stored.
    let call = tokio::spawn(app.clone().oneshot(with_key(SMALL, "gone-1")));
    wait_for_calls(&generator, 2).await;
    call.abort();
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(state.in_queue(), 1, "the keyed generation still runs");
    tokio::time::timeout(Duration::from_secs(5), state.wait_idle())
        .await
        .expect("the keyed generation finishes");
    let response = app.oneshot(with_key(SMALL, "gone-1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    assert_eq!(
        generator.calls(),
        2,
        "the retry was answered from the store"
    );
}

#[tokio::test]
async fn a_body_that_stalls_is_400_after_the_read_timeout_and_nothing_is_queued() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.read_timeout = Duration::from_millis(200);
    let generator = fake();
    let state = state(&config, generator.clone());
    let app = router(state.clone());

    // Half of a valid body, then nothing (the client keeps the connection open and stalls).
    let half = axum::body::Bytes::from(SMALL[..SMALL.len() / 2].to_owned());
    let stalled = futures::stream::once(async move { Ok::<_, std::io::Error>(half) })
        .chain(futures::stream::pending());
    let request = post_json(SMALL).body(Body::from_stream(stalled)).unwrap();
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(request))
        .await
        .expect("a stalled body must not hold the handler for ever")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "answered before the timeout: {:?}",
        started.elapsed()
    );
    let body = expect_error(response, StatusCode::BAD_REQUEST, "invalid_json", None).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not received within 0.2 s")),
        "{body}"
    );
    assert_eq!(generator.calls(), 0, "nothing was generated");
    assert_eq!(state.in_queue(), 0, "nothing was queued");

    // A body that arrives in slow pieces, but within the timeout, is read whole and answered.
    let pieces: Vec<Result<axum::body::Bytes, std::io::Error>> = SMALL
        .as_bytes()
        .chunks(16)
        .map(|chunk| Ok(axum::body::Bytes::copy_from_slice(chunk)))
        .collect();
    let trickled = futures::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        piece
    });
    let request = post_json(SMALL).body(Body::from_stream(trickled)).unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(generator.calls(), 1);
}
