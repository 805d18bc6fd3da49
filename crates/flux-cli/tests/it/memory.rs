//! Memory bounds of a real `flux serve` with the bundled model (issue 18): the contract's largest
//! request (2048², 4 images) runs under a `--memory-limit` its estimate fits, within that
//! estimate; under a smaller limit it is refused at once with 422 `exceeds_memory_limit`; and a
//! soak of mixed sizes leaves the resident memory bounded (a request beyond 1024² gives its
//! memory back when it ends, so it does not keep its peak); and a smaller request's memory, kept
//! for the next request, goes back once the server has been idle for flux-core's release delay.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

/// A running `flux serve` on the bundled model; killed on drop.
struct Server {
    child: Child,
    base_url: String,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    fn start(cwd: &std::path::Path, memory_limit: &str) -> anyhow::Result<Self> {
        Self::start_in(cwd, Some(memory_limit), None)
    }

    /// Starts the server, with `--memory-limit` when given, inside the cgroup whose
    /// `cgroup.procs` file is `cgroup_procs` when given (the shell joins it, then execs flux).
    fn start_in(
        cwd: &std::path::Path,
        memory_limit: Option<&str>,
        cgroup_procs: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let flux = env!("CARGO_BIN_EXE_flux");
        let mut command = match cgroup_procs {
            Some(procs) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg("echo $$ > \"$0\" && exec \"$@\"")
                    .arg(procs)
                    .arg(flux);
                shell
            }
            None => Command::new(flux),
        };
        for name in ["FLUX_BACKEND", "FLUX_MODEL", "FLUX_API_KEYS", "FLUX_LISTEN"] {
            command.env_remove(name);
        }
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--files-dir",
                "files",
                "--data-dir",
                "data",
            ])
            .arg("--allow-unauthenticated");
        if let Some(limit) = memory_limit {
            command.args(["--memory-limit", limit]);
        }
        let mut child = command
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut stderr = child.stderr.take().context("no stderr")?;
        let (line_tx, lines) = mpsc::channel();
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
        let mut server = Server {
            child,
            base_url: String::new(),
            stderr: err_rx,
        };
        let first = lines.recv_timeout(Duration::from_secs(180));
        let Some(url) = first
            .as_deref()
            .ok()
            .and_then(|line| line.strip_prefix("flux server listening on "))
        else {
            let _ = server.child.kill();
            bail!("no address ({first:?}); stderr: {}", server.stderr_text());
        };
        server.base_url = url.to_owned();
        let ready = lines.recv_timeout(Duration::from_secs(180));
        if ready.as_deref() != Ok("flux server ready") {
            let _ = server.child.kill();
            bail!("not ready ({ready:?}); stderr: {}", server.stderr_text());
        }
        Ok(server)
    }

    fn stderr_text(&mut self) -> String {
        let _ = self.child.kill();
        self.stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default()
    }

    /// `VmRSS` or `VmHWM` (peak) of the server process, in MiB.
    fn memory_mib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|line| line.starts_with(field))
            .with_context(|| format!("no {field}"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("no number")?
            .parse()?;
        Ok(kib / 1024)
    }

    async fn generate(
        &self,
        http: &reqwest::Client,
        side: u32,
        num_images: u32,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let body = serde_json::json!({
            "prompt": "x",
            "num_inference_steps": 1,
            "image_size": {"width": side, "height": side},
            "num_images": num_images,
            "sync_mode": true,
        });
        let response = http
            .post(format!("{}/api/v1/flux/dev", self.base_url))
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_request_is_refused_at_once_under_a_limit_it_cannot_fit() -> anyhow::Result<()>
{
    let cwd = tempfile::tempdir()?;
    let server = Server::start(cwd.path(), "1G")?;
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let (status, body) = server.generate(&http, 2048, 4).await?;
    ensure!(status == 422, "{status} {body}");
    assert_eq!(body["error"]["code"], "exceeds_memory_limit", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("MiB") && message.contains("1024 MiB"),
        "{message}"
    );
    // Refused before any work, not after a failed attempt.
    assert!(started.elapsed() < Duration::from_secs(5));
    // A request that fits is still served.
    let (status, body) = server.generate(&http, 256, 1).await?;
    ensure!(status == 200, "{status} {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_request_runs_within_its_estimate_and_memory_comes_back() -> anyhow::Result<()>
{
    let cwd = tempfile::tempdir()?;
    let server = Server::start(cwd.path(), "4G")?;
    let http = reqwest::Client::new();
    let (status, body) = server.generate(&http, 2048, 4).await?;
    ensure!(status == 200, "{status} {body}");
    let images = body["images"].as_array().context("no images")?;
    assert_eq!(images.len(), 4);
    let peak = server.memory_mib("VmHWM")?;
    // The estimate for this request on the bundled model is about 3 GiB (see flux-core's
    // memory module); measured, the peak is about 1.4 GiB.
    assert!(peak < 3 * 1024, "peak RSS {peak} MiB");
    let after_largest = server.memory_mib("VmRSS")?;

    // A soak of mixed sizes: resident memory stays bounded, well under the largest peak.
    let mut highest = 0;
    for (side, images) in [
        (1024, 1),
        (512, 2),
        (1280, 1),
        (768, 1),
        (1024, 2),
        (512, 1),
    ] {
        let (status, body) = server.generate(&http, side, images).await?;
        ensure!(status == 200, "{side}² × {images}: {status} {body}");
        highest = highest.max(server.memory_mib("VmRSS")?);
    }
    assert!(
        highest < 900,
        "RSS reached {highest} MiB during the soak (after the 2048² × 4 request: \
         {after_largest} MiB, peak {peak} MiB)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_gives_the_memory_a_request_kept_back() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let server = Server::start_in(cwd.path(), None, None)?;
    let http = reqwest::Client::new();
    let loaded = server.memory_mib("VmRSS")?;
    let (status, body) = server.generate(&http, 1024, 1).await?;
    ensure!(status == 200, "{status} {body}");
    let answered = std::time::Instant::now();
    let kept = server.memory_mib("VmRSS")?;
    // 1024² is the largest size that keeps its memory for the next request (the tiny model's
    // decode at 1024² holds about 350 MiB).
    ensure!(
        kept > loaded + 150,
        "a 1024² request kept only {} MiB (RSS {kept} MiB, {loaded} MiB after loading)",
        kept - loaded
    );
    let released = loaded + (kept - loaded) / 2;
    let idle_delay = flux_core::engine::RELEASE_AFTER_IDLE;
    // Well inside the delay the memory is still there, for a next request...
    tokio::time::sleep(idle_delay / 4).await;
    let early = server.memory_mib("VmRSS")?;
    if answered.elapsed() < idle_delay {
        ensure!(
            early > released,
            "given back {:?} after the answer, before the {idle_delay:?} idle delay ({early} MiB)",
            answered.elapsed()
        );
    }
    // ...and after it, it goes back.
    let deadline = answered + idle_delay + Duration::from_secs(30);
    loop {
        let now = server.memory_mib("VmRSS")?;
        if now <= released {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "still {now} MiB resident {:?} after the answer (loaded {loaded}, kept {kept} MiB)",
            answered.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// A memory cgroup this process may create (v2 under /sys/fs/cgroup, v1 under its memory
/// hierarchy, as root), limited to `limit` bytes: the folder and its `cgroup.procs`.
fn make_memory_cgroup(limit: u64) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let name = format!("flux-memory-test-{}", std::process::id());
    let candidates = [
        (
            std::path::PathBuf::from("/sys/fs/cgroup").join(&name),
            "memory.max",
        ),
        (
            std::path::PathBuf::from("/sys/fs/cgroup/memory").join(&name),
            "memory.limit_in_bytes",
        ),
    ];
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").is_file();
    for (dir, limit_file) in candidates {
        // Only a real cgroup hierarchy: there the kernel fills a new folder with its files.
        let hierarchy = dir.parent().map(|parent| parent.join("cgroup.procs"));
        if (limit_file == "memory.max") != v2 || !hierarchy.is_some_and(|procs| procs.is_file()) {
            continue;
        }
        if std::fs::create_dir(&dir).is_ok() {
            if std::fs::write(dir.join(limit_file), limit.to_string()).is_ok() {
                let procs = dir.join("cgroup.procs");
                return Some((dir, procs));
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
    None
}

/// Under a real 1.5 GiB memory cgroup and no `--memory-limit`, the server takes its limit from the
/// cgroup: the 2048² × 4 request (estimated ~3 GiB) is refused with 422, never an OOM kill, and
/// a request that fits is served. Where no cgroup can be made (not root, no writable
/// hierarchy), the same holds with the limit given by `--memory-limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_memory_cgroup_the_limit_comes_from_the_cgroup() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let limit = 1536u64 << 20;
    let cgroup = make_memory_cgroup(limit);
    let server = match &cgroup {
        Some((_, procs)) => Server::start_in(cwd.path(), None, Some(procs))?,
        None => {
            eprintln!("no memory cgroup can be made here: using --memory-limit 1536M instead");
            Server::start_in(cwd.path(), Some("1536M"), None)?
        }
    };
    let http = reqwest::Client::new();
    let (status, body) = server.generate(&http, 2048, 4).await?;
    ensure!(status == 422, "{status} {body}");
    assert_eq!(body["error"]["code"], "exceeds_memory_limit", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("1536 MiB"), "{message}");
    let (status, body) = server.generate(&http, 768, 1).await?;
    ensure!(status == 200, "{status} {body}");
    drop(server);
    if let Some((dir, _)) = cgroup {
        // The server has exited (killed and waited on in drop): the cgroup is empty.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}
