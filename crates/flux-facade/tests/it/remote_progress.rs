//! The remote backend's progress is real: through the queue API and its status stream, the
//! callback hears every denoising step as the server finishes it, and a dropped call cancels the
//! job on the server (nothing more is generated for it).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use flux_facade::{
    BoxFuture, GenerateRequest, Generation, Generator, GeneratorError, ImageSize, Progress,
    ProgressFn, RemoteGenerator, ValidRequest,
};
use flux_remote::{Server, ServerConfig};
use flux_types::GeneratedImage;

const KEY: &str = "sk-facade-progress-key-01";

/// `step_time` per step, progress after each; counts the steps it ran.
#[derive(Debug, Default)]
struct Stepping {
    steps_run: AtomicU32,
}

impl Generator for Stepping {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        Box::pin(async move {
            let total_steps = request.num_inference_steps();
            for step in 1..=total_steps {
                tokio::time::sleep(Duration::from_millis(40)).await;
                self.steps_run.fetch_add(1, Ordering::SeqCst);
                if let Some(progress) = &progress {
                    progress(Progress { step, total_steps });
                }
            }
            Ok(Generation {
                images: vec![GeneratedImage {
                    // Not decoded on the way: any bytes do.
                    bytes: vec![0xff, 0xd8, 0xff, 0xd9],
                    width: request.width(),
                    height: request.height(),
                    content_type: "image/jpeg".to_owned(),
                }],
                seed: request.seed().unwrap_or(0),
                has_nsfw_concepts: vec![false],
                timings: Default::default(),
            })
        })
    }

    fn describe(&self) -> String {
        "stepping".to_owned()
    }
}

async fn serve(generator: Arc<Stepping>) -> anyhow::Result<(String, tempfile::TempDir)> {
    let files = tempfile::tempdir()?;
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        api_keys: vec![KEY.to_owned()],
        rate_limit: None,
        files_dir: files.path().to_path_buf(),
        ..ServerConfig::default()
    };
    let server = Server::bind(config, generator).await?;
    let base_url = format!("http://{}", server.local_addr()?);
    tokio::spawn(server.run(std::future::pending()));
    Ok((base_url, files))
}

fn request(steps: u32) -> anyhow::Result<ValidRequest> {
    let mut request = GenerateRequest::new("a red fox");
    request.image_size = ImageSize::Custom {
        width: 64,
        height: 64,
    };
    request.num_inference_steps = steps;
    request.seed = Some(5);
    Ok(request.validate()?)
}

#[tokio::test]
async fn every_remote_step_reaches_the_callback_and_a_dropped_call_cancels_the_job()
-> anyhow::Result<()> {
    let generator = Arc::new(Stepping::default());
    let (base_url, _files) = serve(generator.clone()).await?;
    let remote = RemoteGenerator::new(&base_url, Some(KEY.to_owned()))?;
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    let progress: ProgressFn = Arc::new(move |p: Progress| {
        sink.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((p.step, p.total_steps));
    });
    let generation = remote.generate(request(4)?, Some(progress)).await?;
    ensure!(generation.seed == 5);
    ensure!(generation.images[0].bytes == [0xff, 0xd8, 0xff, 0xd9]);
    let heard = heard.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ensure!(heard == [(1, 4), (2, 4), (3, 4), (4, 4)], "{heard:?}");

    // Dropped after its first step: the server cancels the job.
    let before = generator.steps_run.load(Ordering::SeqCst);
    let first_step = Arc::new(tokio::sync::Notify::new());
    let notify = first_step.clone();
    let progress: ProgressFn = Arc::new(move |_| notify.notify_one());
    let call = remote.generate(request(40)?, Some(progress));
    tokio::select! {
        _ = call => anyhow::bail!("a 40-step job finished"),
        _ = first_step.notified() => {}
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ran = generator.steps_run.load(Ordering::SeqCst) - before;
    ensure!(ran < 10, "{ran} steps ran after the call was dropped");
    let settled = generator.steps_run.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(
        generator.steps_run.load(Ordering::SeqCst) == settled,
        "still running"
    );
    Ok(())
}
