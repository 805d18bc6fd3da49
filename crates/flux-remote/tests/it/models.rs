//! Several models per server, in process (`tower::ServiceExt::oneshot`): each variant's routes
//! reach its own generator with its own defaults and limits (schnell: 4 steps by default, 1–12,
//! guidance accepted and ignored), a variant not served is 404, `/ready` waits for every model,
//! and `GET /api/v1/models` lists them.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use flux_remote::{AppState, ServedModels, router};
use flux_types::test_util::fake_model;
use flux_types::{Generator, variant};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Models {
    state: AppState,
    dev: Arc<FakeGenerator>,
    schnell: Arc<FakeGenerator>,
    _dir: tempfile::TempDir,
}

fn model(id: &str, spec: &'static flux_types::VariantSpec) -> Arc<FakeGenerator> {
    Arc::new(
        FakeGenerator::new()
            .with_images(encode_image)
            .serving(fake_model(id, spec)),
    )
}

/// A server with a dev and a schnell model.
fn two_models() -> Models {
    let dir = tempfile::tempdir().unwrap();
    let dev = model("tiny-dev", &variant::DEV);
    let schnell = model("tiny-schnell", &variant::SCHNELL);
    let models = ServedModels::by_variant(vec![
        dev.clone() as Arc<dyn Generator>,
        schnell.clone() as Arc<dyn Generator>,
    ]);
    let state = AppState::with_models(&config(dir.path()), models, PUBLIC_URL.to_owned()).unwrap();
    Models {
        state,
        dev,
        schnell,
        _dir: dir,
    }
}

impl Models {
    async fn send(&self, request: Request<Body>) -> Response<Body> {
        router(self.state.clone()).oneshot(request).await.unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> Response<Body> {
        let request = Request::post(path)
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(request).await
    }

    async fn get(&self, path: &str) -> Response<Body> {
        let request = Request::get(path)
            .header("authorization", format!("Bearer {KEY}"))
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }
}

fn small(extra: Value) -> Value {
    let mut body = json!({"prompt": "a red fox", "image_size": {"width": 64, "height": 64}, "sync_mode": true});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

async fn expect_error(response: Response<Body>, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let body = json_body(response).await;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn schnell_takes_four_steps_by_default_and_ignores_guidance_on_its_own_model() {
    let models = two_models();
    let response = models
        .post(
            "/api/v1/flux/schnell",
            &small(json!({"guidance_scale": 50})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = models.post("/api/v1/flux/dev", &small(json!({}))).await;
    assert_eq!(response.status(), StatusCode::OK);

    let schnell = models.schnell.requests();
    assert_eq!(schnell.len(), 1);
    assert_eq!(schnell[0].num_inference_steps(), 4);
    // Accepted although dev's range is 1–20, and not passed on.
    assert_eq!(schnell[0].guidance_scale(), 3.5);
    let dev = models.dev.requests();
    assert_eq!(dev.len(), 1);
    assert_eq!(dev[0].num_inference_steps(), 28);
}

#[tokio::test]
async fn schnell_refuses_more_than_twelve_steps_on_both_routes_and_dev_keeps_its_limits() {
    let models = two_models();
    for path in ["/api/v1/flux/schnell", "/api/v1/queue/flux/schnell"] {
        let response = models
            .post(path, &small(json!({"num_inference_steps": 13})))
            .await;
        let body = expect_error(response, StatusCode::BAD_REQUEST, "invalid_parameter").await;
        assert_eq!(body["error"]["param"], "num_inference_steps");
        assert_eq!(
            body["error"]["message"],
            "num_inference_steps must be between 1 and 12, got 13"
        );
        // Guidance is still type-checked: it is accepted, not anything.
        let response = models
            .post(path, &small(json!({"guidance_scale": "high"})))
            .await;
        let body = expect_error(response, StatusCode::BAD_REQUEST, "invalid_parameter").await;
        assert_eq!(body["error"]["param"], "guidance_scale");
    }
    let twelve = models
        .post(
            "/api/v1/flux/schnell",
            &small(json!({"num_inference_steps": 12})),
        )
        .await;
    assert_eq!(twelve.status(), StatusCode::OK);
    let dev = models
        .post(
            "/api/v1/flux/dev",
            &small(json!({"num_inference_steps": 13})),
        )
        .await;
    assert_eq!(dev.status(), StatusCode::OK);
    let dev = models
        .post("/api/v1/flux/dev", &small(json!({"guidance_scale": 50})))
        .await;
    let body = expect_error(dev, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(body["error"]["param"], "guidance_scale");
    assert_eq!(models.schnell.calls(), 1);
    assert_eq!(models.dev.calls(), 1);
}

#[tokio::test]
async fn a_variant_the_server_does_not_serve_is_404_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let dev = model("tiny-dev", &variant::DEV);
    let models = ServedModels::by_variant(vec![dev.clone() as Arc<dyn Generator>]);
    let state = AppState::with_models(&config(dir.path()), models, PUBLIC_URL.to_owned()).unwrap();
    let app = Models {
        state,
        dev: dev.clone(),
        schnell: dev,
        _dir: dir,
    };
    for path in [
        "/api/v1/flux/schnell",
        "/api/v1/queue/flux/schnell",
        "/api/v1/flux/pro",
        "/api/v1/queue/flux/pro",
    ] {
        let body = expect_error(
            app.post(path, &small(json!({}))).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        // `/api/v1/flux/pro` is no route at all; the others name the model.
        if !path.ends_with("/flux/pro") {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("does not serve the model"),
                "{body}"
            );
        }
    }
    // Not a route of this server, whatever the method.
    let get = app.get("/api/v1/flux/schnell").await;
    expect_error(get, StatusCode::NOT_FOUND, "not_found").await;
    let status = app
        .get(&format!(
            "/api/v1/queue/flux/schnell/requests/{}/status",
            "0".repeat(32)
        ))
        .await;
    expect_error(status, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(app.dev.calls(), 0);
    let listed = json_body(app.get("/api/v1/models").await).await;
    assert_eq!(listed["models"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["models"][0]["variant"], "dev");
}

#[tokio::test]
async fn the_model_list_names_every_model_with_its_facts_and_routes() {
    let models = two_models();
    let get = models.get("/api/v1/flux/schnell").await;
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers()["allow"], "POST");
    let response = models.get("/api/v1/models").await;
    assert_eq!(response.status(), StatusCode::OK);
    let listed = json_body(response).await;
    assert_eq!(
        listed,
        json!({"models": [
            {"id": "tiny-dev", "variant": "dev", "text_length": 256, "precision": "fp32",
             "device": "cpu", "safety_checker": false, "sync_path": "/api/v1/flux/dev",
             "queue_path": "/api/v1/queue/flux/dev"},
            {"id": "tiny-schnell", "variant": "schnell", "text_length": 256, "precision": "fp32",
             "device": "cpu", "safety_checker": false, "sync_path": "/api/v1/flux/schnell",
             "queue_path": "/api/v1/queue/flux/schnell"},
        ]})
    );
}

#[tokio::test]
async fn ready_waits_for_every_model_while_a_loaded_one_already_serves() {
    let models = two_models();
    models.schnell.model_hidden.store(true, Ordering::SeqCst);
    let ready = Request::get("/ready").body(Body::empty()).unwrap();
    expect_error(
        models.send(ready).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    )
    .await;
    // Still loading, so maybe schnell: 503, not 404.
    let schnell = models.post("/api/v1/flux/schnell", &small(json!({}))).await;
    expect_error(schnell, StatusCode::SERVICE_UNAVAILABLE, "not_ready").await;
    let dev = models.post("/api/v1/flux/dev", &small(json!({}))).await;
    assert_eq!(dev.status(), StatusCode::OK);
    let listed = json_body(models.get("/api/v1/models").await).await;
    assert_eq!(listed["models"].as_array().unwrap().len(), 1, "{listed}");

    models.schnell.model_hidden.store(false, Ordering::SeqCst);
    let ready = Request::get("/ready").body(Body::empty()).unwrap();
    assert_eq!(models.send(ready).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_queued_schnell_job_runs_on_the_schnell_model_with_its_urls_under_schnell() {
    let models = two_models();
    *models.dev.delay.lock().unwrap() = Duration::from_millis(400);
    let dev_job = json_body(
        models
            .post("/api/v1/queue/flux/dev", &small(json!({})))
            .await,
    )
    .await;
    let response = models
        .post("/api/v1/queue/flux/schnell", &small(json!({})))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job = json_body(response).await;
    assert_eq!(job["queue_position"], 0, "no dev job is ahead of it: {job}");
    let status_url = job["status_url"].as_str().unwrap();
    assert!(
        status_url.starts_with(&format!("{PUBLIC_URL}/api/v1/queue/flux/schnell/requests/")),
        "{status_url}"
    );
    let path = |url: &str| url.strip_prefix(PUBLIC_URL).unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = json_body(models.get(&path(status_url)).await).await;
        if status["status"] == "COMPLETED" {
            assert_eq!(status["outcome"], "succeeded", "{status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let result = models
        .get(&path(job["response_url"].as_str().unwrap()))
        .await;
    assert_eq!(result.status(), StatusCode::OK);
    assert_eq!(models.schnell.requests()[0].num_inference_steps(), 4);
    // The job is schnell's: under the dev model's routes it does not exist.
    let under_dev = path(status_url).replace("/flux/schnell/", "/flux/dev/");
    expect_error(
        models.get(&under_dev).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // The dev job, slower, is still going on its own model.
    let dev_status = json_body(
        models
            .get(&path(dev_job["status_url"].as_str().unwrap()))
            .await,
    )
    .await;
    assert_ne!(dev_status["status"], "COMPLETED", "{dev_status}");
}
