//! A real `flux serve` with two models (`--model` twice: the dev and schnell fixtures): each
//! variant's sync and queue routes generate on its own model with its own defaults, the model
//! list names both, and two models of one variant are refused at start-up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use flux_remote::FluxClient;
use serde_json::{Value, json};

use crate::cli::{ServeProcess, run_in};

fn fixture(name: &str) -> anyhow::Result<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
        .canonicalize()?;
    path.to_str()
        .map(str::to_owned)
        .context("a fixture path that is not UTF-8")
}

async fn post(http: &reqwest::Client, url: String, body: &Value) -> anyhow::Result<(u16, Value)> {
    let response = http.post(url).json(body).send().await?;
    Ok((response.status().as_u16(), response.json().await?))
}

/// The first image of a 200 body is served at the announced size.
async fn check_image(http: &reqwest::Client, body: &Value) -> anyhow::Result<()> {
    let image = &body["images"][0];
    ensure!(image["width"] == 64 && image["height"] == 64, "{body}");
    let url = image["url"].as_str().context("no image url")?;
    let bytes = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let decoded = image::load_from_memory(&bytes)?;
    ensure!((decoded.width(), decoded.height()) == (64, 64));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_serves_the_dev_and_the_schnell_model_on_their_own_routes() -> anyhow::Result<()>
{
    let cwd = tempfile::tempdir()?;
    let (dev, schnell) = (fixture("tiny-flux-dev")?, fixture("tiny-flux-schnell")?);
    let server = ServeProcess::start(
        cwd.path(),
        &[
            "--allow-unauthenticated",
            "--model",
            &dev,
            "--model",
            &schnell,
        ],
    )?;
    let base = &server.base_url;
    let http = reqwest::Client::new();

    let listed: Value = http
        .get(format!("{base}/api/v1/models"))
        .send()
        .await?
        .json()
        .await?;
    let models = listed["models"].as_array().context("no models")?;
    ensure!(models.len() == 2, "{listed}");
    for (model, id, variant, safety_checker) in [
        (&models[0], "tiny-flux-dev", "dev", true),
        (&models[1], "tiny-flux-schnell", "schnell", false),
    ] {
        ensure!(model["id"] == id && model["variant"] == variant, "{listed}");
        ensure!(model["safety_checker"] == safety_checker, "{listed}");
        ensure!(
            model["precision"] == "fp32" && model["device"] == "cpu",
            "{listed}"
        );
        ensure!(
            model["text_length"].as_u64().is_some_and(|n| n > 0),
            "{listed}"
        );
        ensure!(
            model["sync_path"] == format!("/api/v1/flux/{variant}")
                && model["queue_path"] == format!("/api/v1/queue/flux/{variant}"),
            "{listed}"
        );
    }
    let ready = http.get(format!("{base}/ready")).send().await?;
    ensure!(ready.status() == 200);

    // The sync routes: each model with its defaults (schnell: 4 steps; its guidance ignored).
    let body = json!({"prompt": "a red fox", "image_size": {"width": 64, "height": 64}, "seed": 7});
    let (status, answer) = post(&http, format!("{base}/api/v1/flux/dev"), &body).await?;
    ensure!(status == 200, "{answer}");
    check_image(&http, &answer).await?;
    let mut schnell_body = body.clone();
    schnell_body["guidance_scale"] = json!(50);
    let (status, answer) =
        post(&http, format!("{base}/api/v1/flux/schnell"), &schnell_body).await?;
    ensure!(status == 200 && answer["seed"] == 7, "{answer}");
    check_image(&http, &answer).await?;
    let mut too_many = body.clone();
    too_many["num_inference_steps"] = json!(13);
    let (status, answer) = post(&http, format!("{base}/api/v1/flux/schnell"), &too_many).await?;
    ensure!(
        status == 400 && answer["error"]["param"] == "num_inference_steps",
        "{answer}"
    );

    // The queue routes: a schnell job runs its 4 default steps on the schnell model.
    let client = FluxClient::builder(base).build()?;
    for (variant, steps) in [("dev", 2), ("schnell", 4)] {
        let mut job_body = body.clone();
        if variant == "dev" {
            job_body["num_inference_steps"] = json!(steps);
        }
        let (status, job) = post(
            &http,
            format!("{base}/api/v1/queue/flux/{variant}"),
            &job_body,
        )
        .await?;
        ensure!(status == 202, "{job}");
        let id = job["request_id"].as_str().context("no request_id")?;
        let mut seen = Vec::new();
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            client.wait(variant, id, |status| {
                if let Some(progress) = status.progress {
                    seen.push((progress.step, progress.total_steps));
                }
            }),
        )
        .await??;
        ensure!(seen.last() == Some(&(steps, steps)), "{variant}: {seen:?}");
        ensure!(result.seed == 7);
        let image = client.fetch_image(&result.images[0].url).await?;
        ensure!(image::load_from_memory(&image)?.width() == 64);
    }
    Ok(())
}

#[test]
fn two_models_of_one_variant_are_refused_at_start_up() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let (dev, other_dev) = (
        fixture("tiny-flux-dev")?,
        fixture("tiny-flux-dev-diffusers")?,
    );
    let output = run_in(
        cwd.path(),
        &[
            "serve",
            "--allow-unauthenticated",
            "--listen",
            "127.0.0.1:0",
            "--model",
            &dev,
            "--model",
            &other_dev,
        ],
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(2), "{stdout}{stderr}");
    ensure!(!stdout.contains("ready"), "{stdout}");
    ensure!(
        stderr.contains("are both FLUX.1-dev models") && stderr.contains("tiny-flux-dev-diffusers"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn generate_takes_one_model() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let (dev, schnell) = (fixture("tiny-flux-dev")?, fixture("tiny-flux-schnell")?);
    let output = run_in(
        cwd.path(),
        &[
            "generate",
            "a red fox",
            "--model",
            &dev,
            "--model",
            &schnell,
        ],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(2), "{stderr}");
    ensure!(
        stderr.contains("only `flux serve` serves several models"),
        "{stderr}"
    );
    Ok(())
}
