//! Storage faults on a real loopback server: a deleted files folder is recreated, an unusable one
//! shows in `/ready` and the metrics and is answered 503 `storage_unavailable` (never a failed
//! generation), the default folder is under the user's data dir, and a size quota deletes the
//! oldest images first.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use flux_remote::ServerConfig;
use support::raw::*;
use support::*;

async fn generate(url: &str, body: &str) -> (u16, serde_json::Value) {
    let answer = reqwest::Client::new()
        .post(format!("{url}/api/v1/flux/dev"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap())
}

async fn ready_status(url: &str) -> (u16, String) {
    let answer = reqwest::get(format!("{url}/ready")).await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

#[tokio::test]
async fn a_deleted_files_folder_is_recreated() {
    let root = tempfile::tempdir().unwrap();
    let files = root.path().join("files");
    let server = start(&files, FakeGenerator::new(), |_| {}).await;
    // After the first retention sweep (at start), so that only the write path can recreate it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::remove_dir_all(&files).unwrap();
    let (status, body) = generate(&server.url(), SMALL).await;
    assert_eq!(status, 200, "{body}");
    assert!(files.is_dir(), "the folder was recreated");
    let url = body["images"][0]["url"].as_str().unwrap();
    let path = url.split_once("/api/v1/files/").unwrap().1;
    let image = reqwest::get(format!("{}/api/v1/files/{path}", server.url()))
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
}

#[tokio::test]
async fn an_unusable_folder_is_reported_and_answered_503_storage_unavailable() {
    let root = tempfile::tempdir().unwrap();
    let files = root.path().join("files");
    let generator = FakeGenerator::new();
    let server = start(&files, generator.clone(), |_| {}).await;
    // After the first retention sweep (at start), which would recreate the folder.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = server.url();
    assert_eq!(ready_status(&url).await.0, 200);

    // The folder becomes a plain file (as unusable as a full or read-only disk, and testable as
    // root): within the second the last probe is trusted, a generation runs and its store fails.
    std::fs::remove_dir_all(&files).unwrap();
    std::fs::write(&files, b"not a folder").unwrap();
    let (status, body) = generate(&url, SMALL).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable");
    assert_eq!(generator.calls(), 1);

    // Now known: /ready and the metrics say so, and nothing more is generated for it.
    let (status, text) = ready_status(&url).await;
    assert_eq!(status, 503);
    assert!(text.contains("storage_unavailable"), "{text}");
    assert_eq!(metric(server.addr, "flux_storage_healthy").await, 0.0);
    assert_eq!(
        metric(server.addr, "flux_storage_failures_total").await,
        1.0
    );
    let (status, body) = generate(&url, SMALL).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("storage_unavailable"))
    );
    assert_eq!(
        generator.calls(),
        1,
        "no generation for images that cannot be stored"
    );
    // Inline images need no storage.
    let inline =
        r#"{"prompt": "a fox", "image_size": {"width": 64, "height": 64}, "sync_mode": true}"#;
    assert_eq!(generate(&url, inline).await.0, 200);

    // Repaired: the next probe (after a second) finds it writable again.
    std::fs::remove_file(&files).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ready_status(&url).await.0, 200);
    assert_eq!(metric(server.addr, "flux_storage_healthy").await, 1.0);
    assert_eq!(generate(&url, SMALL).await.0, 200);
}

#[test]
fn the_default_folder_is_under_the_users_data_dir_not_the_temp_dir() {
    let dir = ServerConfig::default().files_dir;
    assert_eq!(dir, flux_remote::default_files_dir());
    assert!(dir.ends_with("flux-rs/files"), "{}", dir.display());
    assert!(
        !dir.starts_with(std::env::temp_dir()),
        "{} is under the temp dir",
        dir.display()
    );
}

#[tokio::test]
async fn the_quota_deletes_the_oldest_images_first() {
    let root = tempfile::tempdir().unwrap();
    let one = encode_image(64, 64, flux_types::OutputFormat::Png).len() as u64;
    let server = start(root.path(), FakeGenerator::new(), |config| {
        config.files_quota = Some(one * 5 / 2);
    })
    .await;
    let mut urls = Vec::new();
    for _ in 0..3 {
        let (status, body) = generate(&server.url(), SMALL).await;
        assert_eq!(status, 200, "{body}");
        urls.push(body["images"][0]["url"].as_str().unwrap().to_owned());
        // Distinct modification times, so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut statuses = Vec::new();
    for url in &urls {
        let path = url.split_once("/api/v1/files/").unwrap().1;
        let fetched = reqwest::get(format!("{}/api/v1/files/{path}", server.url()))
            .await
            .unwrap();
        statuses.push(fetched.status().as_u16());
    }
    assert_eq!(statuses, [404, 200, 200]);
    assert_eq!(metric(server.addr, "flux_storage_evicted_total").await, 1.0);
    assert!(metric(server.addr, "flux_storage_bytes").await <= (one * 5 / 2) as f64);
}
