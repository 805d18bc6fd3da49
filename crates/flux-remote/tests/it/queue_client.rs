//! The client's queue calls against a real server on loopback: submit, status with logs, the
//! status stream (every step, then the end), wait, result, cancel, and the errors they keep.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use flux_remote::{FluxClient, RemoteError, Server};
use flux_types::{
    BoxFuture, GenerateRequest, GeneratedImage, Generation, GenerationTimings, Generator,
    GeneratorError, ImageSize, OutputFormat, Progress, ProgressFn, QueueState, ValidRequest,
};
use futures::StreamExt;

/// One job at a time, `step_time` per denoising step, progress after each.
#[derive(Debug, Default)]
struct Stepping {
    turn: tokio::sync::Mutex<()>,
    steps_run: AtomicUsize,
}

impl Generator for Stepping {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        Box::pin(async move {
            let _turn = self.turn.lock().await;
            let total_steps = request.num_inference_steps();
            for step in 1..=total_steps {
                tokio::time::sleep(Duration::from_millis(30)).await;
                self.steps_run.fetch_add(1, Ordering::SeqCst);
                if let Some(progress) = &progress {
                    progress(Progress { step, total_steps });
                }
            }
            let bytes = encode_image(request.width(), request.height(), OutputFormat::Png);
            Ok(Generation {
                images: vec![GeneratedImage {
                    bytes,
                    width: request.width(),
                    height: request.height(),
                    content_type: "image/png".to_owned(),
                }],
                seed: request.seed().unwrap_or(0),
                has_nsfw_concepts: vec![false],
                timings: GenerationTimings::default(),
            })
        })
    }

    fn describe(&self) -> String {
        "stepping".to_owned()
    }
}

async fn start() -> (FluxClient, Arc<Stepping>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let generator = Arc::new(Stepping::default());
    let server = Server::bind(config(dir.path()), generator.clone())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    let client = FluxClient::new(&format!("http://{addr}"), KEY).unwrap();
    (client, generator, dir)
}

fn request(steps: u32) -> GenerateRequest {
    let mut request = GenerateRequest::new("a red fox");
    request.image_size = ImageSize::Custom {
        width: 64,
        height: 64,
    };
    request.num_inference_steps = steps;
    request.seed = Some(11);
    request
}

#[tokio::test]
async fn submit_stream_and_wait_see_every_step_then_the_result() {
    let (client, _generator, _dir) = start().await;
    let job = client.submit("dev", &request(5)).await.unwrap();
    assert_eq!(job.status, QueueState::InQueue);
    let mut stream = std::pin::pin!(client.stream("dev", &job.request_id).await.unwrap());
    let mut steps = Vec::new();
    let mut last = None;
    while let Some(status) = stream.next().await {
        let status = status.unwrap();
        if let Some(progress) = status.progress {
            steps.push(progress.step);
        }
        last = Some(status);
    }
    assert_eq!(steps, [1, 2, 3, 4, 5]);
    assert_eq!(last.unwrap().status, QueueState::Completed);
    let status = client.status("dev", &job.request_id, true).await.unwrap();
    assert!(status.logs.unwrap().len() >= 7);
    let result = client.result("dev", &job.request_id).await.unwrap();
    assert_eq!(result.seed, 11);
    assert_eq!(
        client.fetch_image(&result.images[0].url).await.unwrap()[..4],
        [0x89, b'P', b'N', b'G']
    );

    // wait: the same, with a callback per status.
    let second = client.submit("dev", &request(3)).await.unwrap();
    let mut seen = Vec::new();
    let waited = client
        .wait("dev", &second.request_id, |status| {
            seen.push(status.progress.map(|p| p.step))
        })
        .await
        .unwrap();
    assert_eq!(waited.seed, 11);
    assert!(seen.contains(&Some(3)), "{seen:?}");
}

#[tokio::test]
async fn cancel_and_the_errors_of_the_queue_routes_reach_the_caller() {
    let (client, generator, _dir) = start().await;
    let job = client.submit("dev", &request(40)).await.unwrap();
    client.cancel("dev", &job.request_id).await.unwrap();
    let status = client.status("dev", &job.request_id, false).await.unwrap();
    assert_eq!(status.status, QueueState::Completed);
    assert_eq!(status.outcome, Some(flux_types::Outcome::Cancelled));
    match client.result("dev", &job.request_id).await {
        Err(RemoteError::Api {
            status: 410, body, ..
        }) => {
            assert_eq!(body.unwrap().error.code, flux_types::ErrorCode::Cancelled);
        }
        other => panic!("{other:?}"),
    }
    match client.cancel("dev", &job.request_id).await {
        Err(RemoteError::Api { status: 400, .. }) => {}
        other => panic!("{other:?}"),
    }
    let other = FluxClient::new(client.base_url(), OTHER_KEY).unwrap();
    match other.status("dev", &job.request_id, false).await {
        Err(RemoteError::Api { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(generator.steps_run.load(Ordering::SeqCst) <= 1);
}
