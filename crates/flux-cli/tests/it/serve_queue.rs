//! A real `flux serve` (the bundled tiny model) through the queue API: submit, the status stream
//! with every step, the result and its image, and a signed webhook that a receiver on loopback
//! verifies with the server's secret (`--webhook-secret-file`, `--webhook-allow-private`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use flux_remote::{FluxClient, verify_webhook};
use flux_types::{GenerateRequest, ImageSize, QueueState};

const KEY: &str = "serve-queue-test-key-01";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A request's headers, names lower-cased.
pub(crate) type Headers = Vec<(String, String)>;

/// One webhook POST: its headers and body; answered 200.
fn receive_one(listener: &TcpListener) -> anyhow::Result<(Headers, Vec<u8>)> {
    let (stream, _) = listener.accept()?;
    read_post(stream, true)
}

/// Reads one POST from a webhook receiver's connection (headers, then `content-length` bytes of
/// body) and answers it 200, or 500 when `accept` is false (a receiver that refuses deliveries).
pub(crate) fn read_post(
    mut stream: std::net::TcpStream,
    accept: bool,
) -> anyhow::Result<(Headers, Vec<u8>)> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut headers = Vec::new();
    let mut line = String::new();
    reader.read_line(&mut line)?; // request line
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .context("no content-length")?
        .1
        .parse()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let status = if accept {
        "200 OK"
    } else {
        "500 Internal Server Error"
    };
    stream.write_all(
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    Ok((headers, body))
}

#[test]
fn flux_serve_answers_the_queue_api_and_signs_its_webhooks() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    std::fs::write(cwd.path().join("keys"), format!("{KEY}\n"))?;
    std::fs::write(cwd.path().join("webhook-secret"), format!("{SECRET}\n"))?;
    let receiver = TcpListener::bind("127.0.0.1:0")?;
    let hook_url = format!("http://{}/hook", receiver.local_addr()?);
    let mut child = Command::new(env!("CARGO_BIN_EXE_flux"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--files-dir",
            "files",
            "--data-dir",
            "data",
            "--api-key-file",
            "keys",
            "--webhook-secret-file",
            "webhook-secret",
            "--webhook-allow-private",
        ])
        .env_remove("FLUX_API_KEYS")
        .env_remove("FLUX_BACKEND")
        .env_remove("FLUX_MODEL")
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let outcome = (|| -> anyhow::Result<()> {
        let mut base = None;
        while let Ok(line) = line_rx.recv_timeout(Duration::from_secs(120)) {
            if let Some(url) = line.strip_prefix("flux server listening on ") {
                base = Some(url.trim().to_owned());
            }
            if line == "flux server ready" {
                break;
            }
        }
        let base = base.context("no listening line")?;
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let client = FluxClient::new(&base, KEY)?;
            let mut request = GenerateRequest::new("a red fox");
            request.image_size = ImageSize::Custom {
                width: 64,
                height: 64,
            };
            request.num_inference_steps = 3;
            request.seed = Some(3);
            let job = client
                .submit_with("dev", &request, None, Some(&hook_url))
                .await?;
            anyhow::ensure!(job.status == QueueState::InQueue);
            let mut steps = Vec::new();
            let result = client
                .wait("dev", &job.request_id, |status| {
                    if let Some(progress) = status.progress {
                        steps.push(progress.step);
                    }
                })
                .await?;
            anyhow::ensure!(steps == [1, 2, 3], "{steps:?}");
            anyhow::ensure!(result.seed == 3);
            let image = client.fetch_image(&result.images[0].url).await?;
            anyhow::ensure!(image.starts_with(&[0xff, 0xd8]), "a JPEG");
            let (headers, body) = receive_one(&receiver)?;
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.clone())
                    .unwrap_or_default()
            };
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            verify_webhook(
                SECRET,
                &header("webhook-id"),
                &header("webhook-timestamp"),
                &header("webhook-signature"),
                &body,
                now,
            )?;
            let body: serde_json::Value = serde_json::from_slice(&body)?;
            anyhow::ensure!(
                body["status"] == "OK" && body["request_id"] == job.request_id.as_str()
            );
            anyhow::ensure!(body["payload"]["seed"] == 3);
            Ok(())
        })
    })();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    outcome
}
