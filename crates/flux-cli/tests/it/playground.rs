//! The web playground at `/` of a real `flux serve` (bundled model), driven in headless Chromium
//! over WebDriver as a person would use it: key, prompt, Generate, live progress, the image;
//! "Use this seed" gives the same image again; a bad value shows the server's message beside its
//! field; a long job is cancelled. Screenshots at desktop and phone widths are taken on the way;
//! `FLUX_RS_WRITE_SCREENSHOTS=1` writes them to `docs/` (otherwise they go to a temporary folder,
//! so the test never changes the tree).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::cli::ServeProcess;
use crate::webdriver::{Driver, Session};

const KEY: &str = "playground-test-key-01";
/// Generous: only a broken page or server comes near it (the bundled model takes milliseconds).
const WAIT: Duration = Duration::from_secs(120);

/// Where screenshots go: `docs/` when asked for, else a temporary folder.
fn screenshot_dir(scratch: &std::path::Path) -> PathBuf {
    if std::env::var("FLUX_RS_WRITE_SCREENSHOTS").is_ok_and(|value| value == "1") {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs"))
    } else {
        scratch.to_owned()
    }
}

async fn save_screenshot(
    page: &Session,
    dir: &std::path::Path,
    name: &str,
    width: u32,
) -> anyhow::Result<()> {
    let png = page.screenshot().await?;
    let decoded = image::load_from_memory_with_format(&png, image::ImageFormat::Png)?;
    ensure!(
        decoded.width() == width,
        "{name}: the screenshot is {} px wide, not {width}",
        decoded.width()
    );
    std::fs::write(dir.join(name), png)?;
    Ok(())
}

/// The text of the element `css`.
async fn text(page: &Session, css: &str) -> anyhow::Result<String> {
    let value = page
        .script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([css]),
        )
        .await?;
    value
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no element {css:?}"))
}

/// The newest result's image URL once it has loaded, with the number of results.
async fn newest_result(page: &Session, results: usize) -> anyhow::Result<String> {
    page.wait_for(
        &format!("result {results} to show its image"),
        &format!(
            "document.querySelectorAll('#gallery li').length === {results} && \
             document.querySelector('#gallery li img').complete && \
             document.querySelector('#gallery li img').naturalWidth > 0"
        ),
        WAIT,
    )
    .await?;
    let url = page
        .script(
            "return document.querySelector('#gallery li img').src;",
            json!([]),
        )
        .await?;
    url.as_str()
        .map(str::to_owned)
        .context("the image has no src")
}

async fn bytes(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let response = http.get(url).send().await?;
    ensure!(response.status() == 200, "{url}: {}", response.status());
    Ok(response.bytes().await?.to_vec())
}

/// Records every value the progress bar shows (a MutationObserver sees each change, however
/// quickly the steps come), in `window.stepsSeen`.
const WATCH_PROGRESS: &str = "
    const bar = document.getElementById('progress');
    const seen = window.stepsSeen = [];
    const push = (value) => {
        if (value !== null && value !== '0' && seen[seen.length - 1] !== value) seen.push(value);
    };
    new MutationObserver((records) => {
        for (const record of records) push(record.oldValue);
        push(bar.getAttribute('value'));
    }).observe(bar, {attributes: true, attributeOldValue: true, attributeFilter: ['value']});
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_generates_reuses_a_seed_shows_errors_and_cancels() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    std::fs::write(cwd.path().join("keys"), format!("{KEY}\n"))?;
    let server = ServeProcess::start(
        cwd.path(),
        &["--api-key-file", "keys", "--rate-limit", "off"],
    )?;
    let base = server.base_url.clone();
    let http = reqwest::Client::new();
    let shots = screenshot_dir(cwd.path());

    // The page and each asset carry the policy; nothing inline is allowed by it.
    for path in ["/", "/playground/app.js", "/playground/app.css"] {
        let response = http.get(format!("{base}{path}")).send().await?;
        ensure!(response.status() == 200, "{path}: {}", response.status());
        let policy = response
            .headers()
            .get("content-security-policy")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        ensure!(
            policy.contains("default-src 'self'") && !policy.contains("unsafe-inline"),
            "{path}: {policy:?}"
        );
    }

    let driver = Driver::start().await?;
    let page = driver.session(1280, 900).await?;
    page.goto(&format!("{base}/")).await?;
    page.wait_for(
        "the script to run",
        "document.getElementById('model-hint').textContent.includes('API key')",
        WAIT,
    )
    .await?;

    // Without the key the server's 401 is explained and the key field is marked.
    page.fill("#prompt", "a lighthouse on a cliff at dusk")
        .await?;
    page.click("#generate").await?;
    page.wait_for(
        "the 401 explanation",
        "!document.getElementById('form-error').hidden",
        WAIT,
    )
    .await?;
    ensure!(text(&page, "#form-error").await?.contains("API key"));
    ensure!(!text(&page, "#api-key-error").await?.is_empty());

    // With the key: generate, watching the progress bar advance step by step.
    page.fill("#api-key", KEY).await?;
    page.choose("#image-size", "square").await?;
    page.fill("#steps", "12").await?;
    page.script(WATCH_PROGRESS, json!([])).await?;
    page.click("#generate").await?;
    let first_url = newest_result(&page, 1).await?;
    let steps: Vec<u32> = page
        .script("return window.stepsSeen;", json!([]))
        .await?
        .as_array()
        .context("no steps recorded")?
        .iter()
        .filter_map(|value| value.as_str()?.parse().ok())
        .collect();
    ensure!(
        steps.len() >= 2
            && steps.windows(2).all(|pair| pair[0] < pair[1])
            && steps.last() == Some(&12),
        "the progress bar showed {steps:?}"
    );
    let first = bytes(&http, &first_url).await?;
    let decoded = image::load_from_memory(&first)?;
    ensure!((decoded.width(), decoded.height()) == (512, 512));
    ensure!(text(&page, "#gallery li").await?.contains("512 × 512"));
    let stored: Value = page
        .script(
            "return window.localStorage.getItem('flux-rs.playground.api-key');",
            json!([]),
        )
        .await?;
    ensure!(
        stored == KEY,
        "the key is not kept in localStorage: {stored}"
    );

    // "Use this seed", Generate again: the same image, as a new file.
    page.click("#gallery li .use-seed").await?;
    let seed = page
        .script("return document.getElementById('seed').value;", json!([]))
        .await?;
    let seed = seed.as_str().context("no seed")?.to_owned();
    ensure!(
        text(&page, "#gallery li")
            .await?
            .contains(&format!("Seed {seed}"))
    );
    page.click("#generate").await?;
    let second_url = newest_result(&page, 2).await?;
    ensure!(
        second_url != first_url,
        "the second result is the first one's file"
    );
    ensure!(
        bytes(&http, &second_url).await? == first,
        "the same seed gave another image"
    );
    save_screenshot(&page, &shots, "playground-desktop.png", 1280).await?;

    // A custom width the API refuses: its own message, beside the width field, which gets focus.
    page.choose("#image-size", "custom").await?;
    page.fill("#width", "10000").await?;
    page.click("#generate").await?;
    page.wait_for(
        "the width's error",
        "!document.getElementById('width-error').hidden",
        WAIT,
    )
    .await?;
    let body = json!({"prompt": "a lighthouse on a cliff at dusk", "image_size": {"width": 10000, "height": 512}});
    let refused: Value = http
        .post(format!("{base}/api/v1/queue/flux/dev"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    ensure!(refused["error"]["param"] == "image_size.width", "{refused}");
    ensure!(
        refused["error"]["message"].as_str() == Some(text(&page, "#width-error").await?.as_str()),
        "the page shows {:?}, the API says {}",
        text(&page, "#width-error").await?,
        refused["error"]["message"]
    );
    let focus = page
        .script(
            "const e = document.activeElement; return [e.id, e.getAttribute('aria-invalid')];",
            json!([]),
        )
        .await?;
    ensure!(focus == json!(["width", "true"]), "focus and mark: {focus}");

    // At a phone's width the page fits without sideways scrolling.
    page.viewport(360, 780).await?;
    let overflow = page
        .script(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            json!([]),
        )
        .await?;
    ensure!(
        overflow == json!(0),
        "the page is {overflow} px wider than 360 px"
    );
    page.script("window.scrollTo(0, 0);", json!([])).await?;
    save_screenshot(&page, &shots, "playground-mobile.png", 360).await?;
    page.viewport(1280, 900).await?;

    // A long job (the largest size, the most steps): cancelled while it runs.
    page.fill("#width", "2048").await?;
    page.fill("#height", "2048").await?;
    page.fill("#steps", "50").await?;
    page.click("#generate").await?;
    page.wait_for(
        "the long job to run",
        "document.getElementById('job-text').textContent.startsWith('Step')",
        WAIT,
    )
    .await?;
    page.click("#cancel").await?;
    page.wait_for(
        "the cancellation",
        "document.getElementById('job-text').textContent.startsWith('Cancelled')",
        WAIT,
    )
    .await?;
    let id = page
        .script(
            "return document.getElementById('job').dataset.requestId;",
            json!([]),
        )
        .await?;
    let id = id.as_str().context("the job shows no request id")?;
    let status: Value = http
        .get(format!("{base}/api/v1/queue/flux/dev/requests/{id}/status"))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        status["status"] == "COMPLETED" && status["outcome"] == "cancelled",
        "{status}"
    );
    ensure!(
        page.script(
            "return document.querySelectorAll('#gallery li').length;",
            json!([])
        )
        .await?
            == json!(2),
        "the cancelled job added a result"
    );
    ensure!(
        page.script(
            "return document.getElementById('generate').disabled;",
            json!([])
        )
        .await?
            == json!(false),
        "Generate stays disabled after the cancel"
    );
    page.close().await?;
    drop(server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_playground_answers_the_root_with_404() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let server = ServeProcess::start(cwd.path(), &["--allow-unauthenticated", "--no-playground"])?;
    let http = reqwest::Client::new();
    for path in ["/", "/playground/app.js"] {
        let response = http
            .get(format!("{}{path}", server.base_url))
            .send()
            .await?;
        ensure!(response.status() == 404, "{path}: {}", response.status());
        let body: Value = response.json().await?;
        ensure!(body["error"]["code"] == "not_found", "{body}");
    }
    // The API itself is unchanged.
    let response = http
        .get(format!("{}/api/v1/models", server.base_url))
        .send()
        .await?;
    ensure!(response.status() == 200);
    Ok(())
}

/// Without keys the page works with an empty key field; a 429 is explained in words, with the
/// server's `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_request_is_explained_with_its_retry_time() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    // One request per hour per address: the page's model list takes it.
    let server = ServeProcess::start(
        cwd.path(),
        &["--allow-unauthenticated", "--rate-limit", "1/h,burst=1"],
    )?;
    let driver = Driver::start().await?;
    let page = driver.session(1280, 900).await?;
    page.goto(&format!("{}/", server.base_url)).await?;
    page.wait_for(
        "the model list",
        "document.getElementById('model-hint').textContent.startsWith('Served by')",
        WAIT,
    )
    .await?;
    page.fill("#prompt", "a red fox").await?;
    page.click("#generate").await?;
    page.wait_for(
        "the 429 explanation",
        "!document.getElementById('form-error').hidden",
        WAIT,
    )
    .await?;
    let message = text(&page, "#form-error").await?;
    ensure!(
        message.starts_with("Too many requests") && message.contains("Try again in "),
        "{message}"
    );
    ensure!(
        page.script(
            "return document.getElementById('generate').disabled;",
            json!([])
        )
        .await?
            == json!(false),
        "Generate stays disabled after the refusal"
    );
    page.close().await?;
    Ok(())
}
