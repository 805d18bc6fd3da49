//! In-process tests of the queue API (`tower::ServiceExt::oneshot`): submit, status (with logs),
//! the SSE status stream (order and closing), result, cancel while queued and while running,
//! ownership by API key, expiry, idempotent submits and every error of these routes.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use flux_remote::{AppState, QUEUE_PATH, router};
use flux_types::{
    BoxFuture, GeneratedImage, Generation, GenerationTimings, Generator, GeneratorError, Progress,
    ProgressFn, ValidRequest,
};
use futures::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

/// A generator that works like the engine: one job at a time, in order, `steps` denoising steps
/// of `step_time` each, progress after each step; a dropped job stops before its next step.
#[derive(Debug)]
struct SteppingGenerator {
    step_time: Duration,
    turn: tokio::sync::Mutex<()>,
    /// Denoising steps run, over all jobs.
    steps_run: AtomicUsize,
    /// Jobs whose generation finished (images made).
    finished: AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
}

impl SteppingGenerator {
    fn new(step_time: Duration) -> Arc<Self> {
        Arc::new(SteppingGenerator {
            step_time,
            turn: tokio::sync::Mutex::new(()),
            steps_run: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            fail: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

impl Generator for SteppingGenerator {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        Box::pin(async move {
            let _turn = self.turn.lock().await;
            let total_steps = request.num_inference_steps();
            for step in 1..=total_steps {
                tokio::time::sleep(self.step_time).await;
                self.steps_run.fetch_add(1, Ordering::SeqCst);
                if let Some(progress) = &progress {
                    progress(Progress { step, total_steps });
                }
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(GeneratorError::Inference {
                    detail: "secret internal detail".to_owned(),
                });
            }
            self.finished.fetch_add(1, Ordering::SeqCst);
            let count = request.num_images() as usize;
            let bytes = encode_image(request.width(), request.height(), request.output_format());
            Ok(Generation {
                images: (0..count)
                    .map(|_| GeneratedImage {
                        bytes: bytes.clone(),
                        width: request.width(),
                        height: request.height(),
                        content_type: "image/png".to_owned(),
                    })
                    .collect(),
                seed: request.seed().unwrap_or(0),
                has_nsfw_concepts: vec![false; count],
                timings: GenerationTimings {
                    inference: self.step_time * total_steps,
                    queued: Duration::ZERO,
                },
            })
        })
    }

    fn describe(&self) -> String {
        "stepping generator".to_owned()
    }
}

struct App {
    router: axum::Router,
    state: AppState,
    _dir: tempfile::TempDir,
}

fn app_with(
    generator: Arc<dyn Generator>,
    change: impl FnOnce(&mut flux_remote::ServerConfig),
) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    change(&mut config);
    let state = AppState::new(&config, generator, PUBLIC_URL.to_owned()).unwrap();
    App {
        router: router(state.clone()),
        state,
        _dir: dir,
    }
}

/// A request of `steps` denoising steps (64×64 PNG).
fn body_with_steps(steps: u32) -> String {
    format!(
        r#"{{"prompt": "a red fox", "image_size": {{"width": 64, "height": 64}}, "output_format": "png", "num_inference_steps": {steps}, "seed": 7}}"#
    )
}

impl App {
    async fn send(&self, request: Request<Body>) -> Response<Body> {
        self.router.clone().oneshot(request).await.unwrap()
    }

    async fn submit_as(&self, key: &str, body: &str) -> Response<Body> {
        self.send(
            Request::post(format!("{QUEUE_PATH}/dev"))
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
    }

    /// Submits and returns the 202 body.
    async fn submit(&self, body: &str) -> Value {
        let response = self.submit_as(KEY, body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        json_body(response).await
    }

    async fn get_as(&self, key: &str, url: &str) -> Response<Body> {
        let path = url.strip_prefix(PUBLIC_URL).unwrap_or(url);
        self.send(
            Request::get(path)
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn get(&self, url: &str) -> Response<Body> {
        self.get_as(KEY, url).await
    }

    async fn cancel_as(&self, key: &str, url: &str) -> Response<Body> {
        let path = url.strip_prefix(PUBLIC_URL).unwrap_or(url);
        self.send(
            Request::put(path)
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn status(&self, job: &Value) -> Value {
        let response = self.get(job["status_url"].as_str().unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        json_body(response).await
    }

    /// Polls the status until it is COMPLETED.
    async fn until_completed(&self, job: &Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status(job).await;
            if status["status"] == "COMPLETED" {
                return status;
            }
            assert!(Instant::now() < deadline, "never completed: {status}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls until the job's status matches `state`.
    async fn until_status(&self, job: &Value, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status(job).await;
            if status["status"] == state {
                return status;
            }
            assert!(Instant::now() < deadline, "never {state}: {status}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn expect_code(response: Response<Body>, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers().contains_key("x-request-id"));
    let body = json_body(response).await;
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}

#[tokio::test]
async fn submit_is_202_with_the_four_urls_and_queue_positions() {
    let app = app_with(SteppingGenerator::new(Duration::from_millis(50)), |_| {});
    let first = app.submit(&body_with_steps(4)).await;
    let second = app.submit(&body_with_steps(4)).await;
    let id = first["request_id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "{first}");
    assert_eq!(first["status"], "IN_QUEUE");
    assert_eq!(first["queue_position"], 0);
    assert_eq!(second["queue_position"], 1);
    let base = format!("{PUBLIC_URL}{QUEUE_PATH}/dev/requests/{id}");
    assert_eq!(first["response_url"], base.as_str());
    assert_eq!(first["status_url"], format!("{base}/status").as_str());
    assert_eq!(first["cancel_url"], format!("{base}/cancel").as_str());
    assert_ne!(first["request_id"], second["request_id"]);
    // The second waits behind the first: still queued, at position 0 once the first runs.
    let status = app.until_status(&first, "IN_PROGRESS").await;
    assert!(status.get("queue_position").is_none(), "{status}");
    let second_status = app.status(&second).await;
    assert_eq!(second_status["status"], "IN_QUEUE", "{second_status}");
    assert_eq!(second_status["queue_position"], 0, "{second_status}");
    app.until_completed(&second).await;
}

#[tokio::test]
async fn a_job_goes_queued_running_completed_and_its_result_is_the_sync_body() {
    let generator = SteppingGenerator::new(Duration::from_millis(30));
    let app = app_with(generator.clone(), |_| {});
    let job = app.submit(&body_with_steps(3)).await;
    let running = app.until_status(&job, "IN_PROGRESS").await;
    assert_eq!(running["progress"]["total_steps"], 3, "{running}");
    assert!(
        running.get("logs").is_none(),
        "logs only when asked: {running}"
    );
    // Not done yet: 400 not_completed.
    let early = app.get(job["response_url"].as_str().unwrap()).await;
    expect_code(early, StatusCode::BAD_REQUEST, "not_completed").await;

    let done = app.until_completed(&job).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert!(
        done.get("error").is_none() && done.get("progress").is_none(),
        "{done}"
    );
    assert_eq!(done["response_url"], job["response_url"]);
    let with_logs = app
        .get(&format!("{}?logs=1", job["status_url"].as_str().unwrap()))
        .await;
    let with_logs = json_body(with_logs).await;
    let messages: Vec<&str> = with_logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "accepted",
            "started",
            "step 1/3",
            "step 2/3",
            "step 3/3",
            "completed"
        ]
    );
    let timestamp = with_logs["logs"][0]["timestamp"].as_str().unwrap();
    assert!(
        timestamp.ends_with('Z') && timestamp.len() == 24,
        "{timestamp}"
    );

    let result = app.get(job["response_url"].as_str().unwrap()).await;
    assert_eq!(result.status(), StatusCode::OK);
    assert_eq!(result.headers()["content-type"], "application/json");
    let result = json_body(result).await;
    assert_eq!(result["seed"], 7);
    assert_eq!(result["images"].as_array().unwrap().len(), 1);
    let url = result["images"][0]["url"].as_str().unwrap();
    let file = app.get(url).await;
    assert_eq!(file.status(), StatusCode::OK);
    assert_eq!(file.headers()["content-type"], "image/png");
    // The same result on every read.
    let again = json_body(app.get(job["response_url"].as_str().unwrap()).await).await;
    assert_eq!(again, result);
    assert_eq!(generator.finished.load(Ordering::SeqCst), 1);
}

/// Reads a whole SSE body into its `data:` payloads, with a bound on the wait.
async fn sse_events(response: Response<Body>) -> Vec<Value> {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.into_body().into_data_stream();
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ends after the terminal event");
    text.lines()
        .filter_map(|line| {
            line.strip_prefix("data: ")
                .or_else(|| line.strip_prefix("data:"))
        })
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

fn stream_url(job: &Value) -> String {
    format!("{}/stream", job["status_url"].as_str().unwrap())
}

#[tokio::test]
async fn the_status_stream_sends_the_current_state_then_every_step_and_closes_after_completion() {
    let app = app_with(SteppingGenerator::new(Duration::from_millis(40)), |_| {});
    let ahead = app.submit(&body_with_steps(2)).await;
    let job = app.submit(&body_with_steps(4)).await;
    let events = sse_events(app.get(&stream_url(&job)).await).await;
    let states: Vec<String> = events
        .iter()
        .map(|event| match event["status"].as_str().unwrap() {
            "IN_QUEUE" => format!("Q{}", event["queue_position"]),
            "IN_PROGRESS" => format!("P{}", event["progress"]["step"]),
            other => format!("{other}:{}", event["outcome"].as_str().unwrap()),
        })
        .collect();
    // Queued behind one job (position 1), then next (0), then each step, then the end.
    assert_eq!(
        states,
        ["Q1", "Q0", "P1", "P2", "P3", "P4", "COMPLETED:succeeded"],
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|event| event["request_id"] == job["request_id"])
    );
    // A stream opened after the end sends the terminal status alone and closes.
    app.until_completed(&ahead).await;
    let after = sse_events(app.get(&stream_url(&job)).await).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["status"], "COMPLETED");
}

#[tokio::test]
async fn a_queued_job_is_cancelled_at_once_and_never_generated() {
    let generator = SteppingGenerator::new(Duration::from_millis(50));
    let app = app_with(generator.clone(), |_| {});
    let running = app.submit(&body_with_steps(4)).await;
    let queued = app.submit(&body_with_steps(4)).await;
    let cancel = app
        .cancel_as(KEY, queued["cancel_url"].as_str().unwrap())
        .await;
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    assert_eq!(json_body(cancel).await["status"], "CANCELLATION_REQUESTED");
    let status = app.status(&queued).await;
    assert_eq!(status["status"], "COMPLETED", "at once: {status}");
    assert_eq!(status["outcome"], "cancelled");
    let result = app.get(queued["response_url"].as_str().unwrap()).await;
    expect_code(result, StatusCode::GONE, "cancelled").await;
    let again = app
        .cancel_as(KEY, queued["cancel_url"].as_str().unwrap())
        .await;
    expect_code(again, StatusCode::BAD_REQUEST, "already_completed").await;
    app.until_completed(&running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(generator.finished.load(Ordering::SeqCst), 1);
    assert_eq!(
        generator.steps_run.load(Ordering::SeqCst),
        4,
        "nothing ran for it"
    );
    assert_eq!(app.state.in_queue(), 0);
}

#[tokio::test]
async fn a_running_job_stops_at_the_next_step_boundary_when_cancelled() {
    let generator = SteppingGenerator::new(Duration::from_millis(60));
    let app = app_with(generator.clone(), |_| {});
    let job = app.submit(&body_with_steps(40)).await;
    let stream = app.get(&stream_url(&job)).await;
    let reader = tokio::spawn(sse_events(stream));
    let running = app.until_status(&job, "IN_PROGRESS").await;
    assert!(running["progress"]["step"].as_u64().unwrap() >= 1);
    let cancel = app
        .cancel_as(KEY, job["cancel_url"].as_str().unwrap())
        .await;
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    let steps_at_cancel = generator.steps_run.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let steps_after = generator.steps_run.load(Ordering::SeqCst);
    assert!(
        steps_after <= steps_at_cancel + 1,
        "{steps_at_cancel} -> {steps_after}"
    );
    assert!(steps_after < 40);
    assert_eq!(generator.finished.load(Ordering::SeqCst), 0);
    let status = app.status(&job).await;
    assert_eq!(
        (status["status"].as_str(), status["outcome"].as_str()),
        (Some("COMPLETED"), Some("cancelled"))
    );
    let events = reader.await.unwrap();
    assert_eq!(events.last().unwrap()["outcome"], "cancelled", "{events:?}");
    // Its place is free again.
    assert_eq!(app.state.in_queue(), 0);
}

#[tokio::test]
async fn jobs_belong_to_the_key_that_submitted_them() {
    let app = app_with(SteppingGenerator::new(Duration::from_millis(5)), |_| {});
    let job = app.submit(&body_with_steps(2)).await;
    app.until_completed(&job).await;
    let urls = [
        job["status_url"].as_str().unwrap().to_owned(),
        stream_url(&job),
        job["response_url"].as_str().unwrap().to_owned(),
    ];
    for url in &urls {
        expect_code(
            app.get_as(OTHER_KEY, url).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    let cancel = app
        .cancel_as(OTHER_KEY, job["cancel_url"].as_str().unwrap())
        .await;
    expect_code(cancel, StatusCode::NOT_FOUND, "not_found").await;
    // No key: 401, with the challenge.
    let path = job["status_url"]
        .as_str()
        .unwrap()
        .strip_prefix(PUBLIC_URL)
        .unwrap();
    let anonymous = app
        .send(Request::get(path).body(Body::empty()).unwrap())
        .await;
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    expect_code(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // The owner still sees it.
    assert_eq!(app.get(&urls[0]).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_jobs_models_and_bad_bodies_are_refused_like_the_sync_route() {
    let app = app_with(SteppingGenerator::new(Duration::from_millis(5)), |_| {});
    let unknown = format!("{QUEUE_PATH}/dev/requests/{}/status", "0".repeat(32));
    expect_code(app.get(&unknown).await, StatusCode::NOT_FOUND, "not_found").await;
    let malformed = format!("{QUEUE_PATH}/dev/requests/not-an-id");
    expect_code(
        app.get(&malformed).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // A variant this server does not serve.
    let schnell = app
        .send(
            Request::post(format!("{QUEUE_PATH}/schnell"))
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(Body::from(SMALL))
                .unwrap(),
        )
        .await;
    expect_code(schnell, StatusCode::NOT_FOUND, "not_found").await;
    // A job asked for under another model's path.
    let job = app.submit(&body_with_steps(1)).await;
    let id = job["request_id"].as_str().unwrap();
    let elsewhere = format!("{QUEUE_PATH}/schnell/requests/{id}/status");
    expect_code(
        app.get(&elsewhere).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // The sync route's validation, word for word.
    let bad = app
        .submit_as(KEY, r#"{"prompt": "x", "num_images": 5}"#)
        .await;
    let body = expect_code(bad, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(
        body["error"]["message"],
        "num_images must be between 1 and 4, got 5"
    );
    let unsupported = app
        .send(
            Request::post(format!("{QUEUE_PATH}/dev"))
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "text/plain")
                .body(Body::from(SMALL))
                .unwrap(),
        )
        .await;
    expect_code(
        unsupported,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    // Wrong methods: 405 with Allow.
    let wrong = app
        .send(
            Request::get(format!("{QUEUE_PATH}/dev"))
                .header("authorization", format!("Bearer {KEY}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.headers()["allow"], "POST");
    let wrong = app.get(job["cancel_url"].as_str().unwrap()).await;
    assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.headers()["allow"], "PUT");
}

#[tokio::test]
async fn a_full_queue_refuses_submits_with_429_and_nothing_is_queued() {
    let app = app_with(
        SteppingGenerator::new(Duration::from_millis(50)),
        |config| {
            config.queue_depth = 2;
        },
    );
    let first = app.submit(&body_with_steps(3)).await;
    let _second = app.submit(&body_with_steps(3)).await;
    let refused = app.submit_as(KEY, &body_with_steps(3)).await;
    assert!(refused.headers().contains_key("retry-after"));
    expect_code(refused, StatusCode::TOO_MANY_REQUESTS, "overloaded").await;
    // The sync route shares the one bound.
    let sync = app.send(generate_request(SMALL)).await;
    expect_code(sync, StatusCode::TOO_MANY_REQUESTS, "overloaded").await;
    assert_eq!(app.state.in_queue(), 2);
    app.until_completed(&first).await;
}

#[tokio::test]
async fn a_failed_job_answers_its_error_without_internals() {
    let generator = SteppingGenerator::new(Duration::from_millis(5));
    generator.fail.store(true, Ordering::SeqCst);
    let app = app_with(generator, |_| {});
    let job = app.submit(&body_with_steps(2)).await;
    let status = app.until_completed(&job).await;
    assert_eq!(status["outcome"], "failed");
    assert_eq!(status["error"]["code"], "inference_failed", "{status}");
    let result = app.get(job["response_url"].as_str().unwrap()).await;
    let body = expect_code(
        result,
        StatusCode::INTERNAL_SERVER_ERROR,
        "inference_failed",
    )
    .await;
    assert!(!body.to_string().contains("secret"), "{body}");
}

#[tokio::test]
async fn an_idempotent_submit_is_answered_with_the_original_job() {
    let app = app_with(SteppingGenerator::new(Duration::from_millis(5)), |_| {});
    let submit = |body: &str| {
        Request::post(format!("{QUEUE_PATH}/dev"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "submit-once-1")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let first = app.send(submit(&body_with_steps(2))).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first = json_body(first).await;
    let replay = app.send(submit(&body_with_steps(2))).await;
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(json_body(replay).await["request_id"], first["request_id"]);
    let other = app.send(submit(&body_with_steps(3))).await;
    expect_code(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_mismatch",
    )
    .await;
    app.until_completed(&first).await;
}

#[tokio::test]
async fn records_expire_after_the_retention_window() {
    let app = app_with(SteppingGenerator::new(Duration::from_millis(5)), |config| {
        config.retention = Duration::from_millis(300);
    });
    let job = app.submit(&body_with_steps(1)).await;
    app.until_completed(&job).await;
    app.state.sweep().await;
    assert_eq!(
        app.get(job["status_url"].as_str().unwrap()).await.status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.state.sweep().await;
    for url in [
        job["status_url"].as_str().unwrap(),
        job["response_url"].as_str().unwrap(),
    ] {
        expect_code(app.get(url).await, StatusCode::NOT_FOUND, "not_found").await;
    }
}

#[tokio::test]
async fn the_model_list_names_the_served_variant_and_needs_a_key() {
    let app = app_with(SteppingGenerator::new(Duration::from_millis(5)), |_| {});
    let listed = app.get("/api/v1/models").await;
    assert_eq!(listed.status(), StatusCode::OK);
    let listed = json_body(listed).await;
    assert_eq!(listed["models"][0]["variant"], "dev", "{listed}");
    assert_eq!(listed["models"][0]["id"], "stepping generator");
    let anonymous = app
        .send(Request::get("/api/v1/models").body(Body::empty()).unwrap())
        .await;
    expect_code(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
