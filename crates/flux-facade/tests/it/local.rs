//! `LocalGenerator` end to end on the bundled tiny model: images, seeds, progress, cancellation
//! when the future is dropped, and `Overloaded` when the engine's queue is full.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use flux_facade::{
    GenerateRequest, Generator, GeneratorError, ImageSize, LocalGenerator, LocalOptions,
    OutputFormat, Progress, ProgressFn, ValidRequest, bundled,
};

fn request(width: u32, height: u32, steps: u32, seed: Option<u64>) -> anyhow::Result<ValidRequest> {
    Ok(GenerateRequest {
        image_size: ImageSize::Custom { width, height },
        num_inference_steps: steps,
        seed,
        output_format: OutputFormat::Png,
        ..GenerateRequest::new("a lighthouse on a cliff at dusk")
    }
    .validate()?)
}

fn start(queue_capacity: usize) -> anyhow::Result<LocalGenerator> {
    let dir = bundled::bundled_model_dir()?;
    Ok(LocalGenerator::start(
        &dir,
        &LocalOptions {
            queue_capacity,
            ..LocalOptions::default()
        },
    )?)
}

/// A progress callback that records every event.
fn recorder() -> (ProgressFn, Arc<Mutex<Vec<Progress>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let callback: ProgressFn = Arc::new(move |event| {
        if let Ok(mut events) = sink.lock() {
            events.push(event);
        }
    });
    (callback, events)
}

#[tokio::test]
async fn generates_decodable_images_and_the_seed_reproduces_them() -> anyhow::Result<()> {
    let generator = start(4)?;
    assert!(generator.is_ready());
    let (progress, events) = recorder();

    let first = generator
        .generate(request(96, 64, 2, None)?, Some(progress))
        .await?;
    ensure!(
        first.seed <= 4_294_967_295,
        "seed {} out of range",
        first.seed
    );
    assert_eq!(first.images.len(), 1);
    assert_eq!(first.has_nsfw_concepts.len(), 1);
    let image = &first.images[0];
    assert_eq!(
        (image.width, image.height, image.content_type.as_str()),
        (96, 64, "image/png")
    );
    let decoded = image::load_from_memory_with_format(&image.bytes, image::ImageFormat::Png)?;
    assert_eq!((decoded.width(), decoded.height()), (96, 64));
    let steps: Vec<(u32, u32)> = events
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|p| (p.step, p.total_steps))
        .collect();
    assert_eq!(steps, vec![(1, 2), (2, 2)]);

    // The seed that was drawn is the one used: asking for it gives the same bytes.
    let again = generator
        .generate(request(96, 64, 2, Some(first.seed))?, None)
        .await?;
    assert_eq!(again.seed, first.seed);
    assert_eq!(again.images[0].bytes, image.bytes);
    Ok(())
}

#[tokio::test]
async fn several_images_come_back_in_one_batch() -> anyhow::Result<()> {
    let generator = start(4)?;
    let mut wire = request(64, 64, 1, Some(5))?.into_request();
    wire.num_images = 3;
    wire.output_format = OutputFormat::Jpeg;
    let generation = generator.generate(wire.validate()?, None).await?;
    assert_eq!(generation.images.len(), 3);
    assert_eq!(generation.has_nsfw_concepts.len(), 3);
    for image in &generation.images {
        assert_eq!(image.content_type, "image/jpeg");
        let decoded = image::load_from_memory_with_format(&image.bytes, image::ImageFormat::Jpeg)?;
        assert_eq!((decoded.width(), decoded.height()), (64, 64));
    }
    Ok(())
}

/// Waits (bounded) until `counter` reaches `at_least`.
async fn wait_for(counter: &AtomicU32, at_least: u32) -> anyhow::Result<()> {
    for _ in 0..6000 {
        if counter.load(Ordering::SeqCst) >= at_least {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("progress never reached step {at_least}")
}

fn counting() -> (ProgressFn, Arc<AtomicU32>) {
    let steps = Arc::new(AtomicU32::new(0));
    let sink = steps.clone();
    (
        Arc::new(move |p: Progress| sink.store(p.step, Ordering::SeqCst)),
        steps,
    )
}

#[tokio::test]
async fn dropping_the_future_cancels_the_job() -> anyhow::Result<()> {
    let generator = Arc::new(start(4)?);
    let (progress, steps) = counting();
    let long = request(512, 512, 50, Some(1))?;
    let running = tokio::spawn({
        let generator = generator.clone();
        async move { generator.generate(long, Some(progress)).await }
    });
    wait_for(&steps, 1).await?;
    running.abort();
    let _ = running.await;

    // The engine stops the job at the next step boundary and is free for the next request: that
    // one is answered while the cancelled job, had it gone on, would still have steps to run.
    let next = tokio::time::timeout(
        Duration::from_secs(120),
        generator.generate(request(64, 64, 1, Some(2))?, None),
    )
    .await
    .context("the engine did not become free after a cancellation")??;
    assert_eq!(next.images.len(), 1);
    let stopped_at = steps.load(Ordering::SeqCst);
    ensure!(stopped_at < 50, "the cancelled job ran all 50 steps");
    Ok(())
}

#[tokio::test]
async fn a_full_queue_is_overloaded_at_once() -> anyhow::Result<()> {
    let generator = Arc::new(start(1)?);
    let (progress, steps) = counting();
    // One job running (it has reported a step, so it has left the queue), one waiting.
    let long = request(512, 512, 50, Some(1))?;
    let running = tokio::spawn({
        let generator = generator.clone();
        async move { generator.generate(long, Some(progress)).await }
    });
    wait_for(&steps, 1).await?;
    let waiting = generator.generate(request(64, 64, 1, Some(2))?, None);
    assert_eq!(generator.queued_jobs(), 1);

    let started = std::time::Instant::now();
    let refused = generator.generate(request(64, 64, 1, Some(3))?, None).await;
    assert!(
        matches!(refused, Err(GeneratorError::Overloaded { .. })),
        "{refused:?}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(1),
        "refusal took {:?}",
        started.elapsed()
    );

    // Cancelling the waiting job gives its place back at once, while the long job still runs:
    // the next request is queued, not refused.
    drop(waiting);
    let queued_next = generator.generate(request(64, 64, 1, Some(4))?, None);
    assert_eq!(generator.queued_jobs(), 1);
    running.abort();
    let after = tokio::time::timeout(Duration::from_secs(120), queued_next)
        .await
        .context("the queued job was not answered after the running one was cancelled")?;
    let after = after.context("a cancelled waiting job kept its queue place")?;
    assert_eq!(after.images.len(), 1);
    Ok(())
}

/// What `Generator::model` reports for a loaded folder: its name, its variant and whether it has
/// a safety checker (the schnell fixture has none), and for the bundled model its short id.
#[test]
fn a_local_model_reports_its_folder_variant_and_safety_checker() -> anyhow::Result<()> {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let schnell = LocalGenerator::start(
        &fixtures.join("tiny-flux-schnell"),
        &LocalOptions::default(),
    )?;
    let model = schnell.model().context("a loaded model reports itself")?;
    ensure!(model.id == "tiny-flux-schnell", "{model:?}");
    ensure!(model.variant.name == "schnell", "{model:?}");
    ensure!(model.safety_checker == Some(false), "{model:?}");
    ensure!(
        model.precision.as_deref() == Some("fp32") && model.device.as_deref() == Some("cpu"),
        "{model:?}"
    );
    ensure!(model.text_length.is_some_and(|n| n > 0), "{model:?}");

    let dev = LocalGenerator::bundled()?;
    let model = dev.model().context("a loaded model reports itself")?;
    ensure!(model.id == bundled::BUNDLED_MODEL_ID, "{model:?}");
    ensure!(model.variant.name == "dev", "{model:?}");
    ensure!(model.safety_checker == Some(true), "{model:?}");
    Ok(())
}
