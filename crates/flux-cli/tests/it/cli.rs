//! The built `flux` binary end to end: `generate` with the bundled tiny model from an empty
//! folder, bad input → exit 2 with the API's messages, `serve` answering the README's curl body,
//! and a SIGTERM drain. The first test to run also provisions ONNX Runtime and extracts the
//! bundled model into the cache (`FLUX_RS_CACHE_DIR`), the first-run path of a fresh machine.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

/// The body of the README's curl example (keep the two identical).
/// The JSON body of the README's curl example (the `-d '...'` argument), read from README.md so the
/// documented command and the tested one cannot drift apart.
fn readme_curl_body() -> anyhow::Result<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))?;
    let start = readme
        .find("-d '{")
        .ok_or_else(|| anyhow::anyhow!("README.md has no curl example with a -d '...' body"))?
        + "-d '".len();
    let length = readme[start..]
        .find('\'')
        .ok_or_else(|| anyhow::anyhow!("README.md's curl body is not closed by a quote"))?;
    Ok(readme[start..start + length].to_owned())
}

pub(crate) fn flux() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flux"));
    // The tests choose the backend themselves; a developer's environment must not leak in.
    for name in [
        "FLUX_BACKEND",
        "FLUX_MODEL",
        "FLUX_API_KEY",
        "FLUX_API_KEYS",
        "FLUX_LISTEN",
        "FLUX_DEVICE",
        "FLUX_THREADS",
    ] {
        command.env_remove(name);
    }
    // Each test's server keeps its job database in the test's own folder, never in the user's
    // data dir (shared, and locked by whichever server has it open).
    command.env("FLUX_DATA_DIR", "data");
    command
}

pub(crate) fn run_in(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(flux()
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `paths..., "seed: N"` from `flux generate`'s stdout.
fn parse_generate_output(stdout: &str) -> anyhow::Result<(Vec<String>, u64)> {
    let mut lines: Vec<&str> = stdout.lines().collect();
    let seed_line = lines.pop().context("no output")?;
    let seed = seed_line
        .strip_prefix("seed: ")
        .context("last line is not `seed: N`")?
        .parse()?;
    Ok((lines.into_iter().map(str::to_owned).collect(), seed))
}

#[test]
fn generate_with_the_bundled_model_from_any_folder_and_reproduce_by_seed() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let args = [
        "generate",
        "a lighthouse on a cliff at dusk",
        "--size",
        "96x64",
        "--steps",
        "2",
    ];
    let first = run_in(
        cwd.path(),
        &[&args[..], &["--format", "png", "-o", "out"]].concat(),
    )?;
    ensure!(
        first.status.success(),
        "flux generate failed: {}",
        text(&first.stderr)
    );
    let (paths, seed) = parse_generate_output(&text(&first.stdout))?;
    ensure!(seed <= 4_294_967_295, "seed {seed} out of range");
    ensure!(paths.len() == 1, "one image expected, got {paths:?}");
    ensure!(
        paths[0] == format!("out/flux-{seed}-1.png"),
        "unexpected path {}",
        paths[0]
    );
    // Piped output stays quiet: no progress bar.
    ensure!(
        !text(&first.stderr).contains("denoising"),
        "progress shown on a pipe: {}",
        text(&first.stderr)
    );

    let bytes = std::fs::read(cwd.path().join(&paths[0]))?;
    let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)?;
    assert_eq!((image.width(), image.height()), (96, 64));

    let seed_arg = seed.to_string();
    let again = run_in(
        cwd.path(),
        &[
            &args[..],
            &["--format", "png", "-o", "again", "--seed", &seed_arg],
        ]
        .concat(),
    )?;
    ensure!(
        again.status.success(),
        "second run failed: {}",
        text(&again.stderr)
    );
    let (again_paths, again_seed) = parse_generate_output(&text(&again.stdout))?;
    assert_eq!(again_seed, seed);
    assert_eq!(
        std::fs::read(cwd.path().join(&again_paths[0]))?,
        bytes,
        "same seed, different image"
    );

    // A second run into the same folder never overwrites the first image.
    let third = run_in(
        cwd.path(),
        &[
            &args[..],
            &["--format", "png", "-o", "out", "--seed", &seed_arg],
        ]
        .concat(),
    )?;
    ensure!(
        third.status.success(),
        "third run failed: {}",
        text(&third.stderr)
    );
    let (third_paths, _) = parse_generate_output(&text(&third.stdout))?;
    assert_eq!(third_paths, vec![format!("out/flux-{seed}-1-2.png")]);
    Ok(())
}

#[test]
fn bad_input_exits_2_with_the_api_message() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let cases: [(&[&str], &str); 13] = [
        (
            &["generate", "x", "-n", "5"],
            "num_images must be between 1 and 4, got 5",
        ),
        (
            &["generate", "x", "--seed", "-1"],
            "seed must be between 0 and 4294967295, got -1",
        ),
        (&["generate", "x", "--steps", "51"], "num_inference_steps"),
        (&["generate", "x", "--size", "huge"], "image_size"),
        (&["generate", "x", "--size", "100x64"], "multiple of 16"),
        (&["generate", "   "], "prompt"),
        (
            &["generate", "x", "--backend", "ftp://host"],
            "unsupported scheme",
        ),
        (
            &["generate", "x", "--model", "/no/such/model"],
            "does not exist",
        ),
        (&["generate", "x", "--model", "."], "invalid model"),
        (&["generate", "x", "--device", "gpu"], "not a device"),
        (&["generate", "x", "--threads", "0"], "at least 1"),
        (
            &["generate", "x", "--compute-priority", "low"],
            "not a priority",
        ),
        (
            &[
                "generate",
                "x",
                "--backend",
                "http://127.0.0.1:9",
                "--device",
                "cpu",
            ],
            "configure a local model",
        ),
    ];
    for (args, expected) in cases {
        let output = run_in(cwd.path(), args)?;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
        assert_eq!(
            std::fs::read_dir(cwd.path())?.count(),
            0,
            "{args:?} wrote files"
        );
    }
    let usage = run_in(cwd.path(), &["generate", "x", "--no-such-flag"])?;
    assert_eq!(usage.status.code(), Some(2));
    let from_env = flux()
        .args(["generate", "x"])
        .env("FLUX_BACKEND", "local:/no/such/model")
        .current_dir(cwd.path())
        .output()?;
    assert_eq!(from_env.status.code(), Some(2));
    assert!(text(&from_env.stderr).contains("/no/such/model does not exist"));
    let missing = run_in(cwd.path(), &["generate"])?;
    assert_eq!(missing.status.code(), Some(2));
    Ok(())
}

#[test]
fn flags_on_the_command_line_override_the_environment() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-flux-dev");
    let fixture = fixture.to_str().context("fixture path")?;

    // `--model` typed beats FLUX_BACKEND from the environment, which is then not even read.
    let local = flux()
        .args([
            "generate", "x", "--size", "64x64", "--steps", "1", "-o", "out",
        ])
        .args(["--model", fixture])
        .env("FLUX_BACKEND", "not even a backend spec")
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .output()?;
    ensure!(local.status.success(), "{}", text(&local.stderr));
    let (paths, _) = parse_generate_output(&text(&local.stdout))?;
    ensure!(paths.len() == 1, "{paths:?}");

    // `--backend` typed beats FLUX_MODEL, and FLUX_DEVICE (a local setting, here not even a
    // device) is a default for local runs, not an error for a remote one: the run gets as far
    // as the server, which is not there.
    let remote = flux()
        .args(["generate", "x", "--backend", "http://127.0.0.1:9"])
        .env("FLUX_MODEL", "/no/such/model")
        .env("FLUX_DEVICE", "gpu")
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .output()?;
    let stderr = text(&remote.stderr);
    ensure!(remote.status.code() == Some(1), "{stderr}");
    ensure!(
        !stderr.contains("two different backends") && !stderr.contains("device"),
        "{stderr}"
    );

    // `--backend local` and FLUX_MODEL agree: the folder from the environment is used (here
    // one that does not exist, which says so).
    let combined = flux()
        .args(["generate", "x", "--backend", "local"])
        .env("FLUX_MODEL", "/no/such/model")
        .current_dir(cwd.path())
        .output()?;
    let stderr = text(&combined.stderr);
    ensure!(combined.status.code() == Some(2), "{stderr}");
    ensure!(stderr.contains("/no/such/model does not exist"), "{stderr}");

    // Both from the environment: the error names the variables, not flags nobody typed.
    let both = flux()
        .args(["generate", "x"])
        .env("FLUX_MODEL", fixture)
        .env("FLUX_BACKEND", "http://127.0.0.1:9")
        .current_dir(cwd.path())
        .output()?;
    let stderr = text(&both.stderr);
    ensure!(both.status.code() == Some(2), "{stderr}");
    ensure!(
        stderr.contains("FLUX_MODEL") && stderr.contains("FLUX_BACKEND"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn boolean_environment_variables_take_the_usual_spellings() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    for value in ["1", "yes", "on", "true"] {
        // The bad rate limit stops `serve` after its arguments are read, before any model loads.
        let output = flux()
            .args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "often"])
            .env("FLUX_ALLOW_UNAUTHENTICATED", value)
            .env("FLUX_DURABLE_IMAGES", value)
            .env("FLUX_JSON_LOGS", value)
            .current_dir(cwd.path())
            .output()?;
        let stderr = text(&output.stderr);
        ensure!(output.status.code() == Some(2), "{value}: {stderr}");
        ensure!(
            stderr.contains("often") && !stderr.contains("invalid value"),
            "{value}: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn cuda_in_a_build_without_it_is_an_error_not_a_cpu_run() -> anyhow::Result<()> {
    if cfg!(feature = "cuda") {
        return Ok(());
    }
    let cwd = tempfile::tempdir()?;
    let output = run_in(
        cwd.path(),
        &[
            "generate", "x", "--size", "64x64", "--steps", "1", "--device", "cuda",
        ],
    )?;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("without the `cuda` feature"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(cwd.path())?.count(),
        0,
        "an image was written"
    );
    Ok(())
}

#[test]
fn help_lists_every_command_and_examples() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let help = run_in(cwd.path(), &["--help"])?;
    assert_eq!(help.status.code(), Some(0));
    let help = text(&help.stdout);
    for expected in ["generate", "serve", "schema", "Examples:", "--model"] {
        assert!(
            help.contains(expected),
            "--help lacks {expected:?}:\n{help}"
        );
    }
    let generate = text(&run_in(cwd.path(), &["generate", "--help"])?.stdout);
    for flag in [
        "--size",
        "--num-images",
        "--steps",
        "--guidance",
        "--seed",
        "--format",
        "--output",
        "--backend",
        "--model",
        "--no-safety-checker",
        "--device",
        "--threads",
        "--compute-priority",
    ] {
        assert!(generate.contains(flag), "generate --help lacks {flag}");
    }
    let serve = text(&run_in(cwd.path(), &["serve", "--help"])?.stdout);
    for flag in [
        "--listen",
        "--api-key-file",
        "--rate-limit",
        "--queue-depth",
        "--files-dir",
        "--public-url",
        "--retention",
        "--allow-unauthenticated",
        "--json-logs",
        "--durable-images",
        "--compute-priority",
        "FLUX_LISTEN",
    ] {
        assert!(serve.contains(flag), "serve --help lacks {flag}");
    }
    Ok(())
}

#[test]
fn schema_prints_json_schema_and_openapi() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let schema = run_in(cwd.path(), &["schema"])?;
    ensure!(schema.status.success(), "{}", text(&schema.stderr));
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout)?;
    assert!(schema["properties"]["prompt"].is_object(), "{schema}");
    assert!(schema["properties"]["num_images"].is_object(), "{schema}");

    let written = run_in(cwd.path(), &["schema", "--openapi", "-o", "openapi.json"])?;
    ensure!(written.status.success(), "{}", text(&written.stderr));
    let openapi: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cwd.path().join("openapi.json"))?)?;
    assert!(
        openapi["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{openapi}"
    );
    assert!(openapi["paths"]["/api/v1/flux/dev"]["post"].is_object());
    Ok(())
}

/// (thread name, scheduling policy) of every thread of process `pid`, from /proc.
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> anyhow::Result<Vec<(String, u32)>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = entry?.path();
        let name = std::fs::read_to_string(dir.join("comm"))?.trim().to_owned();
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        // Fields after the parenthesised name; `policy` is field 41 of stat(5).
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let policy = after_name
            .split_whitespace()
            .nth(41 - 3)
            .context("short /proc stat line")?
            .parse()?;
        threads.push((name, policy));
    }
    Ok(threads)
}

/// A child's stdout, line by line, and its whole stderr once it closes: both drained on threads,
/// so the process never blocks on a full pipe (its logs are kept for diagnostics).
pub(crate) fn read_output(
    child: &mut Child,
) -> anyhow::Result<(mpsc::Receiver<String>, mpsc::Receiver<String>)> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        let _ = err_tx.send(all);
    });
    Ok((line_rx, err_rx))
}

/// A running `flux serve`; killed on drop if a test fails half way (the restart and playground
/// tests use it too).
pub(crate) struct ServeProcess {
    pub(crate) child: Child,
    pub(crate) base_url: String,
    stderr: mpsc::Receiver<String>,
}

impl ServeProcess {
    /// `flux serve` in `cwd` (files in `cwd/files`, the job database in `cwd/data`) with `args`,
    /// once it has printed its address and then its ready line.
    pub(crate) fn start(cwd: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = flux()
            .args(["serve", "--listen", "127.0.0.1:0", "--files-dir", "files"])
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (line_rx, err_rx) = read_output(&mut child)?;
        let mut process = ServeProcess {
            child,
            base_url: String::new(),
            stderr: err_rx,
        };
        let line = match line_rx.recv_timeout(Duration::from_secs(180)) {
            Ok(line) => line,
            Err(_) => {
                let _ = process.child.kill();
                bail!(
                    "flux serve printed no address; stderr: {}",
                    process.stderr_text()
                );
            }
        };
        process.base_url = line
            .strip_prefix("flux server listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_owned();
        // The server listens before its model is loaded; work is sent once it says it is ready.
        let ready = line_rx.recv_timeout(Duration::from_secs(180));
        if ready.as_deref() != Ok("flux server ready") {
            let _ = process.child.kill();
            bail!(
                "flux serve did not get ready ({ready:?}); stderr: {}",
                process.stderr_text()
            );
        }
        Ok(process)
    }

    pub(crate) fn stderr_text(&self) -> String {
        self.stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }

    fn wait_exit(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "flux serve did not exit within {within:?}; stderr: {}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn post(
    http: &reqwest::Client,
    base_url: &str,
    key: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut request = http
        .post(format!("{base_url}/api/v1/flux/dev"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// Fetches the first image of a 200 body and checks it decodes at the announced size.
async fn check_first_image(
    http: &reqwest::Client,
    body: &serde_json::Value,
    size: (u32, u32),
) -> anyhow::Result<()> {
    let image = &body["images"][0];
    let url = image["url"].as_str().context("no image url")?;
    let response = http.get(url).send().await?;
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("image/jpeg"));
    let decoded = image::load_from_memory(&response.bytes().await?)?;
    assert_eq!((decoded.width(), decoded.height()), size);
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(u64::from(size.0)), Some(u64::from(size.1)))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_the_readme_curl_example_and_drains_on_sigterm() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let mut server = ServeProcess::start(cwd.path(), &["--allow-unauthenticated"])?;
    let http = reqwest::Client::new();

    let (status, body) = post(&http, &server.base_url, None, &readme_curl_body()?).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seed"], 42);
    check_first_image(&http, &body, (512, 512)).await?;

    // SIGTERM while generations are admitted: they are answered, then the server exits 0.
    // Long enough (several hundred ms for the three) that all are admitted well before the last ends.
    let small = r#"{"prompt": "a red fox", "image_size": {"width": 512, "height": 512}, "num_inference_steps": 8}"#;
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let http = http.clone();
            let base = server.base_url.clone();
            tokio::spawn(async move { post(&http, &base, None, small).await })
        })
        .collect();
    // The README request was answered already; the three must all be in before the signal.
    wait_for_admitted_work(&http, &server.base_url, 4).await?;
    server.terminate()?;
    for request in in_flight {
        let (status, body) = request.await??;
        assert_eq!(
            status, 200,
            "an admitted request was not answered during the drain: {body}"
        );
    }
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(60)))?;
    assert_eq!(status.code(), Some(0), "stderr: {}", server.stderr_text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain_at_once() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let mut server = ServeProcess::start(cwd.path(), &["--allow-unauthenticated"])?;
    let http = reqwest::Client::new();
    // Seconds of work on the tiny model: four 1024² images in 50 steps.
    let long = r#"{"prompt": "a red fox", "image_size": "square_hd", "num_images": 4, "num_inference_steps": 50}"#;
    let in_flight = {
        let http = http.clone();
        let base = server.base_url.clone();
        tokio::spawn(async move { post(&http, &base, None, long).await })
    };
    wait_for_admitted_work(&http, &server.base_url, 1).await?;
    server.terminate()?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.terminate()?;
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(5)))?;
    assert_eq!(status.code(), Some(130), "stderr: {}", server.stderr_text());
    assert!(
        in_flight.await?.is_err(),
        "the generation was answered: the drain was not cut short"
    );
    Ok(())
}

/// Polls `/metrics` until `expected` generation requests have been admitted in all (answered ones
/// plus those queued or running) and at least one of them is still at work, so the SIGTERM lands
/// mid-work and no request of the test is still on its way in. A request the server has not read
/// yet when the drain starts has its connection closed, which is not what this test is about.
async fn wait_for_admitted_work(
    http: &reqwest::Client,
    base_url: &str,
    expected: u64,
) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..2000 {
        let metrics = http
            .get(format!("{base_url}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let value_of = |prefix: &str| -> u64 {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(prefix))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .map_or(0, |value| value as u64)
        };
        let in_queue = value_of("flux_queue_depth ");
        let answered =
            value_of("flux_http_requests_total{route=\"/api/v1/flux/dev\",status=\"200\"} ");
        if in_queue >= 1 && in_queue + answered >= expected {
            return Ok(());
        }
        ensure!(
            in_queue + answered < expected || in_queue >= 1,
            "every generation was answered before the test could send SIGTERM"
        );
        last = format!("in queue {in_queue}, answered {answered}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("the generations were never all admitted ({last})")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_key_file_refuses_unknown_keys() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    std::fs::write(
        cwd.path().join("keys.txt"),
        "# team keys\nsk-test-one-000001\n\nsk-test-two-000002\n",
    )?;
    // Also the non-default durability, and (Linux) the idle compute priority, end to end.
    let mut args = vec!["--api-key-file", "keys.txt", "--durable-images"];
    if cfg!(target_os = "linux") {
        // Two threads: ONNX Runtime then makes one pool thread besides the engine's own.
        args.extend(["--compute-priority", "idle", "--threads", "2"]);
    }
    let server = ServeProcess::start(cwd.path(), &args)?;
    let http = reqwest::Client::new();
    let body = r#"{"prompt": "a red fox", "image_size": {"width": 64, "height": 64}, "num_inference_steps": 2}"#;
    #[cfg(target_os = "linux")]
    {
        // SCHED_IDLE is policy 5; the HTTP threads keep the normal policy (0).
        let policies = thread_policies(server.child.id())?;
        let of = |name: &str| -> Vec<u32> {
            policies
                .iter()
                .filter(|(thread, _)| thread == name)
                .map(|(_, policy)| *policy)
                .collect()
        };
        for name in ["flux-engine", "flux-ort"] {
            let found = of(name);
            assert!(
                !found.is_empty() && found.iter().all(|&p| p == 5),
                "{name}: {policies:?}"
            );
        }
        assert!(
            policies
                .iter()
                .any(|(thread, policy)| thread.starts_with("tokio") && *policy == 0),
            "{policies:?}"
        );
    }

    let (status, refused) = post(&http, &server.base_url, None, body).await?;
    assert_eq!(status, 401, "{refused}");
    assert_eq!(refused["error"]["code"], "unauthorized");
    let (status, refused) = post(&http, &server.base_url, Some("sk-wrong"), body).await?;
    assert_eq!(status, 401, "{refused}");

    let (status, answer) = post(&http, &server.base_url, Some("sk-test-two-000002"), body).await?;
    assert_eq!(status, 200, "{answer}");
    check_first_image(&http, &answer, (64, 64)).await?;

    // `flux generate` against this server, chosen through the environment like a user would.
    let base_url = server.base_url.clone();
    let output_dir = cwd.path().to_path_buf();
    let remote = tokio::task::spawn_blocking(move || {
        flux()
            .args([
                "generate",
                "a red fox",
                "--size",
                "80x64",
                "--steps",
                "2",
                "--seed",
                "11",
                "-o",
                "remote",
            ])
            .env("FLUX_BACKEND", &base_url)
            .env("FLUX_API_KEY", "sk-test-one-000001")
            .current_dir(&output_dir)
            .stdin(Stdio::null())
            .output()
    })
    .await??;
    ensure!(
        remote.status.success(),
        "remote generate failed: {}",
        text(&remote.stderr)
    );
    let (paths, seed) = parse_generate_output(&text(&remote.stdout))?;
    assert_eq!((paths, seed), (vec!["remote/flux-11-1.jpg".to_owned()], 11));
    let decoded = image::open(cwd.path().join("remote/flux-11-1.jpg"))?;
    assert_eq!((decoded.width(), decoded.height()), (80, 64));
    Ok(())
}

#[test]
fn serve_listens_while_loading_and_exits_2_when_the_model_is_not_one() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let output = run_in(
        cwd.path(),
        &[
            "serve",
            "--allow-unauthenticated",
            "--listen",
            "127.0.0.1:0",
            "--model",
            ".",
        ],
    )?;
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("flux server listening on http://127.0.0.1:"),
        "it listens before loading: {stdout}"
    );
    assert!(!stdout.contains("ready"), "{stdout}");
    assert!(stderr.contains("invalid model"), "{stderr}");
    Ok(())
}

#[test]
fn serve_refuses_to_start_without_keys() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let output = run_in(cwd.path(), &["serve", "--listen", "127.0.0.1:0"])?;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("--allow-unauthenticated"),
        "{}",
        text(&output.stderr)
    );
    Ok(())
}
